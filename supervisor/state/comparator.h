// The comparator's decisions, as pure functions: what the replicas' leaves at one step mean, and
// what a replica that diverged is ordered to do. The applier (applier.h) gathers the inputs from
// its state and carries the decisions out. Spec: docs/supervisor.md, "Comparator decisions".
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/crypto/sha256.h"
#include "supervisor/state/state.pb.h"

namespace fp::supervisor {

namespace pb = ::fieldprint::supervisor;

// What one replica shows at the step under comparison.
struct Vote {
  enum class Kind {
    kMissing,  // no leaf there yet (or the replica is replaying, or not placed)
    kLeaf,     // a step leaf with `leaf_hash`
    kEnd,      // the replica's output ended before this step, with a root matching its leaves
    kBadEnd,   // the replica's output ended, but its claimed root does not match its leaves
  };
  Kind kind = Kind::kMissing;
  Hash leaf_hash{};  // with kLeaf

  static Vote Missing() { return {}; }
  static Vote Leaf(const Hash& hash) { return {Kind::kLeaf, hash}; }
  static Vote End() { return {Kind::kEnd, {}}; }
  static Vote BadEnd() { return {Kind::kBadEnd, {}}; }
};

// Two votes are equal when they are both leaves with equal hashes or both kEnd. kBadEnd equals
// nothing, itself included: a faulty root never agrees with anything.
bool SameVote(const Vote& a, const Vote& b);

struct StepDecision {
  enum class Kind {
    kWait,     // not decidable yet
    kAgree,    // every replica present and equal: the step is verified (or, if kEnd, the output)
    kDiverge,  // some replica disagrees
  };
  Kind kind = Kind::kWait;
  // With kAgree, and with kDiverge when a majority exists: a replica holding the majority vote.
  std::optional<uint32_t> majority;
  // With kDiverge: the replicas to roll back, ascending. With a majority, the present replicas
  // that differ from it; without one, every replica.
  std::vector<uint32_t> minority;
};

// Decides one step from the votes of all R replicas (votes[i] is replica i's vote).
//   - every vote present and equal (not kBadEnd): kAgree;
//   - a vote held by a strict majority of R (more than R / 2) and some present vote differs:
//     kDiverge against the present dissenters (missing replicas are judged when they arrive);
//   - every vote present, not all equal and no majority: kDiverge of every replica (R = 2 always
//     lands here when its two replicas differ);
//   - otherwise: kWait.
// FP_CHECKs that votes is not empty.
StepDecision DecideStep(std::span<const Vote> votes);

// Escalation for a replica that diverged at `step`: the first divergence at a step orders a
// truncating rollback, a second one at the same step (same worker) a rebuild, a third one moves
// the replica to another worker (and quarantines this one). Returns the order and the replica's
// divergence count at that step after this one.
struct Escalation {
  pb::OrderKind order = pb::ORDER_KIND_TRUNCATE;
  uint32_t count = 1;
};
Escalation Escalate(const pb::ReplicaState& replica, uint64_t step);

}  // namespace fp::supervisor
