// The worker's Prometheus metrics (DESIGN.md section 6: fieldprint_ prefix, base units, _total
// counters, histograms for latencies, bounded labels only).
//
// Thread-safety: prometheus-cpp metrics are thread-safe; the struct is filled once at startup and
// then only read (the pointers are borrowed from the registry, which outlives the worker).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace fp::node::worker {

struct WorkerMetrics {
  prometheus::Counter* tokens_generated = nullptr;  // steps handed to the streaming thread
  prometheus::Histogram* step_latency = nullptr;    // one Engine::Step, seconds
  prometheus::Counter* paused_steps = nullptr;      // steps taken back for backpressure
  prometheus::Gauge* digest_queue_depth = nullptr;  // items waiting for the streaming thread
  prometheus::Gauge* unverified_lead = nullptr;     // max over replicas of steps past verified
  prometheus::Gauge* active_replicas = nullptr;
  prometheus::Counter* batches_sent = nullptr;  // LeafBatch frames queued, resends included
  prometheus::Counter* batches_acknowledged = nullptr;
  prometheus::Gauge* outbox_batches = nullptr;  // unacknowledged batches held on disk
  prometheus::Counter* rollbacks_truncate = nullptr;
  prometheus::Counter* rollbacks_rebuild = nullptr;
  prometheus::Counter* commit_mismatches = nullptr;  // Commit roots that differ from ours
  prometheus::Counter* reconnects = nullptr;         // accepted connections after the first

  // Registers every metric in `registry` (borrowed; it must outlive every use of the result).
  static WorkerMetrics Register(prometheus::Registry& registry);
};

}  // namespace fp::node::worker
