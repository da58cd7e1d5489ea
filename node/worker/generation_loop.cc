// GenerationLoop; see generation_loop.h.
#include "node/worker/generation_loop.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "common/base/log.h"

namespace fp::node::worker {
namespace {

constexpr char kComponent[] = "worker.loop";

std::string Short(const SessionId& id) { return SessionIdToHex(id).substr(0, 12); }

}  // namespace

GenerationLoop::GenerationLoop(std::vector<std::unique_ptr<ModelSlot>> slots,
                               const LoopOptions& options, StreamSink* sink,
                               const WorkerMetrics* metrics)
    : slots_(std::move(slots)),
      options_(options),
      sink_(sink),
      metrics_(metrics),
      admission_futile_(slots_.size(), false),
      step_errors_(slots_.size(), 0),
      broken_(slots_.size(), false) {
  FP_CHECK(!slots_.empty());
  FP_CHECK(options_.max_replicas >= 1);
  FP_CHECK(sink_ != nullptr && metrics_ != nullptr);
}

GenerationLoop::~GenerationLoop() { Stop(); }

void GenerationLoop::Start() {
  FP_CHECK(!thread_.joinable());
  thread_ = std::thread([this] { Run(); });
}

void GenerationLoop::Stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status GenerationLoop::Post(Order order) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return FailedPreconditionError("the generation loop is stopping");
    if (orders_.size() >= kMaxPendingOrders) {
      return ResourceExhaustedError("the worker has " + std::to_string(kMaxPendingOrders) +
                                    " orders waiting");
    }
    orders_.push_back(std::move(order));
  }
  wake_.notify_one();
  return OkStatus();
}

void GenerationLoop::Commit(const SessionId& session, uint64_t verified_steps,
                            const Hash& verified_root, bool session_verified) {
  {
    std::lock_guard lock(mutex_);
    auto it = commits_.find(session);
    if (it == commits_.end()) {
      if (commits_.size() >= kMaxPendingCommits) {
        LogWarn(kComponent, "commit dropped: too many waiting", {{"session", Short(session)}});
        return;
      }
      it = commits_.emplace(session, CommitUpdate{}).first;
    }
    if (verified_steps >= it->second.verified_steps) {
      it->second.verified_steps = verified_steps;
      it->second.verified_root = verified_root;
    }
    it->second.session_verified = it->second.session_verified || session_verified;
  }
  wake_.notify_one();
}

bool GenerationLoop::TakeInbox(bool busy, std::deque<Order>* orders,
                               std::map<SessionId, CommitUpdate>* commits) {
  std::unique_lock lock(mutex_);
  if (!busy) {
    wake_.wait_for(lock, kMaxIdleWait,
                   [&] { return stopping_ || !orders_.empty() || !commits_.empty(); });
  }
  if (stopping_) return false;
  orders->swap(orders_);
  commits->swap(commits_);
  return true;
}

void GenerationLoop::Run() {
  std::deque<Order> orders;
  std::map<SessionId, CommitUpdate> commits;
  bool busy = false;
  while (TakeInbox(busy, &orders, &commits)) {
    if (!orders.empty() || !commits.empty()) {
      // Something changed: a waiting session may fit or a blocked one may move.
      std::fill(admission_futile_.begin(), admission_futile_.end(), false);
    }
    for (Order& order : orders) {
      std::visit([this](auto&& o) { Apply(std::move(o)); }, std::move(order));
    }
    for (const auto& [session, update] : commits) ApplyCommit(session, update);
    orders.clear();
    commits.clear();
    busy = false;
    for (size_t slot = 0; slot < slots_.size(); ++slot) {
      if (!Steppable(slot)) continue;
      StepSlot(slot);
      busy = true;
    }
    UpdateGauges();
  }
}

