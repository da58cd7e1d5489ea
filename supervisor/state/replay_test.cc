// The determinism test: one log, produced by a seeded fleet simulation with faults, rollbacks,
// re-placements and checkpoints, is replayed on fresh stores in different group sizes, and every
// key and value of every column family must be equal.
#include <random>

#include <gtest/gtest.h>

#include "supervisor/log/rocksdb_log.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_store.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

using testing::StoreDump;

struct Replica {
  std::unique_ptr<RocksStore> store;
  std::unique_ptr<Applier> applier;
};

Replica OpenReplica(const std::string& path) {
  Replica replica;
  auto store = OpenStateStore(path);
  FP_CHECK_OK(store);
  replica.store = std::move(store).value();
  auto applier = Applier::Open(replica.store.get(), ApplierOptions{.quarantine_divergences = 6});
  FP_CHECK_OK(applier);
  replica.applier = std::move(applier).value();
  return replica;
}

class ReplayTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  fp::testing::TempDir dir_;
};

TEST_P(ReplayTest, SameLogGivesSameBytesInEveryFamily) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksLog> log, RocksLog::Open(dir_.Join("log")));
  Replica origin = OpenReplica(dir_.Join("a"));
  testing::SimFleet fleet(GetParam(), testing::SimOptions());
  ASSERT_OK_AND_ASSIGN(testing::SimSummary summary,
                       testing::RunSimulation(fleet, *log, *origin.applier, *origin.store, 400));
  ASSERT_TRUE(summary.done) << "simulation did not finish in " << summary.rounds << " rounds";
  // The workload must have exercised the comparator, not just the happy path.
  EXPECT_GT(summary.divergences, 0u);
  EXPECT_GT(summary.orders, 0u);
  EXPECT_EQ(summary.verified_sessions, testing::SimOptions().sessions);

  // One record per Apply.
  Replica single = OpenReplica(dir_.Join("b"));
  ASSERT_OK(testing::CatchUp(*log, *single.applier, 1).status());
  // Random group sizes.
  Replica grouped = OpenReplica(dir_.Join("c"));
  std::mt19937_64 random(GetParam());
  while (grouped.applier->applied() < log->End()) {
    ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries,
                         log->Read(grouped.applier->applied(), 1 + random() % 64));
    ASSERT_OK(grouped.applier->Apply(entries).status());
  }

  const StoreDump expected = testing::DumpStore(*origin.store);
  ASSERT_FALSE(expected.empty());
  const StoreDump one_by_one = testing::DumpStore(*single.store);
  const StoreDump in_groups = testing::DumpStore(*grouped.store);
  ASSERT_EQ(one_by_one.size(), expected.size());
  ASSERT_EQ(in_groups.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(one_by_one[i], expected[i]) << "entry " << i << " in " << std::get<0>(expected[i]);
    ASSERT_EQ(in_groups[i], expected[i]) << "entry " << i << " in " << std::get<0>(expected[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, ReplayTest, ::testing::Values(1, 2, 3));

}  // namespace
}  // namespace fp::supervisor
