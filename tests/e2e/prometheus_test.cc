// Prometheus against a real cluster: a supervisor and two workers of the built `fieldprint`
// binary on loopback, scraped by Debian's `prometheus` binary (free loopback port, temporary
// storage, 500 ms scrape and rule interval) with the repository's alert rules loaded. After a
// few sessions, Prometheus's HTTP API must answer with what the sessions imply: every target
// up, the verified sessions counted, leaves ingested and applied and tokens generated equal to
// steps times replicas, no divergence, every batch sent acknowledged, a signed checkpoint over
// the sessions, every alert rule evaluating cleanly and none pending or firing.
//
// Expectations come from the sessions' own states (GET /v1/sessions/ID) and from counting the
// rules in deploy/prometheus/alerts.yml as text, never from the metrics under test.
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "supervisor/client/process.h"
#include "supervisor/net/http_client.h"
#include "tests/e2e/e2e_env.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kWorkers = 2;
constexpr uint32_t kReplicas = 2;
constexpr int kSessions = 3;
constexpr uint32_t kMaxTokens = 12;
// Bounds of the waits on Prometheus: its start, its first scrapes, and a scraped value catching
// up with the cluster (a few scrape intervals on an idle machine).
constexpr milliseconds kPrometheusStartTimeout{20'000};
constexpr milliseconds kScrapeTimeout{15'000};
constexpr milliseconds kPollInterval{100};

// The executable `name` on $PATH, or "" when there is none.
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path == nullptr ? "" : path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir) / name;
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay as they are).
std::string EncodeQueryValue(std::string_view value) {
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// The number of alerting rules in a rules file, counted as `- alert:` lines.
int CountAlertRules(const std::string& text) {
  int count = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t start = line.find_first_not_of(' ');
    if (start != std::string::npos && line.compare(start, 8, "- alert:") == 0) ++count;
  }
  return count;
}

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

  // Writes a scrape configuration for the cluster's supervisor and workers (with the
  // repository's alert rules), starts Prometheus on a free loopback port and waits until it is
  // ready.
  Status StartPrometheus(const std::string& binary) {
    std::string workers;
    for (const client::ProcessInfo& worker : cluster_->worker_infos()) {
      workers +=
          fmt::format("{}\"127.0.0.1:{}\"", workers.empty() ? "" : ", ", worker.metrics_port);
    }
    const std::string config = fmt::format(
        "global:\n"
        "  scrape_interval: 500ms\n"
        "  scrape_timeout: 400ms\n"
        "  evaluation_interval: 500ms\n"
        "rule_files: [\"{}\"]\n"
        "scrape_configs:\n"
        "  - job_name: fieldprint-supervisor\n"
        "    static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]\n"
        "  - job_name: fieldprint-worker\n"
        "    static_configs: [{{targets: [{}]}}]\n",
        (fp::testing::SourceDir() / "deploy/prometheus/alerts.yml").string(), cluster_->http_port(),
        workers);
    const std::string config_path = dir_.Join("prometheus.yml");
    std::ofstream(config_path) << config;
    FP_ASSIGN_OR_RETURN(port_, client::ProbeFreePort());
    client::ProcessOptions options;
    options.argv = {binary, "--config.file=" + config_path,
                    "--storage.tsdb.path=" + dir_.Join("prometheus-data"),
                    fmt::format("--web.listen-address=127.0.0.1:{}", port_), "--log.level=warn"};
    options.stdout_path = dir_.Join("prometheus.out");
    options.stderr_path = dir_.Join("prometheus.err");
    FP_ASSIGN_OR_RETURN(prometheus_, client::ChildProcess::Spawn("prometheus", options));
    const auto deadline = Clock::now() + kPrometheusStartTimeout;
    while (true) {
      supervisor::HttpClient http("127.0.0.1", port_, std::chrono::seconds(2));
      StatusOr<supervisor::HttpResponse> ready =
          http.Request(boost::beast::http::verb::get, "/-/ready");
      if (ready.ok() && ready->status == 200) return OkStatus();
      if (!prometheus_->Running()) {
        return UnavailableError("prometheus exited: " + prometheus_->StderrTail(4000));
      }
      if (Clock::now() >= deadline) return DeadlineExceededError("prometheus is not ready");
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  // GET `target` of Prometheus's HTTP API; the "data" member of a successful answer.
  StatusOr<json::value> PrometheusApi(const std::string& target) {
    supervisor::HttpClient http("127.0.0.1", port_, std::chrono::seconds(5));
    FP_ASSIGN_OR_RETURN(supervisor::HttpResponse response,
                        http.Request(boost::beast::http::verb::get, target));
    boost::system::error_code error;
    json::value body = json::parse(response.body, error);
    if (error || response.status != 200 || !body.is_object() ||
        body.as_object()["status"] != "success") {
      return InternalError(fmt::format("{}: HTTP {}: {}", target, response.status, response.body));
    }
    return body.as_object()["data"];
  }

  // The instant vector of `promql`, as (labels, value) pairs.
  StatusOr<std::vector<std::pair<json::object, double>>> Query(const std::string& promql) {
    FP_ASSIGN_OR_RETURN(json::value data,
                        PrometheusApi("/api/v1/query?query=" + EncodeQueryValue(promql)));
    std::vector<std::pair<json::object, double>> samples;
    for (const json::value& sample : data.at("result").as_array()) {
      const json::string& value = sample.at("value").as_array().at(1).as_string();
      samples.emplace_back(sample.at("metric").as_object(), std::stod(std::string(value)));
    }
    return samples;
  }

  // Polls until `promql` yields exactly one sample equal to `expected`; DeadlineExceeded with the
  // last answer otherwise.
  Status WaitForValue(const std::string& promql, double expected) {
    const auto deadline = Clock::now() + kScrapeTimeout;
    std::string last = "no answer";
    while (true) {
      StatusOr<std::vector<std::pair<json::object, double>>> samples = Query(promql);
      if (samples.ok() && samples->size() == 1 && samples->front().second == expected) {
        return OkStatus();
      }
      if (samples.ok()) {
        last = samples->empty() ? "an empty vector"
                                : fmt::format("{} sample(s), first {}", samples->size(),
                                              samples->front().second);
      } else {
        last = samples.status().ToString();
      }
      if (Clock::now() >= deadline) {
        return DeadlineExceededError(
            fmt::format("{}: expected {}, last answer {}", promql, expected, last));
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  std::unique_ptr<client::ChildProcess> prometheus_;
  uint16_t port_ = 0;
};

TEST_F(PrometheusTest, QueriesAnswerWhatTheSessionsImply) {
  const std::string prometheus = FindOnPath("prometheus");
  ASSERT_FALSE(prometheus.empty()) << "Debian's prometheus package is not installed "
                                      "(.ci/deps.sh installs it)";
  client::LocalClusterOptions options = Options();
  options.workers = kWorkers;
  options.replicas = kReplicas;
  ASSERT_OK(StartCluster(options));
  ASSERT_OK(StartPrometheus(prometheus));

  // Every target is scraped, under the job names the alert rules and the dashboard use.
  ASSERT_OK(WaitForValue("count(up == 1)", 1 + kWorkers));
  ASSERT_OK_AND_ASSIGN(auto up, Query("up"));
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

  EXPECT_OK(WaitForValue("fieldprint_supervisor_sessions{phase=\"verified\"}", kSessions));
  EXPECT_OK(WaitForValue("fieldprint_supervisor_sessions{phase=\"running\"}", 0));
  EXPECT_OK(WaitForValue("fieldprint_supervisor_leaves_ingested_total", leaves));
  EXPECT_OK(WaitForValue("fieldprint_supervisor_leaves_applied_total", leaves));
  EXPECT_OK(WaitForValue("sum(fieldprint_worker_tokens_generated_total)", leaves));
  // Nothing unacknowledged is left in any worker's outbox. (Sent minus acknowledged need not be
  // 0: an Ack that arrives after the Commit that verified its session finds the replica's outbox
  // already dropped and is not counted.)
  EXPECT_OK(WaitForValue("sum(fieldprint_worker_outbox_batches)", 0));
  EXPECT_OK(WaitForValue("sum(fieldprint_worker_leaf_batches_acknowledged_total) > bool 0", 1));
  EXPECT_OK(WaitForValue("fieldprint_supervisor_divergences_total", 0));
  EXPECT_OK(WaitForValue("fieldprint_supervisor_connected_workers", kWorkers));
  // The ledger holds the sessions (and the anchor set's record): a signed checkpoint covers
  // at least the sessions.
  EXPECT_OK(WaitForValue(
      fmt::format("fieldprint_supervisor_checkpoint_tree_size >= bool {}", kSessions), 1));

  // The repository's rules load and evaluate without errors against real series, and a healthy
  // cluster raises none of them.
  const int expected_rules =
      CountAlertRules(ReadFile(fp::testing::SourceDir() / "deploy/prometheus/alerts.yml"));
  ASSERT_GT(expected_rules, 0);
  const auto deadline = Clock::now() + kScrapeTimeout;
  std::string problems;
  while (true) {
    problems.clear();
    int evaluated = 0;
    ASSERT_OK_AND_ASSIGN(json::value rules, PrometheusApi("/api/v1/rules?type=alert"));
    for (const json::value& group : rules.at("groups").as_array()) {
      for (const json::value& rule : group.at("rules").as_array()) {
        const json::object& r = rule.as_object();
        if (r.at("health") == "ok") ++evaluated;
        if (r.at("health") == "err") problems += json::serialize(r) + "\n";
        if (r.at("state") != "inactive")
          problems += fmt::format("{} is {}\n", json::serialize(r.at("name")),
                                  json::serialize(r.at("state")));
      }
    }
    if (problems.empty() && evaluated == expected_rules) break;
    ASSERT_LT(Clock::now(), deadline)
        << evaluated << " of " << expected_rules << " rules evaluated cleanly; " << problems;
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace
}  // namespace fp::e2e
