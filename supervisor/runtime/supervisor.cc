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
    // Trimming an etcd log deletes records that every supervisor must already have applied, and a
    // supervisor started on a fresh state directory rebuilds its state from the whole log; one
    // supervisor knows neither of these, so the etcd log is never trimmed from here.
    if (options.log_retention_records > 0) {
      return InvalidArgumentError(
          "log-retention-records is not supported with log-backend etcd (the etcd log is not "
          "trimmed by a supervisor)");
    }
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
  if (applier_->applied() < log_->Begin()) {
    return FailedPreconditionError(fmt::format(
        "the state applied {} records but the log was trimmed to start at {}: the state cannot "
        "be rebuilt from this log",
        applier_->applied(), log_->Begin()));
  }
  metrics_->log_begin.Set(static_cast<double>(log_->Begin()));
  FP_ASSIGN_OR_RETURN(tlog::NoteSigner signer,
                      LoadOrCreateSigner((dir / kCheckpointKeyFile).string(), options_.origin));
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
  for (const auto& [model, dir] : options_.tokenizer_dirs) {
    // The supervisor does not load the model, so only the tokenizer's own vocabulary bounds ids.
    StatusOr<std::unique_ptr<tokenizer::Tokenizer>> loaded =
        tokenizer::LoadTokenizer(dir, std::numeric_limits<int32_t>::max());
    if (!loaded.ok()) return loaded.status().WithContext("tokenizer of model " + model);
    context.tokenizers[model] = std::move(*loaded);
  }
  api_ = std::make_unique<Api>(std::move(context));
  signer_ = std::make_unique<CheckpointSigner>(state_.get(), options_.origin, std::move(signer));
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
      StatusOr<std::unique_ptr<EtcdLog>> log = OpenEtcdLog(options_.etcd);
      if (!log.ok()) return log.status().WithContext("open the etcd log");
      log_ = std::move(log).value();
      LogInfo("supervisor", "etcd log opened",
              {{"prefix", options_.etcd.prefix}, {"end", log_->End()}, {"begin", log_->Begin()}});
      return OkStatus();
    }
  }
  return InvalidArgumentError("unknown log backend");
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
    StatusOr<std::vector<LogEntry>> entries = log_->Read(applied, kMaxApplyGroup);
    if (!entries.ok()) return Fail(entries.status().WithContext("read log"));
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
    {
      std::lock_guard lock(mutex_);
      const auto now = Clock::now();
      for (const std::string& session : effects->progressed) progress_[session] = now;
    }
    workers_->Deliver(*effects);
    if (effects->checkpoint) {
      if (Status sign = signer_->SignPending().status(); !sign.ok()) {
        return Fail(sign.WithContext("sign checkpoint"));
      }
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
    {
      std::unique_lock lock(mutex_);
      changed_.wait_for(lock, options_.placement_interval, [&] { return stop_leader_; });
      if (stop_leader_) return;
    }
    LeaderRound(Clock::now());
  }
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
    pb::LogRecord lost;
    lost.mutable_worker_lost()->set_worker_id(worker_id);
    AppendInBackground(std::move(lost));
  }
  if (options_.log_retention_records > 0 && now - last_trim_ >= options_.log_trim_interval) {
    if (Status trimmed = TrimLog(); !trimmed.ok()) return Fail(trimmed.WithContext("trim log"));
    last_trim_ = now;
  }
  if (now - last_slow_round_ >= std::chrono::seconds(1)) {
    CheckDeadlines(now);
    ProposePlacementExpiries();
    UpdateGauges();
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
  // Start refuses log retention with the etcd backend (see there).
  FP_CHECK(options_.log_backend == LogBackend::kRocksDb);
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
  const uint64_t covered = std::min(applied, body->position() + 1);
  if (covered <= options_.log_retention_records) return OkStatus();
  const uint64_t before = log_->Begin();
  FP_ASSIGN_OR_RETURN(uint64_t begin, log_->Trim(covered - options_.log_retention_records));
  if (begin > before) {
    LogInfo("supervisor", "log trimmed", {{"from", before}, {"to", begin}});
  }
  metrics_->log_begin.Set(static_cast<double>(begin));
  return OkStatus();
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
  std::lock_guard lock(mutex_);
  drained_ = true;
  changed_.notify_all();
  LogInfo("supervisor", "drained",
          {{"applied", applier_ != nullptr ? applier_->applied() : 0}, {"status", failure_}});
  return failure_;
}

Supervisor::~Supervisor() { Drain().IgnoreError(); }

}  // namespace fp::supervisor
