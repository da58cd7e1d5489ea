// Tests of the etcd log backend against a real 3-member etcd cluster with mutual TLS: the Log
// contract (contiguous positions, durable before the ack, idempotent retries, conflicting keys,
// concurrent appenders on different members), a member killed mid-load, deadlines while etcd is
// stopped, and stored data that breaks the schema.
#include "supervisor/log/etcd_log.h"

#include <csignal>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "supervisor/log/testing/etcd_cluster.h"
#include "tests/testutil/status_matchers.h"

namespace fp::supervisor {
namespace {

using ::fp::testing::StatusIs;
using SteadyClock = std::chrono::steady_clock;

pb::LogRecord Tick(uint64_t ms) {
  pb::LogRecord record;
  record.mutable_tick()->set_unix_ms(ms);
  return record;
}

pb::LogRecord Batch(uint32_t session, uint64_t first_step, uint32_t token) {
  pb::LogRecord record;
  pb::LeafBatch* batch = record.mutable_leaf_batch();
  batch->set_worker_id("w");
  batch->set_session_id(fmt::format("{:016}", session));
  batch->set_replica(1);
  batch->set_first_step(first_step);
  batch->add_token_ids(token);
  batch->set_state_digests(std::string(32, 'd'));
  return record;
}

std::string Bytes(const pb::LogRecord& record) {
  std::string bytes;
  FP_CHECK(record.SerializeToString(&bytes));
  return bytes;
}

class EtcdLogTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::EtcdCluster::Available()) return;
    auto cluster = testing::EtcdCluster::Start({});
    FP_CHECK_OK(cluster);
    cluster_ = std::move(cluster).value().release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    if (cluster_ == nullptr) GTEST_SKIP() << "etcd is not installed";
  }

  // Options for a log of this test's own prefix whose client starts at member `first`.
  static EtcdLogOptions Options(size_t first = 0) {
    EtcdLogOptions options;
    options.client = cluster_->ClientOptionsFor(first);
    options.client.request_timeout = std::chrono::milliseconds(1000);
    options.prefix =
        fmt::format("/test/{}", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    return options;
  }
  static std::unique_ptr<EtcdLog> Open(const EtcdLogOptions& options) {
    auto log = OpenEtcdLog(options);
    FP_CHECK_OK(log);
    return std::move(log).value();
  }
  // Every record of the log, read by a fresh EtcdLog on another member.
  static std::vector<LogEntry> ReadAll(size_t first_member) {
    auto log = Open(Options(first_member));
    std::vector<LogEntry> all;
    while (all.size() < log->End()) {
      auto entries = log->Read(all.size(), kMaxEtcdReadRecords);
      FP_CHECK_OK(entries);
      FP_CHECK(!entries->empty());
      for (LogEntry& entry : *entries) all.push_back(std::move(entry));
    }
    return all;
  }

  static testing::EtcdCluster* cluster_;
};

testing::EtcdCluster* EtcdLogTest::cluster_ = nullptr;

TEST_F(EtcdLogTest, AppendsGetContiguousPositionsFromZero) {
  auto log = Open(Options());
  EXPECT_EQ(log->End(), 0u);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Tick(100 + i)));
    EXPECT_EQ(position, i);
  }
  EXPECT_EQ(log->WaitBeyond(4, std::chrono::seconds(5)), 5u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(1, 3));
  ASSERT_EQ(entries.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(entries[i].position, i + 1);
    EXPECT_EQ(entries[i].record.tick().unix_ms(), 101 + i);
  }
  ASSERT_OK_AND_ASSIGN(entries, log->Read(5, 10));
  EXPECT_TRUE(entries.empty());
}

TEST_F(EtcdLogTest, AcknowledgedRecordsAreInEtcdUnderTheirPositionKeys) {
  EtcdLogOptions options = Options();
  std::map<uint64_t, std::string> acked;
  {
    auto log = Open(options);
    for (uint32_t i = 0; i < 20; ++i) {
      ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Batch(i, 0, i)));
      acked[position] = Bytes(Batch(i, 0, i));
    }
  }
  // Read back with a plain client on another member, by the documented key schema.
  etcd::ClientOptions client_options = cluster_->ClientOptionsFor(2);
  ASSERT_OK_AND_ASSIGN(auto client, etcd::Client::Create(client_options));
  for (const auto& [position, bytes] : acked) {
    etcd::RangeRequest get;
    get.key = fmt::format("{}/log/{:016x}", options.prefix, position);
    ASSERT_OK_AND_ASSIGN(etcd::RangeResponse stored, client->Range(get));
    ASSERT_EQ(stored.kvs.size(), 1u) << get.key;
    EXPECT_EQ(stored.kvs[0].value, bytes);
  }
  std::vector<LogEntry> all = ReadAll(1);
  ASSERT_EQ(all.size(), 20u);
  for (const LogEntry& entry : all) EXPECT_EQ(Bytes(entry.record), acked[entry.position]);
}

