// Tests for ThreadPool: coverage, the static partition, inline single-thread pools, serialised
// concurrent callers and the error paths.
#include "kernels/base/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

class ThreadPoolTest : public ::testing::Test {
 protected:
  static std::unique_ptr<ThreadPool> MakePool(int threads) {
    StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(threads);
    FP_CHECK_OK(pool);
    return std::move(pool).value();
  }
};

TEST_F(ThreadPoolTest, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 7}) {
    std::unique_ptr<ThreadPool> pool = MakePool(threads);
    for (int64_t n : {0, 1, 2, 5, 7, 100, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool->ParallelFor(n, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)]++;
      });
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << threads << " " << n << " " << i;
      }
    }
  }
}

TEST_F(ThreadPoolTest, PartitionIsStaticAndCallerRunsTheFirstRange) {
  std::unique_ptr<ThreadPool> pool = MakePool(4);
  for (int run = 0; run < 20; ++run) {
    std::mutex mutex;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    std::thread::id first_range_thread;
    pool->ParallelFor(10, [&](int64_t begin, int64_t end) {
      std::lock_guard<std::mutex> lock(mutex);
      ranges.emplace_back(begin, end);
      if (begin == 0) first_range_thread = std::this_thread::get_id();
    });
    std::sort(ranges.begin(), ranges.end());
    // [n * i / 4, n * (i + 1) / 4) for n = 10.
    const std::vector<std::pair<int64_t, int64_t>> expected = {{0, 2}, {2, 5}, {5, 7}, {7, 10}};
    EXPECT_EQ(ranges, expected);
    EXPECT_EQ(first_range_thread, std::this_thread::get_id());
  }
}

TEST_F(ThreadPoolTest, SingleThreadPoolRunsInline) {
  std::unique_ptr<ThreadPool> pool = MakePool(1);
  std::vector<std::thread::id> seen;
  pool->ParallelFor(5, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 5);
    seen.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::this_thread::get_id());
}

TEST_F(ThreadPoolTest, ConcurrentCallersAreSerialised) {
  std::unique_ptr<ThreadPool> pool = MakePool(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int run = 0; run < 50; ++run) {
        pool->ParallelFor(100, [&](int64_t begin, int64_t end) { total += end - begin; });
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(total.load(), 4 * 50 * 100);
}

// Error paths.

TEST_F(ThreadPoolTest, SizeOutOfRangeIsRejected) {
  EXPECT_THAT(ThreadPool::Create(0).status(), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ThreadPool::Create(-3).status(), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ThreadPool::Create(ThreadPool::kMaxThreads + 1).status(),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ThreadPoolTest, NestedParallelForDies) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::unique_ptr<ThreadPool> pool = MakePool(2);
        pool->ParallelFor(2,
                          [&](int64_t, int64_t) { pool->ParallelFor(1, [](int64_t, int64_t) {}); });
      },
      "nested ParallelFor");
}

}  // namespace
}  // namespace fp::kernels
