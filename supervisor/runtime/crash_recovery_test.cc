// Crash recovery with real processes: a supervisor process under load from simulated workers is
// killed with SIGKILL, restarted, and must have lost no acknowledged record, keep every root it
// served before the crash (sessions, and a ledger consistent with its last checkpoint), drain
// cleanly on SIGTERM, pass fsck, and hold exactly the state a fresh replay of its log gives.
#include <boost/json.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/note.h"
#include "common/wire/certs.h"
#include "common/wire/tls.h"
#include "supervisor/bench/bench_worker.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/net/http_client.h"
#include "supervisor/state/applier.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using boost::beast::http::verb;
using Clock = std::chrono::steady_clock;

// A child process with its stdout on a pipe; killed on destruction if still running.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv) {
    int pipe_fds[2];
    FP_CHECK(pipe(pipe_fds) == 0);
    pid_ = fork();
    FP_CHECK(pid_ >= 0);
    if (pid_ == 0) {
      // The child dies with the test, and holds none of the test's descriptors but the pipe.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(pipe_fds[1], STDOUT_FILENO);
      for (int fd = 3; fd < 1024; ++fd) close(fd);
      std::vector<char*> args;
      for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(pipe_fds[1]);
    out_ = pipe_fds[0];
  }
  ~ChildProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (out_ >= 0) close(out_);
  }

  // The next line of the child's stdout, or "" after `timeout`.
  std::string ReadLine(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::string line;
    while (Clock::now() < deadline) {
      pollfd fd{out_, POLLIN, 0};
      if (poll(&fd, 1, 50) <= 0) continue;
      char c;
      if (read(out_, &c, 1) != 1) break;
      if (c == '\n') return line;
      line.push_back(c);
    }
    return "";
  }

  void Signal(int signal) { kill(pid_, signal); }
  // The exit status (as from waitpid), or -1 if it was already reaped.
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
};

std::string Binary() {
  return (fp::testing::BinaryDir() / "supervisor" / "fieldprint_supervisor_test_main").string();
}

class CrashRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "bench-0", "bench-1"};
    FP_CHECK_OK(wire::InitCerts(dir_.Join("certs"), certs));
  }

  std::unique_ptr<ChildProcess> StartSupervisor() {
    auto child = std::make_unique<ChildProcess>(
        std::vector<std::string>{Binary(),
                                 "supervisor",
                                 "--data-dir",
                                 dir_.Join("data"),
                                 "--certs-dir",
                                 dir_.Join("certs"),
                                 "--worker-port",
                                 "0",
                                 "--http-port",
                                 "0",
                                 "--tick-interval-ms",
                                 "50",
                                 "--checkpoint-every",
                                 "4",
                                 "--checkpoint-interval-ms",
                                 "100",
                                 "--replicas",
                                 "2",
                                 "--max-unverified-steps",
                                 "512",
                                 "--model",
                                 "bench=" + HexEncode(AsBytes(std::string(32, 'n'))),
                                 "--log-level",
                                 "warn"});
    const std::string ports = child->ReadLine(std::chrono::seconds(20));
    unsigned worker = 0, http = 0, metrics = 0;
    FP_CHECK_MSG(std::sscanf(ports.c_str(), "worker_port=%u http_port=%u metrics_port=%u", &worker,
                             &http, &metrics) == 3,
                 "supervisor did not start: '" + ports + "'");
    worker_port_ = static_cast<uint16_t>(worker);
    http_port_ = static_cast<uint16_t>(http);
    return child;
  }

  json::value GetJson(HttpClient& client, const std::string& target) {
    auto response = client.Request(verb::get, target);
    FP_CHECK_OK(response);
    FP_CHECK_MSG(response->status == 200, target + ": " + response->body);
    return json::parse(response->body);
  }

  fp::testing::TempDir dir_;
  uint16_t worker_port_ = 0;
  uint16_t http_port_ = 0;
};

