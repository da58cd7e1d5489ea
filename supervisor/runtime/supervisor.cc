// Supervisor; see supervisor.h.
#include "supervisor/runtime/supervisor.h"

#include <filesystem>
#include <limits>
#include <string_view>

#include <fmt/format.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/base/log.h"
#include "common/leaf/session_id.h"
#include "common/metrics/metrics.h"
#include "common/wire/tls.h"
#include "supervisor/state/placement.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {
namespace {

using Clock = std::chrono::steady_clock;
namespace asio = boost::asio;

// Nice value of the applier thread (relative to the process's).
constexpr int kApplierNice = 5;

// One "https://HOST:PORT[/]" URL of etcd-endpoints.
StatusOr<etcd::Endpoint> ParseEtcdUrl(std::string_view url) {
  const auto bad = [&](std::string_view why) {
    return InvalidArgumentError(
        fmt::format("etcd endpoint '{}': {} (expected https://HOST:PORT)", url, why));
  };
  constexpr std::string_view kScheme = "https://";
  if (url.substr(0, kScheme.size()) != kScheme) return bad("not an https URL");
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty() || host.find_first_of("/[]@") != std::string_view::npos) return bad("bad host");
  const std::string_view digits = rest.substr(colon + 1);
  uint32_t port = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9' || port > 65535) return bad("bad port");
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (digits.empty() || port == 0 || port > 65535) return bad("bad port");
  return etcd::Endpoint{std::string(host), static_cast<uint16_t>(port)};
}

// The cluster options a member needs before it touches etcd or the data directory.
Status ValidateClusterOptions(const SupervisorOptions& options) {
  if (Status name = cluster::ValidateMemberName(options.tls_name); !name.ok()) {
    return name.WithContext("tls-name (a cluster member's name)");
  }
  const auto ttl = options.leader_ttl;
  if (ttl.count() % 1000 != 0 || ttl < cluster::kMinLeaderTtl || ttl > cluster::kMaxLeaderTtl) {
    return InvalidArgumentError(
        fmt::format("leader-ttl-ms must be whole seconds in [{}, {}] ms (an etcd lease's TTL)",
                    std::chrono::milliseconds(cluster::kMinLeaderTtl).count(),
                    std::chrono::milliseconds(cluster::kMaxLeaderTtl).count()));
  }
  if (options.leader_margin <= std::chrono::milliseconds::zero() ||
      options.leader_margin * 3 >= ttl * 2) {
    return InvalidArgumentError("leader-margin-ms must be in (0, 2/3 of leader-ttl-ms)");
  }
  if (options.leader_poll_interval <= std::chrono::milliseconds::zero() ||
      options.member_publish_interval <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("leader-poll-ms and member-publish-interval-ms must be positive");
  }
  return OkStatus();
}

// The applied position a restart would find: the state writes without a WAL, so reading the
// persisted tier skips its memtables.
StatusOr<uint64_t> PersistedApplied(const RocksStore& state) {
  rocksdb::ReadOptions read;
  read.read_tier = rocksdb::kPersistedTier;
  std::string value;
  const rocksdb::Status found =
      state.db()->Get(read, state.handle(kMeta), ToSlice(kMetaApplied), &value);
  if (found.IsNotFound()) return uint64_t{0};
  FP_RETURN_IF_ERROR(FromRocks(found, "read the persisted applied position"));
  return ParseU64(value);
}

uint64_t UnixMillis() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

StatusOr<LogBackend> ParseLogBackend(const std::string& name) {
  if (name == "rocksdb") return LogBackend::kRocksDb;
  if (name == "etcd") return LogBackend::kEtcd;
  return InvalidArgumentError(
      fmt::format("unknown log-backend '{}' (expected \"rocksdb\" or \"etcd\")", name));
}

StatusOr<std::vector<etcd::Endpoint>> ParseEtcdEndpoints(const std::string& urls) {
  std::vector<etcd::Endpoint> endpoints;
  std::string_view rest = urls;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    std::string_view url = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    while (!url.empty() && url.front() == ' ') url.remove_prefix(1);
    while (!url.empty() && url.back() == ' ') url.remove_suffix(1);
    if (url.empty()) continue;
    if (endpoints.size() == etcd::kMaxEtcdEndpoints) {
      return InvalidArgumentError(
          fmt::format("more than {} etcd endpoints", etcd::kMaxEtcdEndpoints));
    }
    FP_ASSIGN_OR_RETURN(etcd::Endpoint endpoint, ParseEtcdUrl(url));
    endpoints.push_back(std::move(endpoint));
  }
  if (endpoints.empty()) return InvalidArgumentError("no etcd endpoints given");
  return endpoints;
}

