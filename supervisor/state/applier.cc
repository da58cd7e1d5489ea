// The deterministic applier; see applier.h. Each Apply creates a Run, which holds the
// transaction and write-back caches of the sessions and workers it touches, applies the records
// one by one and commits once.
#include "supervisor/state/applier.h"

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "common/leaf/step_leaf.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/cosignature.h"
#include "common/wire/envelope.h"
#include "supervisor/state/comparator.h"
#include "supervisor/state/session_request.h"
#include "supervisor/state/state_txn.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

std::string ReplicaRef(const std::string& session, uint32_t replica) {
  return ReplicaKey(session, replica);
}

bool IsTerminal(const pb::SessionState& session) {
  return session.phase() == pb::SESSION_PHASE_VERIFIED ||
         session.phase() == pb::SESSION_PHASE_FAILED;
}

Hash TokensHash(std::span<const uint32_t> tokens) {
  Bytes bytes;
  bytes.reserve(tokens.size() * 4);
  for (uint32_t token : tokens) AppendU32(bytes, token);
  return Sha256(bytes);
}

std::string Short(const std::string& session) { return HexEncode(AsBytes(session)).substr(0, 12); }

}  // namespace

// One Apply: the transaction, the caches and the effects. Members mirror the Applier's in-memory
// state and are copied back only after a successful commit.
class Applier::Run {
 public:
  Run(Applier* applier)
      : applier_(applier),
        txn_(applier->state_),
        clock_ms_(applier->clock_ms_),
        ledger_(applier->ledger_),
        last_checkpoint_size_(applier->last_checkpoint_size_),
        has_checkpoint_(applier->has_checkpoint_) {}

  Status ApplyEntry(const LogEntry& entry);
  Status Commit(uint64_t applied);
  Effects& effects() { return effects_; }

 private:
  // Record handlers. A rejected record returns OK after Reject(); errors are storage errors.
  Status ApplyAdmit(const pb::Admit& admit);
  Status ApplyAssign(const pb::Assign& assign);
  Status ApplyLeafBatch(const pb::LeafBatch& batch);
  Status ApplyDeadline(const pb::Deadline& deadline);
  Status ApplyWorkerRegistered(const pb::WorkerRegistered& registered);
  Status ApplyWorkerLost(const pb::WorkerLost& lost);
  Status ApplyCheckpointRequest();
  Status ApplyWorkerReleased(const pb::WorkerReleased& released);
  Status ApplyPlacementExpired(const pb::PlacementExpired& expired);
  Status ApplyCosignerJoined(const pb::CosignerJoined& joined);
  Status ApplyCosignature(const pb::Cosignature& cosignature);
  // Why a cosignature cannot be stored (empty: it can, and `key_id` is its cosigner's key ID),
  // judged against the registered cosigners and the checkpoint body this applier recorded.
  StatusOr<std::string> CosignatureProblem(const pb::Cosignature& cosignature, uint32_t& key_id);
  // The session (not terminal) starts waiting for placement now, unless it already waits.
  void EnterWaiting(pb::SessionState& session);

  Status AppendLeaves(const std::string& id, pb::SessionState& session, uint32_t index,
                      const pb::LeafBatch& batch);
  // Compares the replicas at the verified prefix until the comparison must wait.
  Status Compare(const std::string& id, pb::SessionState& session);
  Status Diverge(const std::string& id, pb::SessionState& session, uint64_t step,
                 const StepDecision& decision, std::span<const std::optional<StoredLeaf>> leaves,
                 std::span<const Vote> votes);
  Status OrderRollback(const std::string& id, pb::SessionState& session, uint32_t index,
                       uint64_t step, pb::OrderKind kind, uint32_t count);
  Status ReplaceReplica(const std::string& id, pb::SessionState& session, uint32_t index);
  Status Quarantine(const std::string& worker_id, const std::string& reason);
  Status CompleteSession(const std::string& id, pb::SessionState& session);
  StatusOr<uint64_t> AppendLedger(const pb::LedgerEntry& entry);
  void PutOrder(const std::string& id, uint32_t index, pb::OrderKind kind, uint64_t to_step,
                const pb::ReplicaState& replica, const std::string& worker_id);

  // Cached reads with write-back at Commit. nullptr when absent.
  StatusOr<pb::SessionState*> Session(const std::string& id);
  StatusOr<pb::WorkerState*> Worker(const std::string& id);
  void MarkSession(const std::string& id) { dirty_sessions_.insert(id); }
  void MarkWorker(const std::string& id) { dirty_workers_.insert(id); }
  void Progressed(const std::string& id) { progressed_.insert(id); }
  StatusOr<std::optional<StoredLeaf>> Leaf(const std::string& id, uint32_t replica, uint64_t step);
  StatusOr<Vote> ReplicaVote(const std::string& id, const pb::SessionState& session, uint32_t index,
                             uint64_t step, std::optional<StoredLeaf>& leaf);
  void DetachReplica(const std::string& worker_id, const std::string& id, uint32_t index);
  void Reject(std::string reason);

  Applier* applier_;  // borrowed
  StateTxn txn_;
  Effects effects_;
  uint64_t position_ = 0;  // of the record being applied
  uint64_t clock_ms_;
  merkle::Frontier ledger_;
  uint64_t last_checkpoint_size_;
  bool has_checkpoint_;
  std::map<std::string, std::optional<pb::SessionState>> sessions_;
  std::map<std::string, std::optional<pb::WorkerState>> workers_;
  std::set<std::string> dirty_sessions_;
  std::set<std::string> dirty_workers_;
  std::set<std::string> progressed_;
  std::map<std::string, pb::SessionPhase> original_phases_;  // as first read in this Run
};

namespace {

void AddPhase(pb::PhaseCounts& counts, pb::SessionPhase phase, int64_t delta) {
  switch (phase) {
    case pb::SESSION_PHASE_WAITING:
      counts.set_waiting(counts.waiting() + delta);
      break;
    case pb::SESSION_PHASE_RUNNING:
      counts.set_running(counts.running() + delta);
      break;
    case pb::SESSION_PHASE_VERIFIED:
      counts.set_verified(counts.verified() + delta);
      break;
    case pb::SESSION_PHASE_FAILED:
      counts.set_failed(counts.failed() + delta);
      break;
    default:
      break;
  }
}

}  // namespace

