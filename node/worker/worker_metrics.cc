// WorkerMetrics; see worker_metrics.h.
#include "node/worker/worker_metrics.h"

#include "common/metrics/metrics.h"

namespace fp::node::worker {

WorkerMetrics WorkerMetrics::Register(prometheus::Registry& registry) {
  using metrics::RegisterCounter;
  using metrics::RegisterGauge;
  using metrics::RegisterHistogram;
  WorkerMetrics m;
  m.tokens_generated = &RegisterCounter(registry, "fieldprint_worker_tokens_generated_total",
                                        "Generated steps handed to the streaming thread")
                            .Add({});
  m.step_latency = &RegisterHistogram(registry, "fieldprint_worker_step_latency_seconds",
                                      "Duration of one continuous-batching engine step")
                        .Add({}, metrics::Buckets(metrics::kLatencyBucketsRequestSeconds));
  m.paused_steps = &RegisterCounter(registry, "fieldprint_worker_paused_steps_total",
                                    "Steps taken back because their replica reached "
                                    "max_unverified_steps past its verified prefix")
                        .Add({});
  m.digest_queue_depth = &RegisterGauge(registry, "fieldprint_worker_digest_queue_depth",
                                        "Step records waiting for the streaming thread")
                              .Add({});
  m.unverified_lead = &RegisterGauge(registry, "fieldprint_worker_unverified_lead_steps",
                                     "Largest number of steps any replica runs past its "
                                     "verified prefix")
                           .Add({});
  m.active_replicas = &RegisterGauge(registry, "fieldprint_worker_active_replicas",
                                     "Replicas the worker is generating or holding")
                           .Add({});
  m.batches_sent = &RegisterCounter(registry, "fieldprint_worker_leaf_batches_sent_total",
                                    "LeafBatch frames queued for the supervisor, resends included")
                        .Add({});
  m.batches_acknowledged =
      &RegisterCounter(registry, "fieldprint_worker_leaf_batches_acknowledged_total",
                       "LeafBatch frames the supervisor acknowledged as durable")
           .Add({});
  m.outbox_batches = &RegisterGauge(registry, "fieldprint_worker_outbox_batches",
                                    "Unacknowledged LeafBatches held in the durable outbox")
                          .Add({});
  auto& rollbacks = RegisterCounter(registry, "fieldprint_worker_rollbacks_total",
                                    "Rollback orders carried out, by kind");
  m.rollbacks_truncate = &rollbacks.Add({{"kind", "truncate"}});
  m.rollbacks_rebuild = &rollbacks.Add({{"kind", "rebuild"}});
  m.commit_mismatches =
      &RegisterCounter(registry, "fieldprint_worker_commit_root_mismatches_total",
                       "Commits whose verified root differs from the worker's own session tree")
           .Add({});
  m.reconnects = &RegisterCounter(registry, "fieldprint_worker_reconnects_total",
                                  "Supervisor connections accepted after the first one")
                      .Add({});
  return m;
}

}  // namespace fp::node::worker