void GenerationLoop::Apply(AssignOrder order) {
  const SessionId id = order.request.id;
  if (quarantined_) {
    Report(id, FailedPreconditionError("worker is quarantined: " + quarantine_reason_));
    return;
  }
  if (broken_[order.model_index]) {
    Report(id,
           UnavailableError("the engine of model " + slots_[order.model_index]->name + " failed"));
    return;
  }
  auto it = replicas_.find(id);
  if (it != replicas_.end()) {
    Replica& known = it->second;
    if (known.replica != order.replica) {
      Report(id, FailedPreconditionError("this worker already runs replica " +
                                         std::to_string(known.replica) + " of the session"));
    } else if (order.epoch > known.epoch) {
      Restart(id, known, order);
    }
    return;  // otherwise a resend of work the loop already runs (or dropped)
  }
  const auto active = std::count_if(replicas_.begin(), replicas_.end(), [](const auto& entry) {
    return !entry.second.abandoned && !entry.second.finished;
  });
  if (static_cast<uint32_t>(active) >= options_.max_replicas) {
    Report(id, ResourceExhaustedError("worker runs its maximum of " +
                                      std::to_string(options_.max_replicas) + " replicas"));
    return;
  }
  ModelSlot& slot = *slots_[order.model_index];
  if (Status submitted = slot.engine->Submit(order.request); !submitted.ok()) {
    Report(id, submitted);
    return;
  }
  Replica replica;
  replica.slot = order.model_index;
  replica.ordinal = next_ordinal_++;
  replica.replica = order.replica;
  replica.epoch = order.epoch;
  replica.max_unverified_steps = order.max_unverified_steps;
  replica.verified_steps = order.verified_steps;
  if (slot.faults != nullptr) slot.faults->WatchSession(replica.ordinal, order.request.prompt);
  replicas_.emplace(id, replica);
  LogInfo(kComponent, "replica started",
          {{"session", Short(id)},
           {"replica", order.replica},
           {"epoch", order.epoch},
           {"model", slot.name}});
  sink_->Push(ReplicaStarted{id, order.replica, order.epoch, replica.ordinal,
                             order.max_unverified_steps, order.verified_steps});
}

void GenerationLoop::Restart(const SessionId& id, Replica& replica, const AssignOrder& order) {
  ModelSlot& slot = *slots_[replica.slot];
  // Step 0 is always a valid truncation point, running or finished.
  FP_CHECK(slot.engine->Truncate(id, 0, RollbackMode::kRebuild).ok());
  const bool was_abandoned = replica.abandoned;
  replica.epoch = order.epoch;
  replica.rolled_back_this_epoch = false;
  replica.max_unverified_steps = order.max_unverified_steps;
  replica.verified_steps = std::max(replica.verified_steps, order.verified_steps);
  replica.produced = 0;
  replica.finished = false;
  replica.abandoned = false;
  if (slot.faults != nullptr) slot.faults->WatchSession(replica.ordinal, order.request.prompt);
  LogInfo(kComponent, "replica placed again: regenerating from step 0",
          {{"session", Short(id)}, {"replica", order.replica}, {"epoch", order.epoch}});
  if (was_abandoned) {
    sink_->Push(ReplicaStarted{id, replica.replica, replica.epoch, replica.ordinal,
                               replica.max_unverified_steps, replica.verified_steps});
  } else {
    sink_->Push(ReplicaRolledBack{id, replica.replica, replica.epoch, 0, 0});
  }
}

void GenerationLoop::Apply(const RollbackOrder& order) {
  auto it = replicas_.find(order.session);
  if (it == replicas_.end() || it->second.replica != order.replica || it->second.abandoned) {
    Report(order.session, NotFoundError("rollback for replica " + std::to_string(order.replica) +
                                        " which this worker does not run"));
    return;
  }
  Replica& replica = it->second;
  if (order.new_epoch < replica.epoch ||
      (order.new_epoch == replica.epoch && replica.rolled_back_this_epoch)) {
    return;  // stale, or repeated after a reconnect
  }
  uint64_t truncate_to = std::min(order.to_step, replica.produced);
  // A finished session has nothing left to generate, so it must regenerate its last step at least.
  if (replica.finished && truncate_to == replica.produced) {
    LogWarn(kComponent, "rollback to the end of a finished replica: its end cannot be resent",
            {{"session", Short(order.session)}, {"to_step", order.to_step}});
    truncate_to = replica.produced - 1;
  }
  FP_CHECK(slots_[replica.slot]->engine->Truncate(order.session, truncate_to, order.mode).ok());
  replica.epoch = order.new_epoch;
  replica.rolled_back_this_epoch = true;
  replica.produced = truncate_to;
  replica.finished = false;
  const bool rebuild = order.mode == RollbackMode::kRebuild;
  (rebuild ? metrics_->rollbacks_rebuild : metrics_->rollbacks_truncate)->Increment();
  LogInfo(kComponent, "rollback",
          {{"session", Short(order.session)},
           {"replica", order.replica},
           {"to_step", order.to_step},
           {"epoch", order.new_epoch},
           {"kind", rebuild ? "rebuild" : "truncate"}});
  sink_->Push(
      ReplicaRolledBack{order.session, order.replica, order.new_epoch, truncate_to, order.to_step});
}

