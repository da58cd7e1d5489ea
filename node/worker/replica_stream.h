// ReplicaStream: one replica's state on the streaming thread (DESIGN.md section 5.3): its session
// tree, the leaves not yet put into a batch, and the batching policy that turns them into
// LeafBatch messages "every W steps or T ms, whichever first".
//
// Rules, all enforced here so that the streaming thread only moves data:
//   - a leaf is sendable once its step is below verified_steps + max_unverified_steps (the
//     supervisor refuses leaves beyond the unverified window); the generation loop keeps within
//     that window too, but its view of the verified prefix may be newer than this one;
//   - steps below send_from are only added to the tree: the supervisor already has them (after
//     a rollback to s it expects step s next; a restarted worker regenerates from step 0 but
//     resumes sending where its outbox cursor says it stopped);
//   - sendable leaves form batches of exactly W steps as soon as W are ready; fewer once the
//     oldest ready leaf has waited T, or at once when the replica's last step is among them;
//   - a batch's key is (session, replica, epoch, first_step) and its content is fixed once
//     made: the outbox stores the message itself, so a resend is byte for byte the same;
//   - the batch holding the last step carries last = true and the session root.
//
// Thread-safety: not thread-safe; owned by the streaming thread. Time is passed in, so the policy
// is tested without a clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "common/crypto/sha256.h"
#include "common/leaf/session_id.h"
#include "common/wire/envelope.h"
#include "node/worker/session_tree.h"

namespace fp::node::worker {

using StreamClock = std::chrono::steady_clock;

struct StreamPolicy {
  uint32_t window_steps = 16;                 // W, 1..wire::kMaxLeafBatchSteps
  std::chrono::milliseconds window_time{50};  // T, >= 0 (0: every ready leaf goes at once)
};

enum class CommitCheck : uint8_t {
  kMatch = 0,     // the verified root equals this replica's root at that size
  kMismatch = 1,  // it does not: the supervisor holds different leaves than this worker made
  kPending = 2,   // this replica has fewer leaves than verified_steps (regenerating)
};

class ReplicaStream {
 public:
  // `send_from`: the first step the supervisor still needs from this epoch; `verified_steps`:
  // the verified prefix known so far. FP_CHECKs max_unverified_steps >= 1.
  ReplicaStream(const SessionId& session, uint32_t replica, uint64_t epoch, uint64_t send_from,
                uint32_t max_unverified_steps, uint64_t verified_steps);

  // Adds step `step` (which must be size(): FP_CHECKed) with its token and state digest; `last`
  // marks the replica's final step. `now` starts the step's T clock.
  void AddStep(uint64_t step, uint32_t token, const Hash& state_digest, bool last,
               StreamClock::time_point now);
  // Applies a rollback the generation loop carried out: the tree keeps `truncate_to` leaves
  // (FP_CHECKed <= size()), unbatched leaves are dropped, later batches carry `new_epoch`
  // (FP_CHECKed >= epoch(): a replica placed here anew restarts, and the rollback the supervisor
  // still holds for it then arrives with that same epoch) and start at `send_from`.
  void Rollback(uint64_t new_epoch, uint64_t truncate_to, uint64_t send_from);
  // Raises the verified prefix (a smaller value than the current one is ignored).
  void SetVerified(uint64_t verified_steps);

  // Removes and returns the batches that are due at `now` under `policy`, in step order.
  std::vector<wire::pb::LeafBatch> TakeDue(StreamClock::time_point now, const StreamPolicy& policy);
  // When TakeDue will next return a batch if nothing else changes; nullopt when no leaf is
  // sendable.
  std::optional<StreamClock::time_point> NextDue(const StreamPolicy& policy) const;

  // Compares a Commit's verified root with this replica's tree.
  CommitCheck CheckCommit(uint64_t verified_steps, const Hash& verified_root) const;

  const SessionId& session() const { return session_; }
  uint32_t replica() const { return replica_; }
  uint64_t epoch() const { return epoch_; }
  uint64_t size() const { return tree_.size(); }
  uint64_t verified_steps() const { return verified_steps_; }
  const SessionTree& tree() const { return tree_; }
  // Leaves waiting to be put into a batch.
  size_t unbatched() const { return unbatched_.size(); }
  // True once the last step was added (until a rollback).
  bool finished() const { return finished_; }

 private:
  struct Unbatched {
    uint64_t step;
    uint32_t token;
    Hash digest;
    StreamClock::time_point added;
  };

  // Unbatched leaves that may be sent now (a prefix of unbatched_).
  size_t Sendable() const;
  wire::pb::LeafBatch MakeBatch(size_t count);

  const SessionId session_;
  const uint32_t replica_;
  const uint32_t max_unverified_steps_;
  uint64_t epoch_;
  uint64_t send_from_;
  uint64_t verified_steps_;
  SessionTree tree_;
  std::deque<Unbatched> unbatched_;  // consecutive steps, oldest first
  bool finished_ = false;
};

}  // namespace fp::node::worker
