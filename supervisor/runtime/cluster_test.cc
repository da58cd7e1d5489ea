// Tests of supervisors forming one cluster on a real 3-member etcd (mutual TLS): in-process
// Supervisor objects with their own data directories, HTTP APIs and worker listeners, sharing the
// ledger key as a cluster does. They check that exactly one member leads and that leader records
// come from one writer; that a drained leader is replaced and placement and checkpoints go on; that
// a paused leader steps down and its leader records are refused, none of its term landing after
// the next term began; that every member converges to the same state; that trimming waits for
// every member, a stopped one included, until an operator removes it; that a member the log was
// trimmed past refuses to start and is bootstrapped from a peer's snapshot into the same state;
// and the snapshot route's errors.
//
// Who wrote a record is read from the log's own bookkeeping, independently of the supervisors: an
// unkeyed record's idempotency entry is named after the EtcdLog instance that wrote it
// (etcd_log.h: 'U' || 16 random bytes of that EtcdLog || a sequence number). Timing assertions are
// one-sided and generous (the machine is shared).
#include <filesystem>
#include <map>
#include <set>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/wire/certs.h"
#include "common/wire/tls.h"
#include "supervisor/cluster/bootstrap.h"
#include "supervisor/log/testing/etcd_suite.h"
#include "supervisor/net/http_client.h"
#include "supervisor/runtime/supervisor.h"
#include "supervisor/runtime/test_worker.h"
#include "supervisor/state/state_store.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using boost::beast::http::verb;
using ::fp::testing::StatusIs;
using std::chrono::milliseconds;
using ::testing::HasSubstr;
using testing::Leaves;
using testing::Registration;
using testing::TestWorker;