void Applier::Run::Reject(std::string reason) {
  ++effects_.rejected;
  if (effects_.rejections.size() < kMaxReportedRejections) {
    effects_.rejections.push_back(fmt::format("position {}: {}", position_, reason));
  }
}

StatusOr<pb::SessionState*> Applier::Run::Session(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    FP_ASSIGN_OR_RETURN(std::optional<pb::SessionState> stored,
                        txn_.GetMessage<pb::SessionState>(kSessions, id));
    original_phases_[id] = stored.has_value() ? stored->phase() : pb::SESSION_PHASE_UNSPECIFIED;
    it = sessions_.emplace(id, std::move(stored)).first;
  }
  return it->second.has_value() ? &*it->second : nullptr;
}

StatusOr<pb::WorkerState*> Applier::Run::Worker(const std::string& id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) {
    FP_ASSIGN_OR_RETURN(std::optional<pb::WorkerState> stored,
                        txn_.GetMessage<pb::WorkerState>(kWorkers, id));
    it = workers_.emplace(id, std::move(stored)).first;
  }
  return it->second.has_value() ? &*it->second : nullptr;
}

StatusOr<std::optional<StoredLeaf>> Applier::Run::Leaf(const std::string& id, uint32_t replica,
                                                       uint64_t step) {
  FP_ASSIGN_OR_RETURN(const std::string* chunk,
                      txn_.Peek(kLeaves, LeafChunkKey(id, replica, LeafChunkIndex(step))));
  if (chunk == nullptr) return std::optional<StoredLeaf>();
  StatusOr<StoredLeaf> leaf = LeafFromChunk(*chunk, step);
  if (leaf.status().code() == StatusCode::kNotFound) return std::optional<StoredLeaf>();
  FP_RETURN_IF_ERROR(leaf.status());
  return std::optional<StoredLeaf>(*leaf);
}

Status Applier::Run::ApplyEntry(const LogEntry& entry) {
  position_ = entry.position;
  const pb::LogRecord& record = entry.record;
  switch (record.body_case()) {
    case pb::LogRecord::kAdmit:
      return ApplyAdmit(record.admit());
    case pb::LogRecord::kAssign:
      return ApplyAssign(record.assign());
    case pb::LogRecord::kLeafBatch:
      return ApplyLeafBatch(record.leaf_batch());
    case pb::LogRecord::kTick:
      clock_ms_ = std::max(clock_ms_, record.tick().unix_ms());
      return OkStatus();
    case pb::LogRecord::kDeadline:
      return ApplyDeadline(record.deadline());
    case pb::LogRecord::kWorkerRegistered:
      return ApplyWorkerRegistered(record.worker_registered());
    case pb::LogRecord::kWorkerLost:
      return ApplyWorkerLost(record.worker_lost());
    case pb::LogRecord::kCheckpointRequest:
      return ApplyCheckpointRequest();
    case pb::LogRecord::kWorkerReleased:
      return ApplyWorkerReleased(record.worker_released());
    case pb::LogRecord::kPlacementExpired:
      return ApplyPlacementExpired(record.placement_expired());
    case pb::LogRecord::kCosignerJoined:
      return ApplyCosignerJoined(record.cosigner_joined());
    case pb::LogRecord::kCosignature:
      return ApplyCosignature(record.cosignature());
    case pb::LogRecord::BODY_NOT_SET:
      break;
  }
  Reject("record has no body this version knows");
  return OkStatus();
}

Status Applier::Run::ApplyAdmit(const pb::Admit& admit) {
  const pb::SessionRequest& request = admit.request();
  if (Status valid = ValidateSessionRequest(request); !valid.ok()) {
    Reject("admit: " + std::string(valid.message()));
    return OkStatus();
  }
  const std::string& id = request.session_id();
  FP_ASSIGN_OR_RETURN(pb::SessionState * existing, Session(id));
  if (existing != nullptr) {
    Reject("admit: session " + Short(id) + " exists");
    return OkStatus();
  }
  // An anchor set enters the ledger before any worker may use it.
  const std::string& anchors = request.anchor_set_hash();
  if (anchors != std::string(kHashSize, '\0')) {
    FP_ASSIGN_OR_RETURN(std::optional<std::string> recorded,
                        txn_.Get(kLedger, LedgerAnchorKey(anchors)));
    if (!recorded.has_value()) {
      pb::LedgerEntry entry;
      entry.mutable_anchor_set()->set_anchor_set_hash(anchors);
      entry.mutable_anchor_set()->set_model(request.model());
      entry.mutable_anchor_set()->set_first_session_unix_ms(clock_ms_);
      FP_ASSIGN_OR_RETURN(uint64_t index, AppendLedger(entry));
      txn_.Put(kLedger, LedgerAnchorKey(anchors), U64Key(index));
    }
  }
  pb::SessionState& session = sessions_[id].emplace();
  *session.mutable_request() = request;
  session.set_phase(pb::SESSION_PHASE_WAITING);
  session.set_waiting_since_unix_ms(clock_ms_);
  session.set_admitted_position(position_);
  session.set_admitted_unix_ms(clock_ms_);
  for (uint32_t i = 0; i < request.replicas(); ++i) session.add_replicas();
  MarkSession(id);
  Progressed(id);
  return OkStatus();
}

