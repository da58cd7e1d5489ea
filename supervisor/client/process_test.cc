// Tests of ChildProcess with real /bin/sh children: lines read from stdout, exit statuses, the
// SIGTERM-then-SIGKILL stop, exec failures, released children and free-port probing.
#include "supervisor/client/process.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::client {
namespace {

using fp::testing::StatusIs;
using std::chrono::milliseconds;

class ChildProcessTest : public ::testing::Test {
 protected:
  ProcessOptions Shell(const std::string& script) {
    ProcessOptions options;
    options.argv = {"/bin/sh", "-c", script};
    options.stdout_path = dir_.Join("out");
    options.stderr_path = dir_.Join("err");
    return options;
  }

  fp::testing::TempDir dir_;
};

TEST_F(ChildProcessTest, ReadsTheMatchingLine) {
  ASSERT_OK_AND_ASSIGN(
      auto child, ChildProcess::Spawn("sh", Shell("echo first; echo port=5 x=1; exec sleep 30")));
  ASSERT_OK_AND_ASSIGN(std::string line,
                       child->WaitForLine([](std::string_view l) { return l.starts_with("port="); },
                                          milliseconds(5000)));
  EXPECT_EQ(line, "port=5 x=1");
  EXPECT_TRUE(child->Running());
  const int status = child->Stop(milliseconds(5000));
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_FALSE(child->Running());
}

TEST_F(ChildProcessTest, ReportsTheExitCode) {
  ASSERT_OK_AND_ASSIGN(auto child, ChildProcess::Spawn("sh", Shell("echo oops >&2; exit 3")));
  ASSERT_OK_AND_ASSIGN(int status, child->WaitExit(milliseconds(5000)));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(DescribeWaitStatus(status), "exited with code 3");
  EXPECT_EQ(child->StderrTail(100), "oops\n");
}

TEST_F(ChildProcessTest, StopEscalatesToSigkill) {
  // An ignored SIGTERM survives exec, so `sleep` ignores it too.
  ASSERT_OK_AND_ASSIGN(auto child,
                       ChildProcess::Spawn("sh", Shell("trap '' TERM; echo up; exec sleep 30")));
  ASSERT_OK(child->WaitForLine([](std::string_view l) { return l == "up"; }, milliseconds(5000)));
  const int status = child->Stop(milliseconds(200));
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_EQ(DescribeWaitStatus(status), "killed by signal 9 (SIGKILL)");
}

TEST_F(ChildProcessTest, ReleasedChildOutlivesItsObject) {
  pid_t pid = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto child, ChildProcess::Spawn("sh", Shell("exec sleep 30")));
    pid = child->pid();
    child->Release();
  }
  EXPECT_EQ(kill(pid, 0), 0);
  kill(pid, SIGKILL);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
}

TEST_F(ChildProcessTest, ProbedPortCanBeBound) {
  ASSERT_OK_AND_ASSIGN(uint16_t port, ProbeFreePort());
  EXPECT_NE(port, 0);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  close(fd);
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(ChildProcessTest, ExecFailureIsUnavailable) {
  ProcessOptions options = Shell("");
  options.argv = {"/nonexistent/fieldprint"};
  EXPECT_THAT(ChildProcess::Spawn("missing", options), StatusIs(StatusCode::kUnavailable));
}

TEST_F(ChildProcessTest, EmptyCommandIsInvalid) {
  ProcessOptions options = Shell("");
  options.argv.clear();
  EXPECT_THAT(ChildProcess::Spawn("empty", options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ChildProcessTest, ExitWithoutTheLineIsAborted) {
  ASSERT_OK_AND_ASSIGN(auto child, ChildProcess::Spawn("sh", Shell("echo bad config >&2")));
  StatusOr<std::string> line =
      child->WaitForLine([](std::string_view l) { return l == "ready"; }, milliseconds(5000));
  EXPECT_THAT(line, StatusIs(StatusCode::kAborted));
  EXPECT_NE(line.status().message().find("bad config"), std::string_view::npos);
}

TEST_F(ChildProcessTest, SilentChildTimesOut) {
  ASSERT_OK_AND_ASSIGN(auto child, ChildProcess::Spawn("sh", Shell("exec sleep 30")));
  EXPECT_THAT(child->WaitForLine([](std::string_view) { return true; }, milliseconds(100)),
              StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_THAT(child->WaitExit(milliseconds(50)), StatusIs(StatusCode::kDeadlineExceeded));
}

}  // namespace
}  // namespace fp::client
