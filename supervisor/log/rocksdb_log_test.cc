// Tests of the standalone log: positions, durability across reopen, idempotency, group commit
// under concurrent appenders, and a randomized comparison with a naive model of the log.
#include "supervisor/log/rocksdb_log.h"

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

using ::fp::testing::StatusIs;

pb::LogRecord Tick(uint64_t ms) {
  pb::LogRecord record;
  record.mutable_tick()->set_unix_ms(ms);
  return record;
}

pb::LogRecord Batch(uint8_t session, uint64_t first_step, uint32_t token) {
  pb::LogRecord record;
  pb::LeafBatch* batch = record.mutable_leaf_batch();
  batch->set_worker_id("w");
  batch->set_session_id(std::string(16, static_cast<char>(session)));
  batch->set_replica(1);
  batch->set_epoch(0);
  batch->set_first_step(first_step);
  batch->add_token_ids(token);
  batch->set_state_digests(std::string(32, 'd'));
  return record;
}

pb::LogRecord Admit(uint8_t session, uint32_t prompt_token) {
  pb::LogRecord record;
  pb::SessionRequest* request = record.mutable_admit()->mutable_request();
  request->set_session_id(std::string(16, static_cast<char>(session)));
  request->set_model("m");
  request->add_prompt_token_ids(prompt_token);
  return record;
}

class RocksLogTest : public ::testing::Test {
 protected:
  std::unique_ptr<RocksLog> OpenLog() {
    auto log = RocksLog::Open(dir_.Join("log"));
    FP_CHECK_OK(log);
    return std::move(log).value();
  }
  fp::testing::TempDir dir_;
};

TEST_F(RocksLogTest, AppendsGetContiguousPositionsFromZero) {
  auto log = OpenLog();
  EXPECT_EQ(log->End(), 0u);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Tick(100 + i)));
    EXPECT_EQ(position, i);
  }
  EXPECT_EQ(log->End(), 5u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(1, 3));
  ASSERT_EQ(entries.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(entries[i].position, i + 1);
    EXPECT_EQ(entries[i].record.tick().unix_ms(), 101 + i);
  }
}

TEST_F(RocksLogTest, ReadPastEndIsEmpty) {
  auto log = OpenLog();
  ASSERT_OK(AppendAndWait(*log, Tick(1)));
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(1, 10));
  EXPECT_TRUE(entries.empty());
  ASSERT_OK_AND_ASSIGN(entries, log->Read(0, 10));
  EXPECT_EQ(entries.size(), 1u);
}

TEST_F(RocksLogTest, RecordsSurviveReopen) {
  {
    auto log = OpenLog();
    for (uint64_t i = 0; i < 3; ++i) ASSERT_OK(AppendAndWait(*log, Batch(7, i, 40 + i)));
  }
  auto log = OpenLog();
  EXPECT_EQ(log->End(), 3u);
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Tick(9)));
  EXPECT_EQ(position, 3u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(0, 10));
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[2].record.leaf_batch().token_ids(0), 42u);
  // The idempotency index survived too: a retry of record 1 maps to position 1.
  ASSERT_OK_AND_ASSIGN(position, AppendAndWait(*log, Batch(7, 1, 41)));
  EXPECT_EQ(position, 1u);
  EXPECT_EQ(log->End(), 4u);
}

TEST_F(RocksLogTest, RetriedAppendAcknowledgesStoredPosition) {
  auto log = OpenLog();
  ASSERT_OK(AppendAndWait(*log, Tick(1)));
  ASSERT_OK_AND_ASSIGN(uint64_t first, AppendAndWait(*log, Batch(1, 0, 5)));
  ASSERT_OK(AppendAndWait(*log, Tick(2)));
  ASSERT_OK_AND_ASSIGN(uint64_t retried, AppendAndWait(*log, Batch(1, 0, 5)));
  EXPECT_EQ(retried, first);
  EXPECT_EQ(log->End(), 3u);
  EXPECT_EQ(log->stats().duplicates, 1u);
  // Ticks carry no key: the same tick twice is two records.
  ASSERT_OK_AND_ASSIGN(uint64_t tick, AppendAndWait(*log, Tick(2)));
  EXPECT_EQ(tick, 3u);
}