Status Applier::Run::ApplyAssign(const pb::Assign& assign) {
  const std::string& id = assign.session_id();
  FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(assign.worker_id()));
  std::string problem;
  if (session == nullptr || IsTerminal(*session)) {
    problem = "session is unknown or finished";
  } else if (assign.replica() >= static_cast<uint32_t>(session->replicas_size())) {
    problem = "no such replica";
  } else if (!session->replicas(assign.replica()).worker_id().empty() ||
             session->replicas(assign.replica()).epoch() != assign.epoch() ||
             session->replicas(assign.replica()).placement_attempts() != assign.attempt()) {
    problem = "replica is placed, or the epoch or the attempt is stale";
  }
  if (!problem.empty()) {
    Reject("assign " + Short(id) + ": " + problem);
    return OkStatus();
  }
  if (worker == nullptr || worker->phase() != pb::WorkerState::PHASE_ACTIVE) {
    problem = "worker is unknown or not active";
  } else if (worker->replicas_size() >= static_cast<int>(worker->registration().max_replicas())) {
    problem = "worker is full";
  } else if (std::find(worker->registration().models().begin(),
                       worker->registration().models().end(),
                       session->request().model()) == worker->registration().models().end()) {
    problem = "worker does not serve the model";
  }
  for (int i = 0; problem.empty() && i < session->replicas_size(); ++i) {
    const pb::ReplicaState& other = session->replicas(i);
    if (other.worker_id().empty()) continue;
    FP_ASSIGN_OR_RETURN(pb::WorkerState * peer, Worker(other.worker_id()));
    if (other.worker_id() == assign.worker_id()) problem = "worker already runs a replica";
    if (peer != nullptr && peer->registration().numerics_profile_hash() !=
                               worker->registration().numerics_profile_hash()) {
      problem = "worker's numerics profile differs from the session's other replicas";
    }
  }
  pb::ReplicaState& replica = *session->mutable_replicas(assign.replica());
  if (!problem.empty()) {
    // The leader decided on a view this record no longer fits: the replica moves to its next
    // placement attempt, whose Assign has a key of its own.
    replica.set_placement_attempts(replica.placement_attempts() + 1);
    MarkSession(id);
    Reject("assign " + Short(id) + ": " + problem);
    return OkStatus();
  }
  replica.set_worker_id(assign.worker_id());
  worker->add_replicas(ReplicaRef(id, assign.replica()));
  const bool all_placed =
      std::all_of(session->replicas().begin(), session->replicas().end(),
                  [](const pb::ReplicaState& r) { return !r.worker_id().empty(); });
  if (all_placed) session->set_phase(pb::SESSION_PHASE_RUNNING);
  MarkSession(id);
  MarkWorker(assign.worker_id());
  Progressed(id);
  effects_.assignments.push_back(assign);
  return OkStatus();
}

Status Applier::Run::ApplyLeafBatch(const pb::LeafBatch& batch) {
  const std::string& id = batch.session_id();
  FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
  const size_t count = static_cast<size_t>(batch.token_ids_size());
  std::string problem;
  if (session == nullptr || IsTerminal(*session)) {
    problem = "session is unknown or finished";
  } else if (batch.replica() >= static_cast<uint32_t>(session->replicas_size())) {
    problem = "no such replica";
  } else if (session->replicas(batch.replica()).worker_id() != batch.worker_id()) {
    problem = "replica is not placed on this worker";
  } else if (session->replicas(batch.replica()).epoch() != batch.epoch()) {
    problem = "stale epoch";
  } else if (batch.window_steps() > 1) {
    problem = "window mode is not supported";
  } else if (count == 0 || count > wire::kMaxLeafBatchSteps ||
             batch.state_digests().size() != count * kHashSize) {
    problem = "malformed leaves";
  } else if (batch.first_step() != session->replicas(batch.replica()).next_step()) {
    problem = fmt::format("first step {} is not the next step {}", batch.first_step(),
                          session->replicas(batch.replica()).next_step());
  } else if (session->replicas(batch.replica()).finished()) {
    problem = "replica already finished";
  } else if (batch.first_step() + count > session->request().sampling().max_tokens()) {
    problem = "steps beyond max_tokens";
  } else if (batch.first_step() + count >
             session->verified_steps() + session->request().max_unverified_steps()) {
    problem = "steps beyond the unverified window";
  } else if (batch.last() && batch.session_root().size() != kHashSize) {
    problem = "last batch without a 32-byte session root";
  }
  if (!problem.empty()) {
    Reject(fmt::format("leaves {}/{}: {}", Short(id), batch.replica(), problem));
    return OkStatus();
  }
  FP_RETURN_IF_ERROR(AppendLeaves(id, *session, batch.replica(), batch));
  MarkSession(id);
  return Compare(id, *session);
}

Status Applier::Run::AppendLeaves(const std::string& id, pb::SessionState& session, uint32_t index,
                                  const pb::LeafBatch& batch) {
  pb::ReplicaState& replica = *session.mutable_replicas(index);
  FP_ASSIGN_OR_RETURN(merkle::Frontier frontier,
                      FrontierFromBytes(replica.stored(), replica.frontier()));
  leaf::StepLeaf step_leaf;
  std::copy(id.begin(), id.end(), step_leaf.session_id.begin());
  const uint64_t verified = session.verified_steps();
  for (int i = 0; i < batch.token_ids_size(); ++i) {
    const uint64_t step = batch.first_step() + i;
    step_leaf.step = step;
    step_leaf.token_id = batch.token_ids(i);
    std::copy_n(batch.state_digests().data() + i * kHashSize, kHashSize,
                step_leaf.state_digest.begin());
    StoredLeaf leaf{leaf::StepLeafHash(step_leaf), step_leaf.token_id, step_leaf.state_digest};
    if (step < verified) {
      // Replaying the verified prefix: the leaf must equal the verified one, which this replica
      // still stores (re-placed) or another replica does (recruited).
      uint32_t reference = index;
      if (step >= replica.stored()) {
        for (uint32_t r = 0; r < static_cast<uint32_t>(session.replicas_size()); ++r) {
          if (r != index && session.replicas(r).stored() >= verified) reference = r;
        }
        FP_CHECK(reference != index);  // a verified prefix was verified by someone
      }
      FP_ASSIGN_OR_RETURN(std::optional<StoredLeaf> expected, Leaf(id, reference, step));
      if (!expected.has_value()) return DataLossError("verified leaf missing");
      if (expected->leaf_hash != leaf.leaf_hash) {
        StepDecision decision{StepDecision::Kind::kDiverge, reference, {index}};
        std::vector<std::optional<StoredLeaf>> leaves(session.replicas_size());
        std::vector<Vote> votes(session.replicas_size());
        leaves[reference] = expected;
        votes[reference] = Vote::Leaf(expected->leaf_hash);
        leaves[index] = leaf;
        votes[index] = Vote::Leaf(leaf.leaf_hash);
        FrontierToBytes(frontier, replica.mutable_frontier());
        return Diverge(id, session, step, decision, leaves, votes);
      }
      if (step >= replica.stored()) {
        FP_RETURN_IF_ERROR(AppendReplicaLeaf(txn_, id, index, frontier, leaf));
        replica.set_stored(frontier.size());
      }
    } else {
      FP_RETURN_IF_ERROR(AppendReplicaLeaf(txn_, id, index, frontier, leaf));
      replica.set_stored(frontier.size());
      ++effects_.leaves;
    }
    replica.set_next_step(step + 1);
  }
  FrontierToBytes(frontier, replica.mutable_frontier());
  if (batch.last()) {
    replica.set_finished(true);
    replica.set_claimed_root(batch.session_root());
  }
  return OkStatus();
}

