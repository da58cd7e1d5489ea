// fsck: recomputes every root the supervisor stores from the stored leaves and reports every
// mismatch. Checks, in order:
//   - each step leaf's hash equals StepLeafHash(session, step, token, digest), and leaf chunks
//     are contiguous and whole (only a replica's last chunk may be partial);
//   - each replica's tree: every stored node equals its recomputation from the leaves, the
//     recomputed root equals the stored frontier's root and the root RootAt gives from the stored
//     nodes, and no leaf lies beyond the replica's size;
//   - each verified session's recorded root equals its replicas' recomputed root, and its ledger
//     entry is a session record with that root;
//   - the ledger: every stored node equals its recomputation from the entries, the recomputed
//     root equals the stored frontier's and the stored nodes'; each checkpoint body's root equals
//     the recomputed root at its size; each signed checkpoint matches its body.
//
// Thread-safety: reads only; safe to run against a store nobody writes (fsck opens its own).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor {

// Problems reported beyond this count are only counted.
inline constexpr size_t kMaxFsckProblems = 100;

struct FsckReport {
  uint64_t sessions = 0;
  uint64_t replica_trees = 0;
  uint64_t leaves = 0;
  uint64_t ledger_entries = 0;
  uint64_t checkpoints = 0;
  uint64_t signed_checkpoints = 0;
  uint64_t problem_count = 0;
  std::vector<std::string> problems;  // the first kMaxFsckProblems
  bool clean() const { return problem_count == 0; }
};

// Checks the state store. Mismatches go into the report; the Status is an error only when the
// store cannot be read at all (Unavailable) or a value is too damaged to parse (DataLoss).
StatusOr<FsckReport> Fsck(const RocksStore& state);

}  // namespace fp::supervisor
