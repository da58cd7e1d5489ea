// Tests of the etcd log backend against a real 3-member etcd cluster with mutual TLS: the Log
// contract (contiguous positions, durable before the ack, idempotent retries, conflicting keys,
// concurrent appenders on different members), pipelined txns and their recovery from lost races,
// trimming (contiguous appends after a trim, the idempotency window, reads below the trim point,
// compaction), a member killed mid-load, deadlines while etcd is stopped, and stored data that
// breaks the schema.
#include "supervisor/log/etcd_log.h"

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/base/bytes.h"
#include "supervisor/log/testing/etcd_suite.h"
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

class EtcdLogTest : public testing::SharedEtcdTest<3> {
 protected:
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
};

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
  constexpr uint32_t kPerThread = 40;
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

// Appends `count` keyed batches (session `session`, steps 0..count-1) from several threads and
// returns position -> record bytes; every position is distinct.
std::map<uint64_t, std::string> AppendConcurrently(EtcdLog& log, uint32_t session, uint32_t count,
                                                   uint32_t threads) {
  std::mutex mutex;
  std::map<uint64_t, std::string> acked;
  std::vector<std::thread> appenders;
  for (uint32_t t = 0; t < threads; ++t) {
    appenders.emplace_back([&, t] {
      for (uint32_t i = t; i < count; i += threads) {
        const pb::LogRecord record = Batch(session, i, i);
        StatusOr<uint64_t> position = AppendAndWait(log, record);
        FP_CHECK_OK(position);
        std::lock_guard lock(mutex);
        FP_CHECK(acked.emplace(*position, Bytes(record)).second);
      }
    });
  }
  for (std::thread& thread : appenders) thread.join();
  return acked;
}

TEST_F(EtcdLogTest, PipelinedTxnsKeepPositionsContiguous) {
  EtcdLogOptions options = Options();
  options.max_txns_in_flight = kMaxEtcdTxnsInFlight;
  options.max_txn_records = 2;  // many small txns: the pipeline fills
  auto log = Open(options);
  std::map<uint64_t, std::string> acked = AppendConcurrently(*log, 1, 160, 16);
  ASSERT_EQ(acked.size(), 160u);
  EXPECT_EQ(acked.rbegin()->first, 159u);
  const EtcdLog::Stats stats = log->stats();
  EXPECT_GT(stats.max_in_flight, 1u);
  EXPECT_EQ(stats.records, 160u);
  EXPECT_EQ(log->End(), 160u);
  std::vector<LogEntry> all = ReadAll(1);
  ASSERT_EQ(all.size(), 160u);
  for (const LogEntry& entry : all) EXPECT_EQ(Bytes(entry.record), acked[entry.position]);
  RecordProperty("stalls", static_cast<int>(stats.stalls));
}

TEST_F(EtcdLogTest, StalePipelineRecoversFromALostRace) {
  EtcdLogOptions options = Options();
  options.max_txns_in_flight = kMaxEtcdTxnsInFlight;
  options.max_txn_records = 2;
  auto stale = Open(options);  // believes the end is 0
  auto other = Open(Options(1));
  for (uint32_t i = 0; i < 7; ++i) ASSERT_OK(AppendAndWait(*other, Tick(i)));
  // Every txn the stale log has in flight claims a taken position: they all lose, and the log
  // must find the end again without writing anything twice.
  std::map<uint64_t, std::string> acked = AppendConcurrently(*stale, 2, 60, 12);
  ASSERT_EQ(acked.size(), 60u);
  EXPECT_EQ(acked.begin()->first, 7u);
  EXPECT_EQ(acked.rbegin()->first, 66u);
  EXPECT_GE(stale->stats().races_lost, 1u);
  EXPECT_GE(stale->stats().stalls, 1u);
  std::vector<LogEntry> all = ReadAll(2);
  ASSERT_EQ(all.size(), 67u);
  for (uint64_t p = 7; p < 67; ++p) EXPECT_EQ(Bytes(all[p].record), acked[p]);
}

