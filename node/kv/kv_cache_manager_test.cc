// Tests for the KV block bookkeeping: budget, admission by reservation, lazy allocation,
// truncation and release.
#include "node/kv/kv_cache_manager.h"

#include <set>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

class KvCacheManagerTest : public ::testing::Test {
 protected:
  // 10 blocks of 16 rows, 100 bytes each.
  KvCacheManager Make() { return KvCacheManager::Create(1000, 100, 16).value(); }
};

TEST_F(KvCacheManagerTest, BudgetGivesBlockCount) {
  KvCacheManager kv = Make();
  EXPECT_EQ(kv.num_blocks(), 10);
  EXPECT_EQ(kv.free_blocks(), 10);
  EXPECT_EQ(kv.unreserved_blocks(), 10);
  EXPECT_EQ(KvCacheManager::Create(1099, 100, 16).value().num_blocks(), 10);  // rounds down
}

TEST_F(KvCacheManagerTest, BlocksForRoundsUp) {
  KvCacheManager kv = Make();
  EXPECT_EQ(kv.BlocksFor(0), 0);
  EXPECT_EQ(kv.BlocksFor(1), 1);
  EXPECT_EQ(kv.BlocksFor(16), 1);
  EXPECT_EQ(kv.BlocksFor(17), 2);
}

TEST_F(KvCacheManagerTest, ReservationIsAdmissionControl) {
  KvCacheManager kv = Make();
  EXPECT_TRUE(kv.TryReserve(1, 100));  // 7 blocks
  EXPECT_EQ(kv.unreserved_blocks(), 3);
  EXPECT_FALSE(kv.TryReserve(2, 49));  // 4 blocks: does not fit, nothing changes
  EXPECT_FALSE(kv.HasReservation(2));
  EXPECT_EQ(kv.unreserved_blocks(), 3);
  EXPECT_TRUE(kv.TryReserve(2, 48));  // 3 blocks
  EXPECT_EQ(kv.unreserved_blocks(), 0);
  kv.Release(1);
  EXPECT_EQ(kv.unreserved_blocks(), 7);
  EXPECT_TRUE(kv.TryReserve(3, 112));
}

TEST_F(KvCacheManagerTest, BlocksAreHandedOutLazilyLowestFirst) {
  KvCacheManager kv = Make();
  ASSERT_TRUE(kv.TryReserve(1, 64));
  ASSERT_TRUE(kv.TryReserve(2, 64));
  EXPECT_TRUE(kv.BlockTable(1).empty());
  kv.EnsureRows(1, 17);
  kv.EnsureRows(2, 1);
  kv.EnsureRows(1, 33);
  EXPECT_EQ(std::vector<int32_t>(kv.BlockTable(1).begin(), kv.BlockTable(1).end()),
            std::vector<int32_t>({0, 1, 3}));
  EXPECT_EQ(std::vector<int32_t>(kv.BlockTable(2).begin(), kv.BlockTable(2).end()),
            std::vector<int32_t>({2}));
  EXPECT_EQ(kv.free_blocks(), 6);
}

TEST_F(KvCacheManagerTest, TruncateFreesTrailingBlocksAndKeepsReservation) {
  KvCacheManager kv = Make();
  ASSERT_TRUE(kv.TryReserve(1, 64));
  kv.EnsureRows(1, 64);
  kv.Truncate(1, 20);  // keeps 2 blocks
  EXPECT_EQ(kv.BlockTable(1).size(), 2u);
  EXPECT_EQ(kv.free_blocks(), 8);
  EXPECT_EQ(kv.unreserved_blocks(), 6);
  kv.EnsureRows(1, 64);  // grows back within the reservation
  EXPECT_EQ(kv.BlockTable(1).size(), 4u);
  kv.Truncate(1, 0);
  EXPECT_TRUE(kv.BlockTable(1).empty());
  EXPECT_EQ(kv.free_blocks(), 10);
}

TEST_F(KvCacheManagerTest, NoBlockIsEverSharedUnderChurn) {
  KvCacheManager kv = Make();
  for (uint64_t round = 0; round < 50; ++round) {
    uint64_t a = 2 * round, b = 2 * round + 1;
    ASSERT_TRUE(kv.TryReserve(a, 80));
    ASSERT_TRUE(kv.TryReserve(b, 80));
    kv.EnsureRows(a, 1 + round % 80);
    kv.EnsureRows(b, 80 - round % 80);
    std::set<int32_t> seen;
    for (uint64_t s : {a, b}) {
      for (int32_t block : kv.BlockTable(s)) EXPECT_TRUE(seen.insert(block).second);
    }
    kv.Truncate(a, round % 7);
    kv.Release(a);
    kv.Release(b);
    ASSERT_EQ(kv.free_blocks(), 10);
  }
}

// Error paths.

TEST_F(KvCacheManagerTest, ZeroBudgetIsRejected) {
  EXPECT_THAT(KvCacheManager::Create(0, 100, 16), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(KvCacheManager::Create(99, 100, 16), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(KvCacheManager::Create(-5, 100, 16), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(KvCacheManager::Create(1000, 0, 16), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(KvCacheManagerTest, MoreThanThePoolNeverFits) {
  KvCacheManager kv = Make();
  EXPECT_FALSE(kv.TryReserve(1, 161));
}

TEST_F(KvCacheManagerTest, RowsBeyondReservationAbort) {
  KvCacheManager kv = Make();
  ASSERT_TRUE(kv.TryReserve(1, 16));
  EXPECT_DEATH(kv.EnsureRows(1, 17), "reservation");
}

}  // namespace
}  // namespace fp::node