TEST_F(EtcdLogTest, RetriedAppendAcknowledgesTheStoredPosition) {
  auto log = Open(Options(0));
  ASSERT_OK(AppendAndWait(*log, Tick(1)));
  ASSERT_OK_AND_ASSIGN(uint64_t first, AppendAndWait(*log, Batch(1, 0, 5)));
  ASSERT_OK(AppendAndWait(*log, Tick(2)));
  ASSERT_OK_AND_ASSIGN(uint64_t retried, AppendAndWait(*log, Batch(1, 0, 5)));
  EXPECT_EQ(retried, first);
  // The retry may come through another supervisor.
  auto other = Open(Options(1));
  ASSERT_OK_AND_ASSIGN(retried, AppendAndWait(*other, Batch(1, 0, 5)));
  EXPECT_EQ(retried, first);
  EXPECT_EQ(log->stats().duplicates + other->stats().duplicates, 2u);
  ASSERT_OK_AND_ASSIGN(uint64_t next, AppendAndWait(*other, Tick(2)));
  EXPECT_EQ(next, 3u);  // ticks carry no key: the same tick twice is two records
}

TEST_F(EtcdLogTest, CopiesInOneGroupAreWrittenOnce) {
  auto log = Open(Options());
  constexpr int kCopies = 50;
  std::mutex mutex;
  std::set<uint64_t> positions;
  for (int i = 0; i < kCopies; ++i) {
    log->Append(Batch(3, 10, 77), [&](StatusOr<uint64_t> position) {
      FP_CHECK_OK(position);
      std::lock_guard lock(mutex);
      positions.insert(*position);
    });
  }
  log->Close();
  EXPECT_EQ(positions, std::set<uint64_t>{0});
  EXPECT_EQ(ReadAll(1).size(), 1u);
}

TEST_F(EtcdLogTest, ConcurrentLogsOnDifferentMembersGetDisjointContiguousPositions) {
  auto a = Open(Options(0));
  auto b = Open(Options(1));
  constexpr uint32_t kThreads = 4;  // per log
  constexpr uint32_t kPerThread = 60;
  std::mutex mutex;
  std::map<uint64_t, std::string> acked;
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 2 * kThreads; ++t) {
    threads.emplace_back([&, t] {
      EtcdLog& log = t % 2 == 0 ? *a : *b;
      for (uint32_t i = 0; i < kPerThread; ++i) {
        const pb::LogRecord record = Batch(t, i, i);
        StatusOr<uint64_t> position = AppendAndWait(log, record);
        FP_CHECK_OK(position);
        std::lock_guard lock(mutex);
        FP_CHECK(acked.emplace(*position, Bytes(record)).second);  // disjoint
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  constexpr uint64_t kTotal = 2 * kThreads * kPerThread;
  ASSERT_EQ(acked.size(), kTotal);
  EXPECT_EQ(acked.rbegin()->first, kTotal - 1);  // contiguous from 0
  std::vector<LogEntry> all = ReadAll(2);
  ASSERT_EQ(all.size(), kTotal);
  for (const LogEntry& entry : all) EXPECT_EQ(Bytes(entry.record), acked[entry.position]);
  const EtcdLog::Stats sa = a->stats();
  const EtcdLog::Stats sb = b->stats();
  EXPECT_EQ(sa.records + sb.records, kTotal);
  // Group commit: concurrent appenders share txns.
  EXPECT_LT(sa.txns + sb.txns, kTotal / 2);
}

TEST_F(EtcdLogTest, WaitBeyondSeesAnotherLogsAppend) {
  auto reader = Open(Options(2));
  auto writer = Open(Options(0));
  std::thread appender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    FP_CHECK_OK(AppendAndWait(*writer, Tick(1)));
  });
  EXPECT_EQ(reader->WaitBeyond(0, std::chrono::seconds(10)), 1u);
  appender.join();
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, reader->Read(0, 5));
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].record.tick().unix_ms(), 1u);
}

TEST_F(EtcdLogTest, ReadsBelowTheCacheComeFromEtcd) {
  EtcdLogOptions options = Options();
  options.max_cache_records = 4;
  auto log = Open(options);
  for (uint32_t i = 0; i < 30; ++i) ASSERT_OK(AppendAndWait(*log, Tick(i)));
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(0, 100));
  ASSERT_EQ(entries.size(), 30u);
  for (uint32_t i = 0; i < 30; ++i) EXPECT_EQ(entries[i].record.tick().unix_ms(), i);
}

