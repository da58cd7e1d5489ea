// The metric names that deploy/ uses exist: every `fieldprint_...` series named by the Grafana
// dashboard (deploy/grafana/fieldprint.json), the alert rules and their unit tests
// (deploy/prometheus/alerts.yml, alerts_test.yml) is one that a running supervisor or worker
// exposes at /metrics. The names come from live processes of the built binary, not from a list:
// a cluster of three workers, one of which flips a bit so that a divergence and a rollback order
// happen, runs a session and serves a proof, so that the labelled series created on first use
// exist too. Series from other exporters (up, node_exporter, the kubelet) are not fieldprint's
// and are not checked here.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <boost/beast/http/verb.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "supervisor/net/http_client.h"
#include "tests/e2e/e2e_env.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kMaxTokens = 8;
constexpr uint64_t kFaultStep = 3;

// The series names of the samples in Prometheus text (histograms give _bucket, _sum, _count).
std::set<std::string> ExposedNames(const std::string& text) {
  std::set<std::string> names;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    names.insert(line.substr(0, line.find_first_of("{ ")));
  }
  return names;
}

// Every fieldprint_ identifier in `text` (PromQL expressions, series selectors).
std::set<std::string> UsedNames(const std::string& text) {
  static const std::regex kName("fieldprint_[a-z0-9_]*[a-z0-9]");
  std::set<std::string> names;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kName);
       it != std::sregex_iterator(); ++it) {
    names.insert(it->str());
  }
  return names;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

class PrometheusNamesTest : public ClusterFixture {};

TEST_F(PrometheusNamesTest, DeployFilesUseOnlyNamesTheBinariesExpose) {
  client::LocalClusterOptions options = Options();
  options.workers = 3;
  options.replicas = 3;
  options.fault = client::WorkerFault{2, "hidden-bit", 0, kFaultStep, 14, 0};
  ASSERT_OK(StartCluster(options));
  client::ApiClient api = Api();
  ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(TinyRequest("names", kMaxTokens)));
  ASSERT_OK_AND_ASSIGN(client::SessionView session, api.WaitDone(id, kSessionTimeout, {}));
  ASSERT_EQ(session.phase, "verified") << session.failure;
  ASSERT_EQ(session.divergences, 1u);  // the labelled rollback series now exist
  ASSERT_OK(api.StepProof(id, 0).status());

  ASSERT_OK_AND_ASSIGN(std::string supervisor_text, api.GetText("/metrics"));
  std::set<std::string> exposed = ExposedNames(supervisor_text);
  ASSERT_TRUE(exposed.contains("fieldprint_supervisor_rollbacks_ordered_total"));
  for (const client::ProcessInfo& worker : cluster_->worker_infos()) {
    supervisor::HttpClient http("127.0.0.1", worker.metrics_port);
    ASSERT_OK_AND_ASSIGN(supervisor::HttpResponse response,
                         http.Request(boost::beast::http::verb::get, "/metrics"));
    ASSERT_EQ(response.status, 200u) << worker.name;
    std::set<std::string> names = ExposedNames(response.body);
    ASSERT_TRUE(names.contains("fieldprint_worker_tokens_generated_total")) << worker.name;
    exposed.insert(names.begin(), names.end());
  }

  const fs::path deploy = fp::testing::SourceDir() / "deploy";
  for (const fs::path& file : {deploy / "grafana/fieldprint.json", deploy / "prometheus/alerts.yml",
                               deploy / "prometheus/alerts_test.yml"}) {
    const std::set<std::string> used = UsedNames(ReadFile(file));
    EXPECT_GE(used.size(), 5u) << file << " names almost no fieldprint metric";
    for (const std::string& name : used) {
      EXPECT_TRUE(exposed.contains(name))
          << file << " uses " << name << ", which no supervisor or worker exposes";
    }
  }

  // The check can fail: a name the binaries do not expose is found as used and is not exposed.
  const std::set<std::string> made_up =
      UsedNames("rate(fieldprint_supervisor_leaves_lost_total[5m])");
  ASSERT_EQ(made_up.size(), 1u);
  EXPECT_FALSE(exposed.contains(*made_up.begin()));
}

}  // namespace
}  // namespace fp::e2e
