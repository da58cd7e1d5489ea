// PrometheusServer: Debian's `prometheus` binary (found on $PATH) scraping processes of a test,
// for tests that check metrics through a real Prometheus (tests/e2e/prometheus_test.cc,
// tests/cluster/cluster_prometheus_test.cc). It writes a configuration with the given scrape
// jobs (static targets, 500 ms scrape and rule interval) and a rules file (by default the
// repository's deploy/prometheus/alerts.yml), starts Prometheus on a free loopback port with its
// storage in the test's directory, and waits until /-/ready answers. Queries go through the HTTP
// API; every wait is bounded.
//
// Thread-safety: one thread uses a PrometheusServer.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "common/base/status.h"
#include "supervisor/client/process.h"

namespace fp::testing {

inline constexpr size_t kMaxScrapeJobs = 16;
inline constexpr size_t kMaxScrapeTargets = 64;  // per job

// The executable `name` on $PATH, or "" when there is none.
std::string FindOnPath(const std::string& name);
// What a test that needs Prometheus reports when FindOnPath("prometheus") finds none.
inline constexpr char kPrometheusMissing[] =
    "Debian's prometheus package is not installed (.ci/deps.sh installs it)";

// The number of alerting rules in a rules file, counted as `- alert:` lines.
int CountAlertRules(const std::string& text);

struct ScrapeJob {
  std::string name;                  // job_name, e.g. "fieldprint-supervisor"
  std::vector<std::string> targets;  // "host:port", scraped at /metrics; 1..kMaxScrapeTargets
};

struct PrometheusOptions {
  std::string binary;           // the prometheus executable ("": FindOnPath("prometheus"))
  std::string dir;              // config, storage and logs go here; must exist
  std::vector<ScrapeJob> jobs;  // 1..kMaxScrapeJobs
  std::string rules_file;       // "": SourceDir()/deploy/prometheus/alerts.yml
  std::chrono::milliseconds start_timeout{20'000};  // until /-/ready
  // Bound of each Wait…: a scraped value catching up with the processes (a few scrape
  // intervals on an idle machine).
  std::chrono::milliseconds wait_timeout{15'000};
};

// One sample of an instant vector: its labels and value.
using PrometheusSample = std::pair<boost::json::object, double>;
using PrometheusVector = std::vector<PrometheusSample>;

class PrometheusServer {
 public:
  // Writes DIR/prometheus.yml, starts Prometheus (stdout and stderr in DIR/prometheus.out and
  // .err, storage in DIR/prometheus-data) and waits until it is ready. FailedPrecondition when no
  // binary is found, InvalidArgument for bad jobs, Unavailable when it exits early (with its
  // stderr), DeadlineExceeded when it is not ready within start_timeout. The caller owns the
  // result; destroying it stops Prometheus.
  static StatusOr<std::unique_ptr<PrometheusServer>> Start(const PrometheusOptions& options);
  ~PrometheusServer();
  PrometheusServer(const PrometheusServer&) = delete;
  PrometheusServer& operator=(const PrometheusServer&) = delete;

  uint16_t port() const { return port_; }

  // GET `target` of the HTTP API (e.g. "/api/v1/rules?type=alert"): the "data" member of a
  // successful answer; Internal with the body for any other answer, or the transport's error.
  StatusOr<boost::json::value> Api(const std::string& target);
  // The instant vector of `promql` (GET /api/v1/query).
  StatusOr<PrometheusVector> Query(const std::string& promql);
  // Polls `promql` until `done` accepts its vector and returns that vector; DeadlineExceeded
  // after wait_timeout, naming `promql` and the last answer.
  StatusOr<PrometheusVector> WaitFor(const std::string& promql,
                                     const std::function<bool(const PrometheusVector&)>& done);
  // WaitFor exactly one sample equal to `expected`.
  Status WaitForValue(const std::string& promql, double expected);
  // Polls /api/v1/rules until every alerting rule of the rules file (CountAlertRules) evaluated
  // with health "ok" and none is pending or firing; DeadlineExceeded listing the problems.
  Status WaitForQuietAlerts();

  // SIGTERM, then SIGKILL after `grace`; the wait status. Idempotent.
  int Stop(std::chrono::milliseconds grace);
  std::string StderrTail(size_t max_bytes) const;

 private:
  explicit PrometheusServer(PrometheusOptions options) : options_(std::move(options)) {}
  Status Launch();

  const PrometheusOptions options_;
  std::unique_ptr<client::ChildProcess> process_;
  uint16_t port_ = 0;
  int exit_status_ = 0;
};

}  // namespace fp::testing
