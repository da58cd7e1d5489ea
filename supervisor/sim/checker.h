// The end-of-run invariants of the cluster simulation (cluster_sim.h), as pure functions over
// what the run left: the log model's whole history, the answers proposers received, and the
// supervisors' stores. Each returns human-readable violations; an empty list means the
// invariant holds. They recompute everything from those inputs and trust no bookkeeping of the
// simulation or of the model.
//
// Thread-safety: pure functions; the nodes passed in must not be used concurrently.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "supervisor/sim/log_model.h"
#include "supervisor/sim/sim_node.h"

namespace fp::supervisor::sim {

// Violations reported per check (and per simulation run); the rest are dropped.
inline constexpr size_t kMaxReportedViolations = 16;

// One answer an appender received from the log (an append may be answered more than once:
// duplicated requests, late responses).
struct AppendAnswer {
  std::string dedup_key;
  std::string bytes;  // the record the appender sent
  bool acked = false;
  uint64_t position = 0;  // when acked
  bool leader_record = false;
  // A leader record's term (kNoTerm for others): a refused proposal of one term and a newer
  // term's own decision to write the same record are different writes.
  uint64_t term = kNoTerm;
};

// Log invariants over the model's whole history (trimmed entries included):
//   - every acknowledged record is in the log exactly once, at the acknowledged position;
//   - no dedup key (idempotency key, or the backend-unique key of an unkeyed record) is in the
//     log twice, so an indeterminate append landed at most once;
//   - a refused record is not in the log (for a leader record: not under the refused term);
//   - leader records' terms never decrease: no stale term after a newer term's first record.
std::vector<std::string> CheckLog(std::span<const ModelEntry> history,
                                  std::span<const AppendAnswer> answers);

// Supervisor invariants once every node is up and caught up to `log_end`: each applied exactly
// `log_end` records; all hold the same bytes in every state family, `signed` included (one
// ledger key signs for the cluster, so equal notes mean no fork); every stored note verifies
// under the node's ledger key.
std::vector<std::string> CheckNodes(std::span<const SimNode* const> nodes, uint64_t log_end);

}  // namespace fp::supervisor::sim