StatusOr<Vote> Applier::Run::ReplicaVote(const std::string& id, const pb::SessionState& session,
                                         uint32_t index, uint64_t step,
                                         std::optional<StoredLeaf>& leaf) {
  leaf.reset();
  const pb::ReplicaState& replica = session.replicas(index);
  // A replica votes once it holds its own leaves up to `step`: not while it waits for placement
  // or replays the verified prefix.
  const bool in_sync = !replica.worker_id().empty() && replica.next_step() >= replica.stored() &&
                       replica.stored() >= step;
  if (!in_sync) return Vote::Missing();
  if (replica.stored() > step) {
    FP_ASSIGN_OR_RETURN(leaf, Leaf(id, index, step));
    if (!leaf.has_value()) return DataLossError(fmt::format("leaf {} of a replica missing", step));
    return Vote::Leaf(leaf->leaf_hash);
  }
  if (!replica.finished()) return Vote::Missing();
  FP_ASSIGN_OR_RETURN(merkle::Frontier frontier,
                      FrontierFromBytes(replica.stored(), replica.frontier()));
  return replica.claimed_root() == HashString(frontier.Root()) ? Vote::End() : Vote::BadEnd();
}

Status Applier::Run::Compare(const std::string& id, pb::SessionState& session) {
  const uint32_t replicas = static_cast<uint32_t>(session.replicas_size());
  std::vector<Vote> votes(replicas);
  std::vector<std::optional<StoredLeaf>> leaves(replicas);
  while (!IsTerminal(session)) {
    const uint64_t step = session.verified_steps();
    for (uint32_t i = 0; i < replicas; ++i) {
      FP_ASSIGN_OR_RETURN(votes[i], ReplicaVote(id, session, i, step, leaves[i]));
    }
    StepDecision decision = DecideStep(votes);
    if (decision.kind == StepDecision::Kind::kWait) return OkStatus();
    if (decision.kind == StepDecision::Kind::kDiverge) {
      return Diverge(id, session, step, decision, leaves, votes);
    }
    if (votes[*decision.majority].kind == Vote::Kind::kEnd) return CompleteSession(id, session);
    session.set_verified_steps(step + 1);
    MarkSession(id);
    Progressed(id);
  }
  return OkStatus();
}

Status Applier::Run::Diverge(const std::string& id, pb::SessionState& session, uint64_t step,
                             const StepDecision& decision,
                             std::span<const std::optional<StoredLeaf>> leaves,
                             std::span<const Vote> votes) {
  ++effects_.divergences;
  session.set_divergences(session.divergences() + 1);
  pb::Divergence divergence;
  divergence.set_session_id(id);
  divergence.set_step(step);
  divergence.set_position(position_);
  divergence.set_unix_ms(clock_ms_);
  for (uint32_t i = 0; i < votes.size(); ++i) {
    if (votes[i].kind == Vote::Kind::kMissing) continue;
    const pb::ReplicaState& replica = session.replicas(i);
    pb::DivergentLeaf* leaf = divergence.add_leaves();
    leaf->set_replica(i);
    leaf->set_worker_id(replica.worker_id());
    leaf->set_epoch(replica.epoch());
    leaf->set_end(votes[i].kind == Vote::Kind::kEnd);
    leaf->set_bad_root(votes[i].kind == Vote::Kind::kBadEnd);
    if (leaves[i].has_value()) {
      leaf->set_token_id(leaves[i]->token_id);
      leaf->set_state_digest(HashString(leaves[i]->state_digest));
      leaf->set_leaf_hash(HashString(leaves[i]->leaf_hash));
    }
  }
  std::vector<uint32_t> minority = decision.minority;
  if (decision.majority.has_value()) {
    const Vote& majority = votes[*decision.majority];
    if (majority.kind == Vote::Kind::kLeaf) {
      divergence.set_majority_leaf_hash(HashString(majority.leaf_hash));
    }
  } else {
    session.set_disagreements(session.disagreements() + 1);
    // R = 2 and a second disagreement: recruit a third replica as the tie-breaker instead of
    // rolling both back again.
    if (session.replicas_size() == 2 && session.disagreements() >= 2) {
      session.add_replicas();
      EnterWaiting(session);
      minority.clear();
    }
  }
  std::vector<std::pair<uint32_t, Escalation>> orders;
  for (uint32_t index : minority) {
    orders.emplace_back(index, Escalate(session.replicas(index), step));
    divergence.add_minority(index);
    divergence.add_orders(orders.back().second.order);
  }
  txn_.PutMessage(kDivergences, DivergenceKey(id, session.divergences() - 1), divergence);
  pb::LedgerEntry entry;
  *entry.mutable_divergence() = divergence;
  FP_RETURN_IF_ERROR(AppendLedger(entry).status());
  for (const auto& [index, escalation] : orders) {
    FP_RETURN_IF_ERROR(OrderRollback(id, session, index, step, escalation.order, escalation.count));
  }
  MarkSession(id);
  Progressed(id);
  return OkStatus();
}

Status Applier::Run::OrderRollback(const std::string& id, pb::SessionState& session, uint32_t index,
                                   uint64_t step, pb::OrderKind kind, uint32_t count) {
  pb::ReplicaState& replica = *session.mutable_replicas(index);
  const std::string worker_id = replica.worker_id();
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(worker_id));
  if (worker != nullptr) {
    worker->set_divergences(worker->divergences() + 1);
    MarkWorker(worker_id);
    if (kind == pb::ORDER_KIND_REPLACE ||
        worker->divergences() >= applier_->options_.quarantine_divergences) {
      return Quarantine(worker_id,
                        fmt::format("{} divergences; replica {}/{} diverged {} times "
                                    "at step {}",
                                    worker->divergences(), Short(id), index, count, step));
    }
  }
  // Verified leaves stay: a replica replaying the prefix keeps the ones it stores.
  const uint64_t keep = std::max(step, std::min(replica.stored(), session.verified_steps()));
  if (keep < replica.stored()) {
    FP_ASSIGN_OR_RETURN(merkle::Frontier frontier,
                        TruncateReplicaTree(txn_, id, index, replica.stored(), keep));
    replica.set_stored(keep);
    FrontierToBytes(frontier, replica.mutable_frontier());
  }
  replica.set_next_step(step);
  replica.set_epoch(replica.epoch() + 1);
  replica.set_finished(false);
  replica.clear_claimed_root();
  replica.set_diverged_step(step);
  replica.set_diverged_count(count);
  PutOrder(id, index, kind, step, replica, worker_id);
  return OkStatus();
}