void GenerationLoop::Apply(const QuarantineOrder& order) {
  LogError(kComponent, "quarantined by the supervisor: stopping every replica",
           {{"reason", order.reason}});
  quarantined_ = true;
  quarantine_reason_ = order.reason;
  std::vector<SessionId> ids;
  for (const auto& [id, replica] : replicas_) {
    if (!replica.abandoned) ids.push_back(id);
  }
  for (const SessionId& id : ids) StopReplica(id, replicas_.at(id));
}

void GenerationLoop::Apply(const AbortOrder& order) {
  auto it = replicas_.find(order.session);
  if (it == replicas_.end() || it->second.abandoned) return;
  LogWarn(kComponent, "the supervisor failed the session: stopping its replica",
          {{"session", Short(order.session)}, {"reason", order.reason}});
  StopReplica(order.session, it->second);
}

void GenerationLoop::Apply(const ReinstateOrder& order) {
  if (!quarantined_) return;
  LogInfo(kComponent, "registration accepted: the quarantine is over",
          {{"supervisor", order.supervisor_id}, {"was", quarantine_reason_}});
  quarantined_ = false;
  quarantine_reason_.clear();
}

void GenerationLoop::ApplyCommit(const SessionId& session, const CommitUpdate& update) {
  auto it = replicas_.find(session);
  if (it == replicas_.end()) return;
  Replica& replica = it->second;
  replica.verified_steps = std::max(replica.verified_steps, update.verified_steps);
  if (!replica.abandoned) {
    sink_->Push(CommitSeen{session, update.verified_steps, update.verified_root});
  }
  if (update.session_verified && !replica.abandoned) StopReplica(session, replica);
}

void GenerationLoop::StopReplica(const SessionId& id, Replica& replica) {
  FP_CHECK(!replica.abandoned);
  sink_->Push(ReplicaStopped{id, replica.replica});
  ModelSlot& slot = *slots_[replica.slot];
  if (!replica.finished) {
    replica.abandoned = true;  // runs to its end with its steps discarded
    return;
  }
  FP_CHECK(slot.engine->Remove(id).ok());
  if (slot.faults != nullptr) slot.faults->UnwatchSession(replica.ordinal);
  replicas_.erase(id);
}

bool GenerationLoop::Blocked(const Replica& replica) const {
  return !replica.abandoned && !replica.finished &&
         replica.produced >= replica.verified_steps + replica.max_unverified_steps;
}

bool GenerationLoop::Steppable(size_t slot) {
  Engine& engine = *slots_[slot]->engine;
  if (broken_[slot] || !engine.HasWork()) return false;
  bool waiting = false;
  for (const auto& [id, replica] : replicas_) {
    if (replica.slot != slot || replica.finished || Blocked(replica)) continue;
    if (replica.stepped_last) return true;  // decoding
    StatusOr<SessionSnapshot> snapshot = engine.GetSession(id);
    if (snapshot.ok() && snapshot->state == SessionState::kRunning) return true;  // prefilling
    waiting = true;
  }
  // Only waiting sessions could move; a step that admitted none will not until something
  // changes (an order, a Commit, a session finishing).
  return waiting && !admission_futile_[slot];
}