TEST_F(EtcdLogTest, AppendsContinueContiguouslyAfterATrim) {
  auto log = Open(Options());
  AppendConcurrently(*log, 3, 20, 1);
  ASSERT_OK_AND_ASSIGN(uint64_t begin, log->Trim(15));
  EXPECT_EQ(begin, 15u);
  EXPECT_EQ(log->Begin(), 15u);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Tick(i)));
    EXPECT_EQ(position, 20 + i);
  }
  // A supervisor that opens now sees the trimmed range and the new records.
  auto fresh = Open(Options(2));
  EXPECT_EQ(fresh->Begin(), 15u);
  EXPECT_EQ(fresh->End(), 25u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, fresh->Read(15, 100));
  ASSERT_EQ(entries.size(), 10u);
  EXPECT_EQ(Bytes(entries[0].record), Bytes(Batch(3, 15, 15)));
  EXPECT_EQ(entries[9].record.tick().unix_ms(), 4u);
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*fresh, Tick(9)));
  EXPECT_EQ(position, 25u);
}

TEST_F(EtcdLogTest, TrimKeepsTheLastRecord) {
  auto log = Open(Options());
  for (uint32_t i = 0; i < 5; ++i) ASSERT_OK(AppendAndWait(*log, Tick(i)));
  ASSERT_OK_AND_ASSIGN(uint64_t begin, log->Trim(1000));
  EXPECT_EQ(begin, 4u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log->Read(4, 10));
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].record.tick().unix_ms(), 4u);
  // Trimming again changes nothing; the next append still finds its predecessor.
  ASSERT_OK_AND_ASSIGN(begin, log->Trim(1000));
  EXPECT_EQ(begin, 4u);
  auto fresh = Open(Options(1));
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*fresh, Tick(5)));
  EXPECT_EQ(position, 5u);
}

TEST_F(EtcdLogTest, RetryInsideTheIdempotencyWindowGetsTheStoredPosition) {
  EtcdLogOptions options = Options();
  options.idem_window_records = 5;
  auto log = Open(options);
  std::map<uint64_t, std::string> acked = AppendConcurrently(*log, 4, 20, 1);
  ASSERT_EQ(acked.size(), 20u);
  ASSERT_OK_AND_ASSIGN(uint64_t begin, log->Trim(15));
  ASSERT_EQ(begin, 15u);
  // By the documented schema: entries of positions [10, 20) stay, those below 10 are gone.
  ASSERT_OK_AND_ASSIGN(auto client, etcd::Client::Create(cluster_->ClientOptionsFor(1)));
  for (uint32_t step = 0; step < 20; ++step) {
    etcd::RangeRequest get;
    get.key = options.prefix + "/idem/" + HexEncode(AsBytes(*IdempotencyKey(Batch(4, step, step))));
    ASSERT_OK_AND_ASSIGN(etcd::RangeResponse stored, client->Range(get));
    EXPECT_EQ(stored.kvs.size(), step >= 10 ? 1u : 0u) << "step " << step;
  }
  // A retry of a trimmed record inside the window: the stored position, nothing written.
  ASSERT_OK_AND_ASSIGN(uint64_t retried, AppendAndWait(*log, Batch(4, 12, 12)));
  EXPECT_EQ(retried, 12u);
  ASSERT_OK_AND_ASSIGN(retried, AppendAndWait(*log, Batch(4, 17, 17)));
  EXPECT_EQ(retried, 17u);
  EXPECT_EQ(log->End(), 20u);
  // Outside the window the key is forgotten: the record is written again, at the end.
  ASSERT_OK_AND_ASSIGN(retried, AppendAndWait(*log, Batch(4, 3, 3)));
  EXPECT_EQ(retried, 20u);
}

TEST_F(EtcdLogTest, TrimCompactsTheDeletedHistory) {
  EtcdLogOptions options = Options();
  auto log = Open(options);
  for (uint32_t i = 0; i < 6; ++i) ASSERT_OK(AppendAndWait(*log, Tick(i)));
  ASSERT_OK_AND_ASSIGN(auto client, etcd::Client::Create(cluster_->ClientOptionsFor(0)));
  etcd::RangeRequest first;
  first.key = options.prefix + "/log/0000000000000000";
  ASSERT_OK_AND_ASSIGN(etcd::RangeResponse before, client->Range(first));
  ASSERT_EQ(before.kvs.size(), 1u);
  first.revision = before.revision;  // the history that still holds record 0
  ASSERT_OK(client->Range(first).status());
  ASSERT_OK(log->Trim(3).status());
  EXPECT_THAT(client->Range(first), StatusIs(StatusCode::kOutOfRange));
  first.revision = 0;
  ASSERT_OK_AND_ASSIGN(etcd::RangeResponse now, client->Range(first));
  EXPECT_TRUE(now.kvs.empty());
}