TEST_F(EtcdLogTest, KilledMemberMidLoadLosesNoAcknowledgedRecord) {
  auto log = Open(Options(0));  // connected to member 0 first: the one killed
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::mutex mutex;
  std::map<uint64_t, std::string> acked;
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (uint32_t i = 0; !stop; ++i) {
        const pb::LogRecord record = Batch(t, i, i);
        // Like a worker: retry the same batch until it is acknowledged.
        StatusOr<uint64_t> position = AppendAndWait(*log, record);
        while (!position.ok()) {
          FP_CHECK(position.status().code() == StatusCode::kUnavailable ||
                   position.status().code() == StatusCode::kDeadlineExceeded);
          ++failures;
          position = AppendAndWait(*log, record);
        }
        std::lock_guard lock(mutex);
        FP_CHECK(acked.emplace(*position, Bytes(record)).second);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_OK(cluster_->Kill(0));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (std::thread& thread : threads) thread.join();
  ASSERT_OK(cluster_->Restart(0));
  std::vector<LogEntry> all = ReadAll(1);
  ASSERT_FALSE(acked.empty());
  // Every acknowledged record is at its position, and nothing else is in the log: retries after
  // an indeterminate failure did not write second copies.
  ASSERT_EQ(all.size(), acked.size()) << failures << " failed attempts";
  for (const LogEntry& entry : all) EXPECT_EQ(Bytes(entry.record), acked[entry.position]);
  RecordProperty("acked", static_cast<int>(acked.size()));
  RecordProperty("failed_attempts", failures.load());
}

// ---- Error paths ----

TEST_F(EtcdLogTest, ConflictingContentUnderOneKeyIsFailedPrecondition) {
  auto log = Open(Options());
  ASSERT_OK(AppendAndWait(*log, Batch(1, 0, 5)));
  EXPECT_THAT(AppendAndWait(*log, Batch(1, 0, 6)), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(ReadAll(1).size(), 1u);
}

TEST_F(EtcdLogTest, RecordWithoutBodyOrTooLargeIsInvalidArgument) {
  EtcdLogOptions options = Options();
  options.max_txn_bytes = 1000;
  auto log = Open(options);
  EXPECT_THAT(AppendAndWait(*log, pb::LogRecord()), StatusIs(StatusCode::kInvalidArgument));
  pb::LogRecord big = Batch(1, 0, 1);
  big.mutable_leaf_batch()->set_state_digests(std::string(2000, 'x'));
  EXPECT_THAT(AppendAndWait(*log, big), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EtcdLogTest, BadOptionsAreInvalidArgument) {
  EtcdLogOptions options = Options();
  options.prefix += "/";
  EXPECT_THAT(OpenEtcdLog(options), StatusIs(StatusCode::kInvalidArgument));
  options = Options();
  options.max_txn_records = 64;  // 2 * 64 puts > etcd's 128 operations per txn
  EXPECT_THAT(OpenEtcdLog(options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EtcdLogTest, StoppedClusterFailsAppendsWithinTheirDeadline) {
  EtcdLogOptions options = Options();
  options.append_timeout = std::chrono::milliseconds(1000);
  options.client.request_timeout = std::chrono::milliseconds(300);
  auto log = Open(options);
  ASSERT_OK(AppendAndWait(*log, Tick(1)));
  for (size_t i = 0; i < cluster_->size(); ++i) ASSERT_OK(cluster_->Pause(i));
  const auto start = SteadyClock::now();
  StatusOr<uint64_t> result = AppendAndWait(*log, Batch(9, 0, 1));
  const auto took = SteadyClock::now() - start;
  for (size_t i = 0; i < cluster_->size(); ++i) ASSERT_OK(cluster_->Resume(i));
  EXPECT_TRUE(result.status().code() == StatusCode::kDeadlineExceeded ||
              result.status().code() == StatusCode::kUnavailable)
      << result.status().ToString();
  EXPECT_LT(took, std::chrono::milliseconds(1400));
  for (size_t i = 0; i < cluster_->size(); ++i) {
    ASSERT_OK(cluster_->WaitHealthy(i, std::chrono::seconds(10)));
  }
  // The retry after the cluster is back writes the batch exactly once.
  options.append_timeout = std::chrono::seconds(5);
  auto fresh = Open(options);
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*fresh, Batch(9, 0, 1)));
  EXPECT_EQ(position, 1u);
  EXPECT_EQ(ReadAll(1).size(), 2u);
}

TEST_F(EtcdLogTest, RecordThatDoesNotParseIsDataLoss) {
  EtcdLogOptions options = Options();
  ASSERT_OK_AND_ASSIGN(auto client, etcd::Client::Create(options.client));
  etcd::TxnRequest put;
  put.success = {{etcd::TxnOp::Kind::kPut,
                  options.prefix + "/log/0000000000000000",
                  "\xff\xff not a record",
                  0,
                  {},
                  ""}};
  ASSERT_OK(client->Txn(put, std::nullopt));
  EXPECT_THAT(Open(options)->Read(0, 1), StatusIs(StatusCode::kDataLoss));
}

TEST_F(EtcdLogTest, KeyOutsideTheSchemaIsDataLoss) {
  EtcdLogOptions options = Options();
  ASSERT_OK_AND_ASSIGN(auto client, etcd::Client::Create(options.client));
  etcd::TxnRequest put;
  put.success = {{etcd::TxnOp::Kind::kPut, options.prefix + "/log/zz", "x", 0, {}, ""}};
  ASSERT_OK(client->Txn(put, std::nullopt));
  EXPECT_THAT(OpenEtcdLog(options), StatusIs(StatusCode::kDataLoss));
}

TEST_F(EtcdLogTest, AppendAfterCloseIsUnavailable) {
  auto log = Open(Options());
  log->Close();
  EXPECT_THAT(AppendAndWait(*log, Tick(1)), StatusIs(StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fp::supervisor
