// Small helpers shared by the supervisor benchmarks (`fieldprint bench`, fieldprint_cluster_bench,
// fieldprint_log_bench): latency percentiles, a counter read from a metrics registry, and the
// machine facts a report carries.
//
// Thread-safety: the functions keep no state; CounterValue() reads the registry as any scrape
// does.
#pragma once

#include <string>
#include <vector>

#include <prometheus/registry.h>

namespace fp::supervisor {

// The q-quantile (0 <= q <= 1) of `values`: the sorted values' element at floor(q * size), the
// last one for q = 1; 0 for no values.
double Percentile(std::vector<double> values, double q);

// The value of the first series of counter `name` in `registry`; 0 when it has none.
double CounterValue(const prometheus::Registry& registry, const std::string& name);

// The processor's model name from /proc/cpuinfo; "unknown" when it cannot be read.
std::string CpuModel();

// The machine's one-minute load average from /proc/loadavg (0 when it cannot be read): a
// benchmark shares the machine with whatever else runs.
double LoadAverage();

// Blocks the calling thread for `seconds`.
void Sleep(double seconds);

}  // namespace fp::supervisor
