// Supervisor: one standalone supervisor process: the log, the applier and its thread, the
// leader's duties, the worker listener, the HTTP API and metrics, wired together.
//
// Threads: the log's writer thread (group commit); the applier thread, which applies durable
// records in groups, delivers their effects to workers and signs new checkpoints; the leader
// thread, which writes every time-dependent record (Tick, CheckpointRequest, Assign from
// placement, Deadline for stalled replicas, WorkerLost after the grace period, PlacementExpired
// for sessions waiting too long for placement); and
// `io_threads` Asio threads for the worker listener and the HTTP server. The standalone
// supervisor is always the leader; a cluster backend will run the leader thread only on the
// elected leader.
//
// Drain (SIGTERM/SIGINT, or Drain()): /readyz turns 503, listeners stop accepting, worker
// connections close (workers reconnect to another supervisor), appends already queued become
// durable and are acknowledged, the applier catches up with the log, pending checkpoints are
// signed, and every thread stops.
//
// The log is RocksLog in data_dir/log (the default) or EtcdLog in an etcd cluster
// (SupervisorOptions::log_backend); the state store stays in data_dir/state either way, and
// nothing above the Log interface knows which backend runs.
//
// Thread-safety: Start, Drain and the accessors may be called from any thread; Drain is
// idempotent. ParseLogBackend and ParseEtcdEndpoints are pure.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <prometheus/registry.h>

#include "common/metrics/metrics_server.h"
#include "supervisor/api/api.h"
#include "supervisor/api/http_server.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/log/etcd_log.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/net/worker_service.h"
#include "supervisor/state/applier.h"

