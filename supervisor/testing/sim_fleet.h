// SimFleet: a seeded, deterministic simulation of workers and a leader, for tests and benches.
//
// Each round reads the applied state and produces the records a real leader and real workers
// would cause: registrations and admissions first, then placements (PlanPlacement), one leaf
// batch per running replica, ticks, checkpoint requests, and now and then a deadline or a lost
// worker. Workers remember the leaves they sent, follow rollbacks and re-placements as they see
// them in the state, and corrupt leaves at a seeded rate (one worker more often than the rest,
// so that escalation and quarantine happen). The same seed gives the same records.
//
// Thread-safety: one thread.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "supervisor/log/log.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor::testing {

struct SimOptions {
  uint32_t workers = 5;
  uint32_t sessions = 6;
  uint32_t replicas = 3;    // R of most sessions; every third session uses R = 2
  uint32_t min_steps = 12;  // output length is drawn from [min_steps, max_steps]
  uint32_t max_steps = 40;
  uint32_t batch_steps = 4;  // leaves per batch
  uint32_t max_unverified_steps = 16;
  double fault_rate = 0.01;           // per leaf, on ordinary workers
  double bad_fault_rate = 0.08;       // per leaf, on worker 0
  double deadline_rate = 0.01;        // per running replica and round
  uint32_t lose_worker_at_round = 7;  // worker 1 is lost then and registers again 3 rounds later
};

class SimFleet {
 public:
  SimFleet(uint64_t seed, const SimOptions& options);

  // Records for the next round, given the state after the previous round was applied.
  StatusOr<std::vector<pb::LogRecord>> NextRound(const RocksStore& state);
  // True once every session is verified or failed.
  StatusOr<bool> Done(const RocksStore& state) const;
  uint64_t round() const { return round_; }

  static std::string WorkerId(uint32_t index);
  // The session id of simulated session `index`.
  std::string SessionId(uint32_t index) const;

 private:
  struct Local {
    std::string worker_id;
    uint64_t epoch = 0;
    std::vector<std::pair<uint32_t, std::string>> leaves;  // token, digest
  };
  void Setup(std::vector<pb::LogRecord>& out);
  pb::LogRecord Register(uint32_t worker) const;
  std::pair<uint32_t, std::string> MakeLeaf(const std::string& session, uint64_t step,
                                            const std::string& worker, uint64_t epoch);
  uint32_t OutputSteps(const std::string& session) const;

  uint64_t seed_;
  SimOptions options_;
  std::mt19937_64 random_;
  uint64_t round_ = 0;
  std::map<std::string, Local> locals_;  // session || replica -> the worker's memory
};

}  // namespace fp::supervisor::testing