// A stand-in for cluster::LeaderElection: the test makes and ends terms by writing the leader key
// itself, and decides which token the log believes is current.
class FakeTerm {
 public:
  explicit FakeTerm(std::string key) : key_(std::move(key)) {
    auto client = etcd::Client::Create(cluster_options_);
    FP_CHECK_OK(client);
    client_ = std::move(client).value();
  }
  static void SetClientOptions(etcd::ClientOptions options) {
    cluster_options_ = std::move(options);
  }
  // Deletes and recreates the key: a new term at etcd. Returns its token (create_revision).
  int64_t StartNewTerm() {
    FP_CHECK_OK(client_->DeleteRange(key_, ""));
    etcd::TxnRequest put;
    put.success.push_back({etcd::TxnOp::Kind::kPut, key_, "someone", 0, {}, ""});
    auto done = client_->Txn(put, std::nullopt);
    FP_CHECK_OK(done);
    return done->revision;
  }
  void Believe(std::optional<int64_t> token) { believed_.store(token.value_or(0)); }
  void Install(EtcdLogOptions& options) {
    options.leader_token = [this]() -> std::optional<int64_t> {
      const int64_t token = believed_.load();
      return token == 0 ? std::nullopt : std::optional<int64_t>(token);
    };
    options.on_fence_refused = [this] { ++refused_; };
  }
  uint64_t refused() const { return refused_.load(); }

 private:
  static etcd::ClientOptions cluster_options_;
  std::string key_;
  std::unique_ptr<etcd::Client> client_;
  std::atomic<int64_t> believed_{0};
  std::atomic<uint64_t> refused_{0};
};

etcd::ClientOptions FakeTerm::cluster_options_;

pb::LogRecord Assign(uint32_t session, const std::string& worker) {
  pb::LogRecord record;
  record.mutable_assign()->set_session_id(fmt::format("{:016}", session));
  record.mutable_assign()->set_replica(0);
  record.mutable_assign()->set_epoch(1);
  record.mutable_assign()->set_worker_id(worker);
  return record;
}

TEST_F(EtcdLogTest, LeaderRecordsLandOnlyWhileTheirTermHoldsAtEtcd) {
  EtcdLogOptions options = Options();
  FakeTerm::SetClientOptions(cluster_->ClientOptionsFor(2));
  FakeTerm term(options.prefix + "/leader");
  term.Install(options);
  auto log = Open(options);
  const int64_t first = term.StartNewTerm();
  term.Believe(first);
  ASSERT_OK_AND_ASSIGN(uint64_t tick, AppendAndWait(*log, Tick(1)));
  ASSERT_OK_AND_ASSIGN(uint64_t batch, AppendAndWait(*log, Batch(1, 0, 1)));
  EXPECT_EQ(log->stats().fenced_records, 1u);
  // Another process wins a term; this log still believes in the old one (a paused leader).
  const int64_t second = term.StartNewTerm();
  ASSERT_GT(second, first);
  Status refused = AppendAndWait(*log, Tick(2)).status();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(refused.message()).find("not the leader"), std::string::npos)
      << refused.ToString();
  EXPECT_EQ(term.refused(), 1u);
  EXPECT_EQ(log->stats().fenced_refused, 1u);
  // Records any member may write do not depend on the term.
  ASSERT_OK_AND_ASSIGN(uint64_t later, AppendAndWait(*log, Batch(2, 0, 2)));
  EXPECT_GT(later, batch);
  // The current term's records land.
  term.Believe(second);
  ASSERT_OK_AND_ASSIGN(uint64_t newer, AppendAndWait(*log, Tick(3)));
  // What etcd holds: ticks 1 and 3 only, in order, around the unfenced batches.
  std::vector<uint64_t> ticks;
  for (const LogEntry& entry : ReadAll(1)) {
    if (entry.record.has_tick()) ticks.push_back(entry.record.tick().unix_ms());
  }
  EXPECT_EQ(ticks, (std::vector<uint64_t>{1, 3}));
  EXPECT_LT(tick, newer);
}

TEST_F(EtcdLogTest, LeaderRecordsOfAProcessThatDoesNotLeadAreRefusedWithoutATxn) {
  EtcdLogOptions options = Options();
  FakeTerm::SetClientOptions(cluster_->ClientOptionsFor(2));
  FakeTerm term(options.prefix + "/leader");
  term.Install(options);
  auto log = Open(options);
  term.Believe(std::nullopt);
  for (const pb::LogRecord& record : {Tick(1), Assign(1, "w")}) {
    EXPECT_THAT(AppendAndWait(*log, record), StatusIs(StatusCode::kFailedPrecondition));
  }
  EXPECT_EQ(log->stats().txns, 0u);
  EXPECT_EQ(term.refused(), 2u);
  EXPECT_EQ(log->End(), 0u);
}

