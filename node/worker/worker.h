// Worker: `fieldprint worker`, the process that runs replicas of generation sessions for a
// supervisor and streams their step leaves (DESIGN.md section 5). It wires together:
//   SupervisorClient  (I/O thread)        the mTLS stream: Register, heartbeats, reconnects;
//   GenerationLoop    (generation thread) the engines, Assign/Rollback/Quarantine, backpressure;
//   Streamer          (streaming thread)  leaves, session trees, batches, the durable Outbox;
//   MetricsServer     (its own thread)    /metrics.
// Frames from the supervisor are dispatched on the I/O thread: Assign is checked against the
// model catalog (an Error goes back at once when the worker cannot reproduce the session) and
// queued for the loop with Rollback and Quarantine; Commit goes to the loop (backpressure), which
// passes it on to the streamer (window, root check) in order with the replica's steps; Ack goes
// straight to the streamer.
//
// Thread-safety: Create, Start and Stop are called from the owning thread; the accessors from
// any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/ssl/context.hpp>
#include <prometheus/registry.h>

#include "common/base/status.h"
#include "common/metrics/metrics_server.h"
#include "common/wire/connection.h"
#include "node/worker/fault_plan.h"
#include "node/worker/generation_loop.h"
#include "node/worker/outbox.h"
#include "node/worker/replica_stream.h"
#include "node/worker/streamer.h"
#include "node/worker/supervisor_client.h"
#include "node/worker/worker_metrics.h"
#include "node/worker/worker_models.h"

namespace fp::node::worker {

inline constexpr size_t kMaxWorkerModels = wire::kMaxModels;
inline constexpr std::chrono::milliseconds kMaxDrainTimeout{60'000};

struct WorkerConfig {
  std::string name;       // the worker's certificate name (its identity)
  std::string certs_dir;  // ca.pem, <name>.pem, <name>.key (`fieldprint certs init`)
  std::vector<SupervisorAddress> supervisors;
  std::vector<ModelSpec> models;  // 1..kMaxWorkerModels
  EngineSettings engine;
  uint32_t max_replicas = 32;   // 1..65536
  std::string data_dir;         // the outbox (and a weight fault's model copy) live here
  std::string metrics_address;  // "HOST:PORT" for /metrics; empty: no metrics server
  StreamPolicy stream;
  OutboxOptions outbox;
  std::chrono::milliseconds heartbeat_interval{5'000};
  wire::ConnectionOptions connection;
  ReconnectPolicy reconnect;
  std::chrono::milliseconds drain_timeout{2'000};  // Stop waits this long for the last acks
  std::optional<FaultPlan> faults;                 // set only through the fault guard
  std::string software_version = "fieldprint 0.1.0";
};

// InvalidArgument naming the first field out of range (every bound named in this header and in
// the components' headers).
Status ValidateWorkerConfig(const WorkerConfig& config);

class Worker {
 public:
  // Validates the config, creates data_dir, loads the TLS files, the models and the outbox, and
  // registers the metrics in `registry` (borrowed; it must outlive the worker). Errors of every
  // step, unchanged. Starts nothing. The caller owns the result.
  static StatusOr<std::unique_ptr<Worker>> Create(const WorkerConfig& config,
                                                  prometheus::Registry& registry);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Starts the threads, the supervisor connection and the metrics server (Unavailable if its
  // address cannot be bound). Call once.
  Status Start();
  // Graceful drain: sends what is ready, waits up to drain_timeout for its acks, stops the
  // generation loop, closes the connection. Unacknowledged batches stay in the outbox for the
  // next start. Idempotent.
  void Stop();

  const ModelCatalog& catalog() const { return catalog_; }
  // The bound metrics port (0 without a metrics server).
  uint16_t metrics_port() const { return metrics_server_ ? metrics_server_->port() : 0; }
  size_t outbox_batches() const { return streamer_->outbox_batches(); }
  uint64_t accepted_generation() const { return client_->accepted_generation(); }
  // Why the supervisor last refused this worker's registration (OK once one accepts it).
  Status registration_refusal() const { return client_->last_refusal(); }

 private:
  explicit Worker(const WorkerConfig& config) : config_(config) {}
  void Dispatch(uint64_t generation, wire::pb::Envelope envelope);
  void Refuse(uint64_t generation, const Status& status, const std::string& session_id);
  wire::pb::Register Registration() const;
  wire::pb::Heartbeat Heartbeat() const;

  const WorkerConfig config_;
  WorkerMetrics metrics_;
  ModelCatalog catalog_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
  // Destroyed in reverse order: the client (which calls into the loop and the streamer) first.
  std::unique_ptr<Streamer> streamer_;
  std::unique_ptr<GenerationLoop> loop_;
  std::unique_ptr<SupervisorClient> client_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  prometheus::Registry* registry_ = nullptr;  // borrowed
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace fp::node::worker
