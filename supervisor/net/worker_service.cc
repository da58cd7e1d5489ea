// WorkerService; see worker_service.h.
#include "supervisor/net/worker_service.h"

#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include "common/base/log.h"
#include "supervisor/state/queries.h"
#include "supervisor/state/session_request.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::string Short(const std::string& session) { return HexEncode(AsBytes(session)).substr(0, 12); }

wire::pb::RollbackKind WireKind(pb::OrderKind kind) {
  return kind == pb::ORDER_KIND_REBUILD ? wire::pb::ROLLBACK_KIND_REBUILD
                                        : wire::pb::ROLLBACK_KIND_TRUNCATE;
}

}  // namespace

WorkerService::WorkerService(asio::io_context& io, Log& log, const RocksStore& state,
                             const WorkerServiceOptions& options, WorkerServiceMetrics metrics)
    : io_(io), log_(log), state_(state), options_(options), metrics_(metrics) {}

WorkerService::~WorkerService() { Stop(); }

StatusOr<std::unique_ptr<WorkerService>> WorkerService::Start(asio::io_context& io,
                                                              asio::ssl::context& tls, Log& log,
                                                              const RocksStore& state,
                                                              const WorkerServiceOptions& options,
                                                              WorkerServiceMetrics metrics) {
  boost::system::error_code error;
  const asio::ip::address address = asio::ip::make_address(options.address, error);
  if (error) return InvalidArgumentError(fmt::format("bad address '{}'", options.address));
  if (options.supervisor_id.empty() || options.supervisor_id.size() > wire::kMaxNameBytes) {
    return InvalidArgumentError("the supervisor id must be 1..256 bytes");
  }
  std::unique_ptr<WorkerService> service(new WorkerService(io, log, state, options, metrics));
  FP_ASSIGN_OR_RETURN(service->listener_,
                      wire::Listener::Create(io, tls, {address, options.port}, service->Handlers(),
                                             options.connection));
  service->port_ = service->listener_->local_endpoint().port();
  service->listener_->Start();
  return service;
}

wire::ConnectionHandlers WorkerService::Handlers() {
  wire::ConnectionHandlers handlers;
  handlers.on_envelope = [this](const std::shared_ptr<wire::Connection>& connection,
                                wire::pb::Envelope envelope) {
    OnEnvelope(connection, std::move(envelope));
  };
  handlers.on_close = [this](const std::shared_ptr<wire::Connection>& connection,
                             const Status& status) { OnClose(connection, status); };
  return handlers;
}

void WorkerService::OnEnvelope(const std::shared_ptr<wire::Connection>& connection,
                               wire::pb::Envelope envelope) {
  switch (envelope.body_case()) {
    case wire::pb::Envelope::kRegistration:
      return OnRegister(connection, envelope.registration());
    case wire::pb::Envelope::kLeafBatch:
      return OnLeafBatch(connection, envelope.leaf_batch());
    case wire::pb::Envelope::kHeartbeat: {
      wire::pb::Envelope reply;
      reply.mutable_heartbeat()->set_sequence(envelope.heartbeat().sequence());
      connection->Send(reply).IgnoreError();  // a full queue closes the connection elsewhere
      return;
    }
    case wire::pb::Envelope::kError:
      LogWarn("supervisor", "worker reported an error",
              {{"worker", connection->peer_identity()},
               {"session", Short(envelope.error().session_id())},
               {"status", wire::StatusFromError(envelope.error())}});
      return;
    default:
      connection->Close(
          InvalidArgumentError(fmt::format("a worker may not send {}", wire::BodyName(envelope))));
  }
}