struct Supervisor::Metrics {
  explicit Metrics(prometheus::Registry& registry)
      : leaves_ingested(metrics::RegisterCounter(registry,
                                                 "fieldprint_supervisor_leaves_ingested_total",
                                                 "Step leaves in durable, acknowledged batches")
                            .Add({})),
        batches_refused(metrics::RegisterCounter(registry,
                                                 "fieldprint_supervisor_batches_refused_total",
                                                 "Leaf batches whose append failed")
                            .Add({})),
        append_latency(
            metrics::RegisterHistogram(registry, "fieldprint_supervisor_append_latency_seconds",
                                       "Leaf batch append until durable (the worker's ack latency)")
                .Add({}, metrics::Buckets(metrics::kLatencyBucketsRequestSeconds))),
        connected_workers(metrics::RegisterGauge(registry,
                                                 "fieldprint_supervisor_connected_workers",
                                                 "Workers with a registered connection")
                              .Add({})),
        apply_lag(metrics::RegisterGauge(registry, "fieldprint_supervisor_apply_lag_records",
                                         "Durable log records not applied yet")
                      .Add({})),
        leaves_applied(metrics::RegisterCounter(registry,
                                                "fieldprint_supervisor_leaves_applied_total",
                                                "Step leaves appended to session trees")
                           .Add({})),
        applied(metrics::RegisterCounter(registry, "fieldprint_supervisor_records_applied_total",
                                         "Log records applied")
                    .Add({})),
        rejected(metrics::RegisterCounter(registry, "fieldprint_supervisor_records_rejected_total",
                                          "Log records the applier rejected as invalid")
                     .Add({})),
        sessions(metrics::RegisterGauge(registry, "fieldprint_supervisor_sessions",
                                        "Sessions by phase")),
        divergences(metrics::RegisterCounter(registry, "fieldprint_supervisor_divergences_total",
                                             "Divergences found between replicas")
                        .Add({})),
        rollbacks(metrics::RegisterCounter(registry,
                                           "fieldprint_supervisor_rollbacks_ordered_total",
                                           "Orders to replicas, by kind")),
        quarantines(metrics::RegisterCounter(registry, "fieldprint_supervisor_quarantines_total",
                                             "Workers quarantined")
                        .Add({})),
        checkpoint_size(metrics::RegisterGauge(registry,
                                               "fieldprint_supervisor_checkpoint_tree_size",
                                               "Ledger entries covered by the latest signed "
                                               "checkpoint")
                            .Add({})),
        checkpoint_age(metrics::RegisterGauge(registry,
                                              "fieldprint_supervisor_checkpoint_age_seconds",
                                              "Age of the latest signed checkpoint")
                           .Add({})),
        rocksdb_bytes(metrics::RegisterGauge(registry, "fieldprint_supervisor_rocksdb_bytes",
                                             "Approximate RocksDB data size, by store")),
        proof_requests(metrics::RegisterCounter(registry,
                                                "fieldprint_supervisor_proof_requests_total",
                                                "Proof requests over HTTP, by kind and outcome")),
        proof_latency(metrics::RegisterHistogram(registry,
                                                 "fieldprint_supervisor_proof_latency_seconds",
                                                 "Proof request handling time, by kind")),
        sessions_failed(metrics::RegisterCounter(registry,
                                                 "fieldprint_supervisor_sessions_failed_total",
                                                 "Sessions that failed, by reason")),
        releases(metrics::RegisterCounter(registry, "fieldprint_supervisor_worker_releases_total",
                                          "Workers released from quarantine by an operator")
                     .Add({})),
        log_begin(metrics::RegisterGauge(registry, "fieldprint_supervisor_log_begin_position",
                                         "First position the log retains (records below it "
                                         "were trimmed)")
                      .Add({})),
        leader(metrics::RegisterGauge(registry, "fieldprint_supervisor_leader",
                                      "1 while this supervisor acts as the leader, else 0")
                   .Add({})),
        leader_changes(metrics::RegisterCounter(registry,
                                                "fieldprint_supervisor_leader_changes_total",
                                                "New leadership terms this supervisor learned of")
                           .Add({})),
        fenced_refused(
            metrics::RegisterCounter(registry, "fieldprint_supervisor_fenced_writes_refused_total",
                                     "Leader records refused because this supervisor did not "
                                     "lead, or its term had ended")
                .Add({})),
        cluster_members(metrics::RegisterGauge(registry, "fieldprint_supervisor_cluster_members",
                                               "Entries of the member table, as last read")
                            .Add({})),
        slowest_member_lag(
            metrics::RegisterGauge(registry, "fieldprint_supervisor_slowest_member_lag_records",
                                   "Log end minus the smallest applied position in the member "
                                   "table: how far trimming is held back")
                .Add({})) {}

  prometheus::Counter& leaves_ingested;
  prometheus::Counter& batches_refused;
  prometheus::Histogram& append_latency;
  prometheus::Gauge& connected_workers;
  prometheus::Gauge& apply_lag;
  prometheus::Counter& leaves_applied;
  prometheus::Counter& applied;
  prometheus::Counter& rejected;
  prometheus::Family<prometheus::Gauge>& sessions;
  prometheus::Counter& divergences;
  prometheus::Family<prometheus::Counter>& rollbacks;
  prometheus::Counter& quarantines;
  prometheus::Gauge& checkpoint_size;
  prometheus::Gauge& checkpoint_age;
  prometheus::Family<prometheus::Gauge>& rocksdb_bytes;
  prometheus::Family<prometheus::Counter>& proof_requests;
  prometheus::Family<prometheus::Histogram>& proof_latency;
  prometheus::Family<prometheus::Counter>& sessions_failed;
  prometheus::Counter& releases;
  prometheus::Gauge& log_begin;
  prometheus::Gauge& leader;
  prometheus::Counter& leader_changes;
  prometheus::Counter& fenced_refused;
  prometheus::Gauge& cluster_members;
  prometheus::Gauge& slowest_member_lag;
};

Supervisor::Supervisor(const SupervisorOptions& options) : options_(options) {}

StatusOr<std::unique_ptr<Supervisor>> Supervisor::Start(const SupervisorOptions& options,
                                                        prometheus::Registry& registry) {
  if (options.data_dir.empty()) return InvalidArgumentError("data-dir is required");
  if (options.io_threads == 0 || options.io_threads > kMaxIoThreads) {
    return InvalidArgumentError(fmt::format("io-threads must be in [1, {}]", kMaxIoThreads));
  }
  if (options.log_backend == LogBackend::kEtcd) {
    if (options.etcd.client.endpoints.empty()) {
      return InvalidArgumentError("log-backend etcd needs etcd-endpoints");
    }
    FP_RETURN_IF_ERROR(ValidateClusterOptions(options));
  }
  std::unique_ptr<Supervisor> supervisor(new Supervisor(options));
  FP_RETURN_IF_ERROR(supervisor->Open(registry));
  Status network = supervisor->StartNetwork(registry);
  if (!network.ok()) {
    supervisor->Drain().IgnoreError();
    return network;
  }
  supervisor->applier_thread_ = std::thread([s = supervisor.get()] {
    pthread_setname_np(pthread_self(), "fp-applier");
    // Acknowledging comes first: the applier catches up in the time the log writer and the
    // network threads leave, and the unverified window bounds how far it may fall behind.
    setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kApplierNice);
    s->ApplierLoop();
  });
  supervisor->leader_thread_ = std::thread([s = supervisor.get()] {
    pthread_setname_np(pthread_self(), "fp-leader");
    s->LeaderLoop();
  });
  LogInfo("supervisor", "started",
          {{"data_dir", options.data_dir},
           {"origin", options.origin},
           {"worker_port", supervisor->worker_port_},
           {"http_port", supervisor->http_port_},
           {"applied", supervisor->applier_->applied()},
           {"log_end", supervisor->log_->End()}});
  return supervisor;
}

