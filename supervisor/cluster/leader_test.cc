// Tests of LeaderElection against a real 3-member etcd cluster with mutual TLS: one leader among
// candidates, takeover after a paused leader's lease expires and after a revoked lease, fencing of
// the deposed leader's writes, a clean resign, and bad options. Timing assertions are one-sided
// and generous (the machine is shared): they check order and outcome, not speed.
#include "supervisor/cluster/leader.h"

#include <atomic>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "supervisor/log/testing/etcd_suite.h"
#include "tests/testutil/status_matchers.h"

namespace fp::supervisor::cluster {
namespace {

using ::fp::testing::StatusIs;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Generous bound for anything that should happen "soon" on a loaded machine.
constexpr milliseconds kPatience{10'000};

class LeaderElectionTest : public supervisor::testing::SharedEtcdTest<3> {
 protected:
  static LeaderOptions Options(const std::string& identity, size_t first_member = 0) {
    LeaderOptions options;
    options.client = cluster_->ClientOptionsFor(first_member);
    options.client.request_timeout = milliseconds(1000);
    options.prefix =
        fmt::format("/test/{}", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    options.identity = identity;
    // A keepalive every second; a term survives 1.4 s of a stalled thread or a slow request.
    options.ttl = std::chrono::seconds(3);
    options.safety_margin = milliseconds(600);
    options.poll_interval = milliseconds(50);
    return options;
  }
  static std::unique_ptr<LeaderElection> Start(const LeaderOptions& options) {
    auto election = LeaderElection::Start(options);
    FP_CHECK_OK(election);
    return std::move(election).value();
  }
  static std::unique_ptr<etcd::Client> Client() {
    auto client = etcd::Client::Create(cluster_->ClientOptionsFor(2));
    FP_CHECK_OK(client);
    return std::move(client).value();
  }
  // The leader key as etcd holds it (nullopt when absent).
  static std::optional<etcd::KeyValue> LeaderKey(const std::string& key) {
    etcd::RangeRequest get;
    get.key = key;
    auto read = Client()->Range(get);
    FP_CHECK_OK(read);
    if (read->kvs.empty()) return std::nullopt;
    return read->kvs[0];
  }
  // A put of `key` = `value`, for fenced writes.
  static etcd::TxnRequest Put(const std::string& key, const std::string& value) {
    etcd::TxnRequest request;
    request.success.push_back({etcd::TxnOp::Kind::kPut, key, value, 0, {}, ""});
    return request;
  }
  // Polls `done` until it holds or kPatience passes.
  template <typename Predicate>
  static bool Eventually(Predicate done) {
    const auto deadline = SteadyClock::now() + kPatience;
    while (SteadyClock::now() < deadline) {
      if (done()) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return done();
  }
};

TEST_F(LeaderElectionTest, TwoCandidatesElectExactlyOneLeader) {
  auto a = Start(Options("a", 0));
  auto b = Start(Options("b", 1));
  ASSERT_TRUE(Eventually([&] { return a->IsLeader() || b->IsLeader(); }));
  LeaderElection& leader = a->IsLeader() ? *a : *b;
  LeaderElection& follower = a->IsLeader() ? *b : *a;
  const LeaderView view = leader.View();
  // etcd's own record of the term: the key names the leader, its create_revision is the token.
  std::optional<etcd::KeyValue> key = LeaderKey(leader.leader_key());
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->value, view.leader);
  EXPECT_EQ(key->create_revision, view.token);
  EXPECT_NE(key->lease, 0);
  // The follower learns the same term and does not lead.
  ASSERT_TRUE(Eventually([&] { return follower.View().token == view.token; }));
  EXPECT_FALSE(follower.IsLeader());
  EXPECT_EQ(follower.View().leader, view.leader);
  // Two rounds of keepalive later, still one leader and the same term.
  std::this_thread::sleep_for(milliseconds(2500));
  EXPECT_NE(a->IsLeader(), b->IsLeader());
  EXPECT_EQ(LeaderKey(leader.leader_key())->create_revision, view.token);
}

TEST_F(LeaderElectionTest, PausedLeaderStepsDownBeforeTheOtherTakesOver) {
  auto a = Start(Options("a", 0));
  ASSERT_OK_AND_ASSIGN(int64_t old_token, a->WaitForLeadership(kPatience));
  auto b = Start(Options("b", 1));
  ASSERT_TRUE(Eventually([&] { return b->View().token == old_token; }));
  const auto paused_at = SteadyClock::now();
  a->TEST_PauseCampaign(true);  // no more keepalives: the lease runs out
  // The first moment b leads, a must already count itself deposed: its local deadline is
  // shorter than the lease, which must expire before b can win.
  bool a_led_when_b_won = true;
  const bool b_won = Eventually([&] {
    const bool a_leads = a->IsLeader();
    if (!b->IsLeader()) return false;
    a_led_when_b_won = a_leads;
    return true;
  });
  const auto took = SteadyClock::now() - paused_at;
  ASSERT_TRUE(b_won);
  EXPECT_FALSE(a_led_when_b_won);
  EXPECT_LT(took, std::chrono::seconds(3) + kPatience);  // within TTL + margin
  const int64_t new_token = b->View().token;
  EXPECT_GT(new_token, old_token);
  // The deposed leader's writes are rejected: locally, and by etcd when sent with the old token.
  const std::string key = a->leader_key() + "-data";
  EXPECT_THAT(a->FencedTxn(Put(key, "stale")), StatusIs(StatusCode::kFailedPrecondition));
  auto client = Client();
  EXPECT_THAT(FencedTxn(*client, a->leader_key(), old_token, Put(key, "stale"), std::nullopt),
              StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(etcd::TxnResponse written, b->FencedTxn(Put(key, "fresh")));
  EXPECT_TRUE(written.succeeded);
  etcd::RangeRequest get;
  get.key = key;
  ASSERT_OK_AND_ASSIGN(etcd::RangeResponse stored, client->Range(get));
  ASSERT_EQ(stored.kvs.size(), 1u);
  EXPECT_EQ(stored.kvs[0].value, "fresh");
  // Thawed, a finds b's term and follows.
  a->TEST_PauseCampaign(false);
  ASSERT_TRUE(Eventually([&] { return a->View().token == new_token; }));
  EXPECT_FALSE(a->IsLeader());
  EXPECT_TRUE(b->IsLeader());
}

TEST_F(LeaderElectionTest, RevokedLeaseEndsTheTermAndFencesItsWrites) {
  auto a = Start(Options("a", 0));
  ASSERT_OK_AND_ASSIGN(int64_t old_token, a->WaitForLeadership(kPatience));
  auto b = Start(Options("b", 1));
  std::optional<etcd::KeyValue> key = LeaderKey(a->leader_key());
  ASSERT_TRUE(key.has_value());
  auto client = Client();
  ASSERT_OK(client->LeaseRevoke(key->lease));
  // A new term begins (either candidate may win it), and the old one is over everywhere.
  ASSERT_TRUE(Eventually([&] {
    const LeaderView va = a->View();
    const LeaderView vb = b->View();
    return (va.is_leader && va.token > old_token) || (vb.is_leader && vb.token > old_token);
  }));
  // A revoke from outside reaches the old leader only at its next keepalive (until then it may
  // still believe it leads: that is what the fence is for); then exactly one leads.
  EXPECT_TRUE(Eventually([&] { return a->IsLeader() != b->IsLeader(); }));
  EXPECT_THAT(FencedTxn(*client, a->leader_key(), old_token, Put(a->leader_key() + "-data", "x"),
                        std::nullopt),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(LeaderElectionTest, CleanResignHandsOverBeforeTheTtl) {
  LeaderOptions slow = Options("a", 0);
  slow.ttl = std::chrono::seconds(30);  // expiry would take 30 s: a handover must not wait for it
  slow.safety_margin = milliseconds(5000);
  auto a = Start(slow);
  ASSERT_OK(a->WaitForLeadership(kPatience).status());
  LeaderOptions other = Options("b", 1);
  other.ttl = slow.ttl;
  other.safety_margin = slow.safety_margin;
  auto b = Start(other);
  ASSERT_TRUE(Eventually([&] { return b->View().leader == "a"; }));
  const auto resigned_at = SteadyClock::now();
  a->Resign();
  EXPECT_FALSE(a->IsLeader());
  ASSERT_OK(b->WaitForLeadership(kPatience).status());
  EXPECT_LT(SteadyClock::now() - resigned_at, slow.ttl);
  EXPECT_THAT(a->WaitForLeadership(milliseconds(10)), StatusIs(StatusCode::kCancelled));
}

TEST_F(LeaderElectionTest, UnhealthyLeaderGivesUpItsLeaseAndDoesNotCampaign) {
  std::atomic<bool> a_healthy{true};
  LeaderOptions unhealthy = Options("a", 0);
  unhealthy.ttl = std::chrono::seconds(30);  // only giving the lease up hands over in time
  unhealthy.safety_margin = milliseconds(5000);
  unhealthy.healthy = [&] { return a_healthy.load(); };
  auto a = Start(unhealthy);
  ASSERT_OK(a->WaitForLeadership(kPatience).status());
  LeaderOptions other = Options("b", 1);
  other.ttl = unhealthy.ttl;
  other.safety_margin = unhealthy.safety_margin;
  auto b = Start(other);
  ASSERT_TRUE(Eventually([&] { return b->View().leader == "a"; }));
  const auto stuck_at = SteadyClock::now();
  a_healthy.store(false);  // say, its leader thread is stuck
  ASSERT_OK(b->WaitForLeadership(kPatience).status());
  EXPECT_LT(SteadyClock::now() - stuck_at, unhealthy.ttl);
  EXPECT_FALSE(a->IsLeader());
  a_healthy.store(true);  // healthy again: a follower like any other
  b->Resign();
  ASSERT_OK(a->WaitForLeadership(kPatience).status());
}

TEST_F(LeaderElectionTest, FencedTxnOfTheLeaderRunsTheCallersTxn) {
  auto a = Start(Options("a", 0));
  ASSERT_OK(a->WaitForLeadership(kPatience).status());
  const std::string key = a->leader_key() + "-data";
  // The caller's own compare fails: an ordinary failed txn, not a fence failure.
  etcd::TxnRequest guarded = Put(key, "v1");
  guarded.compares.push_back(
      {key, etcd::Compare::Target::kVersion, etcd::Compare::Result::kGreater, 0, ""});
  etcd::RangeRequest get;
  get.key = key;
  guarded.failure.push_back({etcd::TxnOp::Kind::kRange, "", "", 0, get, ""});
  ASSERT_OK_AND_ASSIGN(etcd::TxnResponse refused, a->FencedTxn(guarded));
  EXPECT_FALSE(refused.succeeded);
  ASSERT_EQ(refused.results.size(), 1u);  // the caller's range only
  EXPECT_TRUE(refused.results[0].range.kvs.empty());
  ASSERT_OK_AND_ASSIGN(etcd::TxnResponse written, a->FencedTxn(Put(key, "v1")));
  EXPECT_TRUE(written.succeeded);
}

// ---- Error paths ----

TEST_F(LeaderElectionTest, FollowerCannotWrite) {
  auto a = Start(Options("a", 0));
  ASSERT_OK(a->WaitForLeadership(kPatience).status());
  auto b = Start(Options("b", 1));
  EXPECT_THAT(b->FencedTxn(Put(b->leader_key() + "-data", "x")),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(LeaderElectionTest, UnreachableEtcdNeverElects) {
  LeaderOptions options = Options("a");
  ASSERT_OK_AND_ASSIGN(uint16_t port, client::ProbeFreePort());
  options.client.endpoints = {{"127.0.0.1", port}};
  options.client.tls.reset();
  auto a = Start(options);
  EXPECT_THAT(a->WaitForLeadership(milliseconds(300)), StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(a->IsLeader());
}

TEST_F(LeaderElectionTest, BadOptionsAreInvalidArgument) {
  LeaderOptions options = Options("");
  EXPECT_THAT(LeaderElection::Start(options), StatusIs(StatusCode::kInvalidArgument));
  options = Options("a");
  options.ttl = std::chrono::seconds(0);
  EXPECT_THAT(LeaderElection::Start(options), StatusIs(StatusCode::kInvalidArgument));
  options = Options("a");
  options.safety_margin = milliseconds(2000);  // not under 2/3 of a 3 s TTL
  EXPECT_THAT(LeaderElection::Start(options), StatusIs(StatusCode::kInvalidArgument));
  options = Options("a");
  options.prefix += "/";
  EXPECT_THAT(LeaderElection::Start(options), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::supervisor::cluster
