// The deterministic cluster simulation in CI: a sweep of seeds must keep every invariant (and,
// as a test of its own, finish its workload), a seed must replay exactly, and planted bugs must
// be caught. Cost and seed count: docs/supervisor.md, "Deterministic simulation".
//
// A failing seed prints the commands that replay it with its event trace:
//   build/supervisor/sim/fieldprint_sim --seed 123 --trace
//   FP_SIM_SEED=123 ctest --test-dir build -R supervisor_sim_test --output-on-failure
// FP_SIM_SEEDS=N runs N seeds instead of the default sweep.
#include "supervisor/sim/cluster_sim.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/log.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor::sim {
namespace {

using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

// Seeds of the CI sweep: about 55 ms of CPU each, mostly RocksDB (docs/supervisor.md).
constexpr uint64_t kSweepSeeds = 2000;
// The sweep's threads: the seeds are independent and CI machines have 2 cores.
constexpr int kSweepThreads = 2;
// Failing seeds reported in full before the sweep stops.
constexpr int kMaxReportedSeeds = 5;
// Seeds tried per planted bug before the test gives up on the checker.
constexpr uint64_t kMaxBugSeeds = 200;

std::optional<uint64_t> EnvU64(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::strtoull(value, nullptr, 10);
}

std::string ReplayHint(uint64_t seed) {
  return fmt::format(
      "replay: {}/supervisor/sim/fieldprint_sim --seed {} --trace\n"
      "    or: FP_SIM_SEED={} ctest --test-dir {} -R supervisor_sim_test --output-on-failure",
      fp::testing::BinaryDir().string(), seed, seed, fp::testing::BinaryDir().string());
}

std::string Join(const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) text += line + "\n";
  return text;
}

// Counts summed over a sweep: proof that the faults and the workload were exercised.
struct Totals {
  uint64_t crashes = 0, terms = 0, fenced = 0, lost = 0, duplicated = 0, late = 0, resends = 0;
  uint64_t abandoned = 0, refused = 0, trimmed_runs = 0, divergences = 0, verified = 0;
  void Add(const ClusterSimResult& result) {
    crashes += result.crashes;
    terms += result.terms;
    fenced += result.fenced;
    lost += result.messages_lost;
    duplicated += result.messages_duplicated;
    late += result.messages_late;
    resends += result.resends;
    abandoned += result.appends_abandoned;
    refused += result.appends_refused;
    trimmed_runs += result.log_begin > 0 ? 1 : 0;
    divergences += result.divergences;
    verified += result.verified_sessions;
  }
};

// The CI sweep, run once for the tests that read it: seeds [first, first + count), or the one
// seed FP_SIM_SEED names, with its trace on stdout.
struct Sweep {
  uint64_t first = 1;
  uint64_t count = 0;
  std::vector<std::optional<ClusterSimResult>> results;  // by seed - first; empty: not run
  double seconds = 0;
};

// Runs the seeds on kSweepThreads threads (seeds are independent); stops handing out seeds once
// kMaxReportedSeeds broke an invariant. FP_CHECK-fails when a run cannot start (no scratch space).
Sweep RunSweep() {
  Sweep sweep;
  sweep.count = EnvU64("FP_SIM_SEEDS").value_or(kSweepSeeds);
  const std::optional<uint64_t> replay = EnvU64("FP_SIM_SEED");
  if (replay.has_value()) {
    sweep.first = *replay;
    sweep.count = 1;
  }
  StatusOr<std::unique_ptr<SimScratch>> scratch = SimScratch::Create();
  FP_CHECK_OK(scratch);
  sweep.results.resize(sweep.count);
  std::atomic<uint64_t> next{0};
  std::atomic<int> unsafe{0};
  auto work = [&] {
    for (uint64_t i = next++; i < sweep.count && unsafe < kMaxReportedSeeds; i = next++) {
      ClusterSimOptions options = (*scratch)->Options(sweep.first + i);
      // A replay is one seed, so its trace lines do not interleave.
      if (replay.has_value()) {
        options.trace = [](std::string_view line) { std::cout << line << "\n"; };
      }
      StatusOr<ClusterSimResult> result = RunClusterSim(options);
      FP_CHECK_OK(result);
      if (!result->safe()) ++unsafe;
      sweep.results[i] = std::move(result).value();
    }
  };
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kSweepThreads; ++t) threads.emplace_back(work);
  for (std::thread& thread : threads) thread.join();
  sweep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return sweep;
}

