// Simulation driver; see sim_driver.h.
#include "supervisor/testing/sim_driver.h"

#include <condition_variable>
#include <mutex>

namespace fp::supervisor::testing {

Status AppendAll(Log& log, const std::vector<pb::LogRecord>& records) {
  std::mutex mutex;
  std::condition_variable done;
  size_t remaining = records.size();
  Status first_error;
  for (const pb::LogRecord& record : records) {
    log.Append(record, [&](StatusOr<uint64_t> position) {
      std::lock_guard lock(mutex);
      if (!position.ok() && first_error.ok()) first_error = position.status();
      if (--remaining == 0) done.notify_one();
    });
  }
  std::unique_lock lock(mutex);
  done.wait(lock, [&] { return remaining == 0; });
  return first_error;
}

StatusOr<Effects> CatchUp(const Log& log, Applier& applier, size_t max_group) {
  Effects total;
  while (applier.applied() < log.End()) {
    FP_ASSIGN_OR_RETURN(std::vector<LogEntry> entries, log.Read(applier.applied(), max_group));
    FP_ASSIGN_OR_RETURN(Effects effects, applier.Apply(entries));
    total.divergences += effects.divergences;
    total.rejected += effects.rejected;
    total.verified_sessions += effects.verified_sessions;
    total.leaves += effects.leaves;
    total.orders.insert(total.orders.end(), effects.orders.begin(), effects.orders.end());
    total.quarantined.insert(total.quarantined.end(), effects.quarantined.begin(),
                             effects.quarantined.end());
  }
  return total;
}

StatusOr<SimSummary> RunSimulation(SimFleet& fleet, Log& log, Applier& applier,
                                   const RocksStore& state, uint64_t max_rounds) {
  SimSummary summary;
  while (summary.rounds < max_rounds) {
    FP_ASSIGN_OR_RETURN(summary.done, fleet.Done(state));
    if (summary.done) break;
    FP_ASSIGN_OR_RETURN(std::vector<pb::LogRecord> records, fleet.NextRound(state));
    FP_RETURN_IF_ERROR(AppendAll(log, records));
    FP_ASSIGN_OR_RETURN(Effects effects, CatchUp(log, applier, 1 << 20));
    summary.divergences += effects.divergences;
    summary.orders += effects.orders.size();
    summary.quarantined += effects.quarantined.size();
    summary.rejected += effects.rejected;
    summary.verified_sessions += effects.verified_sessions;
    ++summary.rounds;
  }
  return summary;
}

StoreDump DumpStore(const RocksStore& store) {
  StoreDump dump;
  for (size_t family = 0; family < store.column_families().size(); ++family) {
    std::unique_ptr<rocksdb::Iterator> it = store.NewIterator(family);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      dump.emplace_back(store.column_families()[family], it->key().ToString(),
                        it->value().ToString());
    }
    FP_CHECK(it->status().ok());
  }
  return dump;
}

}  // namespace fp::supervisor::testing
