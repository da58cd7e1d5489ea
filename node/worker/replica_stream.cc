// ReplicaStream; see replica_stream.h.
#include "node/worker/replica_stream.h"

#include <algorithm>

#include "common/leaf/step_leaf.h"

namespace fp::node::worker {

ReplicaStream::ReplicaStream(const SessionId& session, uint32_t replica, uint64_t epoch,
                             uint64_t send_from, uint32_t max_unverified_steps,
                             uint64_t verified_steps)
    : session_(session),
      replica_(replica),
      max_unverified_steps_(max_unverified_steps),
      epoch_(epoch),
      send_from_(send_from),
      verified_steps_(verified_steps) {
  FP_CHECK(max_unverified_steps >= 1);
}

void ReplicaStream::AddStep(uint64_t step, uint32_t token, const Hash& state_digest, bool last,
                            StreamClock::time_point now) {
  FP_CHECK(step == tree_.size());
  FP_CHECK(!finished_);
  tree_.Append(leaf::StepLeafHash({session_, step, token, state_digest}));
  finished_ = last;
  if (step >= send_from_) unbatched_.push_back({step, token, state_digest, now});
}

void ReplicaStream::Rollback(uint64_t new_epoch, uint64_t truncate_to, uint64_t send_from) {
  FP_CHECK(new_epoch >= epoch_);
  FP_CHECK(truncate_to <= tree_.size());
  tree_.Truncate(truncate_to);
  unbatched_.clear();
  epoch_ = new_epoch;
  send_from_ = send_from;
  finished_ = false;
}

void ReplicaStream::SetVerified(uint64_t verified_steps) {
  verified_steps_ = std::max(verified_steps_, verified_steps);
}

size_t ReplicaStream::Sendable() const {
  const uint64_t limit = verified_steps_ + max_unverified_steps_;
  if (unbatched_.empty() || unbatched_.front().step >= limit) return 0;
  return static_cast<size_t>(
      std::min<uint64_t>(unbatched_.size(), limit - unbatched_.front().step));
}

wire::pb::LeafBatch ReplicaStream::MakeBatch(size_t count) {
  FP_CHECK(count >= 1 && count <= unbatched_.size() && count <= wire::kMaxLeafBatchSteps);
  wire::pb::LeafBatch batch;
  batch.set_session_id(std::string(session_.begin(), session_.end()));
  batch.set_replica(replica_);
  batch.set_epoch(epoch_);
  batch.set_first_step(unbatched_.front().step);
  for (size_t i = 0; i < count; ++i) {
    wire::AppendStepLeaf(batch, unbatched_.front().token, unbatched_.front().digest);
    unbatched_.pop_front();
  }
  const uint64_t end = batch.first_step() + count;
  if (finished_ && end == tree_.size()) {
    batch.set_last(true);
    const Hash root = tree_.Root();
    batch.set_session_root(std::string(root.begin(), root.end()));
  }
  return batch;
}

std::vector<wire::pb::LeafBatch> ReplicaStream::TakeDue(StreamClock::time_point now,
                                                        const StreamPolicy& policy) {
  FP_CHECK(policy.window_steps >= 1 && policy.window_steps <= wire::kMaxLeafBatchSteps);
  std::vector<wire::pb::LeafBatch> batches;
  size_t sendable = Sendable();
  while (sendable >= policy.window_steps) {
    batches.push_back(MakeBatch(policy.window_steps));
    sendable -= policy.window_steps;
  }
  if (sendable == 0) return batches;
  const bool holds_last = finished_ && unbatched_[sendable - 1].step + 1 == tree_.size();
  if (holds_last || now - unbatched_.front().added >= policy.window_time) {
    batches.push_back(MakeBatch(sendable));
  }
  return batches;
}

std::optional<StreamClock::time_point> ReplicaStream::NextDue(const StreamPolicy& policy) const {
  const size_t sendable = Sendable();
  if (sendable == 0) return std::nullopt;
  const bool holds_last = finished_ && unbatched_[sendable - 1].step + 1 == tree_.size();
  if (sendable >= policy.window_steps || holds_last) return unbatched_.front().added;
  return unbatched_.front().added + policy.window_time;
}

CommitCheck ReplicaStream::CheckCommit(uint64_t verified_steps, const Hash& verified_root) const {
  StatusOr<Hash> root = tree_.RootAt(verified_steps);
  if (!root.ok()) return CommitCheck::kPending;
  return *root == verified_root ? CommitCheck::kMatch : CommitCheck::kMismatch;
}

}  // namespace fp::node::worker