constexpr milliseconds kPatience{15'000};
constexpr size_t kMembers = 3;
constexpr char kAdminToken[] = "cluster-admin-token-for-tests";

// Polls `done` until it holds or kPatience passes.
template <typename Predicate>
bool Eventually(Predicate done, milliseconds patience = kPatience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return done();
}

class ClusterTest : public testing::SharedEtcdTest<3> {
 protected:
  void SetUp() override {
    SharedEtcdTest::SetUp();
    if (HasFatalFailure()) return;
    prefix_ =
        fmt::format("/cluster/{}", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "supervisor-1", "supervisor-2", "worker-0"};
    FP_CHECK_OK(wire::InitCerts(dir_.Join("certs"), certs));
    auto tls = wire::MakeClientTlsContext(wire::TlsFilesForNode(dir_.Join("certs"), "worker-0"));
    FP_CHECK_OK(tls);
    worker_tls_ = std::move(tls).value();
    // The cluster's ledger key, provisioned into every member's data directory.
    FP_CHECK_OK(LoadOrCreateSigner(dir_.Join("ledger.key"), "fieldprint.test/cluster").status());
    members_.resize(kMembers);
    registries_.resize(kMembers);
    data_dirs_.resize(kMembers);
    work_.emplace(boost::asio::make_work_guard(io_));
    io_thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    worker_.reset();
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i] != nullptr) {
        EXPECT_OK(members_[i]->Drain());
      }
      members_[i].reset();
    }
    work_.reset();
    io_.stop();
    if (io_thread_.joinable()) io_thread_.join();
  }

  SupervisorOptions Options(size_t i) const {
    SupervisorOptions options;
    options.data_dir = dir_.Join(fmt::format("s{}", i));
    options.certs_dir = dir_.Join("certs");
    options.tls_name = fmt::format("supervisor-{}", i);
    options.origin = "fieldprint.test/cluster";
    options.worker_port = 0;
    options.http_port = 0;
    options.io_threads = 1;
    options.defaults.replicas = 1;
    options.defaults.models["tiny"] = {std::string(32, 'n'), std::string(32, '\0')};
    options.tick_interval = milliseconds(100);
    options.checkpoint_interval = milliseconds(100);
    options.placement_interval = milliseconds(50);
    options.admin_token = kAdminToken;
    options.log_backend = LogBackend::kEtcd;
    options.etcd.client = cluster_->ClientOptionsFor(i % cluster_->size());
    options.etcd.client.request_timeout = milliseconds(1000);
    options.etcd.prefix = prefix_;
    options.leader_ttl = milliseconds(2000);
    options.leader_margin = milliseconds(600);
    options.leader_poll_interval = milliseconds(50);
    // Each publish may flush the state (synced files): not too often on a shared test machine.
    options.member_publish_interval = milliseconds(400);
    return options;
  }

  StatusOr<std::unique_ptr<Supervisor>> TryStart(const SupervisorOptions& options, size_t i) {
    fs::create_directories(options.data_dir);
    const fs::path key = fs::path(options.data_dir) / kCheckpointKeyFile;
    if (!fs::exists(key)) fs::copy_file(dir_.Join("ledger.key"), key);
    registries_[i] = std::make_unique<prometheus::Registry>();
    data_dirs_[i] = options.data_dir;
    return Supervisor::Start(options, *registries_[i]);
  }
  Supervisor& Start(size_t i, std::optional<SupervisorOptions> options = std::nullopt) {
    auto started = TryStart(options.value_or(Options(i)), i);
    FP_CHECK_OK(started);
    members_[i] = std::move(started).value();
    return *members_[i];
  }
  void Stop(size_t i) {
    ASSERT_OK(members_[i]->Drain());
    members_[i].reset();
  }

  // The one member that leads, once exactly one does (-1 after kPatience).
  int WaitForLeader() {
    int leader = -1;
    Eventually([&] {
      int count = 0;
      for (size_t i = 0; i < members_.size(); ++i) {
        if (members_[i] != nullptr && members_[i]->leading()) {
          leader = static_cast<int>(i);
          ++count;
        }
      }
      return count == 1;
    });
    return leader;
  }
  // A running member other than `not_this`.
  size_t Other(size_t not_this) const {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (i != not_this && members_[i] != nullptr) return i;
    }
    FP_CHECK(false);
    return 0;
  }

  StatusOr<HttpResponse> Call(size_t i, verb method, const std::string& target,
                              const std::string& body = "", const HttpHeaders& headers = {}) {
    HttpClient http("127.0.0.1", members_[i]->http_port());
    return http.Request(method, target, body, headers);
  }
  json::value GetJson(size_t i, const std::string& target) {
    auto response = Call(i, verb::get, target);
    FP_CHECK_OK(response);
    FP_CHECK_MSG(response->status == 200, response->body);
    return json::parse(response->body);
  }
  // A metric's value as member `i` exports it (0 when absent).
  double Metric(size_t i, const std::string& name) {
    auto response = Call(i, verb::get, "/metrics");
    FP_CHECK_OK(response);
    const size_t at = response->body.find("\n" + name + " ");
    if (at == std::string::npos) return 0;
    return std::stod(response->body.substr(at + name.size() + 2));
  }

  // Submits a one-replica session at member `via` and runs it to verification with the test
  // worker connected to member `worker_at`. Returns the session id (hex).
  std::string RunSession(size_t via, size_t worker_at, uint64_t steps) {
    if (worker_ == nullptr || worker_at_ != worker_at) {
      worker_.reset();
      worker_ = std::make_unique<TestWorker>(io_, *worker_tls_, members_[worker_at]->worker_port(),
                                             fmt::format("supervisor-{}", worker_at));
      worker_->Send(Registration());
      FP_CHECK(worker_->Next(wire::pb::Envelope::kRegisterAck).has_value());
      worker_at_ = worker_at;
    }
    auto submitted =
        Call(via, verb::post, "/v1/sessions",
             fmt::format(R"({{"model":"tiny","prompt_token_ids":[9],"max_tokens":{}}})", steps));
    FP_CHECK_OK(submitted);
    FP_CHECK_MSG(submitted->status == 202, submitted->body);
    const std::string id(json::parse(submitted->body).at("session_id").as_string());
    std::optional<wire::pb::Envelope> assign =
        worker_->Next(wire::pb::Envelope::kAssign, kPatience);
    FP_CHECK_MSG(assign.has_value(), "no Assign arrived");
    worker_->Send(Leaves(assign->assign(), steps));
    FP_CHECK(worker_->Next(wire::pb::Envelope::kAck).has_value());
    EXPECT_TRUE(VerifiedAt(worker_at, id));
    return id;
  }
  bool VerifiedAt(size_t i, const std::string& id) {
    return Eventually([&] {
      auto response = Call(i, verb::get, "/v1/sessions/" + id);
      return response.ok() && response->status == 200 &&
             json::parse(response->body).at("phase").as_string() == "verified";
    });
  }

  std::unique_ptr<etcd::Client> RawClient() {
    auto client = etcd::Client::Create(cluster_->ClientOptionsFor(2));
    FP_CHECK_OK(client);
    return std::move(client).value();
  }
  // The log's trim point as etcd holds it (0 before the first trim).
  uint64_t TrimPoint() {
    etcd::RangeRequest get;
    get.key = prefix_ + "/meta/trimmed";
    auto found = RawClient()->Range(get);
    FP_CHECK_OK(found);
    if (found->kvs.empty()) return 0;
    return LoadU64(reinterpret_cast<const uint8_t*>(found->kvs[0].value.data()));
  }
  // A member's entry in the member table (it must exist).
  uint64_t MemberEntry(const std::string& name) {
    etcd::RangeRequest get;
    get.key = prefix_ + "/members/" + name;
    auto found = RawClient()->Range(get);
    FP_CHECK_OK(found);
    FP_CHECK(!found->kvs.empty());
    return std::stoull(found->kvs[0].value);
  }
  std::unique_ptr<EtcdLog> Reader() {
    EtcdLogOptions options;
    options.client = cluster_->ClientOptionsFor(1);
    options.prefix = prefix_;
    auto log = OpenEtcdLog(options);
    FP_CHECK_OK(log);
    return std::move(log).value();
  }
  // The writer (its EtcdLog's random name) of each unkeyed leader record, in log order, from the
  // log's idempotency entries.
  std::vector<std::string> LeaderRecordWriters() {
    // The log first: every record read then has its entry when the entries are read after.
    std::vector<uint64_t> positions;
    std::unique_ptr<EtcdLog> log = Reader();
    for (uint64_t at = log->Begin(); at < log->End();) {
      auto read = log->Read(at, kMaxEtcdReadRecords);
      FP_CHECK_OK(read);
      for (const LogEntry& entry : *read) {
        if (IsLeaderRecord(entry.record) && !IdempotencyKey(entry.record).has_value()) {
          positions.push_back(entry.position);
        }
      }
      at += read->size();
    }
    const std::string idem = prefix_ + "/idem/55";  // hex of 'U': unkeyed records
    etcd::RangeRequest all;
    all.key = idem;
    all.range_end = etcd::PrefixEnd(idem);
    auto entries = RawClient()->Range(all);
    FP_CHECK_OK(entries);
    std::map<uint64_t, std::string> writer_at;
    for (const etcd::KeyValue& kv : entries->kvs) {
      const uint64_t position = LoadU64(reinterpret_cast<const uint8_t*>(kv.value.data()));
      writer_at[position] = kv.key.substr(idem.size(), 32);  // the 16-byte name, in hex
    }
    std::vector<std::string> writers;
    for (const uint64_t position : positions) {
      FP_CHECK_MSG(writer_at.contains(position), fmt::format("no writer for {}", position));
      writers.push_back(writer_at[position]);
    }
    return writers;
  }

  // Drains the given members, applies the whole log to each one's state and expects the same
  // bytes in every family; signed notes must agree at every size both hold (a member that
  // stopped earlier may not have signed the newest body yet).
  void ExpectSameStates(const std::vector<size_t>& which) {
    for (size_t i : which) {
      if (members_[i] != nullptr) Stop(i);
    }
    std::unique_ptr<EtcdLog> log = Reader();
    std::vector<testing::StoreDump> states;
    std::vector<std::map<std::string, std::string>> notes;
    for (size_t i : which) {
      auto store = OpenStateStore(data_dirs_[i] + "/state");
      ASSERT_OK(store.status());
      auto applier = Applier::Open(store->get(), ApplierOptions());
      ASSERT_OK(applier.status());
      ASSERT_OK(testing::CatchUp(*log, **applier, kMaxApplyGroup).status());
      testing::StoreDump dump;
      std::map<std::string, std::string> signed_notes;
      for (auto& [family, key, value] : testing::DumpStore(**store)) {
        if (family == StateFamilyNames()[kSigned]) {
          signed_notes[key] = value;
        } else {
          dump.emplace_back(family, key, value);
        }
      }
      states.push_back(std::move(dump));
      notes.push_back(std::move(signed_notes));
    }
    ASSERT_FALSE(states[0].empty());
    for (size_t m = 1; m < states.size(); ++m) {
      EXPECT_EQ(states[m].size(), states[0].size()) << "member " << which[m];
      EXPECT_TRUE(states[m] == states[0]) << "member " << which[m] << " differs";
      size_t common = 0;
      for (const auto& [size, note] : notes[m]) {
        if (!notes[0].contains(size)) continue;
        ++common;
        EXPECT_EQ(note, notes[0][size]) << "member " << which[m];
      }
      EXPECT_GT(common, 0u) << "member " << which[m] << " shares no signed checkpoint";
    }
  }

  fp::testing::TempDir dir_;
  std::string prefix_;
  std::vector<std::unique_ptr<prometheus::Registry>> registries_;
  std::vector<std::unique_ptr<Supervisor>> members_;
  std::vector<std::string> data_dirs_;  // of each member's latest start
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread io_thread_;
  std::unique_ptr<boost::asio::ssl::context> worker_tls_;
  std::unique_ptr<TestWorker> worker_;
  size_t worker_at_ = 0;
};

