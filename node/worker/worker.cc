// Worker; see worker.h.
#include "node/worker/worker.h"

#include <filesystem>

#include "common/base/log.h"
#include "common/wire/tls.h"

namespace fp::node::worker {
namespace {

constexpr char kComponent[] = "worker";
constexpr uint32_t kMaxWorkerReplicas = 65536;

Status Range(std::string_view field, int64_t value, int64_t min, int64_t max) {
  if (value >= min && value <= max) return OkStatus();
  return InvalidArgumentError(std::string(field) + " must be in [" + std::to_string(min) + ", " +
                              std::to_string(max) + "], not " + std::to_string(value));
}

StatusOr<metrics::MetricsServerOptions> MetricsOptions(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("metrics address '" + address + "' is not HOST:PORT");
  }
  metrics::MetricsServerOptions options;
  options.address = address.substr(0, colon);
  if (options.address.size() > 2 && options.address.front() == '[') {
    options.address = options.address.substr(1, options.address.size() - 2);
  }
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
    return InvalidArgumentError("metrics address '" + address + "' has no port in 0..65535");
  }
  options.port = static_cast<uint16_t>(std::stoi(port));
  return options;
}

}  // namespace

Status ValidateWorkerConfig(const WorkerConfig& c) {
  if (c.name.empty()) return InvalidArgumentError("worker name is empty");
  if (c.certs_dir.empty()) return InvalidArgumentError("certificate directory is empty");
  if (c.data_dir.empty()) return InvalidArgumentError("data directory is empty");
  FP_RETURN_IF_ERROR(
      Range("supervisors", static_cast<int64_t>(c.supervisors.size()), 1, kMaxSupervisorAddresses));
  FP_RETURN_IF_ERROR(Range("models", static_cast<int64_t>(c.models.size()), 1, kMaxWorkerModels));
  FP_RETURN_IF_ERROR(Range("max-replicas", c.max_replicas, 1, kMaxWorkerReplicas));
  FP_RETURN_IF_ERROR(Range("threads", c.engine.threads, 1, 256));
  FP_RETURN_IF_ERROR(Range("window-steps", c.stream.window_steps, 1,
                           static_cast<int64_t>(wire::kMaxLeafBatchSteps)));
  FP_RETURN_IF_ERROR(Range("window-ms", c.stream.window_time.count(), 0, 60'000));
  FP_RETURN_IF_ERROR(Range("heartbeat-ms", c.heartbeat_interval.count(), 1, 600'000));
  FP_RETURN_IF_ERROR(Range("read-timeout-ms", c.connection.read_timeout.count(), 1, 3'600'000));
  FP_RETURN_IF_ERROR(Range("connect-timeout-ms", c.connection.connect_timeout.count(), 1, 600'000));
  FP_RETURN_IF_ERROR(Range("reconnect-initial-ms", c.reconnect.initial_delay.count(), 1,
                           kMaxReconnectDelay.count()));
  FP_RETURN_IF_ERROR(Range("reconnect-max-ms", c.reconnect.max_delay.count(),
                           c.reconnect.initial_delay.count(), kMaxReconnectDelay.count()));
  FP_RETURN_IF_ERROR(Range("drain-ms", c.drain_timeout.count(), 0, kMaxDrainTimeout.count()));
  FP_RETURN_IF_ERROR(Range("outbox-max-batches", static_cast<int64_t>(c.outbox.max_batches), 1,
                           kMaxOutboxBatches));
  FP_RETURN_IF_ERROR(Range("outbox-max-bytes", static_cast<int64_t>(c.outbox.max_bytes), 1,
                           static_cast<int64_t>(kMaxOutboxBytes)));
  if (c.heartbeat_interval >= c.connection.read_timeout) {
    return InvalidArgumentError(
        "heartbeat-ms must be below the read timeout, or an idle "
        "connection times out");
  }
  if (!c.metrics_address.empty()) FP_RETURN_IF_ERROR(MetricsOptions(c.metrics_address).status());
  if (c.faults.has_value()) FP_RETURN_IF_ERROR(ValidateFaultPlan(*c.faults));
  return OkStatus();
}

StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerConfig& config,
                                                 prometheus::Registry& registry) {
  FP_RETURN_IF_ERROR(ValidateWorkerConfig(config));
  std::error_code error;
  std::filesystem::create_directories(config.data_dir, error);
  if (error) {
    return UnavailableError("cannot create data directory " + config.data_dir + ": " +
                            error.message());
  }
  std::unique_ptr<Worker> worker(new Worker(config));
  worker->registry_ = &registry;
  worker->metrics_ = WorkerMetrics::Register(registry);
  FP_ASSIGN_OR_RETURN(worker->tls_, wire::MakeClientTlsContext(
                                        wire::TlsFilesForNode(config.certs_dir, config.name)));
  std::optional<FaultyBackendOptions> faults;
  if (config.faults.has_value() && config.faults->kind != FaultKind::kWrongDigest) {
    faults = FaultyBackendOptions{*config.faults,
                                  (std::filesystem::path(config.data_dir) / "faults").string()};
    LogWarn(kComponent, "FAULT INJECTION IS ON",
            {{"kind", FaultKindName(config.faults->kind)}, {"step", config.faults->step}});
  }
  std::vector<std::unique_ptr<ModelSlot>> slots;
  for (const ModelSpec& spec : config.models) {
    FP_ASSIGN_OR_RETURN(std::unique_ptr<ModelSlot> slot,
                        LoadModelSlot(spec, config.engine, faults));
    slots.push_back(std::move(slot));
  }
  FP_ASSIGN_OR_RETURN(worker->catalog_, BuildCatalog(slots));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Outbox> outbox, Outbox::Open(config.data_dir, config.outbox));
  if (outbox->batches() > 0) {
    LogInfo(kComponent, "outbox holds unacknowledged batches from an earlier run",
            {{"batches", outbox->batches()}});
  }

  Worker* self = worker.get();
  ClientCallbacks callbacks;
  callbacks.registration = [self] { return self->Registration(); };
  callbacks.heartbeat = [self] { return self->Heartbeat(); };
  callbacks.on_accepted = [self](uint64_t generation) {
    self->loop_->Post(ReinstateOrder{self->client_->accepted_by()}).IgnoreError();
    self->streamer_->OnConnected(generation);
  };
  callbacks.on_lost = [self] { self->streamer_->OnDisconnected(); };
  callbacks.on_envelope = [self](uint64_t generation, wire::pb::Envelope envelope) {
    self->Dispatch(generation, std::move(envelope));
  };
  SupervisorClientOptions client_options;
  client_options.supervisors = config.supervisors;
  client_options.connection = config.connection;
  client_options.heartbeat_interval = config.heartbeat_interval;
  client_options.reconnect = config.reconnect;
  worker->client_ = std::make_unique<SupervisorClient>(*worker->tls_, client_options,
                                                       std::move(callbacks), &worker->metrics_);
  StreamerOptions stream_options;
  stream_options.policy = config.stream;
  stream_options.fault = config.faults;
  worker->streamer_ = std::make_unique<Streamer>(stream_options, std::move(outbox),
                                                 worker->client_.get(), &worker->metrics_);
  worker->loop_ =
      std::make_unique<GenerationLoop>(std::move(slots), LoopOptions{config.max_replicas},
                                       worker->streamer_.get(), &worker->metrics_);
  return worker;
}

Worker::~Worker() { Stop(); }

Status Worker::Start() {
  FP_CHECK(!started_);
  started_ = true;
  if (!config_.metrics_address.empty()) {
    FP_ASSIGN_OR_RETURN(metrics::MetricsServerOptions options,
                        MetricsOptions(config_.metrics_address));
    FP_ASSIGN_OR_RETURN(metrics_server_, metrics::MetricsServer::Start(*registry_, options));
  }
  streamer_->Start();
  loop_->Start();
  client_->Start();
  LogInfo(kComponent, "worker started",
          {{"name", config_.name},
           {"models", config_.models.size()},
           {"profile", HexEncode(catalog_.worker_profile_hash)}});
  return OkStatus();
}

void Worker::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  LogInfo(kComponent, "draining");
  streamer_->Stop(config_.drain_timeout);  // unblocks the loop's Push as well
  loop_->Stop();
  client_->Stop();
  if (metrics_server_ != nullptr) metrics_server_->Stop();
  LogInfo(kComponent, "stopped", {{"outbox_batches", streamer_->outbox_batches()}});
}

wire::pb::Register Worker::Registration() const {
  wire::pb::Register registration;
  registration.set_max_replicas(config_.max_replicas);
  for (const CatalogEntry& entry : catalog_.entries) registration.add_models(entry.name);
  registration.set_numerics_profile_hash(
      std::string(catalog_.worker_profile_hash.begin(), catalog_.worker_profile_hash.end()));
  registration.set_software_version(config_.software_version);
  return registration;
}

wire::pb::Heartbeat Worker::Heartbeat() const {
  wire::pb::Heartbeat heartbeat;
  const uint32_t active = std::min(loop_->active_replicas(), config_.max_replicas);
  heartbeat.set_active_replicas(active);
  heartbeat.set_free_replicas(config_.max_replicas - active);
  return heartbeat;
}

void Worker::Refuse(uint64_t generation, const Status& status, const std::string& session_id) {
  LogWarn(kComponent, "refused an order", {{"status", status}});
  client_->Send(generation, wire::MakeErrorEnvelope(status, AsBytes(session_id))).IgnoreError();
}

void Worker::Dispatch(uint64_t generation, wire::pb::Envelope envelope) {
  switch (envelope.body_case()) {
    case wire::pb::Envelope::kAssign: {
      StatusOr<AssignOrder> order = ToAssignOrder(envelope.assign(), catalog_);
      Status posted = order.ok() ? loop_->Post(std::move(order).value()) : order.status();
      if (!posted.ok()) Refuse(generation, posted, envelope.assign().session_id());
      return;
    }
    case wire::pb::Envelope::kRollback: {
      Status posted = loop_->Post(ToRollbackOrder(envelope.rollback()));
      if (!posted.ok()) Refuse(generation, posted, envelope.rollback().session_id());
      return;
    }
    case wire::pb::Envelope::kQuarantine: {
      Status posted = loop_->Post(QuarantineOrder{envelope.quarantine().reason()});
      if (!posted.ok()) Refuse(generation, posted, "");
      return;
    }
    case wire::pb::Envelope::kCommit: {
      const wire::pb::Commit& commit = envelope.commit();
      SessionId session;
      std::copy_n(commit.session_id().begin(), kSessionIdSize, session.begin());
      Hash root;
      std::copy_n(commit.verified_root().begin(), kHashSize, root.begin());
      loop_->Commit(session, commit.verified_steps(), root, commit.session_verified());
      return;
    }
    case wire::pb::Envelope::kAck:
      streamer_->OnAck(envelope.ack());
      return;
    case wire::pb::Envelope::kError: {
      const wire::pb::Error& error = envelope.error();
      LogWarn(kComponent, "the supervisor reported an error",
              {{"status", wire::StatusFromError(error)},
               {"session", HexEncode(AsBytes(error.session_id()))}});
      // ABORTED for a session: the supervisor failed it, so its replica stops here too.
      if (error.code() == static_cast<uint32_t>(StatusCode::kAborted) &&
          error.session_id().size() == kSessionIdSize) {
        AbortOrder order;
        std::copy_n(error.session_id().begin(), kSessionIdSize, order.session.begin());
        order.reason = error.reason();
        loop_->Post(std::move(order)).IgnoreError();  // a stopping or full loop drops it
      }
      return;
    }
    default:
      LogWarn(kComponent, "ignoring a frame a supervisor does not send",
              {{"body", wire::BodyName(envelope)}});
      return;
  }
}

}  // namespace fp::node::worker