TEST_F(RocksLogTest, DuplicatesInsideOneGroupAreWrittenOnce) {
  auto log = OpenLog();
  constexpr int kCopies = 64;
  std::atomic<int> done{0};
  std::mutex mutex;
  std::set<uint64_t> positions;
  for (int i = 0; i < kCopies; ++i) {
    log->Append(Batch(3, 10, 77), [&](StatusOr<uint64_t> position) {
      ASSERT_OK(position);
      std::lock_guard lock(mutex);
      positions.insert(*position);
      ++done;
    });
  }
  log->Close();
  EXPECT_EQ(done.load(), kCopies);
  EXPECT_EQ(positions, std::set<uint64_t>{0});
  EXPECT_EQ(log->End(), 1u);
}

TEST_F(RocksLogTest, ConcurrentAppendersShareSyncedWrites) {
  auto log = OpenLog();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 500;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::set<uint64_t> positions;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        StatusOr<uint64_t> position = AppendAndWait(*log, Batch(t, i, i));
        FP_CHECK_OK(position);
        std::lock_guard lock(mutex);
        positions.insert(*position);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  constexpr uint64_t kTotal = kThreads * kPerThread;
  ASSERT_EQ(positions.size(), kTotal);
  EXPECT_EQ(*positions.rbegin(), kTotal - 1);
  RocksLog::Stats stats = log->stats();
  EXPECT_EQ(stats.records, kTotal);
  // With 8 appenders waiting on each sync, groups must hold several records on average.
  EXPECT_LT(stats.groups, kTotal / 2) << "group commit did not batch concurrent appenders";
}

TEST_F(RocksLogTest, WaitBeyondWakesWhenARecordBecomesDurable) {
  auto log = OpenLog();
  std::thread appender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    FP_CHECK_OK(AppendAndWait(*log, Tick(1)));
  });
  EXPECT_EQ(log->WaitBeyond(0, std::chrono::seconds(10)), 1u);
  appender.join();
  EXPECT_EQ(log->WaitBeyond(5, std::chrono::milliseconds(1)), 1u);
}

// A naive model: a vector of records and a map from key to the first position.
TEST_F(RocksLogTest, RandomAppendsMatchNaiveModel) {
  std::mt19937_64 random(20240517);
  std::vector<std::string> model;
  std::map<std::string, uint64_t> model_keys;
  auto log = OpenLog();
  for (int i = 0; i < 400; ++i) {
    if (i == 200) {
      log.reset();
      log = OpenLog();
    }
    pb::LogRecord record =
        random() % 3 == 0 ? Tick(random() % 5) : Batch(random() % 4, random() % 8, 1);
    std::optional<std::string> key = IdempotencyKey(record);
    std::string bytes;
    ASSERT_TRUE(record.SerializeToString(&bytes));
    uint64_t expected = model.size();
    if (key.has_value() && model_keys.contains(*key)) {
      expected = model_keys[*key];
    } else {
      if (key.has_value()) model_keys[*key] = model.size();
      model.push_back(bytes);
    }
    ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, record));
    ASSERT_EQ(position, expected) << "append " << i;
  }
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(0, model.size() + 5));
  ASSERT_EQ(entries.size(), model.size());
  for (size_t i = 0; i < model.size(); ++i) {
    std::string bytes;
    ASSERT_TRUE(entries[i].record.SerializeToString(&bytes));
    EXPECT_EQ(bytes, model[i]) << "position " << i;
  }
}

// ---- Error paths ----