TEST_F(ClusterTest, OneLeaderWritesLeaderRecordsAndEveryMemberConverges) {
  for (size_t i = 0; i < kMembers; ++i) Start(i);
  const int leader = WaitForLeader();
  ASSERT_GE(leader, 0);
  // The others follow the same term: /v1/cluster agrees everywhere.
  const size_t follower = Other(static_cast<size_t>(leader));
  ASSERT_TRUE(Eventually([&] {
    for (size_t i = 0; i < kMembers; ++i) {
      const json::value view = GetJson(i, "/v1/cluster");
      if (!view.at("leader").is_string() ||
          view.at("leader").as_string() != fmt::format("supervisor-{}", leader) ||
          view.at("members").as_array().size() != kMembers) {
        return false;
      }
      if (view.at("is_leader").as_bool() != (static_cast<int>(i) == leader)) return false;
    }
    return true;
  }));
  // Submitted at one follower, run by a worker connected to another member.
  const std::string id = RunSession(follower, Other(follower), 5);
  for (size_t i = 0; i < kMembers; ++i) EXPECT_TRUE(VerifiedAt(i, id)) << i;
  const json::value view = GetJson(follower, "/v1/cluster");
  EXPECT_TRUE(view.at("cluster").as_bool());
  EXPECT_GT(view.at("log_end").as_int64(), 0);
  auto ready = Call(follower, verb::get, "/readyz");
  ASSERT_OK(ready.status());
  EXPECT_THAT(ready->body, HasSubstr(fmt::format("leader: supervisor-{}", leader)));
  // Placements, ticks and checkpoint requests: one writer, the leader's log.
  const std::vector<std::string> writers = LeaderRecordWriters();
  ASSERT_GT(writers.size(), 5u);
  EXPECT_EQ(std::set<std::string>(writers.begin(), writers.end()).size(), 1u);
  EXPECT_EQ(Metric(static_cast<size_t>(leader), "fieldprint_supervisor_leader"), 1.0);
  EXPECT_EQ(Metric(follower, "fieldprint_supervisor_leader"), 0.0);
  // Identical latest checkpoints once the ledger stops growing.
  ASSERT_TRUE(Eventually([&] {
    std::set<std::string> notes;
    for (size_t i = 0; i < kMembers; ++i) {
      auto note = Call(i, verb::get, "/v1/checkpoint");
      if (!note.ok() || note->status != 200) return false;
      notes.insert(note->body);
    }
    return notes.size() == 1;
  }));
  ExpectSameStates({0, 1, 2});
}

