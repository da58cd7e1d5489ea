// Prometheus against a real cluster: a supervisor and two workers of the built `fieldprint`
// binary on loopback, scraped by Debian's `prometheus` binary (tests/testutil/prometheus_server.h:
// free loopback port, temporary storage, 500 ms scrape and rule interval) with the repository's
// alert rules loaded. After a few sessions, Prometheus's HTTP API must answer with what the
// sessions imply: every target up, the verified sessions counted, leaves ingested and applied and
// tokens generated equal to steps times replicas, no divergence, no batch left unacknowledged in
// any outbox (and some acknowledged), a signed checkpoint over the sessions, every alert rule
// evaluating cleanly and none pending or firing.
//
// Expectations come from the sessions' own states (GET /v1/sessions/ID) and from counting the
// rules in deploy/prometheus/alerts.yml as text, never from the metrics under test. Without
// Prometheus the test fails (the CI installs it); it never skips.
#include <cstdio>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/e2e/e2e_env.h"
#include "tests/testutil/prometheus_server.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace json = boost::json;

constexpr uint32_t kWorkers = 2;
constexpr uint32_t kReplicas = 2;
constexpr int kSessions = 3;
constexpr uint32_t kMaxTokens = 12;

class PrometheusTest : public ClusterFixture {
 protected:
  void TearDown() override {
    if (prometheus_ != nullptr) {
      const int status = prometheus_->Stop(std::chrono::seconds(5));
      if (HasFailure()) {
        std::fprintf(stderr, "prometheus %s; stderr tail:\n%s\n",
                     client::DescribeWaitStatus(status).c_str(),
                     prometheus_->StderrTail(6000).c_str());
      }
    }
    ClusterFixture::TearDown();
  }

  // Starts Prometheus scraping the cluster's supervisor and workers, with the repository's alert
  // rules.
  Status StartPrometheus(const std::string& binary) {
    fp::testing::PrometheusOptions options;
    options.binary = binary;
    options.dir = dir_.path().string();
    fp::testing::ScrapeJob workers{"fieldprint-worker", {}};
    for (const client::ProcessInfo& worker : cluster_->worker_infos()) {
      workers.targets.push_back(fmt::format("127.0.0.1:{}", worker.metrics_port));
    }
    options.jobs = {{"fieldprint-supervisor", {fmt::format("127.0.0.1:{}", cluster_->http_port())}},
                    workers};
    FP_ASSIGN_OR_RETURN(prometheus_, fp::testing::PrometheusServer::Start(options));
    return OkStatus();
  }

  std::unique_ptr<fp::testing::PrometheusServer> prometheus_;
};

TEST_F(PrometheusTest, QueriesAnswerWhatTheSessionsImply) {
  const std::string prometheus = fp::testing::FindOnPath("prometheus");
  ASSERT_FALSE(prometheus.empty()) << fp::testing::kPrometheusMissing;
  client::LocalClusterOptions options = Options();
  options.workers = kWorkers;
  options.replicas = kReplicas;
  ASSERT_OK(StartCluster(options));
  ASSERT_OK(StartPrometheus(prometheus));

  // Every target is scraped, under the job names the alert rules and the dashboard use.
  ASSERT_OK(prometheus_->WaitForValue("count(up == 1)", 1 + kWorkers));
  ASSERT_OK_AND_ASSIGN(auto up, prometheus_->Query("up"));
  int supervisors = 0;
  for (const auto& [labels, value] : up) {
    EXPECT_EQ(value, 1) << json::serialize(labels);
    if (labels.at("job") == "fieldprint-supervisor") ++supervisors;
  }
  EXPECT_EQ(supervisors, 1);

  client::ApiClient api = Api();
  std::vector<std::string> ids;
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_OK_AND_ASSIGN(std::string id,
                         api.Submit(TinyRequest(fmt::format("scrape {}", i), kMaxTokens)));
    ids.push_back(id);
  }
  uint64_t leaves = 0;
  for (const std::string& id : ids) {
    ASSERT_OK_AND_ASSIGN(client::SessionView session, api.WaitDone(id, kSessionTimeout, {}));
    ASSERT_EQ(session.phase, "verified") << session.failure;
    ASSERT_EQ(session.replicas.size(), kReplicas);
    EXPECT_EQ(session.divergences, 0u);
    EXPECT_EQ(session.epochs_advanced(), 0u);  // no rollback, no re-placement: no resent leaf
    leaves += session.verified_steps * session.replicas.size();
  }
  ASSERT_GT(leaves, 0u);

  EXPECT_OK(
      prometheus_->WaitForValue("fieldprint_supervisor_sessions{phase=\"verified\"}", kSessions));
  EXPECT_OK(prometheus_->WaitForValue("fieldprint_supervisor_sessions{phase=\"running\"}", 0));
  EXPECT_OK(prometheus_->WaitForValue("fieldprint_supervisor_leaves_ingested_total", leaves));
  EXPECT_OK(prometheus_->WaitForValue("fieldprint_supervisor_leaves_applied_total", leaves));
  EXPECT_OK(prometheus_->WaitForValue("sum(fieldprint_worker_tokens_generated_total)", leaves));
  // Nothing unacknowledged is left in any worker's outbox. (Sent minus acknowledged need not be
  // 0: an Ack that arrives after the Commit that verified its session finds the replica's outbox
  // already dropped and is not counted.)
  EXPECT_OK(prometheus_->WaitForValue("sum(fieldprint_worker_outbox_batches)", 0));
  EXPECT_OK(prometheus_->WaitForValue(
      "sum(fieldprint_worker_leaf_batches_acknowledged_total) > bool 0", 1));
  EXPECT_OK(prometheus_->WaitForValue("fieldprint_supervisor_divergences_total", 0));
  EXPECT_OK(prometheus_->WaitForValue("fieldprint_supervisor_connected_workers", kWorkers));
  // The ledger holds the sessions (and the anchor set's record): a signed checkpoint covers
  // at least the sessions.
  EXPECT_OK(prometheus_->WaitForValue(
      fmt::format("fieldprint_supervisor_checkpoint_tree_size >= bool {}", kSessions), 1));

  // The repository's rules load and evaluate without errors against real series, and a healthy
  // cluster raises none of them.
  EXPECT_OK(prometheus_->WaitForQuietAlerts());
}

}  // namespace
}  // namespace fp::e2e