TEST_F(RocksLogTest, ConflictingContentUnderOneKeyIsFailedPrecondition) {
  auto log = OpenLog();
  ASSERT_OK(AppendAndWait(*log, Batch(1, 0, 5)));
  EXPECT_THAT(AppendAndWait(*log, Batch(1, 0, 6)), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(log->End(), 1u);
}

TEST_F(RocksLogTest, TrimDeletesTheOldestRecordsAndSurvivesReopen) {
  {
    auto log = OpenLog();
    ASSERT_OK(AppendAndWait(*log, Admit(1, 5)));                                           // 0
    for (uint64_t i = 0; i < 4; ++i) ASSERT_OK(AppendAndWait(*log, Batch(2, i, 40 + i)));  // 1-4
    ASSERT_OK(AppendAndWait(*log, Tick(9)));                                               // 5
    EXPECT_EQ(log->Begin(), 0u);
    ASSERT_OK_AND_ASSIGN(uint64_t begin, log->Trim(3));
    EXPECT_EQ(begin, 3u);
    EXPECT_EQ(log->Begin(), 3u);
    EXPECT_THAT(log->Read(2, 10).status(), StatusIs(StatusCode::kOutOfRange));
    ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(3, 10));
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(entries[0].position, 3u);
    EXPECT_EQ(entries[0].record.leaf_batch().first_step(), 2u);
    // Trimming never passes the end, and trimming below the trim point does nothing.
    ASSERT_OK_AND_ASSIGN(begin, log->Trim(2));
    EXPECT_EQ(begin, 3u);
  }
  auto log = OpenLog();
  EXPECT_EQ(log->Begin(), 3u);
  EXPECT_EQ(log->End(), 6u);
  EXPECT_THAT(log->Read(0, 1).status(), StatusIs(StatusCode::kOutOfRange));
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Tick(10)));
  EXPECT_EQ(position, 6u);
  ASSERT_OK_AND_ASSIGN(uint64_t begin, log->Trim(100));
  EXPECT_EQ(begin, 7u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(7, 10));
  EXPECT_TRUE(entries.empty());
}

TEST_F(RocksLogTest, AdmitKeysOutliveTrimmingOtherKeysDoNot) {
  auto log = OpenLog();
  ASSERT_OK(AppendAndWait(*log, Admit(1, 5)));      // 0
  ASSERT_OK(AppendAndWait(*log, Batch(2, 0, 40)));  // 1
  ASSERT_OK(AppendAndWait(*log, Tick(1)));          // 2
  ASSERT_OK(log->Trim(2));
  // A retried submission still gets its original position; a different one under the same key
  // is still a conflict, although the record itself is gone.
  ASSERT_OK_AND_ASSIGN(uint64_t again, AppendAndWait(*log, Admit(1, 5)));
  EXPECT_EQ(again, 0u);
  EXPECT_THAT(AppendAndWait(*log, Admit(1, 6)), StatusIs(StatusCode::kFailedPrecondition));
  // A trimmed leaf batch's key went with it: a late resend is a new record (the applier rejects
  // it as stale).
  ASSERT_OK_AND_ASSIGN(uint64_t resent, AppendAndWait(*log, Batch(2, 0, 40)));
  EXPECT_EQ(resent, 3u);
}

TEST_F(RocksLogTest, RecordWithoutBodyIsInvalidArgument) {
  auto log = OpenLog();
  EXPECT_THAT(AppendAndWait(*log, pb::LogRecord()), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(RocksLogTest, AppendAfterCloseIsUnavailable) {
  auto log = OpenLog();
  log->Close();
  EXPECT_THAT(AppendAndWait(*log, Tick(1)), StatusIs(StatusCode::kUnavailable));
}

TEST_F(RocksLogTest, ForeignDatabaseIsRejected) {
  RocksStore::Options options;
  {
    auto other = RocksStore::Open(dir_.Join("log"), {"something_else"}, options);
    ASSERT_OK(other);
  }
  EXPECT_THAT(RocksLog::Open(dir_.Join("log")), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::supervisor
