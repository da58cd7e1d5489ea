// Supervisor: one supervisor process: the log, the applier and its thread, the leader's duties,
// the worker listener, the HTTP API and metrics, wired together; standalone, or as a member of a
// cluster of supervisors on one etcd log (docs/supervisor.md, "Cluster").
//
// Threads: the log's writer thread (group commit); the applier thread, which applies durable
// records in groups, delivers their effects to workers and signs new checkpoints; the leader
// thread, which on the leader writes every time-dependent record (Tick, CheckpointRequest, Assign
// from placement, Deadline for stalled replicas, WorkerLost after the grace period,
// PlacementExpired for sessions waiting too long for placement) and trims the log, and on every
// member of a cluster publishes this member's applied position; and `io_threads` Asio threads for
// the worker listener and the HTTP server.
//
// Leadership. A standalone supervisor always leads. A member of a cluster (log_backend kEtcd) runs
// a cluster::LeaderElection (identity: tls_name, which must be unique in the cluster; key prefix:
// the log's) and the leader thread acts only while it leads. On winning a term it first applies
// the log up to its end as of the win, then rebuilds its leader memory (when each running session
// last progressed, the checkpoint and tick schedule) from the applied state; on losing the term it
// drops that memory. Its leader records are fenced by the term at etcd (etcd_log.h, "Fencing"),
// so a deposed leader that has not noticed yet cannot write them. Every member accepts client
// submissions and worker streams: positions in the log are claimed by compare, so appends from
// any member are safe.
//
// Trimming. The leader deletes records every member applied durably (the member table,
// cluster/members.h), that the latest signed checkpoint covers, beyond log_retention_records. A
// supervisor whose applied position is below the log's first retained position refuses to start:
// it must be bootstrapped from a peer's snapshot (cluster/bootstrap.h).
//
// Drain (SIGTERM/SIGINT, or Drain()): /readyz turns 503, listeners stop accepting, worker
// connections close (workers reconnect to another supervisor), leadership is resigned, appends
// already queued become durable and are acknowledged, the applier catches up with the log,
// pending checkpoints are signed, this member's applied position is published, and every thread
// stops.
//
// The log is RocksLog in data_dir/log (the default) or EtcdLog in an etcd cluster
// (SupervisorOptions::log_backend); the state store stays in data_dir/state either way, and
// nothing above the Log interface knows which backend runs. The cluster's own coordination
// (election, member table) lives in supervisor/cluster/.
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
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <prometheus/registry.h>