TEST_F(EtcdLogTest, StoredLeaderRecordIsAcknowledgedAfterItsTermEnded) {
  EtcdLogOptions options = Options();
  FakeTerm::SetClientOptions(cluster_->ClientOptionsFor(2));
  FakeTerm term(options.prefix + "/leader");
  term.Install(options);
  auto log = Open(options);
  const int64_t first = term.StartNewTerm();
  term.Believe(first);
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log, Assign(7, "w")));
  term.StartNewTerm();  // the old term is over, the believer does not know yet
  // A retry of a record that landed in its term is that record, not a new write.
  ASSERT_OK_AND_ASSIGN(uint64_t again, AppendAndWait(*log, Assign(7, "w")));
  EXPECT_EQ(again, position);
  // A different proposal under the same key is refused by the fence first.
  EXPECT_THAT(AppendAndWait(*log, Assign(8, "w")), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(ReadAll(1).size(), 1u);
}

TEST_F(EtcdLogTest, ConcurrentLeaderAndMemberRecordsAreGroupedApartAndAllLand) {
  EtcdLogOptions options = Options();
  FakeTerm::SetClientOptions(cluster_->ClientOptionsFor(2));
  FakeTerm term(options.prefix + "/leader");
  term.Install(options);
  auto log = Open(options);
  term.Believe(term.StartNewTerm());
  std::vector<pb::LogRecord> records;
  for (uint32_t i = 0; i < 100; ++i) {
    records.push_back(i % 4 == 0 ? Tick(i) : Batch(i, 0, i));
  }
  std::atomic<size_t> ok{0};
  std::mutex mutex;
  std::condition_variable done;
  size_t completed = 0;
  for (const pb::LogRecord& record : records) {
    log->Append(record, [&](StatusOr<uint64_t> position) {
      if (position.ok()) ++ok;
      std::lock_guard lock(mutex);
      ++completed;
      done.notify_all();
    });
  }
  std::unique_lock lock(mutex);
  done.wait(lock, [&] { return completed == records.size(); });
  EXPECT_EQ(ok.load(), records.size());
  EXPECT_EQ(log->stats().fenced_records, 25u);
  EXPECT_EQ(ReadAll(1).size(), records.size());
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
  options.client.max_txn_ops = 130;  // a cluster that allows 2 * 64 + 2 operations
  EXPECT_OK(OpenEtcdLog(options).status());
  options.client.max_txn_ops = etcd::kMaxTxnOpsLimit + 1;
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
  // Bounded by the append deadline (plus generous slack for a loaded machine), not by etcd.
  EXPECT_LT(took, std::chrono::milliseconds(5000));
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

TEST_F(EtcdLogTest, ReadBelowTheTrimPointIsOutOfRange) {
  auto log = Open(Options());
  for (uint32_t i = 0; i < 10; ++i) ASSERT_OK(AppendAndWait(*log, Tick(i)));
  ASSERT_OK(log->Trim(6).status());
  EXPECT_THAT(log->Read(5, 1), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(log->Read(0, 100), StatusIs(StatusCode::kOutOfRange));
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> kept, log->Read(6, 100));
  EXPECT_EQ(kept.size(), 4u);
  EtcdLogOptions small_cache = Options(2);
  small_cache.max_cache_records = 1;  // reads below the end go to etcd
  auto fresh_reader = Open(small_cache);
  StatusOr<std::vector<LogEntry>> below = fresh_reader->Read(2, 1);
  EXPECT_THAT(below, StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(below.status().message(), ::testing::HasSubstr("trimmed"));
  EXPECT_EQ(fresh_reader->Begin(), 6u);
}

TEST_F(EtcdLogTest, BadPipelineDepthIsInvalidArgument) {
  EtcdLogOptions options = Options();
  options.max_txns_in_flight = 0;
  EXPECT_THAT(OpenEtcdLog(options), StatusIs(StatusCode::kInvalidArgument));
  options.max_txns_in_flight = kMaxEtcdTxnsInFlight + 1;
  EXPECT_THAT(OpenEtcdLog(options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EtcdLogTest, AppendAfterCloseIsUnavailable) {
  auto log = Open(Options());
  log->Close();
  EXPECT_THAT(AppendAndWait(*log, Tick(1)), StatusIs(StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fp::supervisor
