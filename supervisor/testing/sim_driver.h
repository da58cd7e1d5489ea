// Drives a SimFleet against a real log and applier, and dumps state stores for comparison.
// Test-only.
//
// Thread-safety: one thread.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include "supervisor/log/log.h"
#include "supervisor/state/applier.h"
#include "supervisor/testing/sim_fleet.h"

namespace fp::supervisor::testing {

// Appends `records` in order (asynchronously, so they share group commits) and waits for all.
// Returns the first error.
Status AppendAll(Log& log, const std::vector<pb::LogRecord>& records);

// Applies every durable record the applier has not applied yet, in groups of at most
// `max_group` records.
StatusOr<Effects> CatchUp(const Log& log, Applier& applier, size_t max_group);

// Runs the fleet until it is done or `max_rounds` rounds passed: each round's records are appended
// to `log` and applied. Returns the effects summed over the run (counts only).
struct SimSummary {
  uint64_t rounds = 0;
  uint64_t divergences = 0;
  uint64_t orders = 0;
  uint64_t quarantined = 0;
  uint64_t rejected = 0;
  uint64_t verified_sessions = 0;
  bool done = false;
};
StatusOr<SimSummary> RunSimulation(SimFleet& fleet, Log& log, Applier& applier,
                                   const RocksStore& state, uint64_t max_rounds);

// Every (family, key, value) of a state store, in order.
using StoreDump = std::vector<std::tuple<std::string, std::string, std::string>>;
StoreDump DumpStore(const RocksStore& store);

}  // namespace fp::supervisor::testing