#include "common/metrics/metrics_server.h"
#include "supervisor/api/api.h"
#include "supervisor/api/http_server.h"
#include "supervisor/cluster/leader.h"
#include "supervisor/cluster/members.h"
#include "supervisor/cluster/snapshot.h"
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
// A leader thread round that takes this long is logged (with whether it was leading).
inline constexpr std::chrono::milliseconds kSlowLeaderRound{1000};
// How often a cluster member checks, between its publications, that etcd answers (a quorum read).
inline constexpr std::chrono::milliseconds kLogProbeInterval{1000};
// Snapshots (GET /v1/admin/snapshot) being sent at once; more are refused with Unavailable.
inline constexpr int kMaxOpenSnapshots = 2;
// Folder of the data directory where snapshots are built (emptied at start).
inline constexpr std::string_view kSnapshotsDir = "snapshots";

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
  // Log trimming (by the leader): records applied durably (by every member of a cluster) and
  // covered by a signed checkpoint are deleted from the log, keeping the newest
  // `log_retention_records` of them; 0 keeps the whole log.
  uint64_t log_retention_records = 0;
  std::chrono::milliseconds log_trim_interval{10'000};
  // Cluster members (log_backend kEtcd): the election's lease TTL (whole seconds, see
  // cluster::LeaderOptions), how long before the lease can expire a leader stops acting, how often
  // a follower tries to win, and how often a member publishes its applied position.
  std::chrono::milliseconds leader_ttl{5000};
  std::chrono::milliseconds leader_margin{1000};
  std::chrono::milliseconds leader_poll_interval{200};
  std::chrono::milliseconds member_publish_interval{5000};
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
  // True while the leader thread acts as leader (after the catch-up of its term).
  bool leading() const { return leading_.load(); }
  // What GET /v1/cluster reports.
  ClusterStatus cluster_status() const;

  // Takes a snapshot of the state (between two applied groups) for GET /v1/admin/snapshot; with
  // `member` set (a cluster member's name), first reserves the snapshot's position for it in the
  // member table. Unavailable when kMaxOpenSnapshots are being sent; InvalidArgument for a bad
  // member name; storage and etcd errors otherwise. The stream deletes its files when destroyed.
  StatusOr<std::shared_ptr<cluster::SnapshotStream>> OpenSnapshot(const std::string& member);

  // Freezes (true) or thaws this member's election like a paused process (see
  // cluster::LeaderElection::TEST_PauseCampaign); nothing without a cluster.
  void TEST_PauseLeadership(bool paused);
  // The log, for tests that append as this supervisor would (borrowed).
  Log& TEST_log() { return *log_; }
  // The state store, for comparing members' states in tests (borrowed).
  const RocksStore& TEST_state() const { return *state_; }

 private:
  struct Metrics;
  explicit Supervisor(const SupervisorOptions& options);
  Status Open(prometheus::Registry& registry);
  // Opens the backend selected by options_.log_backend into log_.
  Status OpenLog();
  // The election and the member table of a cluster member (log_backend kEtcd); publishes this
  // member's position and refuses to start a member the log was trimmed past.
  Status OpenCluster();
  Status CheckNotTrimmedPast() const;
  Status StartNetwork(prometheus::Registry& registry);
  void ApplierLoop();
  void LeaderLoop();
  // Follows the election: counts term changes, catches up and rebuilds the leader memory on a
  // win, drops it on a loss. True when this round may act as leader.
  bool FollowLeadership(std::chrono::steady_clock::time_point now);
  void BecomeLeader(std::chrono::steady_clock::time_point now);
  void StepDown(const char* why);
  // Flushes the state and publishes this member's applied position; refreshes the member table.
  void PublishMember();
  // Follows a publication's or probe's outcome: while etcd does not answer, workers are refused
  // and /readyz fails.
  void SetLogReachable(const Status& probe);
  // Whether the worker's latest registration was applied within the grace period.
  bool RegisteredWithinGrace(const std::string& worker_id);
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
  // Cluster members only (null when standalone).
  std::unique_ptr<cluster::LeaderElection> election_;
  std::unique_ptr<cluster::ClusterMembers> members_;
  // Held by the applier thread while it applies a group and signs, so that a snapshot is taken
  // between two groups (at an exact applied position).
  std::mutex apply_mutex_;
  std::atomic<bool> leading_{false};
  // False while this member's publications to etcd fail (see PublishMember).
  std::atomic<bool> log_reachable_{true};
  // When the leader thread last came round (steady clock ticks): LeaderOptions::healthy.
  std::atomic<std::chrono::steady_clock::rep> leader_thread_alive_{
      std::chrono::steady_clock::now().time_since_epoch().count()};
  std::atomic<int> open_snapshots_{0};
  std::atomic<uint64_t> snapshot_sequence_{0};

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
  // The member table as last read, by the leader thread.
  std::map<std::string, uint64_t> known_members_;  // guarded by mutex_
  // Leader thread only.
  enum class LeaderPhase { kFollower, kCatchingUp, kLeading };
  LeaderPhase phase_ = LeaderPhase::kFollower;
  int64_t term_ = 0;          // the term being caught up with or led
  int64_t seen_term_ = 0;     // the last term this member knew of (leader changes)
  uint64_t catch_up_to_ = 0;  // the log's end when the term was won
  std::chrono::steady_clock::time_point last_publish_{};
  std::chrono::steady_clock::time_point last_probe_{};
  std::chrono::steady_clock::time_point last_gauges_{};
  std::chrono::steady_clock::time_point last_tick_{};
  std::chrono::steady_clock::time_point last_slow_round_{};
  std::chrono::steady_clock::time_point last_trim_{};
  std::chrono::steady_clock::time_point requested_at_{};
  bool requested_checkpoint_ = false;
  uint64_t requested_size_ = 0;
  // Leader memory: when each running session last progressed (steady clock); kept only while
  // leading_.
  std::map<std::string, std::chrono::steady_clock::time_point> progress_;  // guarded by mutex_
};

}  // namespace fp::supervisor
