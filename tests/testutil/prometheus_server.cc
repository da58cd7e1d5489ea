// PrometheusServer; see prometheus_server.h.
#include "tests/testutil/prometheus_server.h"

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include "supervisor/net/http_client.h"
#include "tests/testutil/test_env.h"

namespace fp::testing {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kPollInterval{100};
constexpr std::chrono::seconds kReadyRequestTimeout{2};
constexpr std::chrono::seconds kApiRequestTimeout{5};

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

std::string DescribeVector(const PrometheusVector& samples) {
  if (samples.empty()) return "an empty vector";
  std::string out = fmt::format("{} sample(s):", samples.size());
  for (const auto& [labels, value] : samples) {
    out += fmt::format(" {} {}", json::serialize(labels), value);
  }
  return out;
}

Status ValidateJobs(const std::vector<ScrapeJob>& jobs) {
  if (jobs.empty() || jobs.size() > kMaxScrapeJobs) {
    return InvalidArgumentError(fmt::format("scrape jobs: 1..{}", kMaxScrapeJobs));
  }
  for (const ScrapeJob& job : jobs) {
    if (job.name.empty()) return InvalidArgumentError("a scrape job without a name");
    if (job.targets.empty() || job.targets.size() > kMaxScrapeTargets) {
      return InvalidArgumentError(
          fmt::format("job {}: 1..{} targets", job.name, kMaxScrapeTargets));
    }
  }
  return OkStatus();
}

// The configuration: every job with static targets, the rules file, 500 ms intervals.
std::string ConfigText(const std::vector<ScrapeJob>& jobs, const std::string& rules_file) {
  std::string config = fmt::format(
      "global:\n"
      "  scrape_interval: 500ms\n"
      "  scrape_timeout: 400ms\n"
      "  evaluation_interval: 500ms\n"
      "rule_files: [\"{}\"]\n"
      "scrape_configs:\n",
      rules_file);
  for (const ScrapeJob& job : jobs) {
    std::string targets;
    for (const std::string& target : job.targets) {
      targets += fmt::format("{}\"{}\"", targets.empty() ? "" : ", ", target);
    }
    config += fmt::format(
        "  - job_name: {}\n"
        "    static_configs: [{{targets: [{}]}}]\n",
        job.name, targets);
  }
  return config;
}

}  // namespace

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

StatusOr<std::unique_ptr<PrometheusServer>> PrometheusServer::Start(
    const PrometheusOptions& options) {
  FP_RETURN_IF_ERROR(ValidateJobs(options.jobs));
  if (options.dir.empty()) return InvalidArgumentError("a directory is required");
  PrometheusOptions resolved = options;
  if (resolved.binary.empty()) resolved.binary = FindOnPath("prometheus");
  if (resolved.binary.empty()) return FailedPreconditionError(kPrometheusMissing);
  if (resolved.rules_file.empty()) {
    resolved.rules_file = (SourceDir() / "deploy/prometheus/alerts.yml").string();
  }
  std::unique_ptr<PrometheusServer> server(new PrometheusServer(std::move(resolved)));
  FP_RETURN_IF_ERROR(server->Launch());
  return server;
}

PrometheusServer::~PrometheusServer() { Stop(std::chrono::seconds(5)); }

Status PrometheusServer::Launch() {
  const fs::path dir(options_.dir);
  const std::string config_path = (dir / "prometheus.yml").string();
  std::ofstream config(config_path, std::ios::trunc);
  config << ConfigText(options_.jobs, options_.rules_file);
  config.close();
  if (!config) return UnavailableError("cannot write " + config_path);
  FP_ASSIGN_OR_RETURN(port_, client::ProbeFreePort());
  client::ProcessOptions process;
  process.argv = {options_.binary, "--config.file=" + config_path,
                  "--storage.tsdb.path=" + (dir / "prometheus-data").string(),
                  fmt::format("--web.listen-address=127.0.0.1:{}", port_), "--log.level=warn"};
  process.stdout_path = (dir / "prometheus.out").string();
  process.stderr_path = (dir / "prometheus.err").string();
  FP_ASSIGN_OR_RETURN(process_, client::ChildProcess::Spawn("prometheus", process));
  const auto deadline = Clock::now() + options_.start_timeout;
  while (true) {
    supervisor::HttpClient http("127.0.0.1", port_, kReadyRequestTimeout);
    StatusOr<supervisor::HttpResponse> ready =
        http.Request(boost::beast::http::verb::get, "/-/ready");
    if (ready.ok() && ready->status == 200) return OkStatus();
    if (!process_->Running()) {
      return UnavailableError("prometheus exited: " + process_->StderrTail(4000));
    }
    if (Clock::now() >= deadline) return DeadlineExceededError("prometheus is not ready");
    std::this_thread::sleep_for(kPollInterval);
  }
}