Status Supervisor::Open(prometheus::Registry& registry) {
  metrics_ = std::make_unique<Metrics>(registry);
  const std::filesystem::path dir(options_.data_dir);
  FP_RETURN_IF_ERROR(OpenLog());
  FP_ASSIGN_OR_RETURN(state_, OpenStateStore((dir / "state").string()));
  FP_ASSIGN_OR_RETURN(applier_, Applier::Open(state_.get(), options_.applier));
  if (applier_->applied() > log_->End()) {
    return DataLossError(fmt::format("state applied {} records but the log holds {}",
                                     applier_->applied(), log_->End()));
  }
  FP_RETURN_IF_ERROR(CheckNotTrimmedPast());
  if (options_.log_backend == LogBackend::kEtcd) FP_RETURN_IF_ERROR(OpenCluster());
  metrics_->log_begin.Set(static_cast<double>(log_->Begin()));
  // Snapshots are sent from here and deleted when sent; a crash may have left some behind.
  std::error_code removed;
  std::filesystem::remove_all(dir / kSnapshotsDir, removed);
  FP_ASSIGN_OR_RETURN(tlog::NoteSigner signer,
                      LoadOrCreateSigner((dir / kCheckpointKeyFile).string(), options_.origin));
  FP_ASSIGN_OR_RETURN(tlog::Cosigner cosigner,
                      LoadOrCreateCosigner((dir / kCosignerKeyFile).string(), options_.tls_name));
  ApiContext context;
  context.state = state_.get();
  context.log = log_.get();
  context.registry = &registry;
  context.origin = options_.origin;
  context.verifier = signer.Verifier();
  context.defaults = options_.defaults;
  context.new_session_id = [] { return NewSessionId(); };
  context.applied = [this] { return applier_->applied(); };
  context.draining = &draining_;
  context.recovery_position = log_->End();
  context.admin_token = options_.admin_token;
  context.cluster_status = [this] { return cluster_status(); };
  context.open_snapshot = [this](const std::string& member) { return OpenSnapshot(member); };
  context.remove_member = [this](const std::string& member) -> StatusOr<bool> {
    if (members_ == nullptr) {
      return FailedPreconditionError("this supervisor is not a member of a cluster");
    }
    FP_ASSIGN_OR_RETURN(bool removed, members_->Remove(member));
    LogInfo("supervisor", "member removed from the member table",
            {{"member", member}, {"existed", removed}});
    return removed;
  };
  for (const auto& [model, dir] : options_.tokenizer_dirs) {
    // The supervisor does not load the model, so only the tokenizer's own vocabulary bounds ids.
    StatusOr<std::unique_ptr<tokenizer::Tokenizer>> loaded =
        tokenizer::LoadTokenizer(dir, std::numeric_limits<int32_t>::max());
    if (!loaded.ok()) return loaded.status().WithContext("tokenizer of model " + model);
    context.tokenizers[model] = std::move(*loaded);
  }
  api_ = std::make_unique<Api>(std::move(context));
  signer_ = std::make_unique<CheckpointSigner>(state_.get(), log_.get(), std::move(signer),
                                               std::move(cosigner), &registry);
  // Registers this supervisor's cosigner key; refuses a ledger key the cluster does not share.
  FP_RETURN_IF_ERROR(signer_->Join());
  // Whatever a crash left unsigned is signed before anything is served.
  FP_RETURN_IF_ERROR(signer_->SignPending().status());
  return OkStatus();
}

Status Supervisor::OpenLog() {
  switch (options_.log_backend) {
    case LogBackend::kRocksDb: {
      const std::filesystem::path dir = std::filesystem::path(options_.data_dir) / "log";
      FP_ASSIGN_OR_RETURN(log_, RocksLog::Open(dir.string()));
      return OkStatus();
    }
    case LogBackend::kEtcd: {
      cluster::LeaderOptions leader;
      leader.client = options_.etcd.client;
      leader.prefix = options_.etcd.prefix;
      leader.identity = options_.tls_name;
      leader.ttl = std::chrono::duration_cast<std::chrono::seconds>(options_.leader_ttl);
      leader.safety_margin = options_.leader_margin;
      leader.poll_interval = options_.leader_poll_interval;
      // A leader thread that has not come round for half a TTL (stuck on storage, etcd, ...)
      // gives the term up rather than hold a lease for a leader that does nothing.
      leader.healthy = [this] {
        const auto silent = Clock::now().time_since_epoch() -
                            Clock::duration(leader_thread_alive_.load(std::memory_order_relaxed));
        return silent < options_.leader_ttl / 2;
      };
      StatusOr<std::unique_ptr<cluster::LeaderElection>> election =
          cluster::LeaderElection::Start(leader);
      if (!election.ok()) return election.status().WithContext("start the leader election");
      election_ = std::move(election).value();
      EtcdLogOptions etcd = options_.etcd;
      etcd.leader_token = [election = election_.get()]() -> std::optional<int64_t> {
        const cluster::LeaderView view = election->View();
        return view.is_leader ? std::optional<int64_t>(view.token) : std::nullopt;
      };
      etcd.on_fence_refused = [metrics = metrics_.get()] { metrics->fenced_refused.Increment(); };
      StatusOr<std::unique_ptr<EtcdLog>> log = OpenEtcdLog(etcd);
      if (!log.ok()) return log.status().WithContext("open the etcd log");
      log_ = std::move(log).value();
      LogInfo("supervisor", "etcd log opened",
              {{"prefix", options_.etcd.prefix}, {"end", log_->End()}, {"begin", log_->Begin()}});
      return OkStatus();
    }
  }
  return InvalidArgumentError("unknown log backend");
}