TEST_F(ClusterTest, DrainedLeaderIsReplacedAndPlacementsAndCheckpointsContinue) {
  for (size_t i = 0; i < kMembers; ++i) Start(i);
  const int first = WaitForLeader();
  ASSERT_GE(first, 0);
  const size_t survivor = Other(static_cast<size_t>(first));
  RunSession(survivor, survivor, 3);
  const double size_before = Metric(survivor, "fieldprint_supervisor_checkpoint_tree_size");
  const auto drained_at = std::chrono::steady_clock::now();
  Stop(static_cast<size_t>(first));  // resigns: the lease is revoked
  const int second = WaitForLeader();
  ASSERT_GE(second, 0);
  EXPECT_NE(second, first);
  // Well within one TTL: a resigned leader's key is gone at once.
  EXPECT_LT(std::chrono::steady_clock::now() - drained_at, milliseconds(5000));
  const std::string id = RunSession(survivor, survivor, 4);
  EXPECT_TRUE(VerifiedAt(static_cast<size_t>(second), id));
  EXPECT_TRUE(Eventually([&] {
    return Metric(survivor, "fieldprint_supervisor_checkpoint_tree_size") > size_before;
  }));
  // Leader records changed hands once, with no interleaving.
  const std::vector<std::string> writers = LeaderRecordWriters();
  ASSERT_FALSE(writers.empty());
  size_t handovers = 0;
  for (size_t i = 1; i < writers.size(); ++i) handovers += writers[i] != writers[i - 1];
  EXPECT_EQ(handovers, 1u);
}