TEST_F(CrashRecoveryTest, KillNineUnderLoadLosesNothingAcknowledged) {
  std::unique_ptr<ChildProcess> first = StartSupervisor();
  // Load: two workers, short sessions that verify and long ones that keep streaming.
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  std::vector<std::unique_ptr<boost::asio::ssl::context>> tls;
  std::vector<std::unique_ptr<BenchWorker>> workers;
  for (const char* name : {"bench-0", "bench-1"}) {
    tls.push_back(
        wire::MakeClientTlsContext(wire::TlsFilesForNode(dir_.Join("certs"), name)).value());
    BenchWorkerOptions options;
    options.port = worker_port_;
    options.batch_steps = 16;
    workers.push_back(std::make_unique<BenchWorker>(io, *tls.back(), options));
    workers.back()->Start();
  }
  std::thread io_thread([&] { io.run(); });
  HttpClient http("127.0.0.1", http_port_);
  std::vector<std::string> sessions;
  for (int s = 0; s < 8; ++s) {
    const int max_tokens = s < 6 ? 200 : 200000;
    auto response =
        http.Request(verb::post, "/v1/sessions",
                     fmt::format(R"({{"model":"bench","prompt_token_ids":[{}],"max_tokens":{}}})",
                                 s, max_tokens));
    ASSERT_OK(response);
    ASSERT_EQ(response->status, 202u) << response->body;
    sessions.push_back(std::string(json::parse(response->body).at("session_id").as_string()));
  }
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (workers[0]->verified_sessions() + workers[1]->verified_sessions() < 12 &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the checkpoint catches up
  // What the supervisor served before the crash.
  auto note = http.Request(verb::get, "/v1/checkpoint");
  ASSERT_OK(note);
  ASSERT_EQ(note->status, 200u) << note->body;
  ASSERT_OK_AND_ASSIGN(tlog::ParsedNote parsed, tlog::ParseNote(note->body));
  ASSERT_OK_AND_ASSIGN(tlog::Checkpoint before, tlog::ParseCheckpoint(parsed.text));
  std::map<std::string, std::string> roots;
  for (const std::string& id : sessions) {
    json::value state = GetJson(http, "/v1/sessions/" + id);
    if (state.at("phase").as_string() == "verified") {
      roots[id] = std::string(state.at("session_root").as_string());
    }
  }
  EXPECT_GE(roots.size(), 6u);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // still under load
  first->Signal(SIGKILL);
  first->Wait();
  for (auto& worker : workers) worker->Stop();
  work.reset();
  io.stop();
  io_thread.join();

  // Every acknowledged batch is in the log at its acknowledged position.
  size_t acks = 0;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksLog> log, RocksLog::Open(dir_.Join("data/log")));
    for (const auto& worker : workers) {
      for (const wire::pb::Ack& ack : worker->Acks()) {
        ASSERT_LT(ack.log_index(), log->End());
        ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entry, log->Read(ack.log_index(), 1));
        const pb::LeafBatch& batch = entry.at(0).record.leaf_batch();
        EXPECT_EQ(batch.session_id(), ack.session_id());
        EXPECT_EQ(batch.replica(), ack.replica());
        EXPECT_EQ(batch.epoch(), ack.epoch());
        EXPECT_EQ(batch.first_step(), ack.first_step());
        ++acks;
      }
    }
  }
  EXPECT_GT(acks, 50u);

  // Restart: the same roots, and a ledger consistent with the checkpoint served before.
  std::unique_ptr<ChildProcess> second = StartSupervisor();
  HttpClient again("127.0.0.1", http_port_);
  const auto ready_deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < ready_deadline) {
    auto ready = again.Request(verb::get, "/readyz");
    if (ready.ok() && ready->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (const auto& [id, root] : roots) {
    json::value state = GetJson(again, "/v1/sessions/" + id);
    EXPECT_EQ(state.at("phase").as_string(), "verified");
    EXPECT_EQ(state.at("session_root").as_string(), root);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a fresh checkpoint
  auto latest = again.Request(verb::get, "/v1/checkpoint");
  ASSERT_OK(latest);
  ASSERT_OK_AND_ASSIGN(tlog::ParsedNote latest_note, tlog::ParseNote(latest->body));
  ASSERT_OK_AND_ASSIGN(tlog::Checkpoint after, tlog::ParseCheckpoint(latest_note.text));
  ASSERT_GE(after.size, before.size);
  if (before.size > 0 && after.size > before.size) {
    json::value proof = GetJson(
        again, fmt::format("/v1/ledger/consistency?from={}&to={}", before.size, after.size));
    std::vector<Hash> hashes;
    for (const json::value& h : proof.at("proof").as_array()) {
      hashes.push_back(HashFromHex(h.as_string()).value());
    }
    EXPECT_OK(merkle::VerifyConsistency(before.size, after.size, hashes, before.root, after.root));
  } else if (after.size == before.size) {
    EXPECT_EQ(after.root, before.root);
  }

  // A graceful drain, then fsck.
  second->Signal(SIGTERM);
  const int drained = second->Wait();
  EXPECT_TRUE(WIFEXITED(drained) && WEXITSTATUS(drained) == 0) << drained;
  ChildProcess fsck({Binary(), "supervisor", "fsck", "--data-dir", dir_.Join("data")});
  const int checked = fsck.Wait();
  EXPECT_TRUE(WIFEXITED(checked) && WEXITSTATUS(checked) == 0) << checked;

  // The recovered state is exactly a fresh replay of the log (signatures aside).
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksLog> log, RocksLog::Open(dir_.Join("data/log")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> recovered,
                       OpenStateStore(dir_.Join("data/state")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> replayed, OpenStateStore(dir_.Join("replay")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Applier> applier,
                       Applier::Open(replayed.get(), ApplierOptions{}));
  ASSERT_OK(testing::CatchUp(*log, *applier, 512).status());
  auto without_signed = [](testing::StoreDump dump) {
    std::erase_if(dump, [](const auto& entry) { return std::get<0>(entry) == "signed"; });
    return dump;
  };
  const testing::StoreDump expected = without_signed(testing::DumpStore(*replayed));
  const testing::StoreDump actual = without_signed(testing::DumpStore(*recovered));
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) ASSERT_EQ(actual[i], expected[i]) << i;
}

}  // namespace
}  // namespace fp::supervisor