Status Supervisor::CheckNotTrimmedPast() const {
  const uint64_t applied = applier_->applied();
  Status trimmed;
  if (applied < log_->Begin()) {
    trimmed = OutOfRangeError(fmt::format("the log starts at {}", log_->Begin()));
  } else if (applied < log_->End()) {
    // Begin() was read when the log opened; a trim since then shows in a read.
    trimmed = log_->Read(applied, 1).status();
    if (trimmed.code() != StatusCode::kOutOfRange) return OkStatus();
  } else {
    return OkStatus();
  }
  if (options_.log_backend == LogBackend::kEtcd) {
    return FailedPreconditionError(fmt::format(
        "this supervisor's state applied {} records, but the cluster's log was trimmed past that "
        "({}) while it was away: it cannot catch up from the log. Bootstrap it from a running "
        "member into an empty data directory: fieldprint supervisor bootstrap --config FILE "
        "--from http://PEER:HTTP_PORT --data-dir NEW_DIR (docs/supervisor.md, \"Cluster\")",
        applied, trimmed.message()));
  }
  return FailedPreconditionError(fmt::format(
      "the state applied {} records but the log was trimmed past that ({}): the state cannot be "
      "rebuilt from this log",
      applied, trimmed.message()));
}

Status Supervisor::OpenCluster() {
  StatusOr<std::unique_ptr<cluster::ClusterMembers>> members =
      cluster::ClusterMembers::Create(options_.etcd.client, options_.etcd.prefix);
  if (!members.ok()) return members.status().WithContext("open the member table");
  members_ = std::move(members).value();
  // Publishing before anything else holds trimming at this member's position from now on; a trim
  // that raced with the publish is caught by the second check.
  const uint64_t applied = applier_->applied();
  if (Status published = members_->Publish(options_.tls_name, applied); !published.ok()) {
    return published.WithContext("publish this member's applied position");
  }
  FP_RETURN_IF_ERROR(CheckNotTrimmedPast());
  last_publish_ = Clock::now();
  LogInfo("supervisor", "cluster member joined",
          {{"member", options_.tls_name}, {"applied", applied}, {"prefix", options_.etcd.prefix}});
  return OkStatus();
}

Status Supervisor::StartNetwork(prometheus::Registry& registry) {
  work_.emplace(asio::make_work_guard(io_));
  for (uint32_t i = 0; i < options_.io_threads; ++i) {
    io_threads_.emplace_back([this] {
      pthread_setname_np(pthread_self(), "fp-io");
      io_.run();
    });
  }
  FP_ASSIGN_OR_RETURN(tls_, wire::MakeServerTlsContext(
                                wire::TlsFilesForNode(options_.certs_dir, options_.tls_name)));
  WorkerServiceOptions worker_options;
  worker_options.address = options_.worker_address;
  worker_options.port = options_.worker_port;
  worker_options.connection = options_.connection;
  worker_options.supervisor_id = options_.tls_name;
  WorkerServiceMetrics worker_metrics{&metrics_->leaves_ingested, &metrics_->append_latency,
                                      &metrics_->batches_refused, &metrics_->connected_workers};
  FP_ASSIGN_OR_RETURN(
      workers_, WorkerService::Start(io_, *tls_, *log_, *state_, worker_options, worker_metrics));
  worker_port_ = workers_->port();
  HttpServerOptions http_options;
  http_options.address = options_.http_address;
  http_options.port = options_.http_port;
  FP_ASSIGN_OR_RETURN(
      http_, HttpServer::Start(io_, *api_, *log_, http_options,
                               HttpMetrics{&metrics_->proof_requests, &metrics_->proof_latency},
                               &draining_));
  http_port_ = http_->port();
  if (options_.metrics_listener) {
    metrics::MetricsServerOptions metrics_options;
    metrics_options.address = options_.metrics_address;
    metrics_options.port = options_.metrics_port;
    FP_ASSIGN_OR_RETURN(metrics_server_, metrics::MetricsServer::Start(registry, metrics_options));
    metrics_port_ = metrics_server_->port();
  }
  return OkStatus();
}

void Supervisor::Fail(const Status& status) {
  LogError("supervisor", "background failure", {{"status", status}});
  std::lock_guard lock(mutex_);
  if (failure_.ok()) failure_ = status;
  changed_.notify_all();
}

void Supervisor::ApplierLoop() {
  while (true) {
    const uint64_t applied = applier_->applied();
    const uint64_t end = log_->WaitBeyond(applied, std::chrono::milliseconds(100));
    if (end <= applied) {
      std::lock_guard lock(mutex_);
      if (stop_applier_ || !failure_.ok()) return;
      continue;
    }
    // Released at the end of the iteration: a snapshot waits for the group and its signatures.
    std::lock_guard apply_lock(apply_mutex_);
    StatusOr<std::vector<LogEntry>> entries = log_->Read(applied, kMaxApplyGroup);
    if (!entries.ok()) {
      const Status read = entries.status().code() == StatusCode::kOutOfRange
                              ? entries.status().WithContext(
                                    "read log (trimmed past this supervisor's applied position: "
                                    "bootstrap it from a peer)")
                              : entries.status().WithContext("read log");
      return Fail(read);
    }
    StatusOr<Effects> effects = applier_->Apply(*entries);
    if (!effects.ok()) return Fail(effects.status().WithContext("apply"));
    metrics_->applied.Increment(static_cast<double>(entries->size()));
    metrics_->leaves_applied.Increment(static_cast<double>(effects->leaves));
    metrics_->rejected.Increment(static_cast<double>(effects->rejected));
    metrics_->divergences.Increment(static_cast<double>(effects->divergences));
    metrics_->quarantines.Increment(static_cast<double>(effects->quarantined.size()));
    metrics_->releases.Increment(static_cast<double>(effects->released.size()));
    metrics_->sessions_failed.Add({{"reason", "placement_timeout"}})
        .Increment(static_cast<double>(effects->placement_timeouts));
    for (const pb::Order& order : effects->orders) {
      metrics_->rollbacks.Add({{"kind", pb::OrderKind_Name(order.kind())}}).Increment();
    }
    for (const std::string& rejection : effects->rejections) {
      LogDebug("supervisor", "record rejected", {{"reason", rejection}});
    }
    if (leading_.load()) {
      std::lock_guard lock(mutex_);
      const auto now = Clock::now();
      for (const std::string& session : effects->progressed) progress_[session] = now;
    }
    workers_->Deliver(*effects);
    if (Status sign = signer_->AfterApply(*effects); !sign.ok()) {
      return Fail(sign.WithContext("sign checkpoint"));
    }
  }
}