TEST_F(ClusterTest, PausedLeaderStepsDownAndCannotWriteLeaderRecords) {
  Start(0);
  Start(1);
  const int paused = WaitForLeader();
  ASSERT_GE(paused, 0);
  const size_t other = Other(static_cast<size_t>(paused));
  members_[paused]->TEST_PauseLeadership(true);  // no keepalives: the lease runs out
  ASSERT_TRUE(Eventually([&] { return members_[other]->leading(); }));
  EXPECT_FALSE(members_[paused]->leading());  // it stopped before the other could win
  // What a paused process would still try: refused, and counted.
  pb::LogRecord tick;
  tick.mutable_tick()->set_unix_ms(1);
  Status refused = AppendAndWait(members_[paused]->TEST_log(), tick).status();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("not the leader"));
  EXPECT_GE(
      Metric(static_cast<size_t>(paused), "fieldprint_supervisor_fenced_writes_refused_total"),
      1.0);
  // Thawed, it finds the other's term and follows.
  members_[paused]->TEST_PauseLeadership(false);
  std::this_thread::sleep_for(milliseconds(1000));
  EXPECT_FALSE(members_[paused]->leading());
  EXPECT_TRUE(members_[other]->leading());
  EXPECT_GE(Metric(static_cast<size_t>(paused), "fieldprint_supervisor_leader_changes_total"), 2.0);
  // Nothing of the old term after the new one began: its writer never reappears.
  const std::vector<std::string> writers = LeaderRecordWriters();
  ASSERT_FALSE(writers.empty());
  const std::string old_writer = writers.front();
  const auto new_term = std::find_if(writers.begin(), writers.end(),
                                     [&](const std::string& w) { return w != old_writer; });
  ASSERT_NE(new_term, writers.end());
  EXPECT_EQ(std::count(new_term, writers.end(), old_writer), 0);
}