void Applier::Run::PutOrder(const std::string& id, uint32_t index, pb::OrderKind kind,
                            uint64_t to_step, const pb::ReplicaState& replica,
                            const std::string& worker_id) {
  pb::Order order;
  order.set_session_id(id);
  order.set_replica(index);
  order.set_kind(kind);
  order.set_to_step(to_step);
  order.set_new_epoch(replica.epoch());
  order.set_worker_id(worker_id);
  order.set_position(position_);
  txn_.PutMessage(kOrders, ReplicaKey(id, index), order);
  effects_.orders.push_back(std::move(order));
}

void Applier::Run::DetachReplica(const std::string& worker_id, const std::string& id,
                                 uint32_t index) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || !it->second.has_value()) return;
  auto* list = it->second->mutable_replicas();
  const std::string ref = ReplicaRef(id, index);
  auto found = std::find(list->begin(), list->end(), ref);
  if (found == list->end()) return;
  list->erase(found);
  MarkWorker(worker_id);
}

Status Applier::Run::ReplaceReplica(const std::string& id, pb::SessionState& session,
                                    uint32_t index) {
  pb::ReplicaState& replica = *session.mutable_replicas(index);
  const std::string worker_id = replica.worker_id();
  if (worker_id.empty()) return OkStatus();
  FP_RETURN_IF_ERROR(Worker(worker_id).status());  // loads it into the cache for DetachReplica
  DetachReplica(worker_id, id, index);
  const uint64_t keep = std::min(replica.stored(), session.verified_steps());
  if (keep < replica.stored()) {
    FP_ASSIGN_OR_RETURN(merkle::Frontier frontier,
                        TruncateReplicaTree(txn_, id, index, replica.stored(), keep));
    replica.set_stored(keep);
    FrontierToBytes(frontier, replica.mutable_frontier());
  }
  replica.clear_worker_id();
  replica.set_next_step(0);
  replica.set_epoch(replica.epoch() + 1);
  replica.set_finished(false);
  replica.clear_claimed_root();
  replica.set_diverged_step(0);
  replica.set_diverged_count(0);
  if (session.phase() == pb::SESSION_PHASE_RUNNING) EnterWaiting(session);
  PutOrder(id, index, pb::ORDER_KIND_REPLACE, 0, replica, worker_id);
  MarkSession(id);
  Progressed(id);
  return OkStatus();
}

Status Applier::Run::Quarantine(const std::string& worker_id, const std::string& reason) {
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(worker_id));
  if (worker == nullptr || worker->phase() == pb::WorkerState::PHASE_QUARANTINED) {
    return OkStatus();
  }
  worker->set_phase(pb::WorkerState::PHASE_QUARANTINED);
  worker->set_quarantine_reason(reason);
  MarkWorker(worker_id);
  effects_.quarantined.push_back(worker_id);
  // Copy: ReplaceReplica edits the worker's list.
  const std::vector<std::string> refs(worker->replicas().begin(), worker->replicas().end());
  for (const std::string& ref : refs) {
    FP_CHECK(ref.size() == kSessionIdSize + 4);
    const std::string id = ref.substr(0, kSessionIdSize);
    const uint32_t index = LoadU32(reinterpret_cast<const uint8_t*>(ref.data()) + kSessionIdSize);
    FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
    if (session == nullptr) return DataLossError("worker runs a replica of an unknown session");
    FP_RETURN_IF_ERROR(ReplaceReplica(id, *session, index));
  }
  return OkStatus();
}

Status Applier::Run::CompleteSession(const std::string& id, pb::SessionState& session) {
  const uint64_t steps = session.verified_steps();
  FP_ASSIGN_OR_RETURN(merkle::Frontier frontier, FrontierFromBytes(session.replicas(0).stored(),
                                                                   session.replicas(0).frontier()));
  const Hash root = frontier.Root();
  for (const pb::ReplicaState& replica : session.replicas()) {
    // Equal leaves make equal trees: a differing root here is a broken invariant.
    FP_CHECK(replica.stored() == steps);
    FP_CHECK(replica.claimed_root() == HashString(root));
  }
  std::vector<uint32_t> output;
  output.reserve(steps);
  for (uint64_t step = 0; step < steps; ++step) {
    FP_ASSIGN_OR_RETURN(std::optional<StoredLeaf> leaf, Leaf(id, 0, step));
    if (!leaf.has_value()) return DataLossError("verified leaf missing");
    output.push_back(leaf->token_id);
  }
  const pb::SessionRequest& request = session.request();
  pb::LedgerEntry entry;
  pb::SessionRecord& record = *entry.mutable_session();
  record.set_session_id(id);
  record.set_model(request.model());
  record.set_anchor_set_hash(request.anchor_set_hash());
  record.set_numerics_profile(request.numerics_profile());
  std::vector<uint32_t> prompt(request.prompt_token_ids().begin(),
                               request.prompt_token_ids().end());
  record.set_prompt_hash(HashString(TokensHash(prompt)));
  record.set_output_hash(HashString(TokensHash(output)));
  record.set_session_root(HashString(root));
  record.set_steps(steps);
  for (uint32_t i = 0; i < static_cast<uint32_t>(session.replicas_size()); ++i) {
    pb::SessionRecord::Replica* replica = record.add_replicas();
    replica->set_replica(i);
    replica->set_worker_id(session.replicas(i).worker_id());
    replica->set_epoch(session.replicas(i).epoch());
    FP_RETURN_IF_ERROR(Worker(session.replicas(i).worker_id()).status());
    DetachReplica(session.replicas(i).worker_id(), id, i);
  }
  record.set_divergences(session.divergences());
  record.set_verified_unix_ms(clock_ms_);
  FP_ASSIGN_OR_RETURN(uint64_t index, AppendLedger(entry));
  txn_.Put(kLedger, LedgerSessionKey(id), U64Key(index));
  session.set_phase(pb::SESSION_PHASE_VERIFIED);
  session.set_session_root(HashString(root));
  session.set_ledger_index(index);
  session.set_verified_unix_ms(clock_ms_);
  ++effects_.verified_sessions;
  MarkSession(id);
  Progressed(id);
  return OkStatus();
}