void WorkerService::OnRegister(const std::shared_ptr<wire::Connection>& connection,
                               const wire::pb::Register& registration) {
  bool reachable = false;
  {
    std::lock_guard lock(mutex_);
    reachable = log_reachable_;
  }
  if (!reachable) {
    return Refuse(connection, UnavailableError("the supervisor cannot reach its log"));
  }
  pb::LogRecord record;
  pb::WorkerRegistered* registered = record.mutable_worker_registered();
  const std::string worker_id = connection->peer_identity();
  registered->set_worker_id(worker_id);
  *registered->mutable_models() = registration.models();
  registered->set_numerics_profile_hash(registration.numerics_profile_hash());
  registered->set_max_replicas(registration.max_replicas());
  registered->set_software_version(registration.software_version());
  std::weak_ptr<wire::Connection> weak = connection;
  const uint32_t capacity = registration.max_replicas();
  log_.Append(std::move(record), [this, weak, worker_id, capacity](StatusOr<uint64_t> position) {
    std::shared_ptr<wire::Connection> connection = weak.lock();
    if (connection == nullptr) return;
    if (!position.ok()) {
      Refuse(connection, position.status().WithContext("register"));
      return;
    }
    // Quarantine is sticky: the registration is recorded, but the worker gets no work until an
    // operator releases it.
    StatusOr<std::optional<pb::WorkerState>> stored =
        DbStateReader(&state_).GetMessage<pb::WorkerState>(kWorkers, worker_id);
    if (!stored.ok()) return Refuse(connection, stored.status());
    if (stored->has_value() && (*stored)->phase() == pb::WorkerState::PHASE_QUARANTINED) {
      return Refuse(connection,
                    FailedPreconditionError(fmt::format(
                        "worker {} is quarantined ({}); an operator releases it with `fieldprint "
                        "supervisor release-worker`",
                        worker_id, (*stored)->quarantine_reason())));
    }
    std::shared_ptr<wire::Connection> replaced;
    {
      std::lock_guard lock(mutex_);
      if (stopped_) {
        Refuse(connection, UnavailableError("the supervisor is draining"));
        return;
      }
      if (!log_reachable_) {
        Refuse(connection, UnavailableError("the supervisor cannot reach its log"));
        return;
      }
      auto& slot = workers_[worker_id];
      if (slot != connection) replaced = std::exchange(slot, connection);
      registered_[connection.get()] = worker_id;
      gone_.erase(worker_id);
      if (metrics_.connected_workers != nullptr) metrics_.connected_workers->Set(workers_.size());
    }
    if (replaced != nullptr) replaced->Close(AbortedError("replaced by a newer connection"));
    wire::pb::Envelope ack;
    ack.mutable_register_ack()->set_supervisor_id(options_.supervisor_id);
    ack.mutable_register_ack()->set_accepted(true);
    ack.mutable_register_ack()->set_max_replicas(capacity);
    if (Status sent = connection->Send(ack); !sent.ok()) return connection->Close(sent);
    LogInfo("supervisor", "worker registered",
            {{"worker", worker_id}, {"peer", connection->remote_endpoint()}});
    asio::post(io_, [this, worker_id] { SendPendingWork(worker_id); });
  });
}

void WorkerService::Refuse(const std::shared_ptr<wire::Connection>& connection,
                           const Status& status) {
  LogWarn("supervisor", "registration refused",
          {{"worker", connection->peer_identity()}, {"status", status}});
  wire::pb::Envelope refusal;
  wire::pb::RegisterAck* ack = refusal.mutable_register_ack();
  ack->set_supervisor_id(options_.supervisor_id);
  ack->set_accepted(false);
  ack->set_code(static_cast<uint32_t>(status.code()));
  ack->set_reason(std::string(status.message().substr(0, wire::kMaxReasonBytes)));
  if (ack->reason().empty()) ack->set_reason("refused");
  connection->Send(refusal).IgnoreError();
  connection->Close(status);
}