namespace fp::supervisor {

// Records applied per group (one RocksDB WriteBatch).
inline constexpr size_t kMaxApplyGroup = 512;
inline constexpr uint32_t kMaxIoThreads = 64;
// PlacementExpired records the leader proposes per round.
inline constexpr size_t kMaxPlacementExpiriesPerRound = 256;

enum class LogBackend { kRocksDb, kEtcd };

// "rocksdb" or "etcd"; InvalidArgument naming the accepted values otherwise.
StatusOr<LogBackend> ParseLogBackend(const std::string& name);

// Comma-separated "https://HOST:PORT" URLs (a trailing '/' allowed, IPv6 hosts in brackets), at
// most etcd::kMaxEtcdEndpoints of them. InvalidArgument naming the offending URL for anything
// else, and for an empty list.
StatusOr<std::vector<etcd::Endpoint>> ParseEtcdEndpoints(const std::string& urls);

struct SupervisorOptions {
  std::string data_dir;
  // kEtcd: the log is `etcd` (endpoints, mTLS files, key prefix) instead of data_dir/log.
  LogBackend log_backend = LogBackend::kRocksDb;
  EtcdLogOptions etcd;
  std::string origin = "fieldprint.local/ledger";
  std::string certs_dir;  // `fieldprint certs init` output; TLS files of `tls_name`
  std::string tls_name = "supervisor-0";
  std::string worker_address = "127.0.0.1";
  uint16_t worker_port = 7400;
  std::string http_address = "127.0.0.1";
  uint16_t http_port = 8080;
  std::string metrics_address = "127.0.0.1";
  uint16_t metrics_port = 0;  // 0: metrics only at the HTTP API's /metrics
  bool metrics_listener = false;
  uint32_t io_threads = 2;
  ApplierOptions applier;
  SessionDefaults defaults;
  std::chrono::milliseconds tick_interval{1000};
  uint64_t checkpoint_every_entries = 1000;
  std::chrono::milliseconds checkpoint_interval{10'000};
  std::chrono::milliseconds placement_interval{100};
  std::chrono::milliseconds replica_deadline{120'000};
  std::chrono::milliseconds worker_grace{30'000};
  std::chrono::milliseconds drain_timeout{10'000};
  // Log trimming: records applied (durably) and covered by a signed checkpoint are deleted from
  // the log, keeping the newest `log_retention_records` of them; 0 keeps the whole log. RocksDB
  // backend only (see Supervisor::Start).
  uint64_t log_retention_records = 0;
  std::chrono::milliseconds log_trim_interval{10'000};
  wire::ConnectionOptions connection;
  std::string admin_token;  // bearer token of the /v1/admin/ routes; empty disables them
  // Per model: the folder of its tokenizer (tokenizer.model or fieldprint_tokenizer.json), for
  // text prompts and completion text at /v1/completions.
  std::map<std::string, std::string> tokenizer_dirs;
};

class Supervisor {
 public:
  // Opens the data directory (data_dir/log, data_dir/state, data_dir/checkpoint.key) or, with the
  // etcd backend, the etcd log and data_dir's state and key; starts every thread and listener.
  // `registry` is borrowed and must outlive the supervisor. InvalidArgument for bad options (the
  // etcd backend without endpoints or with log trimming); errors from storage, etcd (OpenEtcdLog),
  // TLS files (NotFound, InvalidArgument) or binding (Unavailable). The caller owns it.
  static StatusOr<std::unique_ptr<Supervisor>> Start(const SupervisorOptions& options,
                                                     prometheus::Registry& registry);
  ~Supervisor();  // Drain()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // The graceful drain described above. Returns the first error a background thread hit, if any.
  Status Drain();
  // Blocks until Drain() is called elsewhere or a background thread fails; returns that error.
  Status Wait();
  // The first error a background thread hit, or OK.
  Status health() const;

  uint16_t worker_port() const { return worker_port_; }
  uint16_t http_port() const { return http_port_; }
  uint16_t metrics_port() const { return metrics_port_; }
  uint64_t applied() const { return applier_->applied(); }
  const Log& log() const { return *log_; }

 private:
  struct Metrics;
  explicit Supervisor(const SupervisorOptions& options);
  Status Open(prometheus::Registry& registry);
  // Opens the backend selected by options_.log_backend into log_.
  Status OpenLog();
  Status StartNetwork(prometheus::Registry& registry);
  void ApplierLoop();
  void LeaderLoop();
  void LeaderRound(std::chrono::steady_clock::time_point now);
  void CheckDeadlines(std::chrono::steady_clock::time_point now);
  // Appends PlacementExpired for sessions waiting longer than the placement timeout.
  void ProposePlacementExpiries();
  // Trims the log down to the retention (see SupervisorOptions::log_retention_records).
  Status TrimLog();
  void AppendInBackground(pb::LogRecord record);
  void Fail(const Status& status);
  void UpdateGauges();

  const SupervisorOptions options_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Log> log_;
  std::unique_ptr<RocksStore> state_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<CheckpointSigner> signer_;
  std::unique_ptr<Api> api_;
  std::atomic<bool> draining_{false};

  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
  std::unique_ptr<WorkerService> workers_;
  std::shared_ptr<HttpServer> http_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  std::vector<std::thread> io_threads_;
  std::thread applier_thread_;
  std::thread leader_thread_;
  uint16_t worker_port_ = 0;
  uint16_t http_port_ = 0;
  uint16_t metrics_port_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stop_leader_ = false;   // guarded by mutex_
  bool stop_applier_ = false;  // guarded by mutex_
  bool drained_ = false;       // guarded by mutex_
  Status failure_;             // guarded by mutex_
  // Leader thread only.
  std::chrono::steady_clock::time_point last_tick_{};
  std::chrono::steady_clock::time_point last_slow_round_{};
  std::chrono::steady_clock::time_point last_trim_{};
  std::chrono::steady_clock::time_point requested_at_{};
  bool requested_checkpoint_ = false;
  uint64_t requested_size_ = 0;
  // Leader memory: when each running session last progressed (steady clock).
  std::map<std::string, std::chrono::steady_clock::time_point> progress_;  // guarded by mutex_
};

}  // namespace fp::supervisor