void Supervisor::AppendInBackground(pb::LogRecord record) {
  const char* type = RecordTypeName(record);
  log_->Append(std::move(record), [this, type](StatusOr<uint64_t> position) {
    if (!position.ok() && !draining_.load()) {
      LogWarn("supervisor", "leader append failed",
              {{"record", type}, {"status", position.status()}});
    }
  });
}

void Supervisor::LeaderLoop() {
  while (true) {
    leader_thread_alive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    {
      std::unique_lock lock(mutex_);
      changed_.wait_for(lock, options_.placement_interval, [&] { return stop_leader_; });
      if (stop_leader_) return;
    }
    const Clock::time_point now = Clock::now();
    if (members_ != nullptr && now - last_publish_ >= options_.member_publish_interval) {
      PublishMember();
      last_publish_ = now;
    } else if (members_ != nullptr && now - last_probe_ >= kLogProbeInterval) {
      // Between publications, a quorum read tells whether etcd is still reachable.
      StatusOr<uint64_t> end = log_->ReadEnd();
      SetLogReachable(end.ok() ? OkStatus() : end.status());
      last_probe_ = now;
    }
    if (now - last_gauges_ >= std::chrono::seconds(1)) {
      UpdateGauges();  // every member's own view, leading or not
      last_gauges_ = now;
    }
    if (FollowLeadership(now)) LeaderRound(now);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - now);
    if (took >= kSlowLeaderRound) {
      LogWarn("supervisor", "leader thread round was slow",
              {{"ms", took.count()}, {"leading", leading_.load()}});
    }
  }
}

bool Supervisor::FollowLeadership(Clock::time_point now) {
  cluster::LeaderView view;
  if (election_ == nullptr) {
    view = {true, options_.tls_name, 0};  // standalone: always the leader, one endless term
  } else {
    view = election_->View();
  }
  if (view.token != 0 && view.token != seen_term_) {
    seen_term_ = view.token;
    metrics_->leader_changes.Increment();
    LogInfo("supervisor", "leadership term observed",
            {{"leader", view.leader}, {"term", view.token}, {"member", options_.tls_name}});
  }
  if (!view.is_leader) {
    if (phase_ != LeaderPhase::kFollower) StepDown("the term ended");
    // A connection that closed here says nothing to a later term of this member: by then the
    // worker may well be connected to another member.
    workers_->TakeLostWorkers(now, options_.worker_grace);
    return false;
  }
  if (phase_ != LeaderPhase::kFollower && view.token != term_) StepDown("a new term began");
  if (phase_ == LeaderPhase::kFollower) {
    // Everything the previous leader wrote is below the log's end as of now (its records are
    // fenced by its term), so applying up to it gives this term the whole history to decide
    // from. The end this member knows of may be stale (it was cut off, its poller is behind):
    // ask the log itself.
    StatusOr<uint64_t> end = log_->ReadEnd();
    if (!end.ok()) {
      LogWarn("supervisor", "leadership won but the log's end is unreadable; trying again",
              {{"member", options_.tls_name}, {"error", end.status()}});
      return false;
    }
    phase_ = LeaderPhase::kCatchingUp;
    term_ = view.token;
    catch_up_to_ = *end;
    LogInfo("supervisor", "leadership won; catching up with the log",
            {{"member", options_.tls_name},
             {"term", term_},
             {"applied", applier_->applied()},
             {"catch_up_to", catch_up_to_}});
  }
  if (phase_ == LeaderPhase::kCatchingUp) {
    if (applier_->applied() < catch_up_to_) return false;
    BecomeLeader(now);
    if (phase_ != LeaderPhase::kLeading) return false;
  }
  return true;
}

void Supervisor::BecomeLeader(Clock::time_point now) {
  // Leader memory from the applied state: every session still running gets a whole deadline
  // from now (the previous leader's clock readings died with its term).
  std::vector<std::string> running;
  std::unique_ptr<rocksdb::Iterator> it = state_->NewIterator(kSessions);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    pb::SessionState session;
    if (!session.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return Fail(DataLossError("a stored session does not parse"));
    }
    if (session.phase() != pb::SESSION_PHASE_VERIFIED &&
        session.phase() != pb::SESSION_PHASE_FAILED) {
      running.push_back(it->key().ToString());
    }
  }
  if (!it->status().ok()) return Fail(FromRocks(it->status(), "scan sessions"));
  {
    std::lock_guard lock(mutex_);
    progress_.clear();
    for (const std::string& id : running) progress_[id] = now;
  }
  last_tick_ = {};
  last_slow_round_ = now;
  last_trim_ = now;
  requested_checkpoint_ = false;
  requested_size_ = 0;
  requested_at_ = now;
  phase_ = LeaderPhase::kLeading;
  leading_.store(true);
  metrics_->leader.Set(1);
  LogInfo("supervisor", "leading",
          {{"member", options_.tls_name},
           {"term", term_},
           {"applied", applier_->applied()},
           {"running_sessions", running.size()}});
}

void Supervisor::StepDown(const char* why) {
  leading_.store(false);
  {
    std::lock_guard lock(mutex_);
    progress_.clear();
  }
  phase_ = LeaderPhase::kFollower;
  metrics_->leader.Set(0);
  LogWarn("supervisor", "leadership lost",
          {{"member", options_.tls_name}, {"term", term_}, {"why", why}});
}

