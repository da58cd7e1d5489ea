// Metrics helpers over prometheus-cpp: registration with fieldprint's naming rules, standard
// latency buckets, and rendering in the Prometheus text format.
//
// One prometheus::Registry per process: main() creates it and passes it by reference to the
// components that register metrics; there is no global registry. MetricsServer
// (common/metrics/metrics_server.h) serves it over HTTP.
//
// Naming rules (DESIGN.md section 6, STYLE.md rule 22), FP_CHECKed at registration:
//   - names are `fieldprint_` followed by lower-case words of [a-z0-9] joined by single '_';
//   - counters end in `_total`; gauges and histograms do not, and histograms do not end in
//     `_bucket`, `_sum` or `_count` (the series suffixes Prometheus derives from them);
//   - base units only: no word of the name is a scaled or non-base unit (milliseconds, ms,
//     kilobytes, mib, percent, ...): time is `_seconds`, sizes are `_bytes`, ratios are 0..1;
//   - latencies are histograms (use the kLatencyBuckets* sets below), never gauges of averages;
//   - label names are [a-z][a-z0-9_]*, not `le` or `quantile` (reserved), and not identifiers
//     of unbounded sets (session, session_id, request_id, step, token, token_id, prompt,
//     trace_id). Label values must come from bounded sets too; that cannot be checked at
//     registration, so it is the caller's duty.
//
// Thread-safety: prometheus-cpp registries, families and metrics are thread-safe; the helpers
// here are pure or forward to them.
#pragma once

#include <array>
#include <span>
#include <string>
#include <string_view>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace fp::metrics {

// Latency buckets in seconds. Fast: in-process work measured per operation (hashing a batch,
// applying a record, a kernel launch). Request: one network or disk round trip (an RPC, an
// fsync, an HTTP request). Long: whole sessions and recoveries.
inline constexpr std::array<double, 13> kLatencyBucketsFastSeconds = {
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2};
inline constexpr std::array<double, 16> kLatencyBucketsRequestSeconds = {
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
inline constexpr std::array<double, 13> kLatencyBucketsLongSeconds = {
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000};

// The bucket boundaries for Family<Histogram>::Add. FP_CHECKs that they strictly increase.
prometheus::Histogram::BucketBoundaries Buckets(std::span<const double> upper_bounds);

enum class MetricType {
  kCounter,
  kGauge,
  kHistogram,
};

// FP_CHECKs `name` and `constant_labels` against the naming rules above.
void CheckMetricName(std::string_view name, MetricType type);
void CheckLabelNames(const prometheus::Labels& labels);

// Registers (or, for the same name, type and constant labels, returns the existing) family in
// `registry` after checking the naming rules. The registry owns the family; the reference stays
// valid for the registry's lifetime. Registering a name with a different type or different
// constant labels is a programmer error (FP_CHECK).
prometheus::Family<prometheus::Counter>& RegisterCounter(
    prometheus::Registry& registry, const std::string& name, const std::string& help,
    const prometheus::Labels& constant_labels = {});
prometheus::Family<prometheus::Gauge>& RegisterGauge(
    prometheus::Registry& registry, const std::string& name, const std::string& help,
    const prometheus::Labels& constant_labels = {});
prometheus::Family<prometheus::Histogram>& RegisterHistogram(
    prometheus::Registry& registry, const std::string& name, const std::string& help,
    const prometheus::Labels& constant_labels = {});

// The registry's current samples in the Prometheus text exposition format 0.0.4.
std::string RenderText(const prometheus::Registry& registry);

}  // namespace fp::metrics