TEST_F(ClusterTest, TrimmingWaitsForAStoppedMemberUntilRemovedThenItIsBootstrapped) {
  // The members are known before the first one starts (else the first leader may trim before the
  // others publish, and they would need a bootstrap to join).
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<cluster::ClusterMembers> table,
                       cluster::ClusterMembers::Create(cluster_->ClientOptionsFor(), prefix_));
  for (size_t i = 0; i < kMembers; ++i) ASSERT_OK(table->Publish(Options(i).tls_name, 0));
  for (size_t i = 0; i < kMembers; ++i) {
    SupervisorOptions options = Options(i);
    options.log_retention_records = 1;
    options.log_trim_interval = milliseconds(300);
    Start(i, options);
  }
  const int leader = WaitForLeader();
  ASSERT_GE(leader, 0);
  const size_t away = leader == 2 ? 1 : 2;  // a follower, stopped below
  const size_t serving = 3 - away - static_cast<size_t>(leader);
  const std::string first = RunSession(serving, serving, 3);
  ASSERT_TRUE(Eventually([&] { return TrimPoint() > 0; }));
  Stop(away);  // its final published position holds the log from now on
  const uint64_t stopped_at = MemberEntry(fmt::format("supervisor-{}", away));
  const std::string second = RunSession(serving, serving, 6);
  std::this_thread::sleep_for(milliseconds(1500));  // five trim intervals
  EXPECT_LE(TrimPoint(), stopped_at);
  EXPECT_GT(Reader()->End(), stopped_at + 10);
  // The operator retires it: trimming moves on past it.
  auto wrong =
      Call(serving, verb::post, fmt::format("/v1/admin/members/supervisor-{}/remove", away), "",
           {{"Authorization", "Bearer wrong"}});
  ASSERT_OK(wrong.status());
  EXPECT_EQ(wrong->status, 401u);
  auto removed =
      Call(serving, verb::post, fmt::format("/v1/admin/members/supervisor-{}/remove", away), "",
           {{"Authorization", std::string("Bearer ") + kAdminToken}});
  ASSERT_OK(removed.status());
  EXPECT_EQ(removed->status, 200u) << removed->body;
  ASSERT_TRUE(Eventually([&] { return TrimPoint() > stopped_at; }));
  // Back on its old directory, it cannot catch up, and says what to do.
  const Status trimmed_past = TryStart(Options(away), away).status();
  EXPECT_THAT(trimmed_past, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(trimmed_past.message()), HasSubstr("bootstrap"));
  // Bootstrapped from a running peer into a new directory (holding only the ledger key).
  SupervisorOptions rebuilt = Options(away);
  rebuilt.data_dir = dir_.Join("rebuilt");
  rebuilt.log_retention_records = 1;
  rebuilt.log_trim_interval = milliseconds(300);
  // The member's key files come along (the ledger key, and its own cosigner key: the cluster knows
  // this name by that key); they are never part of a snapshot.
  fs::create_directories(rebuilt.data_dir);
  for (const fs::directory_entry& file : fs::directory_iterator(Options(away).data_dir)) {
    if (file.path().extension() == ".key") {
      fs::copy_file(file.path(), fs::path(rebuilt.data_dir) / file.path().filename());
    }
  }
  cluster::BootstrapOptions bootstrap;
  bootstrap.from = fmt::format("http://127.0.0.1:{}", members_[serving]->http_port());
  bootstrap.data_dir = rebuilt.data_dir;
  bootstrap.admin_token = kAdminToken;
  bootstrap.member = rebuilt.tls_name;
  ASSERT_OK_AND_ASSIGN(cluster::BootstrapResult result, cluster::Bootstrap(bootstrap));
  EXPECT_GE(result.applied, TrimPoint());
  Start(away, rebuilt);
  EXPECT_TRUE(VerifiedAt(away, first));
  EXPECT_TRUE(VerifiedAt(away, second));
  const std::string third = RunSession(serving, serving, 2);
  EXPECT_TRUE(VerifiedAt(away, third));
  ExpectSameStates({0, 1, 2});
}

