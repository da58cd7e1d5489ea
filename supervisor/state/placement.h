// Placement: the leader's choice of workers for replicas that wait for one. Its output is Assign
// records for the log; the applier checks each again when it applies it, so a plan made from a
// slightly old state is harmless (a stale Assign is rejected, and the next round re-plans).
//
// Rules: a replica goes to an active worker that serves the session's model, has a free replica
// slot, runs no other replica of the session and has the same numerics profile hash as the
// workers of the session's other replicas. Among those, the least loaded wins; ties go to the
// smallest worker id, so a plan is a pure function of the state.
//
// Thread-safety: pure over the state it reads; safe from any thread.
#pragma once

#include <vector>

#include "supervisor/log/log.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

// Assignments planned per round.
inline constexpr size_t kMaxPlacementsPerRound = 1024;
// Workers considered per round (a fleet larger than this is sharded across supervisor clusters).
inline constexpr size_t kMaxPlacementWorkers = 65536;

// Plans up to `max_assignments` (<= kMaxPlacementsPerRound) Assign records from the state in
// `store`. Unavailable or DataLoss from storage.
StatusOr<std::vector<pb::LogRecord>> PlanPlacement(const RocksStore& store, size_t max_assignments);

}  // namespace fp::supervisor