void GenerationLoop::StepSlot(size_t slot) {
  Engine& engine = *slots_[slot]->engine;
  for (auto& [id, replica] : replicas_) {
    if (replica.slot == slot) replica.stepped_last = false;
  }
  const size_t waiting_before = engine.stats().waiting;
  outputs_.clear();
  const auto start = std::chrono::steady_clock::now();
  const Status stepped = engine.Step(&outputs_);
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  metrics_->step_latency->Observe(elapsed.count());
  if (!stepped.ok()) {
    HandleStepError(slot, stepped);
    return;
  }
  step_errors_[slot] = 0;
  bool finished = false;
  for (const StepOutput& output : outputs_) {
    finished = finished || output.finish != FinishReason::kNone;
    HandleOutput(slot, output);
  }
  // A finished session frees KV blocks, so a waiting one may fit at the next step.
  admission_futile_[slot] =
      !finished && waiting_before > 0 && engine.stats().waiting == waiting_before;
}

void GenerationLoop::HandleOutput(size_t slot, const StepOutput& output) {
  const SessionId& id = output.leaf.session_id;
  auto it = replicas_.find(id);
  FP_CHECK(it != replicas_.end());  // every engine session is a replica of this loop
  Replica& replica = it->second;
  FP_CHECK(output.leaf.step == replica.produced);
  replica.stepped_last = true;
  const bool finished = output.finish != FinishReason::kNone;
  Engine& engine = *slots_[slot]->engine;
  if (replica.abandoned) {
    ++replica.produced;
    if (!finished) return;
    FP_CHECK(engine.Remove(id).ok());
    if (slots_[slot]->faults != nullptr) slots_[slot]->faults->UnwatchSession(replica.ordinal);
    replicas_.erase(it);
    return;
  }
  if (!finished && Blocked(replica)) {
    // Backpressure: take the step back; it is regenerated, identically, once a Commit allows.
    FP_CHECK(engine.Truncate(id, output.leaf.step, RollbackMode::kKeepCache).ok());
    metrics_->paused_steps->Increment();
    return;
  }
  ++replica.produced;
  replica.finished = finished;
  metrics_->tokens_generated->Increment();
  sink_->Push(StepRecord{id, replica.replica, replica.epoch, output.leaf.step, output.leaf.token_id,
                         output.leaf.state_digest, finished});
}

void GenerationLoop::HandleStepError(size_t slot, const Status& status) {
  ModelSlot& model = *slots_[slot];
  LogError(kComponent, "engine step failed", {{"model", model.name}, {"status", status}});
  std::vector<SessionId> ids;
  for (const auto& [id, replica] : replicas_) {
    if (replica.slot == slot) ids.push_back(id);
  }
  if (++step_errors_[slot] >= kMaxConsecutiveStepErrors) {
    LogError(kComponent, "giving up on the engine", {{"model", model.name}});
    broken_[slot] = true;
    for (const SessionId& id : ids) {
      Replica& replica = replicas_.at(id);
      if (!replica.abandoned) {
        Report(id, UnavailableError("the worker's engine failed: " + status.ToString()));
        sink_->Push(ReplicaStopped{id, replica.replica});
      }
      replicas_.erase(id);
    }
    return;
  }
  // The failed batch left its cache rows unspecified: rebuild every unfinished session.
  for (const SessionId& id : ids) {
    const Replica& replica = replicas_.at(id);
    if (replica.finished) continue;
    FP_CHECK(model.engine->Truncate(id, replica.produced, RollbackMode::kRebuild).ok());
  }
}

void GenerationLoop::Report(const SessionId& session, Status status) {
  LogWarn(kComponent, "order refused", {{"session", Short(session)}, {"status", status}});
  sink_->Push(ErrorReport{session, std::move(status)});
}

void GenerationLoop::UpdateGauges() {
  uint64_t lead = 0;
  uint32_t active = 0;
  for (const auto& [id, replica] : replicas_) {
    if (replica.abandoned) continue;
    if (!replica.finished) ++active;
    if (replica.produced > replica.verified_steps) {
      lead = std::max(lead, replica.produced - replica.verified_steps);
    }
  }
  active_replicas_.store(active);
  metrics_->unverified_lead->Set(static_cast<double>(lead));
  metrics_->active_replicas->Set(static_cast<double>(active));
}

}  // namespace fp::node::worker