void WorkerService::OnLeafBatch(const std::shared_ptr<wire::Connection>& connection,
                                const wire::pb::LeafBatch& batch) {
  std::string worker_id;
  {
    std::lock_guard lock(mutex_);
    auto it = registered_.find(connection.get());
    if (it != registered_.end()) worker_id = it->second;
  }
  if (worker_id.empty()) {
    connection->Close(FailedPreconditionError("LeafBatch before a registration was durable"));
    return;
  }
  pb::LogRecord record;
  pb::LeafBatch* leaves = record.mutable_leaf_batch();
  leaves->set_worker_id(worker_id);
  leaves->set_session_id(batch.session_id());
  leaves->set_replica(batch.replica());
  leaves->set_epoch(batch.epoch());
  leaves->set_first_step(batch.first_step());
  *leaves->mutable_token_ids() = batch.token_ids();
  leaves->set_state_digests(batch.state_digests());
  leaves->set_window_steps(batch.window_steps());
  leaves->set_last(batch.last());
  leaves->set_session_root(batch.session_root());
  PendingLeaves pending;
  pending.record = std::move(record);
  wire::pb::Ack* fields = pending.ack.mutable_ack();
  fields->set_session_id(batch.session_id());
  fields->set_replica(batch.replica());
  fields->set_epoch(batch.epoch());
  fields->set_first_step(batch.first_step());
  fields->set_step_count(static_cast<uint32_t>(batch.token_ids_size()));
  pending.leaf_count = wire::LeafCount(batch);
  PipeKey replica(batch.session_id(), batch.replica());
  bool overflow = false;
  {
    std::lock_guard lock(mutex_);
    auto& pipes = pipes_[connection.get()];
    auto pipe = pipes.find(replica);
    if (pipe == pipes.end()) {
      pipes.emplace(replica, ReplicaPipe());  // appended now; later batches wait in it
    } else if (pipe->second.waiting.size() < kMaxWaitingLeafBatches) {
      pipe->second.waiting.push_back(std::move(pending));
      return;
    } else {
      pipe->second.waiting.clear();
      overflow = true;
    }
  }
  if (overflow) {
    connection->Close(ResourceExhaustedError(fmt::format(
        "more than {} LeafBatches of one replica wait for the log", kMaxWaitingLeafBatches)));
    return;
  }
  AppendLeaves(connection, std::move(replica), std::move(pending));
}

void WorkerService::AppendLeaves(const std::shared_ptr<wire::Connection>& connection,
                                 PipeKey replica, PendingLeaves leaves) {
  std::weak_ptr<wire::Connection> weak = connection;
  log_.Append(std::move(leaves.record),
              [this, weak, replica = std::move(replica), ack = std::move(leaves.ack),
               leaf_count = leaves.leaf_count,
               started = Clock::now()](StatusOr<uint64_t> position) mutable {
                std::shared_ptr<wire::Connection> connection = weak.lock();
                if (!position.ok()) {
                  if (metrics_.batches_refused != nullptr) metrics_.batches_refused->Increment();
                  // Nothing later of this replica may land before this batch: the worker
                  // reconnects and resends from it.
                  if (connection != nullptr) {
                    connection->Close(position.status().WithContext("append leaves"));
                  }
                  return;
                }
                if (metrics_.leaves_ingested != nullptr) {
                  metrics_.leaves_ingested->Increment(static_cast<double>(leaf_count));
                }
                if (metrics_.append_latency != nullptr) {
                  const std::chrono::duration<double> elapsed = Clock::now() - started;
                  metrics_.append_latency->Observe(elapsed.count());
                }
                if (connection == nullptr) return;  // the worker resends after reconnecting
                ack.mutable_ack()->set_log_index(*position);
                if (Status sent = connection->Send(ack); !sent.ok()) connection->Close(sent);
                PendingLeaves next;
                {
                  std::lock_guard lock(mutex_);
                  auto pipes = pipes_.find(connection.get());
                  if (pipes == pipes_.end()) return;  // closed
                  auto pipe = pipes->second.find(replica);
                  if (pipe == pipes->second.end()) return;
                  if (pipe->second.waiting.empty()) {
                    pipes->second.erase(pipe);
                    return;
                  }
                  next = std::move(pipe->second.waiting.front());
                  pipe->second.waiting.pop_front();
                }
                // Appending is not for the log's thread.
                asio::post(io_, [this, connection, replica = std::move(replica),
                                 next = std::move(next)]() mutable {
                  AppendLeaves(connection, std::move(replica), std::move(next));
                });
              });
}