void Supervisor::PublishMember() {
  // A published position must survive a crash, and the state has no WAL: what is on disk counts.
  // A flush (SST files and a MANIFEST write, each synced) is paid only when the disk is behind.
  StatusOr<uint64_t> durable = PersistedApplied(*state_);
  if (!durable.ok()) return Fail(durable.status());
  uint64_t applied = *durable;
  if (applied < applier_->applied()) {
    applied = applier_->applied();
    if (Status flushed = state_->Flush(); !flushed.ok()) {
      return Fail(flushed.WithContext("flush the state before publishing the applied position"));
    }
  }
  const Status published = members_->Publish(options_.tls_name, applied);
  SetLogReachable(published);
  if (!published.ok()) return;
  StatusOr<std::map<std::string, uint64_t>> members = members_->List();
  if (!members.ok()) {
    LogWarn("supervisor", "reading the member table failed", {{"error", members.status()}});
    return;
  }
  uint64_t slowest = applied;
  for (const auto& [name, position] : *members) slowest = std::min(slowest, position);
  const uint64_t end = log_->End();
  metrics_->cluster_members.Set(static_cast<double>(members->size()));
  metrics_->slowest_member_lag.Set(static_cast<double>(end > slowest ? end - slowest : 0));
  std::lock_guard lock(mutex_);
  known_members_ = std::move(members).value();
}

void Supervisor::SetLogReachable(const Status& probe) {
  if (!probe.ok()) {
    // Cut off from etcd: nothing this member is sent can become durable, so its workers go to
    // another member until etcd answers again.
    if (log_reachable_.exchange(false)) {
      LogWarn("supervisor", "etcd is unreachable; refusing workers", {{"error", probe}});
    }
  } else if (!log_reachable_.exchange(true)) {
    LogInfo("supervisor", "etcd is reachable again; accepting workers", {});
  }
  workers_->SetLogReachable(probe.ok());
}

bool Supervisor::RegisteredWithinGrace(const std::string& worker_id) {
  DbStateReader reader(state_.get());
  StatusOr<std::optional<pb::WorkerState>> worker =
      reader.GetMessage<pb::WorkerState>(kWorkers, worker_id);
  StatusOr<AppliedMeta> meta = ReadAppliedMeta(reader);
  if (!worker.ok() || !meta.ok() || !worker->has_value()) return false;
  // The leader clock moves in ticks: allow two of them on top of the grace period.
  const uint64_t window = static_cast<uint64_t>(options_.worker_grace.count()) +
                          2 * static_cast<uint64_t>(options_.tick_interval.count());
  return (*worker)->phase() == pb::WorkerState::PHASE_ACTIVE &&
         (*worker)->registered_unix_ms() + window > meta->clock_ms;
}

void Supervisor::LeaderRound(Clock::time_point now) {
  if (now - last_tick_ >= options_.tick_interval) {
    pb::LogRecord tick;
    tick.mutable_tick()->set_unix_ms(UnixMillis());
    AppendInBackground(std::move(tick));
    last_tick_ = now;
  }
  StatusOr<std::vector<pb::LogRecord>> plan = PlanPlacement(*state_, kMaxPlacementsPerRound);
  if (!plan.ok()) return Fail(plan.status().WithContext("placement"));
  for (pb::LogRecord& record : *plan) AppendInBackground(std::move(record));
  const uint64_t size = applier_->ledger_size();
  const bool grew = !requested_checkpoint_ || size > requested_size_;
  if (grew && (size >= requested_size_ + options_.checkpoint_every_entries ||
               now - requested_at_ >= options_.checkpoint_interval || !requested_checkpoint_)) {
    pb::LogRecord request;
    request.mutable_checkpoint_request();
    AppendInBackground(std::move(request));
    requested_checkpoint_ = true;
    requested_size_ = size;
    requested_at_ = now;
  }
  for (const std::string& worker_id : workers_->TakeLostWorkers(now, options_.worker_grace)) {
    // Gone from this member but registered again since (at another member of a cluster, whose
    // connection this leader cannot see): not lost. A replica that stalls anyway is re-placed by
    // its deadline.
    if (RegisteredWithinGrace(worker_id)) {
      LogInfo("supervisor", "worker left this member but registered again; not lost",
              {{"worker", worker_id}});
      continue;
    }
    pb::LogRecord lost;
    lost.mutable_worker_lost()->set_worker_id(worker_id);
    AppendInBackground(std::move(lost));
  }
  if (options_.log_retention_records > 0 && now - last_trim_ >= options_.log_trim_interval) {
    last_trim_ = now;
    if (Status trimmed = TrimLog(); !trimmed.ok()) {
      const StatusCode code = trimmed.code();
      // etcd unavailable, or another trimmer won: the next interval tries again.
      if (code != StatusCode::kUnavailable && code != StatusCode::kDeadlineExceeded &&
          code != StatusCode::kAborted) {
        return Fail(trimmed.WithContext("trim log"));
      }
      LogWarn("supervisor", "log trim failed; retrying later", {{"error", trimmed}});
    }
  }
  if (now - last_slow_round_ >= std::chrono::seconds(1)) {
    CheckDeadlines(now);
    ProposePlacementExpiries();
    last_slow_round_ = now;
  }
}