class ClusterSimTest : public ::testing::Test {
 protected:
  // The supervisors' own log lines would bury the test's output; errors still show.
  static void SetUpTestSuite() { InitLogging(LogLevel::kError, LogFormat::kText); }
  void SetUp() override { ASSERT_OK_AND_ASSIGN(scratch_, SimScratch::Create()); }
  ClusterSimOptions Options(uint64_t seed) const { return scratch_->Options(seed); }

  static const Sweep& TheSweep() {
    static const Sweep sweep = RunSweep();
    return sweep;
  }

  // The first seed in 1..kMaxBugSeeds whose run with the planted bug reports a violation
  // containing one of `expected`; nullopt if none does.
  std::optional<ClusterSimResult> FindViolation(ModelBug model_bug, NodeBug node_bug,
                                                uint32_t max_crashes,
                                                const std::vector<std::string>& expected) {
    for (uint64_t seed = 1; seed <= kMaxBugSeeds; ++seed) {
      ClusterSimOptions options = Options(seed);
      options.model_bug = model_bug;
      options.node_bug = node_bug;
      options.max_crashes = max_crashes;
      StatusOr<ClusterSimResult> result = RunClusterSim(options);
      FP_CHECK_OK(result);
      const std::string violations = Join(result->violations);
      for (const std::string& text : expected) {
        if (violations.find(text) == std::string::npos) continue;
        std::cout << result->Summary(seed) << "\n";
        return std::move(result).value();
      }
    }
    return std::nullopt;
  }

  std::unique_ptr<SimScratch> scratch_;
};

TEST_F(ClusterSimTest, NoSeedBreaksAnInvariant) {
  const Sweep& sweep = TheSweep();
  Totals totals;
  uint64_t ran = 0;
  for (uint64_t i = 0; i < sweep.count; ++i) {
    if (!sweep.results[i].has_value()) continue;
    ++ran;
    const ClusterSimResult& result = *sweep.results[i];
    totals.Add(result);
    if (!result.safe()) {
      ADD_FAILURE() << result.Summary(sweep.first + i) << "\n" << ReplayHint(sweep.first + i);
    }
  }
  std::cout << fmt::format(
      "{} seeds in {:.1f} s ({:.1f} seeds/s on {} threads): {} crashes, {} terms, {} fenced "
      "writes, {} lost, {} duplicated, {} late messages, {} resends, {} abandoned and {} refused "
      "appends, {} runs trimmed, {} divergences, {} sessions verified\n",
      ran, sweep.seconds, static_cast<double>(ran) / sweep.seconds, kSweepThreads, totals.crashes,
      totals.terms, totals.fenced, totals.lost, totals.duplicated, totals.late, totals.resends,
      totals.abandoned, totals.refused, totals.trimmed_runs, totals.divergences, totals.verified);
  if (ran < 100) return;
  // Over a sweep every kind of fault must have happened, or a pass proves little.
  EXPECT_GT(totals.crashes, 0u);
  EXPECT_GT(totals.terms, ran);  // handovers beyond each run's first election
  EXPECT_GT(totals.fenced, 0u);
  EXPECT_GT(totals.lost, 0u);
  EXPECT_GT(totals.duplicated, 0u);
  EXPECT_GT(totals.late, 0u);
  EXPECT_GT(totals.resends, 0u);
  EXPECT_GT(totals.abandoned, 0u);
  EXPECT_GT(totals.trimmed_runs, 0u);
  EXPECT_GT(totals.divergences, 0u);
  EXPECT_GT(totals.verified, 0u);
}

// Liveness, apart from the invariants: every seed's workload finishes (each session verified or
// failed) within its rounds and simulated time.
TEST_F(ClusterSimTest, EverySeedFinishesItsWorkload) {
  const Sweep& sweep = TheSweep();
  for (uint64_t i = 0; i < sweep.count; ++i) {
    if (!sweep.results[i].has_value() || sweep.results[i]->stall.empty()) continue;
    ADD_FAILURE() << "seed " << sweep.first + i << " stalled: " << sweep.results[i]->stall << "\n"
                  << ReplayHint(sweep.first + i);
  }
}

