// End-to-end tests of `fieldprint demo` as a user runs it: it finishes on its own, prints a
// table of verified sessions in which exactly one session diverged and rolled back, passes its
// offline audit, stops every process it started and removes its directory; with --keep the
// cluster outlives the command and answers on the printed API address.
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <signal.h>

#include "supervisor/client/api_client.h"
#include "tests/e2e/e2e_env.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kDemoTimeout{90'000};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  std::string line;
  while (std::getline(stream, line)) lines.push_back(line);
  return lines;
}

// True while `pid` runs; a zombie (exited, not reaped by its new parent yet) does not count.
bool Alive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

// Kills the processes a kept demo left behind if the test ends early.
class KeptProcesses {
 public:
  ~KeptProcesses() {
    for (pid_t pid : pids_) kill(pid, SIGKILL);
  }
  void Add(pid_t pid) { pids_.push_back(pid); }
  const std::vector<pid_t>& pids() const { return pids_; }

 private:
  std::vector<pid_t> pids_;
};

class DemoCommandTest : public ::testing::Test {
 protected:
  fp::testing::TempDir dir_;
};

TEST_F(DemoCommandTest, RunsToCompletionWithATableAndAVerifiedAudit) {
  ASSERT_OK_AND_ASSIGN(std::string out,
                       RunToCompletion({FieldprintBinary(), "demo", "--sessions", "3"},
                                       dir_.path().string(), kDemoTimeout));
  SCOPED_TRACE(out);
  const std::regex header(R"(^  session +phase +steps +divergences +rollbacks +verified root$)");
  const std::regex row(
      R"(^  ([0-9a-f]{32})  verified +24 +([0-9]+) +([0-9]+)  [0-9a-f]{16}\.\.\.$)");
  const std::regex stopped(R"(^  (worker-\d|supervisor-0) \(pid (\d+)\) exited with code 0$)");
  const std::regex removed(R"(^  removed (/.*)$)");
  int headers = 0, rows = 0, diverged = 0, stops = 0;
  std::string directory;
  std::vector<pid_t> pids;
  for (const std::string& line : Lines(out)) {
    std::smatch match;
    headers += std::regex_match(line, header) ? 1 : 0;
    if (std::regex_match(line, match, row)) {
      ++rows;
      if (match[2] != "0") {
        ++diverged;
        EXPECT_EQ(match[2], "1");
        EXPECT_EQ(match[3], "1");  // the faulty replica rolled back once
      } else {
        EXPECT_EQ(match[3], "0");
      }
    }
    if (std::regex_match(line, match, stopped)) {
      ++stops;
      pids.push_back(std::stoi(match[2]));
    }
    if (std::regex_match(line, match, removed)) directory = match[1];
  }
  EXPECT_EQ(headers, 1);
  EXPECT_EQ(rows, 3);
  EXPECT_EQ(diverged, 1);
  for (const char* check :
       {"  ok   checkpoint", "  ok   inclusion", "  ok   record", "  ok   steps", "  ok   output",
        "  VERIFIED offline against the pinned key"}) {
    EXPECT_NE(out.find(check), std::string::npos) << check;
  }
  EXPECT_NE(out.find("/metrics (worker-2)"), std::string::npos);
  EXPECT_EQ(stops, 4);  // three workers and the supervisor, each drained cleanly
  for (pid_t pid : pids) EXPECT_FALSE(Alive(pid)) << pid;
  ASSERT_FALSE(directory.empty());
  EXPECT_FALSE(fs::exists(directory));
}

TEST_F(DemoCommandTest, KeepLeavesTheClusterRunning) {
  ASSERT_OK_AND_ASSIGN(std::string out,
                       RunToCompletion({FieldprintBinary(), "demo", "--sessions", "1", "--keep"},
                                       dir_.path().string(), kDemoTimeout));
  SCOPED_TRACE(out);
  const std::regex stop(R"(^  stop it with: kill -TERM ([0-9 ]+) && rm -rf (/.*)$)");
  const std::regex api(R"(^  API +http://127\.0\.0\.1:(\d+) .*$)");
  KeptProcesses kept;
  std::string directory;
  uint16_t port = 0;
  for (const std::string& line : Lines(out)) {
    std::smatch match;
    if (std::regex_match(line, match, stop)) {
      std::istringstream pids(match[1]);
      pid_t pid = 0;
      while (pids >> pid) kept.Add(pid);
      directory = match[2];
    }
    if (std::regex_match(line, match, api)) port = static_cast<uint16_t>(std::stoi(match[1]));
  }
  ASSERT_EQ(kept.pids().size(), 4u);
  ASSERT_NE(port, 0);
  for (pid_t pid : kept.pids()) EXPECT_TRUE(Alive(pid)) << pid;
  client::ApiClient client(client::SupervisorUrl{"127.0.0.1", port});
  EXPECT_OK(client.GetText("/readyz"));
  ASSERT_OK_AND_ASSIGN(auto workers, client.Workers());
  EXPECT_EQ(workers.size(), 3u);

  // The printed way to stop it works: SIGTERM drains every process.
  for (pid_t pid : kept.pids()) kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (pid_t pid : kept.pids()) {
    while (Alive(pid) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(20));
    }
    EXPECT_FALSE(Alive(pid)) << pid;
  }
  std::error_code ignored;
  fs::remove_all(directory, ignored);
}

}  // namespace
}  // namespace fp::e2e
