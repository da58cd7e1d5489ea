// Comparator decisions; see comparator.h.
#include "supervisor/state/comparator.h"

#include "common/base/status.h"

namespace fp::supervisor {

bool SameVote(const Vote& a, const Vote& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Vote::Kind::kLeaf:
      return a.leaf_hash == b.leaf_hash;
    case Vote::Kind::kEnd:
      return true;
    case Vote::Kind::kMissing:
    case Vote::Kind::kBadEnd:
      return false;
  }
  return false;
}

StepDecision DecideStep(std::span<const Vote> votes) {
  FP_CHECK(!votes.empty());
  const size_t replicas = votes.size();
  size_t present = 0;
  std::optional<uint32_t> majority;
  for (uint32_t i = 0; i < replicas; ++i) {
    if (votes[i].kind == Vote::Kind::kMissing) continue;
    ++present;
    size_t count = 0;
    for (const Vote& other : votes) count += SameVote(votes[i], other) ? 1 : 0;
    if (!majority.has_value() && count * 2 > replicas) majority = i;
  }
  StepDecision decision;
  if (majority.has_value()) {
    for (uint32_t i = 0; i < replicas; ++i) {
      if (votes[i].kind != Vote::Kind::kMissing && !SameVote(votes[i], votes[*majority])) {
        decision.minority.push_back(i);
      }
    }
    decision.majority = majority;
    if (!decision.minority.empty()) {
      decision.kind = StepDecision::Kind::kDiverge;
    } else if (present == replicas) {
      decision.kind = StepDecision::Kind::kAgree;
    }
    return decision;
  }
  if (present < replicas) return decision;  // a missing vote may still make a majority
  decision.kind = StepDecision::Kind::kDiverge;
  for (uint32_t i = 0; i < replicas; ++i) decision.minority.push_back(i);
  return decision;
}

Escalation Escalate(const pb::ReplicaState& replica, uint64_t step) {
  Escalation escalation;
  if (replica.diverged_count() > 0 && replica.diverged_step() == step) {
    escalation.count = replica.diverged_count() + 1;
  }
  if (escalation.count == 2) escalation.order = pb::ORDER_KIND_REBUILD;
  if (escalation.count >= 3) escalation.order = pb::ORDER_KIND_REPLACE;
  return escalation;
}

}  // namespace fp::supervisor
