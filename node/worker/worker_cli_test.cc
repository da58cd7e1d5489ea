// Tests of `fieldprint worker`'s configuration: flags over the TOML file, the fault injection
// guard (a [faults] section AND --unsafe-fault-injection, never one alone), the tensor-parallel
// options, and the parsers and policies the command relies on (supervisor addresses, model specs,
// reconnect backoff).
#include "node/worker/worker_cli.h"

#include <fstream>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp {
namespace {

using ::fp::testing::StatusIs;
using node::worker::FaultKind;
using node::worker::WorkerConfig;
using std::chrono::milliseconds;

class WorkerCliTest : public ::testing::Test {
 protected:
  // Parses `fieldprint worker <base flags> <extra>` (with `toml` as --config when non-empty) and
  // resolves the config. A CLI11 parse error becomes InvalidArgument.
  StatusOr<WorkerConfig> Parse(std::vector<std::string> extra, const std::string& toml = "") {
    CLI::App app;
    CLI::App* command = app.add_subcommand("worker");
    WorkerFlags flags;
    AddWorkerOptions(command, &flags);
    std::vector<std::string> args = {"fieldprint",   "worker",
                                     "--name",       "worker-0",
                                     "--certs-dir",  dir_.Join("certs"),
                                     "--supervisor", "supervisor-0@127.0.0.1:7000",
                                     "--model",      "tiny=" + dir_.Join("model"),
                                     "--data-dir",   dir_.Join("data")};
    if (!toml.empty()) {
      std::ofstream(dir_.Join("worker.toml")) << toml;
      args.push_back("--config");
      args.push_back(dir_.Join("worker.toml"));
    }
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& error) {
      return InvalidArgumentError(std::string("parse: ") + error.what());
    }
    return ResolveWorkerConfig(*command, flags);
  }

  ::fp::testing::TempDir dir_;
};

TEST_F(WorkerCliTest, FlagsMakeAConfigWithoutFaults) {
  ASSERT_OK_AND_ASSIGN(WorkerConfig config, Parse({"--supervisor", "127.0.0.1:7001"}));
  EXPECT_EQ(config.name, "worker-0");
  ASSERT_EQ(config.supervisors.size(), 2u);
  EXPECT_EQ(config.supervisors[0].server_name, "supervisor-0");
  EXPECT_EQ(config.supervisors[1].server_name, "127.0.0.1");
  EXPECT_EQ(config.supervisors[1].port, 7001);
  ASSERT_EQ(config.models.size(), 1u);
  EXPECT_EQ(config.models[0].name, "tiny");
  EXPECT_FALSE(config.faults.has_value());
}

TEST_F(WorkerCliTest, FileFillsWhatFlagsLeaveOpen) {
  ASSERT_OK_AND_ASSIGN(WorkerConfig config, Parse({"--threads", "2"},
                                                  "threads = 3\nwindow-steps = 8\nwindow-ms = 20\n"
                                                  "anchors = [\"tiny=/a.safetensors\"]\n"));
  EXPECT_EQ(config.engine.threads, 2);
  EXPECT_EQ(config.stream.window_steps, 8u);
  EXPECT_EQ(config.stream.window_time, milliseconds(20));
  EXPECT_EQ(config.models[0].anchors_file, "/a.safetensors");
}

TEST_F(WorkerCliTest, FaultsSectionWithTheFlagEnablesTheFault) {
  ASSERT_OK_AND_ASSIGN(WorkerConfig config,
                       Parse({"--unsafe-fault-injection"},
                             "[faults]\nkind = \"kv-row\"\nsession = 1\nstep = 9\nkv-row = 3\n"));
  ASSERT_TRUE(config.faults.has_value());
  EXPECT_EQ(config.faults->kind, FaultKind::kKvRow);
  EXPECT_EQ(config.faults->session, 1);
  EXPECT_EQ(config.faults->step, 9u);
  EXPECT_EQ(config.faults->kv_row, 3);
}

