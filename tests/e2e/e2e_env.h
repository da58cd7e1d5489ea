// Shared helpers of the end-to-end tests: a fixture that starts a real LocalCluster
// (supervisor/client/local_cluster.h) of the built `fieldprint` binary in a temporary directory
// and stops it afterwards (dumping every process's log when the test failed), plus readers of
// JSON log lines and Prometheus samples, and a bounded wait for a session.
//
// Every wait is bounded; every process is stopped (or killed) by the fixture's teardown, and the
// children die with the test process if it crashes (PR_SET_PDEATHSIG).
//
// Thread-safety: single-threaded test code.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/json/object.hpp>
#include <gtest/gtest.h>

#include "supervisor/client/api_client.h"
#include "supervisor/client/local_cluster.h"
#include "tests/testutil/test_env.h"

namespace fp::e2e {

// Bounds of the waits in these tests (a loaded 2-core CI machine is far slower than a laptop).
inline constexpr std::chrono::milliseconds kSessionTimeout{60'000};
inline constexpr std::chrono::milliseconds kEventTimeout{30'000};

// The `fieldprint` binary of this build.
std::string FieldprintBinary();

// JSON log events (one object per line) of the stderr file at `path`; other lines are skipped.
std::vector<boost::json::object> ReadJsonLog(const std::string& path);

// Waits until the log at `path` holds an event for which `match` is true and returns it.
// DeadlineExceeded after `timeout`.
StatusOr<boost::json::object> WaitForLogEvent(
    const std::string& path, const std::function<bool(const boost::json::object&)>& match,
    std::chrono::milliseconds timeout);

// True when `event` has msg == `message` and, for each (key, value), an integer field key with
// that value.
bool IsEvent(const boost::json::object& event, std::string_view message,
             std::initializer_list<std::pair<std::string_view, int64_t>> fields = {});

// The value of the sample `name_and_labels` (exactly as exposed, e.g.
// `fieldprint_worker_rollbacks_total{kind="truncate"}`) in Prometheus text. NotFound if absent.
StatusOr<double> MetricValue(const std::string& text, std::string_view name_and_labels);

// A greedy session of the tiny model on `prompt` (byte tokens).
client::SubmitRequest TinyRequest(std::string_view prompt, uint32_t max_tokens);

// Runs `command` (argv[0] is the binary) to completion within `timeout` with stdout and stderr
// in files under `dir`, and returns its stdout. Internal (with stderr) on a non-zero exit.
StatusOr<std::string> RunToCompletion(const std::vector<std::string>& command,
                                      const std::string& dir, std::chrono::milliseconds timeout);

class ClusterFixture : public ::testing::Test {
 protected:
  // Options for a test cluster in this test's directory: JSON logs, short supervisor timers.
  client::LocalClusterOptions Options() const;
  // Starts the cluster (ASSERTs on failure through the returned status).
  Status StartCluster(const client::LocalClusterOptions& options);
  client::ApiClient Api() const;
  void TearDown() override;

  fp::testing::TempDir dir_;
  std::unique_ptr<client::LocalCluster> cluster_;
};

}  // namespace fp::e2e