StatusOr<uint64_t> Applier::Run::AppendLedger(const pb::LedgerEntry& entry) {
  const uint64_t index = ledger_.size();
  const std::string bytes = SerializeStable(entry);
  txn_.Put(kLedger, LedgerEntryKey(index), bytes);
  AppendLedgerLeaf(txn_, ledger_, merkle::LeafHash(AsBytes(bytes)));
  return index;
}

Status Applier::Run::ApplyDeadline(const pb::Deadline& deadline) {
  const std::string& id = deadline.session_id();
  FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
  if (session == nullptr || IsTerminal(*session) ||
      deadline.replica() >= static_cast<uint32_t>(session->replicas_size()) ||
      session->replicas(deadline.replica()).epoch() != deadline.epoch()) {
    Reject("deadline for a finished session or a stale replica");
    return OkStatus();
  }
  return ReplaceReplica(id, *session, deadline.replica());
}

Status Applier::Run::ApplyWorkerRegistered(const pb::WorkerRegistered& registered) {
  if (registered.worker_id().empty() || registered.worker_id().size() > wire::kMaxNameBytes ||
      registered.numerics_profile_hash().size() != kHashSize || registered.max_replicas() == 0) {
    Reject("malformed worker registration");
    return OkStatus();
  }
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(registered.worker_id()));
  if (worker == nullptr) {
    worker = &workers_[registered.worker_id()].emplace();
    worker->set_registered_unix_ms(clock_ms_);
  }
  *worker->mutable_registration() = registered;
  // Quarantine is sticky: reconnecting does not clear it.
  if (worker->phase() != pb::WorkerState::PHASE_QUARANTINED) {
    worker->set_phase(pb::WorkerState::PHASE_ACTIVE);
  }
  MarkWorker(registered.worker_id());
  return OkStatus();
}

Status Applier::Run::ApplyWorkerLost(const pb::WorkerLost& lost) {
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(lost.worker_id()));
  if (worker == nullptr || worker->phase() != pb::WorkerState::PHASE_ACTIVE) {
    Reject("lost worker is unknown or not active");
    return OkStatus();
  }
  worker->set_phase(pb::WorkerState::PHASE_LOST);
  MarkWorker(lost.worker_id());
  const std::vector<std::string> refs(worker->replicas().begin(), worker->replicas().end());
  for (const std::string& ref : refs) {
    const std::string id = ref.substr(0, kSessionIdSize);
    const uint32_t index = LoadU32(reinterpret_cast<const uint8_t*>(ref.data()) + kSessionIdSize);
    FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
    if (session == nullptr) return DataLossError("worker runs a replica of an unknown session");
    FP_RETURN_IF_ERROR(ReplaceReplica(id, *session, index));
  }
  return OkStatus();
}

Status Applier::Run::ApplyCheckpointRequest() {
  if (has_checkpoint_ && ledger_.size() == last_checkpoint_size_) return OkStatus();
  pb::CheckpointBody body;
  body.set_size(ledger_.size());
  body.set_root(HashString(ledger_.Root()));
  body.set_position(position_);
  body.set_unix_ms(clock_ms_);
  txn_.PutMessage(kCheckpoints, U64Key(ledger_.size()), body);
  txn_.Put(kMeta, kMetaCheckpoint, U64Key(ledger_.size()));
  has_checkpoint_ = true;
  last_checkpoint_size_ = ledger_.size();
  effects_.checkpoint = true;
  return OkStatus();
}

void Applier::Run::EnterWaiting(pb::SessionState& session) {
  if (session.phase() == pb::SESSION_PHASE_WAITING) return;
  session.set_phase(pb::SESSION_PHASE_WAITING);
  session.set_waiting_since_unix_ms(clock_ms_);
}

Status Applier::Run::ApplyWorkerReleased(const pb::WorkerReleased& released) {
  FP_ASSIGN_OR_RETURN(pb::WorkerState * worker, Worker(released.worker_id()));
  if (worker == nullptr || worker->phase() != pb::WorkerState::PHASE_QUARANTINED) {
    Reject("release of a worker that is unknown or not quarantined");
    return OkStatus();
  }
  // Lost, not active: the worker must register again (the runtime closes its connection) before
  // anything is placed on it, so that a released worker that is not running gets no replicas.
  worker->set_phase(pb::WorkerState::PHASE_LOST);
  worker->set_divergences(0);
  worker->clear_quarantine_reason();
  worker->set_releases(worker->releases() + 1);
  worker->set_release_reason(released.reason().substr(0, kMaxReleaseReasonBytes));
  worker->set_released_unix_ms(clock_ms_);
  MarkWorker(released.worker_id());
  effects_.released.push_back(released.worker_id());
  return OkStatus();
}

Status Applier::Run::ApplyPlacementExpired(const pb::PlacementExpired& expired) {
  const std::string& id = expired.session_id();
  FP_ASSIGN_OR_RETURN(pb::SessionState * session, Session(id));
  const uint64_t timeout = applier_->options_.placement_timeout_ms;
  if (session == nullptr || session->phase() != pb::SESSION_PHASE_WAITING || timeout == 0 ||
      session->waiting_since_unix_ms() != expired.waiting_since_unix_ms() ||
      clock_ms_ < session->waiting_since_unix_ms() + timeout) {
    Reject("placement expiry for a session that is not waiting that long");
    return OkStatus();
  }
  uint32_t placed = 0;
  for (uint32_t i = 0; i < static_cast<uint32_t>(session->replicas_size()); ++i) {
    const std::string worker_id = session->replicas(i).worker_id();
    if (worker_id.empty()) continue;
    ++placed;
    FP_RETURN_IF_ERROR(Worker(worker_id).status());  // loads it for DetachReplica
    DetachReplica(worker_id, id, i);
    effects_.aborted.emplace_back(worker_id, id);
  }
  session->set_phase(pb::SESSION_PHASE_FAILED);
  session->set_failure(fmt::format(
      "placement timeout: {} of {} replicas placed after waiting {} ms for eligible workers",
      placed, session->replicas_size(), clock_ms_ - session->waiting_since_unix_ms()));
  ++effects_.placement_timeouts;
  MarkSession(id);
  Progressed(id);
  return OkStatus();
}

