// WorkerService: the supervisor's side of the worker protocol (common/wire), over mutually
// authenticated TLS 1.3. Spec: docs/supervisor.md, "Worker protocol".
//
// Inbound: a worker's first frame is Register (its identity is its certificate's name, never a
// message field), which becomes a WorkerRegistered record and, once durable, is answered with an
// accepted RegisterAck (or a refusing one, then the connection closes: a quarantined worker, a
// draining supervisor, a failed append); LeafBatch frames become LeafBatch
// records and are acknowledged (Ack with the log position) only once the record is durable;
// the batches of one replica are appended one after another (the next once the one before is
// durable), and a failed append closes the connection, so that no later batch of the replica is
// in the log ahead of it: the worker reconnects (to this or another supervisor) and resends what
// was not acknowledged, in order;
// Heartbeats are echoed; an Error from a worker is logged; anything else closes the connection.
// Outbound: Deliver() pushes what the applier decided (Assign, Rollback, Commit, Quarantine) to
// the workers concerned; a worker that registers again gets its pending work resent from the
// state, so nothing depends on a delivery surviving a crash.
//
// Thread-safety: Deliver, TakeLostWorkers, Stop and the accessors are safe from any thread.
// Connection handlers run on each connection's strand; log callbacks on the log's thread only
// send frames (Connection::Send is thread-safe) and post heavier work to the io_context.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "common/wire/connection.h"
#include "supervisor/log/log.h"
#include "supervisor/state/applier.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor {

// Replay tokens sent in one Assign (the wire bound on a session's tokens).
inline constexpr size_t kMaxReplayTokens = wire::kMaxSessionTokens;
// LeafBatches of one replica on one connection waiting for the one before them to be durable;
// one more closes the connection (ResourceExhausted).
inline constexpr size_t kMaxWaitingLeafBatches = 256;

struct WorkerServiceMetrics {
  prometheus::Counter* leaves_ingested = nullptr;   // leaves in acknowledged batches
  prometheus::Histogram* append_latency = nullptr;  // LeafBatch append until durable
  prometheus::Counter* batches_refused = nullptr;   // appends that failed
  prometheus::Gauge* connected_workers = nullptr;
};

struct WorkerServiceOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 0;
  wire::ConnectionOptions connection;
  std::string supervisor_id = "supervisor-0";  // sent in RegisterAck: this supervisor's name
};

class WorkerService {
 public:
  // Listens on address:port. `io`, `tls`, `log` and `state` are borrowed and must outlive the
  // service. InvalidArgument for a bad address; Unavailable when the port cannot be bound. The
  // caller owns the result.
  static StatusOr<std::unique_ptr<WorkerService>> Start(boost::asio::io_context& io,
                                                        boost::asio::ssl::context& tls, Log& log,
                                                        const RocksStore& state,
                                                        const WorkerServiceOptions& options,
                                                        WorkerServiceMetrics metrics);
  ~WorkerService();
  WorkerService(const WorkerService&) = delete;
  WorkerService& operator=(const WorkerService&) = delete;

  uint16_t port() const { return port_; }

  // Sends the workers concerned what an Apply decided. Reads the state for the session requests,
  // replay tokens and verified roots; a worker that is not connected gets its work when it
  // registers again.
  void Deliver(const Effects& effects);

  // Workers whose last connection closed at least `grace` before `now` and that have not come
  // back; each is returned once.
  std::vector<std::string> TakeLostWorkers(std::chrono::steady_clock::time_point now,
                                           std::chrono::milliseconds grace);

  // Stops accepting and closes every connection (the drain). Idempotent.
  void Stop();

  // While false (this supervisor cannot reach its log), registrations are refused with
  // Unavailable and, on the change, every worker connection closes: the workers fail over to
  // another supervisor. Idempotent.
  void SetLogReachable(bool reachable);

  size_t connected_workers() const;

 private:
  WorkerService(boost::asio::io_context& io, Log& log, const RocksStore& state,
                const WorkerServiceOptions& options, WorkerServiceMetrics metrics);
  wire::ConnectionHandlers Handlers();
  void OnEnvelope(const std::shared_ptr<wire::Connection>& connection, wire::pb::Envelope envelope);
  void OnRegister(const std::shared_ptr<wire::Connection>& connection,
                  const wire::pb::Register& registration);
  // Sends a refusing RegisterAck with `status` and closes the connection.
  void Refuse(const std::shared_ptr<wire::Connection>& connection, const Status& status);
  void OnLeafBatch(const std::shared_ptr<wire::Connection>& connection,
                   const wire::pb::LeafBatch& batch);
  // A LeafBatch record and the Ack that answers it once durable.
  struct PendingLeaves {
    pb::LogRecord record;
    wire::pb::Envelope ack;
    size_t leaf_count = 0;
  };
  // A replica's batches on one connection: one being appended, the rest waiting in order.
  using PipeKey = std::pair<std::string, uint32_t>;  // session, replica
  struct ReplicaPipe {
    std::deque<PendingLeaves> waiting;
  };
  // Appends `leaves`; when durable, acknowledges them and appends the replica's next waiting
  // batch; when not, closes the connection.
  void AppendLeaves(const std::shared_ptr<wire::Connection>& connection, PipeKey replica,
                    PendingLeaves leaves);
  void OnClose(const std::shared_ptr<wire::Connection>& connection, const Status& status);
  // Resends the Assign, pending Rollback and Commit of every replica the worker runs.
  void SendPendingWork(const std::string& worker_id);
  void SendAssign(const std::string& worker_id, const std::string& session, uint32_t replica);
  void SendCommit(const std::string& session);
  std::shared_ptr<wire::Connection> Find(const std::string& worker_id) const;
  void Send(const std::string& worker_id, const wire::pb::Envelope& envelope);

  boost::asio::io_context& io_;  // borrowed
  Log& log_;                     // borrowed
  const RocksStore& state_;      // borrowed
  const WorkerServiceOptions options_;
  const WorkerServiceMetrics metrics_;
  std::shared_ptr<wire::Listener> listener_;
  uint16_t port_ = 0;

  mutable std::mutex mutex_;
  // Registered connections by worker id, and the ids of connections that registered.
  std::map<std::string, std::shared_ptr<wire::Connection>> workers_;   // guarded by mutex_
  std::map<const wire::Connection*, std::string> registered_;          // guarded by mutex_
  std::map<std::string, std::chrono::steady_clock::time_point> gone_;  // guarded by mutex_
  bool stopped_ = false;                                               // guarded by mutex_
  bool log_reachable_ = true;                                          // guarded by mutex_
  // Replicas with a batch being appended, per open connection (erased when it closes).
  std::map<const wire::Connection*, std::map<PipeKey, ReplicaPipe>> pipes_;  // guarded
};

}  // namespace fp::supervisor
