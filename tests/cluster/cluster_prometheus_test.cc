// Prometheus against a supervisor cluster: three `fieldprint supervisor` processes on a
// three-member etcd with three workers (supervisor_cluster.h), every member's /metrics (at its
// HTTP API) scraped by Debian's `prometheus` binary with the repository's alert rules loaded
// (tests/testutil/prometheus_server.h). Through Prometheus's HTTP API the test asserts: every
// member up; exactly one leader, the member that GET /v1/cluster names on every member; the
// member table holding every member on every member; the submitted sessions counted verified on
// every member; every alert rule evaluating cleanly and none pending or firing. Then the leader
// is killed (SIGKILL): Prometheus must see it down and a single new leader, the one the surviving
// members name.
//
// The workers' metrics are not scraped: the harness gives them ephemeral metrics ports it does
// not report. Expectations come from the cluster itself (its size, GET /v1/cluster, the sessions'
// states), never from the metrics under test. Without etcd or Prometheus the test fails (the CI
// installs both); it never skips.
#include <cstdio>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/cluster/supervisor_cluster.h"
#include "tests/testutil/prometheus_server.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::cluster_test {
namespace {

namespace json = boost::json;
using std::chrono::milliseconds;

constexpr size_t kSupervisors = 3;
constexpr uint32_t kWorkers = 3;
constexpr uint32_t kReplicas = 2;
constexpr int kSessions = 3;
constexpr uint32_t kMaxTokens = 8;
constexpr char kJob[] = "fieldprint-supervisor";
constexpr milliseconds kLeaderTimeout{30'000};
constexpr milliseconds kSessionTimeout{60'000};
// A scraped value catching up with the cluster; a loaded 2-core machine runs nine processes.
constexpr milliseconds kScrapeTimeout{30'000};

class ClusterPrometheusTest : public ::testing::Test {
 protected:
  SupervisorClusterOptions Options() const {
    SupervisorClusterOptions options;
    options.binary = (fp::testing::BinaryDir() / "fieldprint").string();
    options.source_dir = fp::testing::SourceDir().string();
    options.dir = dir_.Join("cluster");
    options.supervisors = kSupervisors;
    options.etcd_members = 3;
    options.workers = kWorkers;
    options.replicas = kReplicas;
    options.default_max_tokens = kMaxTokens;
    return options;
  }

  void TearDown() override {
    if (prometheus_ != nullptr) {
      const int status = prometheus_->Stop(std::chrono::seconds(5));
      if (HasFailure()) {
        std::fprintf(stderr, "prometheus %s; stderr tail:\n%s\n",
                     client::DescribeWaitStatus(status).c_str(),
                     prometheus_->StderrTail(6000).c_str());
      }
    }
    if (HasFailure() && cluster_ != nullptr) {
      cluster_->Stop();
      std::fprintf(stderr, "%s", cluster_->LogTails(4000).c_str());
    }
  }

  // The scrape target ("host:port", Prometheus's instance label) of each supervisor.
  std::string Target(size_t supervisor) const {
    const client::SupervisorUrl url = cluster_->url(supervisor);
    return fmt::format("{}:{}", url.host, url.port);
  }

  Status StartPrometheus(const std::string& binary) {
    fp::testing::PrometheusOptions options;
    options.binary = binary;
    options.dir = dir_.path().string();
    options.wait_timeout = kScrapeTimeout;
    fp::testing::ScrapeJob supervisors{kJob, {}};
    for (size_t s = 0; s < cluster_->size(); ++s) supervisors.targets.push_back(Target(s));
    options.jobs = {supervisors};
    FP_ASSIGN_OR_RETURN(prometheus_, fp::testing::PrometheusServer::Start(options));
    return OkStatus();
  }

  // Waits until Prometheus sees exactly one member with fieldprint_supervisor_leader 1, and
  // that member is `leader` (its instance label), and the leader gauges sum to 1.
  Status WaitForLeaderSeen(size_t leader) {
    const std::string want = Target(leader);
    const auto only_leader = [&](const fp::testing::PrometheusVector& samples) {
      if (samples.size() != 1) return false;
      const json::value* instance = samples.front().first.if_contains("instance");
      return instance != nullptr && instance->is_string() && instance->get_string() == want;
    };
    const std::string leaders = fmt::format("fieldprint_supervisor_leader{{job=\"{}\"}}", kJob);
    StatusOr<fp::testing::PrometheusVector> seen =
        prometheus_->WaitFor(leaders + " == 1", only_leader);
    if (!seen.ok()) return seen.status().WithContext("expected only " + want + " leading");
    return prometheus_->WaitForValue("sum(" + leaders + ")", 1);
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<SupervisorCluster> cluster_;
  std::unique_ptr<fp::testing::PrometheusServer> prometheus_;
};

TEST_F(ClusterPrometheusTest, QueriesAnswerWhatTheClusterReports) {
  ASSERT_TRUE(supervisor::testing::EtcdCluster::Available())
      << "etcd is not installed (apt-get install etcd-server): the cluster tests need it";
  const std::string prometheus = fp::testing::FindOnPath("prometheus");
  ASSERT_FALSE(prometheus.empty()) << fp::testing::kPrometheusMissing;
  ASSERT_OK_AND_ASSIGN(cluster_, SupervisorCluster::Start(Options()));
  ASSERT_OK(StartPrometheus(prometheus));

  // Every member is scraped.
  ASSERT_OK(prometheus_->WaitForValue(fmt::format("count(up{{job=\"{}\"}} == 1)", kJob),
                                      cluster_->size()));

  // Exactly one leader, the one every member names in GET /v1/cluster.
  ASSERT_OK_AND_ASSIGN(const size_t leader, cluster_->WaitForLeader(kLeaderTimeout));
  for (size_t s = 0; s < cluster_->size(); ++s) {
    ASSERT_OK_AND_ASSIGN(MemberView view, cluster_->Member(s));
    EXPECT_EQ(view.leader, cluster_->name(leader)) << view.raw;
  }
  EXPECT_OK(WaitForLeaderSeen(leader));

  // Every member's table holds every member.
  EXPECT_OK(prometheus_->WaitForValue(
      fmt::format("count(fieldprint_supervisor_cluster_members{{job=\"{}\"}} == {})", kJob,
                  cluster_->size()),
      cluster_->size()));

  // Sessions submitted through the failover client, verified: every member counts them.
  client::FailoverOptions failover;
  failover.attempt_timeout = milliseconds(5000);
  failover.request_deadline = milliseconds(20'000);
  client::ApiClient api = cluster_->FailoverApi(failover);
  std::vector<std::string> ids;
  for (int i = 0; i < kSessions; ++i) {
    client::SubmitRequest request;
    request.model = kClusterModelName;
    request.prompt_token_ids = client::BytePromptTokens(fmt::format("scrape {}", i));
    request.max_tokens = kMaxTokens;
    ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(request));
    ids.push_back(id);
  }
  for (const std::string& id : ids) {
    ASSERT_OK_AND_ASSIGN(client::SessionView session, api.WaitDone(id, kSessionTimeout, {}));
    ASSERT_EQ(session.phase, "verified") << session.failure;
  }
  EXPECT_OK(prometheus_->WaitForValue(
      fmt::format("count(fieldprint_supervisor_sessions{{job=\"{}\",phase=\"verified\"}} == {})",
                  kJob, kSessions),
      cluster_->size()));

  // The repository's rules evaluate cleanly against a cluster's series, and a healthy cluster
  // raises none of them.
  EXPECT_OK(prometheus_->WaitForQuietAlerts());

  // kill -9 of the leader: Prometheus sees it down, and the new leader the survivors name.
  ASSERT_OK(cluster_->Kill(leader));
  EXPECT_OK(prometheus_->WaitForValue(
      fmt::format("up{{job=\"{}\",instance=\"{}\"}}", kJob, Target(leader)), 0));
  ASSERT_OK_AND_ASSIGN(const size_t successor, cluster_->WaitForLeader(kLeaderTimeout, {leader}));
  ASSERT_NE(successor, leader);
  EXPECT_OK(WaitForLeaderSeen(successor));
  std::fprintf(stderr, "leader %s (%s) killed; Prometheus saw %s (%s) take over\n",
               cluster_->name(leader).c_str(), Target(leader).c_str(),
               cluster_->name(successor).c_str(), Target(successor).c_str());
  EXPECT_OK(prometheus_->WaitForValue(fmt::format("count(up{{job=\"{}\"}} == 1)", kJob),
                                      cluster_->size() - 1));
}

}  // namespace
}  // namespace fp::cluster_test