namespace {

// Why a CosignerJoined cannot register its cosigner in `set` (empty: it can); sets `rejoin` when
// the same cosigner is registered already with the same keys (a restart after its idempotency
// key was trimmed), which changes nothing.
std::string JoinProblem(const pb::CosignerJoined& joined, const pb::CosignerSet& set,
                        bool& rejoin) {
  StatusOr<tlog::CosignatureVerifier> cosigner =
      tlog::CosignatureVerifier::Parse(joined.cosigner_key());
  if (!cosigner.ok()) return "bad cosigner key: " + std::string(cosigner.status().message());
  if (cosigner->name() != joined.name()) {
    return fmt::format("the cosigner key is named '{}', not '{}'", cosigner->name(), joined.name());
  }
  StatusOr<tlog::NoteVerifier> ledger = tlog::NoteVerifier::Parse(joined.ledger_key());
  if (!ledger.ok()) return "bad ledger key: " + std::string(ledger.status().message());
  if (!set.ledger_key().empty() && set.ledger_key() != ledger->ToString()) {
    return fmt::format("its ledger key {} differs from the cluster's {}", ledger->ToString(),
                       set.ledger_key());
  }
  for (const pb::CosignerState& member : set.members()) {
    if (member.name() != joined.name()) continue;
    if (member.cosigner_key() == cosigner->ToString()) {
      rejoin = true;
      return "";
    }
    return fmt::format("'{}' is registered with another cosigner key ({})", joined.name(),
                       member.cosigner_key());
  }
  if (static_cast<size_t>(set.members_size()) >= kMaxCosigners) {
    return fmt::format("the cluster has {} cosigners already", kMaxCosigners);
  }
  return "";
}

}  // namespace

Status Applier::Run::ApplyCosignerJoined(const pb::CosignerJoined& joined) {
  FP_ASSIGN_OR_RETURN(std::optional<pb::CosignerSet> stored,
                      txn_.GetMessage<pb::CosignerSet>(kMeta, kMetaCosigners));
  pb::CosignerSet set = stored.value_or(pb::CosignerSet());
  bool rejoin = false;
  if (std::string problem = JoinProblem(joined, set, rejoin); !problem.empty()) {
    Reject(fmt::format("cosigner {} joins: {}", joined.name(), problem));
    return OkStatus();
  }
  if (rejoin) return OkStatus();
  // Keys are stored in their canonical form, so comparisons are of equal strings.
  if (set.ledger_key().empty()) {
    set.set_ledger_key(tlog::NoteVerifier::Parse(joined.ledger_key())->ToString());
  }
  pb::CosignerState member;
  member.set_name(joined.name());
  member.set_cosigner_key(tlog::CosignatureVerifier::Parse(joined.cosigner_key())->ToString());
  member.set_position(position_);
  member.set_joined_unix_ms(clock_ms_);
  // Inserted in name order (the iterator is taken after Add, which may reallocate).
  auto* members = set.mutable_members();
  const std::string name = member.name();
  members->Add(std::move(member));
  const auto at = std::find_if(members->begin(), members->end() - 1,
                               [&](const pb::CosignerState& other) { return other.name() > name; });
  std::rotate(at, members->end() - 1, members->end());
  txn_.PutMessage(kMeta, kMetaCosigners, set);
  return OkStatus();
}

StatusOr<std::string> Applier::Run::CosignatureProblem(const pb::Cosignature& cosignature,
                                                       uint32_t& key_id) {
  FP_ASSIGN_OR_RETURN(std::optional<pb::CosignerSet> set,
                      txn_.GetMessage<pb::CosignerSet>(kMeta, kMetaCosigners));
  if (!set.has_value()) return std::string("unknown cosigner");
  const pb::CosignerState* member = nullptr;
  for (const pb::CosignerState& candidate : set->members()) {
    if (candidate.name() == cosignature.name()) member = &candidate;
  }
  if (member == nullptr) return std::string("unknown cosigner");
  FP_ASSIGN_OR_RETURN(
      std::optional<pb::CheckpointBody> body,
      txn_.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(cosignature.size())));
  if (!body.has_value()) return std::string("no checkpoint of that size");
  if (cosignature.signature().size() != kEd25519SignatureSize) {
    return std::string("malformed signature");
  }
  // Stored keys were validated when their member joined: a parse failure is corrupt storage.
  StatusOr<tlog::NoteVerifier> ledger = tlog::NoteVerifier::Parse(set->ledger_key());
  StatusOr<tlog::CosignatureVerifier> key =
      tlog::CosignatureVerifier::Parse(member->cosigner_key());
  if (!ledger.ok() || !key.ok()) return DataLossError("stored cosigner keys do not parse");
  FP_ASSIGN_OR_RETURN(Hash root, ParseHash(body->root()));
  // The body this applier recorded, not a signed note: a supervisor may apply a cosignature of a
  // checkpoint that it has not signed itself yet.
  FP_ASSIGN_OR_RETURN(std::string text,
                      tlog::FormatCheckpoint({ledger->name(), cosignature.size(), root, {}}));
  Bytes blob;
  AppendU64(blob, cosignature.timestamp());
  blob.insert(blob.end(), cosignature.signature().begin(), cosignature.signature().end());
  if (key->Verify(text, blob) != std::optional<uint64_t>(cosignature.timestamp())) {
    return std::string("the signature does not verify");
  }
  key_id = key->key_id();
  return std::string();
}