void Supervisor::CheckDeadlines(Clock::time_point now) {
  std::vector<std::string> stalled;
  {
    std::lock_guard lock(mutex_);
    for (auto& [session, last] : progress_) {
      if (now - last >= options_.replica_deadline) {
        stalled.push_back(session);
        last = now;  // one round of deadlines per period
      }
    }
  }
  DbStateReader reader(state_.get());
  for (const std::string& id : stalled) {
    StatusOr<std::optional<pb::SessionState>> session =
        reader.GetMessage<pb::SessionState>(kSessions, id);
    if (!session.ok()) return Fail(session.status());
    if (!session->has_value() || (*session)->phase() == pb::SESSION_PHASE_VERIFIED ||
        (*session)->phase() == pb::SESSION_PHASE_FAILED) {
      std::lock_guard lock(mutex_);
      progress_.erase(id);
      continue;
    }
    // The replicas furthest behind are the ones holding the session up.
    uint64_t lowest = UINT64_MAX;
    for (const pb::ReplicaState& replica : (*session)->replicas()) {
      if (!replica.worker_id().empty() && !replica.finished()) {
        lowest = std::min(lowest, replica.next_step());
      }
    }
    for (uint32_t r = 0; r < static_cast<uint32_t>((*session)->replicas_size()); ++r) {
      const pb::ReplicaState& replica = (*session)->replicas(r);
      if (replica.worker_id().empty() || replica.finished() || replica.next_step() != lowest) {
        continue;
      }
      pb::LogRecord deadline;
      deadline.mutable_deadline()->set_session_id(id);
      deadline.mutable_deadline()->set_replica(r);
      deadline.mutable_deadline()->set_epoch(replica.epoch());
      LogWarn(
          "supervisor", "replica missed its deadline",
          {{"session", HexEncode(AsBytes(id))}, {"replica", r}, {"worker", replica.worker_id()}});
      AppendInBackground(std::move(deadline));
    }
  }
}

void Supervisor::ProposePlacementExpiries() {
  const uint64_t timeout = options_.applier.placement_timeout_ms;
  if (timeout == 0) return;
  // The applier decides with its clock; proposing by that same clock keeps rejections rare.
  DbStateReader reader(state_.get());
  StatusOr<AppliedMeta> meta = ReadAppliedMeta(reader);
  if (!meta.ok()) return Fail(meta.status());
  std::unique_ptr<rocksdb::Iterator> it = state_->NewIterator(kWaiting);
  size_t proposed = 0;
  for (it->SeekToFirst(); it->Valid() && proposed < kMaxPlacementExpiriesPerRound; it->Next()) {
    const std::string id = it->key().ToString();
    StatusOr<std::optional<pb::SessionState>> session =
        reader.GetMessage<pb::SessionState>(kSessions, id);
    if (!session.ok()) return Fail(session.status());
    if (!session->has_value() || (*session)->phase() != pb::SESSION_PHASE_WAITING ||
        meta->clock_ms < (*session)->waiting_since_unix_ms() + timeout) {
      continue;
    }
    pb::LogRecord expired;
    expired.mutable_placement_expired()->set_session_id(id);
    expired.mutable_placement_expired()->set_waiting_since_unix_ms(
        (*session)->waiting_since_unix_ms());
    LogWarn("supervisor", "session could not be placed in time",
            {{"session", HexEncode(AsBytes(id))}, {"timeout_ms", timeout}});
    AppendInBackground(std::move(expired));
    ++proposed;
  }
  if (!it->status().ok()) Fail(FromRocks(it->status(), "scan waiting sessions"));
}

Status Supervisor::TrimLog() {
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(*state_);
  if (latest.status().code() == StatusCode::kNotFound) return OkStatus();
  FP_RETURN_IF_ERROR(latest.status());
  DbStateReader reader(state_.get());
  FP_ASSIGN_OR_RETURN(
      std::optional<pb::CheckpointBody> body,
      reader.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(latest->checkpoint.size)));
  if (!body.has_value()) return DataLossError("signed checkpoint without its body");
  // The state has no WAL: flushing it makes the applied prefix survive a crash, so no record a
  // restart would replay is deleted.
  const uint64_t applied = applier_->applied();
  FP_RETURN_IF_ERROR(state_->Flush());
  uint64_t covered = std::min(applied, body->position() + 1);
  if (members_ != nullptr) {
    // Every member must have applied what is deleted, a stopped one included: it catches up from
    // the log when it returns, unless an operator removed it from the table.
    using MemberTable = std::map<std::string, uint64_t>;
    FP_ASSIGN_OR_RETURN(MemberTable members, members_->List());
    for (const auto& [name, position] : members) covered = std::min(covered, position);
    std::lock_guard lock(mutex_);
    known_members_ = std::move(members);
  }
  if (covered <= options_.log_retention_records) return OkStatus();
  const uint64_t before = log_->Begin();
  FP_ASSIGN_OR_RETURN(uint64_t begin, log_->Trim(covered - options_.log_retention_records));
  if (begin > before) {
    LogInfo("supervisor", "log trimmed", {{"from", before}, {"to", begin}});
  }
  metrics_->log_begin.Set(static_cast<double>(begin));
  return OkStatus();
}

ClusterStatus Supervisor::cluster_status() const {
  ClusterStatus status;
  status.cluster = election_ != nullptr;
  status.name = options_.tls_name;
  status.applied = applier_->applied();
  status.log_begin = log_->Begin();
  status.log_end = log_->End();
  if (election_ == nullptr) {
    status.leader = options_.tls_name;
    status.is_leader = true;
    return status;
  }
  const cluster::LeaderView view = election_->View();
  status.leader = view.leader;
  status.term = view.token;
  status.is_leader = leading_.load();
  status.log_reachable = log_reachable_.load();
  std::lock_guard lock(mutex_);
  status.members = known_members_;
  return status;
}