StatusOr<json::value> PrometheusServer::Api(const std::string& target) {
  supervisor::HttpClient http("127.0.0.1", port_, kApiRequestTimeout);
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

StatusOr<PrometheusVector> PrometheusServer::Query(const std::string& promql) {
  FP_ASSIGN_OR_RETURN(json::value data, Api("/api/v1/query?query=" + EncodeQueryValue(promql)));
  const json::object& object = data.as_object();
  if (object.at("resultType") != "vector") {
    return InternalError(fmt::format("{}: not an instant vector: {}", promql,
                                     json::serialize(object.at("resultType"))));
  }
  PrometheusVector samples;
  for (const json::value& sample : object.at("result").as_array()) {
    const json::string& value = sample.at("value").as_array().at(1).as_string();
    samples.emplace_back(sample.at("metric").as_object(), std::stod(std::string(value)));
  }
  return samples;
}

StatusOr<PrometheusVector> PrometheusServer::WaitFor(
    const std::string& promql, const std::function<bool(const PrometheusVector&)>& done) {
  const auto deadline = Clock::now() + options_.wait_timeout;
  std::string last = "no answer";
  while (true) {
    StatusOr<PrometheusVector> samples = Query(promql);
    if (samples.ok() && done(*samples)) return samples;
    last = samples.ok() ? DescribeVector(*samples) : samples.status().ToString();
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(fmt::format("{}: last answer {}", promql, last));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

Status PrometheusServer::WaitForValue(const std::string& promql, double expected) {
  StatusOr<PrometheusVector> samples = WaitFor(promql, [&](const PrometheusVector& vector) {
    return vector.size() == 1 && vector.front().second == expected;
  });
  if (samples.ok()) return OkStatus();
  return samples.status().WithContext(fmt::format("expected {}", expected));
}

Status PrometheusServer::WaitForQuietAlerts() {
  const int expected_rules = CountAlertRules(ReadFile(options_.rules_file));
  if (expected_rules <= 0) {
    return FailedPreconditionError("no alerting rule in " + options_.rules_file);
  }
  const auto deadline = Clock::now() + options_.wait_timeout;
  while (true) {
    std::string problems;
    int evaluated = 0;
    FP_ASSIGN_OR_RETURN(json::value rules, Api("/api/v1/rules?type=alert"));
    for (const json::value& group : rules.at("groups").as_array()) {
      for (const json::value& rule : group.at("rules").as_array()) {
        const json::object& r = rule.as_object();
        if (r.at("health") == "ok") ++evaluated;
        if (r.at("health") == "err") problems += json::serialize(r) + "\n";
        if (r.at("state") != "inactive") {
          problems += fmt::format("{} is {}\n", json::serialize(r.at("name")),
                                  json::serialize(r.at("state")));
        }
      }
    }
    if (problems.empty() && evaluated == expected_rules) return OkStatus();
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("{} of {} rules evaluated cleanly; {}", evaluated, expected_rules, problems));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

int PrometheusServer::Stop(std::chrono::milliseconds grace) {
  if (process_ != nullptr) {
    exit_status_ = process_->Stop(grace);
    process_.reset();
  }
  return exit_status_;
}

std::string PrometheusServer::StderrTail(size_t max_bytes) const {
  std::ifstream file(fs::path(options_.dir) / "prometheus.err", std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  const std::string all = text.str();
  return all.size() > max_bytes ? all.substr(all.size() - max_bytes) : all;
}

}  // namespace fp::testing