TEST_F(ClusterSimTest, SameSeedReplaysTheSameTraceAndState) {
  // A seed with crashes and a handover, so the replay covers restarts and fencing.
  uint64_t seed = 1;
  for (; seed < 100; ++seed) {
    ASSERT_OK_AND_ASSIGN(ClusterSimResult probe, RunClusterSim(Options(seed)));
    if (probe.ok() && probe.crashes > 0 && probe.terms > 1) break;
  }
  std::vector<std::string> first_trace;
  ClusterSimOptions first_options = Options(seed);
  first_options.trace = [&](std::string_view line) { first_trace.emplace_back(line); };
  ASSERT_OK_AND_ASSIGN(ClusterSimResult first, RunClusterSim(first_options));

  // Again, in another directory: nothing of the run may depend on where its files are.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SimScratch> elsewhere, SimScratch::Create());
  std::vector<std::string> second_trace;
  ClusterSimOptions second_options = elsewhere->Options(seed);
  second_options.trace = [&](std::string_view line) { second_trace.emplace_back(line); };
  ASSERT_OK_AND_ASSIGN(ClusterSimResult second, RunClusterSim(second_options));

  EXPECT_TRUE(first.ok()) << first.Summary(seed);
  ASSERT_GT(first_trace.size(), 100u);
  for (size_t i = 0; i < std::min(first_trace.size(), second_trace.size()); ++i) {
    ASSERT_EQ(first_trace[i], second_trace[i]) << "trace line " << i << " of seed " << seed;
  }
  ASSERT_EQ(first_trace.size(), second_trace.size());
  EXPECT_EQ(first.trace_hash, second.trace_hash);
  EXPECT_EQ(first.state_hash, second.state_hash);
  EXPECT_EQ(first.log_records, second.log_records);

  // The hashes do tell seeds apart.
  ASSERT_OK_AND_ASSIGN(ClusterSimResult other, RunClusterSim(Options(seed + 1)));
  EXPECT_NE(other.trace_hash, first.trace_hash);
  EXPECT_NE(other.state_hash, first.state_hash);
}

// ---- Planted bugs: the simulation must be able to fail ----------------------------------------

TEST_F(ClusterSimTest, CatchesALogThatForgetsIdempotency) {
  // A duplicated or retried append is written again: the key is in the log twice, and the two
  // answers to one append disagree.
  EXPECT_TRUE(
      FindViolation(ModelBug::kIgnoreIdempotency, NodeBug::kNone, 0, {"in the log more than once"})
          .has_value());
}

TEST_F(ClusterSimTest, CatchesALogThatForgetsFencing) {
  // A deposed leader's late record lands after its successor's.
  EXPECT_TRUE(FindViolation(ModelBug::kIgnoreFencing, NodeBug::kNone, 0, {"stale leader record"})
                  .has_value());
}

TEST_F(ClusterSimTest, CatchesASupervisorThatAppliesARecordTwice) {
  // Planted in supervisor 1, which needs a crash and restart to show it: its state and ledger
  // part from the others'.
  EXPECT_TRUE(FindViolation(ModelBug::kNone, NodeBug::kReapplyAfterRestart,
                            ClusterSimOptions().max_crashes,
                            {"state differs", "ledger entries at position"})
                  .has_value());
}

// ---- Error paths ------------------------------------------------------------------------------

TEST_F(ClusterSimTest, BadOptionsAreInvalidArgument) {
  ClusterSimOptions none = Options(1);
  none.supervisors = 0;
  EXPECT_THAT(RunClusterSim(none).status(), StatusIs(StatusCode::kInvalidArgument));
  ClusterSimOptions many = Options(1);
  many.supervisors = kMaxSimSupervisors + 1;
  EXPECT_THAT(RunClusterSim(many).status(), StatusIs(StatusCode::kInvalidArgument));
  ClusterSimOptions margin = Options(1);
  margin.lease_margin_ms = margin.lease_ttl_ms;
  EXPECT_THAT(RunClusterSim(margin).status(), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::supervisor::sim