Status Applier::Run::ApplyCosignature(const pb::Cosignature& cosignature) {
  uint32_t key_id = 0;
  FP_ASSIGN_OR_RETURN(std::string problem, CosignatureProblem(cosignature, key_id));
  const std::string key = U64Key(cosignature.size());
  FP_ASSIGN_OR_RETURN(std::optional<pb::CheckpointCosignatures> stored,
                      txn_.GetMessage<pb::CheckpointCosignatures>(kCosignatures, key));
  pb::CheckpointCosignatures all = stored.value_or(pb::CheckpointCosignatures());
  auto* list = all.mutable_cosignatures();
  const auto found = std::find_if(
      list->begin(), list->end(),
      [&](const pb::StoredCosignature& other) { return other.name() == cosignature.name(); });
  if (problem.empty() && found != list->end()) {
    problem = "a cosignature of this cosigner is stored already";
  }
  if (!problem.empty()) {
    ++effects_.cosignatures_rejected;
    Reject(fmt::format("cosignature of checkpoint {} by {}: {}", cosignature.size(),
                       cosignature.name(), problem));
    return OkStatus();
  }
  pb::StoredCosignature entry;
  entry.set_name(cosignature.name());
  entry.set_key_id(key_id);
  entry.set_timestamp(cosignature.timestamp());
  entry.set_signature(cosignature.signature());
  entry.set_position(position_);
  list->Add(std::move(entry));
  const auto at = std::find_if(
      list->begin(), list->end() - 1,
      [&](const pb::StoredCosignature& other) { return other.name() > cosignature.name(); });
  std::rotate(at, list->end() - 1, list->end());
  txn_.PutMessage(kCosignatures, key, all);
  ++effects_.cosignatures_applied;
  return OkStatus();
}

Status Applier::Run::Commit(uint64_t applied) {
  pb::PhaseCounts phases = applier_->phases();
  for (const std::string& id : dirty_sessions_) {
    const pb::SessionState& session = *sessions_[id];
    AddPhase(phases, original_phases_[id], -1);
    AddPhase(phases, session.phase(), +1);
    txn_.PutMessage(kSessions, id, session);
    if (session.phase() == pb::SESSION_PHASE_WAITING) {
      txn_.Put(kWaiting, id, "");
    } else {
      txn_.Delete(kWaiting, id);
    }
  }
  for (const std::string& id : dirty_workers_) txn_.PutMessage(kWorkers, id, *workers_[id]);
  pb::LedgerFrontier frontier;
  frontier.set_size(ledger_.size());
  FrontierToBytes(ledger_, frontier.mutable_peaks());
  txn_.PutMessage(kMeta, kMetaLedger, frontier);
  txn_.PutMessage(kMeta, kMetaPhases, phases);
  txn_.Put(kMeta, kMetaClock, U64Key(clock_ms_));
  txn_.Put(kMeta, kMetaApplied, U64Key(applied));
  FP_RETURN_IF_ERROR(txn_.Commit());
  effects_.progressed.assign(progressed_.begin(), progressed_.end());
  applier_->clock_ms_ = clock_ms_;
  applier_->ledger_ = ledger_;
  applier_->last_checkpoint_size_ = last_checkpoint_size_;
  applier_->has_checkpoint_ = has_checkpoint_;
  {
    std::lock_guard lock(applier_->mutex_);
    applier_->phases_ = phases;
    applier_->ledger_size_ = ledger_.size();
  }
  applier_->applied_.store(applied, std::memory_order_release);
  return OkStatus();
}

Applier::Applier(RocksStore* state, const ApplierOptions& options)
    : state_(state), options_(options) {}

Applier::~Applier() = default;

pb::PhaseCounts Applier::phases() const {
  std::lock_guard lock(mutex_);
  return phases_;
}

uint64_t Applier::ledger_size() const {
  std::lock_guard lock(mutex_);
  return ledger_size_;
}

StatusOr<AppliedMeta> ReadAppliedMeta(const StateReader& reader) {
  AppliedMeta meta;
  FP_ASSIGN_OR_RETURN(std::optional<std::string> applied, reader.Get(kMeta, kMetaApplied));
  if (applied.has_value()) {
    FP_ASSIGN_OR_RETURN(meta.applied, ParseU64(*applied));
  }
  FP_ASSIGN_OR_RETURN(std::optional<std::string> clock, reader.Get(kMeta, kMetaClock));
  if (clock.has_value()) {
    FP_ASSIGN_OR_RETURN(meta.clock_ms, ParseU64(*clock));
  }
  FP_ASSIGN_OR_RETURN(std::optional<pb::LedgerFrontier> ledger,
                      reader.GetMessage<pb::LedgerFrontier>(kMeta, kMetaLedger));
  if (ledger.has_value()) meta.ledger = *ledger;
  FP_ASSIGN_OR_RETURN(std::optional<std::string> checkpoint, reader.Get(kMeta, kMetaCheckpoint));
  if (checkpoint.has_value()) {
    FP_ASSIGN_OR_RETURN(uint64_t size, ParseU64(*checkpoint));
    meta.last_checkpoint_size = size;
  }
  FP_ASSIGN_OR_RETURN(std::optional<pb::PhaseCounts> phases,
                      reader.GetMessage<pb::PhaseCounts>(kMeta, kMetaPhases));
  if (phases.has_value()) meta.phases = *phases;
  return meta;
}

StatusOr<std::unique_ptr<Applier>> Applier::Open(RocksStore* state, const ApplierOptions& options) {
  FP_CHECK(state != nullptr);
  DbStateReader reader(state);
  FP_ASSIGN_OR_RETURN(AppliedMeta meta, ReadAppliedMeta(reader));
  std::unique_ptr<Applier> applier(new Applier(state, options));
  applier->applied_.store(meta.applied);
  applier->clock_ms_ = meta.clock_ms;
  FP_ASSIGN_OR_RETURN(applier->ledger_, FrontierFromBytes(meta.ledger.size(), meta.ledger.peaks()));
  applier->has_checkpoint_ = meta.last_checkpoint_size.has_value();
  applier->last_checkpoint_size_ = meta.last_checkpoint_size.value_or(0);
  applier->phases_ = meta.phases;
  applier->ledger_size_ = meta.ledger.size();
  return applier;
}

StatusOr<Effects> Applier::Apply(std::span<const LogEntry> entries) {
  if (entries.empty()) return Effects();
  Run run(this);
  uint64_t expected = applied();
  for (const LogEntry& entry : entries) {
    FP_CHECK(entry.position == expected);
    FP_RETURN_IF_ERROR(run.ApplyEntry(entry));
    ++expected;
  }
  FP_RETURN_IF_ERROR(run.Commit(expected));
  return std::move(run.effects());
}

}  // namespace fp::supervisor
