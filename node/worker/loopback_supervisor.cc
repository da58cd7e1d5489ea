// LoopbackSupervisor; see loopback_supervisor.h.
#include "node/worker/loopback_supervisor.h"

#include <algorithm>

#include "common/merkle/merkle.h"
#include "common/wire/tls.h"

namespace fp::node::worker {
namespace {

namespace asio = boost::asio;
constexpr std::chrono::milliseconds kWaitPoll{10};
// LeafBatches kept for received(); later ones are checked and acknowledged but not kept.
constexpr size_t kMaxRecordedBatches = 1 << 16;

std::string WireId(const SessionId& session) { return std::string(session.begin(), session.end()); }

Hash RootOf(const std::vector<leaf::StepLeaf>& leaves, uint64_t size) {
  merkle::Frontier frontier;
  for (uint64_t i = 0; i < size; ++i) frontier.Append(leaf::StepLeafHash(leaves[i]), nullptr);
  return frontier.Root();
}

}  // namespace

StatusOr<std::unique_ptr<LoopbackSupervisor>> LoopbackSupervisor::Start(
    const LoopbackOptions& options) {
  std::unique_ptr<LoopbackSupervisor> server(new LoopbackSupervisor(options));
  server->auto_ack_ = options.auto_ack;
  server->auto_commit_ = options.auto_commit;
  FP_ASSIGN_OR_RETURN(server->tls_, wire::MakeServerTlsContext(wire::TlsFilesForNode(
                                        options.certs_dir, options.server_name)));
  FP_ASSIGN_OR_RETURN(
      server->listener_,
      wire::Listener::Create(server->io_, *server->tls_, {asio::ip::make_address("127.0.0.1"), 0},
                             server->Handlers(), wire::ConnectionOptions{}));
  server->port_ = server->listener_->local_endpoint().port();
  server->listener_->Start();
  server->thread_ = std::thread([raw = server.get()] { raw->io_.run(); });
  return server;
}

LoopbackSupervisor::~LoopbackSupervisor() {
  listener_->Stop();
  DropConnection();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

wire::ConnectionHandlers LoopbackSupervisor::Handlers() {
  wire::ConnectionHandlers handlers;
  handlers.on_envelope = [this](const std::shared_ptr<wire::Connection>& connection,
                                wire::pb::Envelope envelope) { OnEnvelope(connection, envelope); };
  handlers.on_close = [this](const std::shared_ptr<wire::Connection>& connection, const Status&) {
    std::lock_guard lock(mutex_);
    if (worker_ == connection) worker_.reset();
    changed_.notify_all();
  };
  return handlers;
}

void LoopbackSupervisor::OnEnvelope(const std::shared_ptr<wire::Connection>& connection,
                                    const wire::pb::Envelope& envelope) {
  switch (envelope.body_case()) {
    case wire::pb::Envelope::kRegistration:
      return OnRegister(connection, envelope.registration().max_replicas());
    case wire::pb::Envelope::kLeafBatch:
      return OnLeafBatch(connection, envelope.leaf_batch());
    case wire::pb::Envelope::kHeartbeat: {
      wire::pb::Envelope echo;
      echo.mutable_heartbeat()->set_sequence(envelope.heartbeat().sequence());
      connection->Send(echo).IgnoreError();
      return;
    }
    case wire::pb::Envelope::kError: {
      std::lock_guard lock(mutex_);
      errors_.push_back(envelope.error());
      changed_.notify_all();
      return;
    }
    default:
      connection->Close(InvalidArgumentError("a worker may not send that"));
  }
}

void LoopbackSupervisor::OnRegister(const std::shared_ptr<wire::Connection>& connection,
                                    uint32_t max_replicas) {
  std::shared_ptr<wire::Connection> replaced;
  {
    std::lock_guard lock(mutex_);
    replaced = std::exchange(worker_, connection);
    ++registrations_;
    wire::pb::Envelope accepted;
    accepted.mutable_register_ack()->set_supervisor_id(options_.server_name);
    accepted.mutable_register_ack()->set_accepted(true);
    accepted.mutable_register_ack()->set_max_replicas(max_replicas);
    SendLocked(accepted).IgnoreError();
    for (const auto& [session, replica] : sessions_) {
      wire::pb::Envelope assign;
      *assign.mutable_assign() = replica.assign;
      SendLocked(assign).IgnoreError();
      if (replica.rollback.has_value()) {
        wire::pb::Envelope rollback;
        *rollback.mutable_rollback() = *replica.rollback;
        SendLocked(rollback).IgnoreError();
      }
      if (replica.verified_steps > 0) SendLocked(CommitEnvelope(session, replica)).IgnoreError();
    }
    changed_.notify_all();
  }
  if (replaced != nullptr && replaced != connection) replaced->Close();
}

std::string LoopbackSupervisor::Check(const wire::pb::LeafBatch& batch) const {
  auto it = sessions_.find(batch.session_id());
  if (it == sessions_.end()) return "unknown session";
  const Replica& replica = it->second;
  const uint64_t count = static_cast<uint64_t>(batch.token_ids_size());
  if (batch.replica() != replica.assign.replica()) return "no such replica";
  if (batch.epoch() != replica.assign.epoch()) return "stale epoch";
  if (batch.first_step() != replica.leaves.size()) {
    return "first step " + std::to_string(batch.first_step()) + " is not the next step " +
           std::to_string(replica.leaves.size());
  }
  if (replica.finished) return "replica already finished";
  if (batch.first_step() + count > replica.assign.sampling().max_tokens()) {
    return "steps beyond max_tokens";
  }
  if (batch.first_step() + count > replica.verified_steps + replica.assign.max_unverified_steps()) {
    return "steps beyond the unverified window";
  }
  return "";
}

void LoopbackSupervisor::OnLeafBatch(const std::shared_ptr<wire::Connection>& connection,
                                     const wire::pb::LeafBatch& batch) {
  std::lock_guard lock(mutex_);
  if (received_.size() < kMaxRecordedBatches) received_.push_back(batch);
  if (const std::string problem = Check(batch); !problem.empty()) {
    rejections_.push_back(problem);
  } else {
    Replica& replica = sessions_.at(batch.session_id());
    leaf::StepLeaf step_leaf;
    std::copy_n(batch.session_id().begin(), kSessionIdSize, step_leaf.session_id.begin());
    for (int i = 0; i < batch.token_ids_size(); ++i) {
      step_leaf.step = batch.first_step() + static_cast<uint64_t>(i);
      step_leaf.token_id = batch.token_ids(i);
      const ByteSpan digest = wire::LeafDigest(batch, static_cast<size_t>(i));
      std::copy(digest.begin(), digest.end(), step_leaf.state_digest.begin());
      replica.leaves.push_back(step_leaf);
      replica.tree.Append(leaf::StepLeafHash(step_leaf), nullptr);
    }
    if (batch.last()) {
      replica.finished = true;
      replica.claimed_root = batch.session_root();
    }
    if (auto_commit_) {
      replica.verified_steps = replica.leaves.size();
      connection->Send(CommitEnvelope(batch.session_id(), replica)).IgnoreError();
    }
  }
  if (auto_ack_) {
    wire::pb::Envelope ack;
    ack.mutable_ack()->set_session_id(batch.session_id());
    ack.mutable_ack()->set_replica(batch.replica());
    ack.mutable_ack()->set_epoch(batch.epoch());
    ack.mutable_ack()->set_first_step(batch.first_step());
    ack.mutable_ack()->set_step_count(static_cast<uint32_t>(batch.token_ids_size()));
    ack.mutable_ack()->set_log_index(received_.size());
    connection->Send(ack).IgnoreError();
  }
  changed_.notify_all();
}

wire::pb::Envelope LoopbackSupervisor::CommitEnvelope(const std::string& session,
                                                      const Replica& replica) const {
  wire::pb::Envelope envelope;
  wire::pb::Commit* commit = envelope.mutable_commit();
  commit->set_session_id(session);
  commit->set_verified_steps(replica.verified_steps);
  const Hash root = replica.verified_steps == replica.tree.size()
                        ? replica.tree.Root()
                        : RootOf(replica.leaves, replica.verified_steps);
  commit->set_verified_root(std::string(root.begin(), root.end()));
  if (options_.verify_sessions && replica.finished &&
      replica.verified_steps == replica.leaves.size() &&
      replica.claimed_root == commit->verified_root()) {
    commit->set_session_verified(true);
    commit->set_ledger_index(1);
  }
  return envelope;
}

Status LoopbackSupervisor::SendLocked(const wire::pb::Envelope& envelope) {
  if (worker_ == nullptr) return FailedPreconditionError("no worker is connected");
  return worker_->Send(envelope);
}

Status LoopbackSupervisor::Assign(const wire::pb::Assign& assign) {
  std::lock_guard lock(mutex_);
  Replica& replica = sessions_[assign.session_id()];
  replica = Replica{};
  replica.assign = assign;
  replica.verified_steps = static_cast<uint64_t>(assign.replay_token_ids_size());
  wire::pb::Envelope envelope;
  *envelope.mutable_assign() = assign;
  return SendLocked(envelope);
}

Status LoopbackSupervisor::Rollback(const SessionId& session, uint64_t to_step,
                                    wire::pb::RollbackKind kind) {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(WireId(session));
  if (it == sessions_.end()) return NotFoundError("unknown session");
  Replica& replica = it->second;
  replica.assign.set_epoch(replica.assign.epoch() + 1);
  replica.leaves.resize(std::min<uint64_t>(replica.leaves.size(), to_step));
  replica.tree = merkle::Frontier();
  for (const leaf::StepLeaf& kept : replica.leaves) {
    replica.tree.Append(leaf::StepLeafHash(kept), nullptr);
  }
  replica.verified_steps = std::min<uint64_t>(replica.verified_steps, to_step);
  replica.finished = false;
  replica.claimed_root.clear();
  wire::pb::Rollback order;
  order.set_session_id(WireId(session));
  order.set_replica(replica.assign.replica());
  order.set_to_step(to_step);
  order.set_new_epoch(replica.assign.epoch());
  order.set_kind(kind);
  replica.rollback = order;
  wire::pb::Envelope envelope;
  *envelope.mutable_rollback() = order;
  return SendLocked(envelope);
}

Status LoopbackSupervisor::CommitNow(const SessionId& session, uint64_t verified_steps) {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(WireId(session));
  if (it == sessions_.end()) return NotFoundError("unknown session");
  it->second.verified_steps = std::min<uint64_t>(verified_steps, it->second.leaves.size());
  return SendLocked(CommitEnvelope(it->first, it->second));
}

Status LoopbackSupervisor::Send(const wire::pb::Envelope& envelope) {
  std::lock_guard lock(mutex_);
  return SendLocked(envelope);
}

void LoopbackSupervisor::DropConnection() {
  std::shared_ptr<wire::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    connection = std::move(worker_);
    worker_.reset();
  }
  if (connection != nullptr) connection->Close(AbortedError("dropped by the loopback supervisor"));
}

void LoopbackSupervisor::SetAutoAck(bool on) {
  std::lock_guard lock(mutex_);
  auto_ack_ = on;
}

void LoopbackSupervisor::SetAutoCommit(bool on) {
  std::lock_guard lock(mutex_);
  auto_commit_ = on;
}

bool LoopbackSupervisor::WaitUntil(const std::function<bool()>& done,
                                   std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::unique_lock lock(mutex_);
    // A change between done() and this wait is seen at the next poll.
    changed_.wait_for(lock, kWaitPoll);
  }
  return true;
}

std::vector<wire::pb::LeafBatch> LoopbackSupervisor::received() const {
  std::lock_guard lock(mutex_);
  return received_;
}

std::optional<LoopbackSupervisor::Replica> LoopbackSupervisor::replica(
    const SessionId& session) const {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(WireId(session));
  if (it == sessions_.end()) return std::nullopt;
  return it->second;
}

size_t LoopbackSupervisor::finished_sessions() const {
  std::lock_guard lock(mutex_);
  return static_cast<size_t>(std::count_if(
      sessions_.begin(), sessions_.end(), [](const auto& entry) { return entry.second.finished; }));
}

std::vector<std::string> LoopbackSupervisor::rejections() const {
  std::lock_guard lock(mutex_);
  return rejections_;
}

std::vector<wire::pb::Error> LoopbackSupervisor::errors() const {
  std::lock_guard lock(mutex_);
  return errors_;
}

int LoopbackSupervisor::registrations() const {
  std::lock_guard lock(mutex_);
  return registrations_;
}

bool LoopbackSupervisor::connected() const {
  std::lock_guard lock(mutex_);
  return worker_ != nullptr;
}

}  // namespace fp::node::worker