void WorkerService::OnClose(const std::shared_ptr<wire::Connection>& connection,
                            const Status& status) {
  std::string worker_id;
  {
    std::lock_guard lock(mutex_);
    pipes_.erase(connection.get());
    auto it = registered_.find(connection.get());
    if (it != registered_.end()) {
      worker_id = it->second;
      registered_.erase(it);
      auto slot = workers_.find(worker_id);
      if (slot != workers_.end() && slot->second == connection) {
        workers_.erase(slot);
        gone_[worker_id] = Clock::now();
      }
      if (metrics_.connected_workers != nullptr) metrics_.connected_workers->Set(workers_.size());
    }
  }
  LogInfo("supervisor", "worker connection closed",
          {{"worker", worker_id.empty() ? connection->peer_identity() : worker_id},
           {"status", status}});
}

std::shared_ptr<wire::Connection> WorkerService::Find(const std::string& worker_id) const {
  std::lock_guard lock(mutex_);
  auto it = workers_.find(worker_id);
  return it == workers_.end() ? nullptr : it->second;
}

void WorkerService::Send(const std::string& worker_id, const wire::pb::Envelope& envelope) {
  std::shared_ptr<wire::Connection> connection = Find(worker_id);
  if (connection == nullptr) return;  // delivered again when the worker registers
  if (Status sent = connection->Send(envelope); !sent.ok()) connection->Close(sent);
}

void WorkerService::SendAssign(const std::string& worker_id, const std::string& session,
                               uint32_t replica) {
  DbStateReader reader(&state_);
  StatusOr<std::optional<pb::SessionState>> state =
      reader.GetMessage<pb::SessionState>(kSessions, session);
  if (!state.ok() || !state->has_value()) return;
  const pb::SessionState& current = **state;
  if (replica >= static_cast<uint32_t>(current.replicas_size())) return;
  const pb::ReplicaState& placed = current.replicas(replica);
  if (placed.worker_id() != worker_id) return;  // moved on since
  // A replica that starts below the verified prefix (re-placed or recruited) replays it.
  std::vector<uint32_t> replay;
  if (placed.next_step() < current.verified_steps()) {
    const uint64_t to = std::min<uint64_t>(current.verified_steps(), kMaxReplayTokens);
    StatusOr<std::vector<uint32_t>> tokens = ReadVerifiedTokens(state_, current, session, 0, to);
    if (!tokens.ok()) {
      LogError("supervisor", "cannot read replay tokens",
               {{"session", Short(session)}, {"status", tokens.status()}});
      return;
    }
    replay = std::move(*tokens);
  }
  wire::pb::Envelope envelope;
  *envelope.mutable_assign() = MakeWireAssign(current.request(), replica, placed.epoch(), replay);
  Send(worker_id, envelope);
}

void WorkerService::SendCommit(const std::string& session) {
  DbStateReader reader(&state_);
  StatusOr<std::optional<pb::SessionState>> state =
      reader.GetMessage<pb::SessionState>(kSessions, session);
  if (!state.ok() || !state->has_value()) return;
  const pb::SessionState& current = **state;
  if (current.verified_steps() == 0) return;
  StatusOr<Hash> root = VerifiedRoot(reader, current, session);
  if (!root.ok()) {
    LogError("supervisor", "cannot compute a verified root",
             {{"session", Short(session)}, {"status", root.status()}});
    return;
  }
  wire::pb::Envelope envelope;
  wire::pb::Commit* commit = envelope.mutable_commit();
  commit->set_session_id(session);
  commit->set_verified_steps(current.verified_steps());
  commit->set_verified_root(HashString(*root));
  if (current.phase() == pb::SESSION_PHASE_VERIFIED) {
    commit->set_session_verified(true);
    commit->set_ledger_index(current.ledger_index());
  }
  for (const pb::ReplicaState& replica : current.replicas()) {
    if (!replica.worker_id().empty()) Send(replica.worker_id(), envelope);
  }
}