TEST_F(WorkerCliTest, GuardDecidesOnBothSwitches) {
  using node::worker::FaultInjectionEnabled;
  ASSERT_OK_AND_ASSIGN(bool off, FaultInjectionEnabled(false, false, false, false));
  EXPECT_FALSE(off);
  ASSERT_OK_AND_ASSIGN(bool on, FaultInjectionEnabled(true, true, true, true));
  EXPECT_TRUE(on);
  EXPECT_THAT(FaultInjectionEnabled(true, false, true, true),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(FaultInjectionEnabled(false, true, false, false),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(FaultInjectionEnabled(false, false, true, true),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(FaultInjectionEnabled(true, true, false, false),
              StatusIs(StatusCode::kInvalidArgument));
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(WorkerCliTest, FaultsSectionWithoutTheFlagRefusesToStart) {
  EXPECT_THAT(Parse({}, "[faults]\nkind = \"crash\"\nstep = 3\n"),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(WorkerCliTest, FlagWithoutAFaultsSectionRefusesToStart) {
  EXPECT_THAT(Parse({"--unsafe-fault-injection"}), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(Parse({"--unsafe-fault-injection"}, "threads = 2\n"),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(WorkerCliTest, FaultOptionsOnlyOnTheCommandLineAreRefused) {
  EXPECT_THAT(Parse({"--kind", "crash"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--kind", "crash", "--unsafe-fault-injection"}),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(WorkerCliTest, UnsafeFlagCannotComeFromTheFile) {
  EXPECT_THAT(Parse({}, "unsafe-fault-injection = true\n[faults]\nkind = \"crash\"\n"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(WorkerCliTest, EmptyFaultsSectionOrBadKindIsRefused) {
  EXPECT_THAT(Parse({"--unsafe-fault-injection"}, "[faults]\nstep = 3\n"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--unsafe-fault-injection"}, "[faults]\nkind = \"meteor\"\n"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--unsafe-fault-injection"}, "[faults]\nkind = \"wrong-digest\"\nbit = 256\n"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(WorkerCliTest, OutOfRangeValuesAreRefused) {
  EXPECT_THAT(Parse({"--window-steps", "0"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--window-steps", "5000"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--heartbeat-ms", "40000"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--read-timeout-ms", "0"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--connect-timeout-ms", "0"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--anchors", "other=/a"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--metrics-address", "nowhere"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--reconnect-max-ms", "50"}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({}, "no-such-key = 1\n"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(WorkerCliTest, TensorParallelFlagsAndFileKeys) {
  ASSERT_OK_AND_ASSIGN(WorkerConfig flags,
                       Parse({"--tensor-parallel", "2", "--cuda-devices", "3,1"}));
  EXPECT_EQ(flags.engine.tensor_parallel, 2);
  EXPECT_EQ(flags.engine.cuda_devices, (std::vector<int>{3, 1}));
  ASSERT_OK_AND_ASSIGN(WorkerConfig file, Parse({}, "tensor-parallel = 4\n"));
  EXPECT_EQ(file.engine.tensor_parallel, 4);
  EXPECT_TRUE(file.engine.cuda_devices.empty());
  ASSERT_OK_AND_ASSIGN(WorkerConfig plain, Parse({}));
  EXPECT_EQ(plain.engine.tensor_parallel, 1);
  // Error paths.
  for (const char* degree : {"0", "9"}) {
    EXPECT_THAT(Parse({"--tensor-parallel", degree}), StatusIs(StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(Parse({"--tensor-parallel", "2", "--cuda-devices", "0"}),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Parse({"--tensor-parallel", "2", "--backend", "cpu"}),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(WorkerCliTest, SupervisorAddressesParse) {
  using node::worker::ParseSupervisorAddress;
  ASSERT_OK_AND_ASSIGN(auto named, ParseSupervisorAddress("supervisor-1@10.0.0.5:7400"));
  EXPECT_EQ(named.server_name, "supervisor-1");
  EXPECT_EQ(named.host, "10.0.0.5");
  EXPECT_EQ(named.port, 7400);
  ASSERT_OK_AND_ASSIGN(auto v6, ParseSupervisorAddress("s@[::1]:9"));
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 9);
  for (const char* bad : {"nohost", "s@", "@h:1", ":80", "h:0", "h:70000", "h:x", "[::1:5"}) {
    EXPECT_THAT(ParseSupervisorAddress(bad), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
}

TEST_F(WorkerCliTest, ModelSpecsParse) {
  using node::worker::ParseModelSpec;
  ASSERT_OK_AND_ASSIGN(auto spec, ParseModelSpec("llama=/models/a=b"));
  EXPECT_EQ(spec.name, "llama");
  EXPECT_EQ(spec.dir, "/models/a=b");
  for (const char* bad : {"nodir", "=dir", "name="}) {
    EXPECT_THAT(ParseModelSpec(bad), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
}

TEST_F(WorkerCliTest, ReconnectDelayGrowsExponentiallyWithinJitterBounds) {
  using node::worker::ReconnectDelay;
  const node::worker::ReconnectPolicy policy{milliseconds(100), milliseconds(1'000)};
  EXPECT_EQ(ReconnectDelay(policy, 1, 0.0), milliseconds(50));
  EXPECT_EQ(ReconnectDelay(policy, 1, 0.999), milliseconds(99));
  EXPECT_EQ(ReconnectDelay(policy, 2, 0.0), milliseconds(100));
  EXPECT_EQ(ReconnectDelay(policy, 4, 0.0), milliseconds(400));
  EXPECT_EQ(ReconnectDelay(policy, 5, 0.0), milliseconds(500));  // 1600 capped to 1000
  EXPECT_EQ(ReconnectDelay(policy, 1'000'000, 0.5), milliseconds(750));
}

}  // namespace
}  // namespace fp