StatusOr<std::shared_ptr<cluster::SnapshotStream>> Supervisor::OpenSnapshot(
    const std::string& member) {
  if (!member.empty()) FP_RETURN_IF_ERROR(cluster::ValidateMemberName(member));
  if (open_snapshots_.fetch_add(1) >= kMaxOpenSnapshots) {
    --open_snapshots_;
    return UnavailableError(
        fmt::format("{} snapshots are being sent already; try again later", kMaxOpenSnapshots));
  }
  // Until the stream owns the counter, any error must give the slot back.
  bool handed_over = false;
  struct Release {
    std::atomic<int>& count;
    bool& handed_over;
    ~Release() {
      if (!handed_over) --count;
    }
  } release{open_snapshots_, handed_over};
  // Reserved before the snapshot is taken and at most at its position: this supervisor's own
  // published position is no higher either, so the leader cannot trim past the reservation.
  if (!member.empty() && members_ != nullptr) {
    FP_RETURN_IF_ERROR(members_->Reserve(member, applier_->applied()));
  }
  const std::filesystem::path parent = std::filesystem::path(options_.data_dir) / kSnapshotsDir;
  std::error_code error;
  std::filesystem::create_directories(parent, error);
  if (error)
    return UnavailableError(fmt::format("create {}: {}", parent.string(), error.message()));
  const std::string dir = (parent / std::to_string(snapshot_sequence_.fetch_add(1))).string();
  uint64_t applied = 0;
  {
    std::lock_guard apply_lock(apply_mutex_);
    applied = applier_->applied();
    FP_RETURN_IF_ERROR(state_->Flush());  // the state has no WAL: its memtables must be in SSTs
    FP_RETURN_IF_ERROR(cluster::CreateRocksCheckpoint(state_->db(), dir));
  }
  StatusOr<std::unique_ptr<cluster::SnapshotStream>> stream =
      cluster::SnapshotStream::Open(dir, applied, [this] { --open_snapshots_; });
  if (!stream.ok()) {
    std::filesystem::remove_all(dir, error);
    return stream.status();
  }
  handed_over = true;
  LogInfo("supervisor", "snapshot taken",
          {{"applied", applied}, {"member", member}, {"bytes", (*stream)->content_bytes()}});
  return std::shared_ptr<cluster::SnapshotStream>(std::move(stream).value());
}

void Supervisor::TEST_PauseLeadership(bool paused) {
  if (election_ != nullptr) election_->TEST_PauseCampaign(paused);
}

void Supervisor::UpdateGauges() {
  const pb::PhaseCounts phases = applier_->phases();
  metrics_->sessions.Add({{"phase", "waiting"}}).Set(static_cast<double>(phases.waiting()));
  metrics_->sessions.Add({{"phase", "running"}}).Set(static_cast<double>(phases.running()));
  metrics_->sessions.Add({{"phase", "verified"}}).Set(static_cast<double>(phases.verified()));
  metrics_->sessions.Add({{"phase", "failed"}}).Set(static_cast<double>(phases.failed()));
  const uint64_t end = log_->End();
  const uint64_t applied = applier_->applied();
  metrics_->apply_lag.Set(static_cast<double>(end > applied ? end - applied : 0));
  // An etcd log's size is the cluster's (etcd exports it), not this supervisor's RocksDB's.
  if (options_.log_backend == LogBackend::kRocksDb) {
    metrics_->rocksdb_bytes.Add({{"store", "log"}})
        .Set(static_cast<double>(log_->ApproximateBytes()));
  }
  uint64_t state_bytes = 0;
  for (size_t family = 0; family < kFamilyCount; ++family) {
    state_bytes += state_->ApproximateBytes(family);
  }
  metrics_->rocksdb_bytes.Add({{"store", "state"}}).Set(static_cast<double>(state_bytes));
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(*state_);
  if (!latest.ok()) return;
  metrics_->checkpoint_size.Set(static_cast<double>(latest->checkpoint.size));
  DbStateReader reader(state_.get());
  StatusOr<std::optional<pb::CheckpointBody>> body =
      reader.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(latest->checkpoint.size));
  if (body.ok() && body->has_value()) {
    const uint64_t now = UnixMillis();
    const uint64_t taken = (*body)->unix_ms();
    metrics_->checkpoint_age.Set(now > taken ? static_cast<double>(now - taken) / 1000.0 : 0.0);
  }
}

Status Supervisor::health() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

Status Supervisor::Wait() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return draining_.load() || !failure_.ok(); });
  return failure_;
}

Status Supervisor::Drain() {
  if (draining_.exchange(true)) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return drained_; });
    return failure_;
  }
  {
    std::lock_guard lock(mutex_);
    changed_.notify_all();  // wakes Wait()
  }
  LogInfo("supervisor", "draining", {});
  if (http_ != nullptr) http_->Stop();
  if (workers_ != nullptr) workers_->Stop();
  const auto give_up = Clock::now() + options_.drain_timeout;
  while (http_ != nullptr && http_->open_connections() > 0 && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard lock(mutex_);
    stop_leader_ = true;
    changed_.notify_all();
  }
  if (leader_thread_.joinable()) leader_thread_.join();
  if (election_ != nullptr) {
    // Revoking the lease lets another member win at its next poll instead of after the TTL.
    election_->Resign();
    if (leading_.exchange(false)) LogInfo("supervisor", "leadership resigned", {{"term", term_}});
    metrics_->leader.Set(0);
  }
  // Queued appends become durable and are acknowledged.
  if (log_ != nullptr) log_->Close();
  {
    std::lock_guard lock(mutex_);
    stop_applier_ = true;
  }
  if (applier_thread_.joinable()) applier_thread_.join();
  if (signer_ != nullptr) {
    if (Status sign = signer_->SignPending().status(); !sign.ok()) Fail(sign);
  }
  work_.reset();
  io_.stop();
  for (std::thread& thread : io_threads_) thread.join();
  io_threads_.clear();
  if (metrics_server_ != nullptr) metrics_server_->Stop();
  if (state_ != nullptr) state_->Flush().IgnoreError();
  if (members_ != nullptr && state_ != nullptr) {
    // The final position, so trimming is held exactly where this member will resume.
    if (Status published = members_->Publish(options_.tls_name, applier_->applied());
        !published.ok()) {
      LogWarn("supervisor", "publishing the final applied position failed", {{"error", published}});
    }
  }
  std::lock_guard lock(mutex_);
  drained_ = true;
  changed_.notify_all();
  LogInfo("supervisor", "drained",
          {{"applied", applier_ != nullptr ? applier_->applied() : 0}, {"status", failure_}});
  return failure_;
}

Supervisor::~Supervisor() { Drain().IgnoreError(); }

}  // namespace fp::supervisor