void WorkerService::SendPendingWork(const std::string& worker_id) {
  DbStateReader reader(&state_);
  StatusOr<std::optional<pb::WorkerState>> worker =
      reader.GetMessage<pb::WorkerState>(kWorkers, worker_id);
  if (!worker.ok() || !worker->has_value()) return;
  if ((*worker)->phase() == pb::WorkerState::PHASE_QUARANTINED) {
    wire::pb::Envelope envelope;
    envelope.mutable_quarantine()->set_reason((*worker)->quarantine_reason());
    Send(worker_id, envelope);
    return;
  }
  for (const std::string& ref : (*worker)->replicas()) {
    const std::string session = ref.substr(0, kSessionIdSize);
    const uint32_t replica = LoadU32(reinterpret_cast<const uint8_t*>(ref.data()) + kSessionIdSize);
    SendAssign(worker_id, session, replica);
    StatusOr<std::optional<pb::Order>> order =
        reader.GetMessage<pb::Order>(kOrders, ReplicaKey(session, replica));
    if (order.ok() && order->has_value() && (*order)->worker_id() == worker_id &&
        (*order)->kind() != pb::ORDER_KIND_REPLACE) {
      wire::pb::Envelope rollback;
      rollback.mutable_rollback()->set_session_id(session);
      rollback.mutable_rollback()->set_replica(replica);
      rollback.mutable_rollback()->set_to_step((*order)->to_step());
      rollback.mutable_rollback()->set_new_epoch((*order)->new_epoch());
      rollback.mutable_rollback()->set_kind(WireKind((*order)->kind()));
      Send(worker_id, rollback);
    }
    SendCommit(session);
  }
}

void WorkerService::Deliver(const Effects& effects) {
  for (const pb::Assign& assign : effects.assignments) {
    SendAssign(assign.worker_id(), assign.session_id(), assign.replica());
  }
  for (const pb::Order& order : effects.orders) {
    if (order.kind() == pb::ORDER_KIND_REPLACE) continue;  // the old worker is gone or quarantined
    wire::pb::Envelope envelope;
    wire::pb::Rollback* rollback = envelope.mutable_rollback();
    rollback->set_session_id(order.session_id());
    rollback->set_replica(order.replica());
    rollback->set_to_step(order.to_step());
    rollback->set_new_epoch(order.new_epoch());
    rollback->set_kind(WireKind(order.kind()));
    Send(order.worker_id(), envelope);
  }
  for (const std::string& session : effects.progressed) SendCommit(session);
  for (const std::string& worker_id : effects.quarantined) {
    std::shared_ptr<wire::Connection> connection = Find(worker_id);
    if (connection == nullptr) continue;
    wire::pb::Envelope envelope;
    envelope.mutable_quarantine()->set_reason("quarantined after repeated divergences");
    connection->Send(envelope).IgnoreError();
    connection->Close();
  }
  // A released worker registers again (and becomes active) on its next connection.
  for (const std::string& worker_id : effects.released) {
    std::shared_ptr<wire::Connection> connection = Find(worker_id);
    if (connection != nullptr) connection->Close(AbortedError("released from quarantine"));
  }
  for (const auto& [worker_id, session] : effects.aborted) {
    Send(worker_id, wire::MakeErrorEnvelope(AbortedError("the session failed; drop its replica"),
                                            AsBytes(session)));
  }
}

std::vector<std::string> WorkerService::TakeLostWorkers(Clock::time_point now,
                                                        std::chrono::milliseconds grace) {
  std::vector<std::string> lost;
  std::lock_guard lock(mutex_);
  for (auto it = gone_.begin(); it != gone_.end();) {
    if (now - it->second >= grace) {
      lost.push_back(it->first);
      it = gone_.erase(it);
    } else {
      ++it;
    }
  }
  return lost;
}

void WorkerService::Stop() {
  std::map<std::string, std::shared_ptr<wire::Connection>> workers;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
    workers.swap(workers_);
  }
  if (listener_ != nullptr) listener_->Stop();
  for (auto& [id, connection] : workers) connection->Close();
}

void WorkerService::SetLogReachable(bool reachable) {
  std::map<std::string, std::shared_ptr<wire::Connection>> workers;
  {
    std::lock_guard lock(mutex_);
    if (log_reachable_ == reachable) return;
    log_reachable_ = reachable;
    if (!reachable) workers = workers_;
  }
  for (auto& [id, connection] : workers) {
    connection->Close(UnavailableError("the supervisor cannot reach its log; connect to another"));
  }
}

size_t WorkerService::connected_workers() const {
  std::lock_guard lock(mutex_);
  return workers_.size();
}

}  // namespace fp::supervisor