// ---- Error paths ----

TEST_F(ClusterTest, SnapshotRouteRefusesWrongTokensAndBootstrapLeavesTheTargetUntouched) {
  Start(0);
  ASSERT_EQ(WaitForLeader(), 0);
  auto anonymous = Call(0, verb::get, "/v1/admin/snapshot");
  ASSERT_OK(anonymous.status());
  EXPECT_EQ(anonymous->status, 401u);
  const fs::path target = dir_.Join("target");
  fs::create_directories(target);
  fs::copy_file(dir_.Join("ledger.key"), target / "checkpoint.key");
  cluster::BootstrapOptions bootstrap;
  bootstrap.from = fmt::format("http://127.0.0.1:{}", members_[0]->http_port());
  bootstrap.data_dir = target.string();
  bootstrap.admin_token = "not-the-admin-token";
  bootstrap.member = "supervisor-1";
  EXPECT_THAT(cluster::Bootstrap(bootstrap), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_EQ(std::distance(fs::directory_iterator(target), fs::directory_iterator()), 1);
  // A member with a state is not bootstrapped over, and nothing is requested.
  fs::create_directories(target / "state");
  bootstrap.admin_token = kAdminToken;
  EXPECT_THAT(cluster::Bootstrap(bootstrap), StatusIs(StatusCode::kFailedPrecondition));
  // Nobody listens there: the network error, and still nothing created.
  bootstrap.data_dir = dir_.Join("nowhere");
  bootstrap.from = "http://127.0.0.1:1";
  EXPECT_THAT(cluster::Bootstrap(bootstrap), StatusIs(StatusCode::kUnavailable));
  EXPECT_FALSE(fs::exists(dir_.Join("nowhere")));
  // A snapshot for a member reserves its place in the member table at most at its position.
  auto snapshot = Call(0, verb::get, "/v1/admin/snapshot?member=supervisor-7", "",
                       {{"Authorization", std::string("Bearer ") + kAdminToken}});
  ASSERT_OK(snapshot.status());
  EXPECT_EQ(snapshot->status, 200u);
  EXPECT_TRUE(snapshot->body.starts_with("fieldprint-snapshot 1\n"));
  const json::value view = GetJson(0, "/v1/cluster");
  ASSERT_TRUE(Eventually([&] {
    const json::value now = GetJson(0, "/v1/cluster");
    for (const json::value& member : now.at("members").as_array()) {
      if (member.at("name").as_string() == "supervisor-7") {
        return member.at("applied").as_int64() <= view.at("applied").as_int64();
      }
    }
    return false;
  }));
  auto bad_member = Call(0, verb::get, "/v1/admin/snapshot?member=a/b", "",
                         {{"Authorization", std::string("Bearer ") + kAdminToken}});
  ASSERT_OK(bad_member.status());
  EXPECT_EQ(bad_member->status, 400u);
  auto unknown = Call(0, verb::post, "/v1/admin/members/supervisor-9/remove", "",
                      {{"Authorization", std::string("Bearer ") + kAdminToken}});
  ASSERT_OK(unknown.status());
  EXPECT_EQ(unknown->status, 404u);
}

}  // namespace
}  // namespace fp::supervisor
