// In-process tests of the whole worker (supervisor client, generation loop, streaming thread,
// outbox) against LoopbackSupervisor, a small supervisor over real mutual TLS on 127.0.0.1 with
// certificates from wire::InitCerts. Every expectation about leaves comes from a plain Engine run
// of the same session in the test: the worker must stream exactly those leaves, under
// backpressure, after a rollback (truncate and rebuild), after a dropped connection (resending
// its unacknowledged batches byte for byte), across a restart (resuming from its outbox), and
// after failing over from a dead supervisor address; and it must refuse sessions it cannot
// reproduce with the right Error.
#include "node/worker/worker.h"

#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>

#include "common/merkle/merkle.h"
#include "common/metrics/metrics.h"
#include "common/wire/certs.h"
#include "node/backend/cpu_backend.h"
#include "node/model/tiny_model.h"
#include "node/worker/loopback_supervisor.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

using ::fp::testing::TempDir;
using std::chrono::milliseconds;

// Bounds every wait; a test that reaches it has failed.
constexpr milliseconds kWait{20'000};
constexpr char kModel[] = "tiny";

SessionId Id(uint8_t tag) {
  SessionId id{};
  id[0] = 0xc0;
  id[1] = tag;
  return id;
}

std::string Wire(const SessionId& id) { return std::string(id.begin(), id.end()); }

std::vector<int32_t> Prompt(uint8_t tag) {
  std::vector<int32_t> prompt;
  for (int i = 0; i < 7; ++i) prompt.push_back((tag * 37 + i * 11 + 5) % 256);
  return prompt;
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "worker-0"};
    ASSERT_OK(wire::InitCerts(dir_.Join("certs"), certs));
    TinyModelOptions model;
    model.hidden_size = 64;
    model.intermediate_size = 96;
    model.max_positions = 256;
    ASSERT_OK(WriteTinyModel(dir_.Join("model"), model));
    model_ = std::move(Model::Load(dir_.Join("model")).value());
    auto plain = std::move(Engine::Create(*model_, std::move(CpuBackend::Create({1}).value()),
                                          nullptr, EngineOptions{})
                               .value());
    profile_ = leaf::NumericsProfileHash(plain->numerics_profile()).value();
    LoopbackOptions options;
    options.certs_dir = dir_.Join("certs");
    options.verify_sessions = false;  // keep replicas, so that tests can roll them back
    supervisor_ = std::move(LoopbackSupervisor::Start(options).value());
  }

  void TearDown() override {
    if (worker_ != nullptr) worker_->Stop();
  }

  WorkerConfig Config() {
    WorkerConfig config;
    config.name = "worker-0";
    config.certs_dir = dir_.Join("certs");
    config.supervisors = {{"supervisor-0", "127.0.0.1", supervisor_->port()}};
    config.models = {{kModel, dir_.Join("model"), ""}};
    config.data_dir = dir_.Join("data");
    config.stream = {4, milliseconds(20)};
    config.heartbeat_interval = milliseconds(50);
    config.reconnect = {milliseconds(20), milliseconds(200)};
    config.drain_timeout = milliseconds(300);
    return config;
  }

  void StartWorker(const WorkerConfig& config) {
    registry_ = std::make_unique<prometheus::Registry>();
    auto created = Worker::Create(config, *registry_);
    ASSERT_OK(created);
    worker_ = std::move(created).value();
    ASSERT_OK(worker_->Start());
    ASSERT_TRUE(supervisor_->WaitUntil([&] { return worker_->accepted_generation() != 0; }, kWait));
    ASSERT_EQ(worker_->catalog().entries[0].profile_hash, profile_);
  }

  wire::pb::Assign MakeAssign(uint8_t tag, uint32_t max_tokens, uint32_t max_unverified) {
    wire::pb::Assign assign;
    assign.set_session_id(Wire(Id(tag)));
    assign.set_model(kModel);
    assign.set_numerics_profile(std::string(profile_.begin(), profile_.end()));
    assign.set_anchor_set_hash(std::string(kHashSize, '\0'));
    for (int32_t token : Prompt(tag)) assign.add_prompt_token_ids(static_cast<uint32_t>(token));
    assign.mutable_sampling()->set_max_tokens(max_tokens);
    assign.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN);
    assign.set_max_unverified_steps(max_unverified);
    return assign;
  }

  // The leaves a plain engine makes for the session.
  std::vector<leaf::StepLeaf> Expected(uint8_t tag, int32_t max_tokens) {
    auto engine = std::move(Engine::Create(*model_, std::move(CpuBackend::Create({1}).value()),
                                           nullptr, EngineOptions{})
                                .value());
    SessionRequest request;
    request.id = Id(tag);
    request.prompt = Prompt(tag);
    request.max_tokens = max_tokens;
    EXPECT_OK(engine->Submit(request));
    std::vector<StepOutput> outputs;
    while (engine->HasWork()) EXPECT_OK(engine->Step(&outputs));
    std::vector<leaf::StepLeaf> leaves;
    for (const StepOutput& output : outputs) leaves.push_back(output.leaf);
    return leaves;
  }

  bool WaitFinished(uint8_t tag) {
    return supervisor_->WaitUntil(
        [&] {
          auto replica = supervisor_->replica(Id(tag));
          return replica.has_value() && replica->finished;
        },
        kWait);
  }
  std::vector<leaf::StepLeaf> Leaves(uint8_t tag) { return supervisor_->replica(Id(tag))->leaves; }

  TempDir dir_;
  std::unique_ptr<Model> model_;
  Hash profile_{};
  std::unique_ptr<LoopbackSupervisor> supervisor_;
  std::unique_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Worker> worker_;
};

// GET /metrics over plain HTTP/1.0 on 127.0.0.1:port; the whole response.
std::string FetchMetrics(uint16_t port) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  boost::system::error_code error;
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port}, error);
  if (error) return "";
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  boost::asio::write(socket, boost::asio::buffer(request), error);
  std::string response;
  char buffer[4096];
  while (true) {
    const size_t n = socket.read_some(boost::asio::buffer(buffer), error);
    response.append(buffer, n);
    if (error) break;
  }
  return response;
}

TEST_F(WorkerTest, StreamsTheLeavesOfAPlainEngineRun) {
  WorkerConfig config = Config();
  config.metrics_address = "127.0.0.1:0";
  ASSERT_NO_FATAL_FAILURE(StartWorker(config));
  ASSERT_OK(supervisor_->Assign(MakeAssign(1, 24, 8)));
  ASSERT_TRUE(WaitFinished(1));
  const std::vector<leaf::StepLeaf> expected = Expected(1, 24);
  EXPECT_EQ(Leaves(1), expected);
  merkle::Frontier tree;
  for (const leaf::StepLeaf& step : expected) tree.Append(leaf::StepLeafHash(step), nullptr);
  const Hash root = tree.Root();
  EXPECT_EQ(supervisor_->replica(Id(1))->claimed_root, std::string(root.begin(), root.end()));
  EXPECT_TRUE(supervisor_->rejections().empty());
  EXPECT_TRUE(supervisor_->errors().empty());  // every Commit root matched the worker's tree
  for (const wire::pb::LeafBatch& batch : supervisor_->received()) {
    EXPECT_LE(batch.token_ids_size(), 4);
  }
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return worker_->outbox_batches() == 0; }, kWait));
  const std::string metrics = metrics::RenderText(*registry_);
  EXPECT_NE(metrics.find("fieldprint_worker_tokens_generated_total 24"), std::string::npos);
  EXPECT_NE(metrics.find("fieldprint_worker_commit_root_mismatches_total 0"), std::string::npos);
  ASSERT_NE(worker_->metrics_port(), 0);
  const std::string served = FetchMetrics(worker_->metrics_port());
  EXPECT_NE(served.find("200 OK"), std::string::npos);
  EXPECT_NE(served.find("fieldprint_worker_tokens_generated_total 24"), std::string::npos);
}

TEST_F(WorkerTest, BackpressureHoldsTheReplicaAtTheUnverifiedWindow) {
  supervisor_->SetAutoCommit(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(2, 30, 6)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return Leaves(2).size() == 6; }, kWait));
  std::this_thread::sleep_for(milliseconds(300));  // time to run ahead, if it could
  size_t steps_received = 0;
  for (const wire::pb::LeafBatch& batch : supervisor_->received()) {
    steps_received += static_cast<size_t>(batch.token_ids_size());
  }
  EXPECT_EQ(steps_received, 6u);
  EXPECT_NE(metrics::RenderText(*registry_).find("fieldprint_worker_unverified_lead_steps 6"),
            std::string::npos);
  // Each Commit opens the window by what was verified.
  while (!supervisor_->replica(Id(2))->finished) {
    const uint64_t have = Leaves(2).size();
    ASSERT_OK(supervisor_->CommitNow(Id(2), have));
    ASSERT_TRUE(supervisor_->WaitUntil(
        [&] { return Leaves(2).size() > have || supervisor_->replica(Id(2))->finished; }, kWait));
  }
  EXPECT_EQ(Leaves(2), Expected(2, 30));
  EXPECT_TRUE(supervisor_->rejections().empty());
}

TEST_F(WorkerTest, RollbackRegeneratesTheOriginalLeavesFromTheRollbackStep) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(3, 24, 64)));
  ASSERT_TRUE(WaitFinished(3));
  const std::vector<leaf::StepLeaf> original = Leaves(3);
  ASSERT_EQ(original, Expected(3, 24));
  const size_t before = supervisor_->received().size();

  ASSERT_OK(supervisor_->Rollback(Id(3), 10, wire::pb::ROLLBACK_KIND_TRUNCATE));
  ASSERT_TRUE(WaitFinished(3));
  EXPECT_EQ(Leaves(3), original);
  const std::vector<wire::pb::LeafBatch> received = supervisor_->received();
  ASSERT_GT(received.size(), before);
  EXPECT_EQ(received[before].epoch(), 1u);
  EXPECT_EQ(received[before].first_step(), 10u);

  const size_t middle = received.size();
  ASSERT_OK(supervisor_->Rollback(Id(3), 5, wire::pb::ROLLBACK_KIND_REBUILD));
  ASSERT_TRUE(WaitFinished(3));
  EXPECT_EQ(Leaves(3), original);
  EXPECT_EQ(supervisor_->received()[middle].epoch(), 2u);
  EXPECT_EQ(supervisor_->received()[middle].first_step(), 5u);
  EXPECT_TRUE(supervisor_->rejections().empty());
  EXPECT_NE(
      metrics::RenderText(*registry_).find("fieldprint_worker_rollbacks_total{kind=\"rebuild\"} 1"),
      std::string::npos);
}

TEST_F(WorkerTest, ResendsUnacknowledgedBatchesUnchangedAfterADroppedConnection) {
  supervisor_->SetAutoAck(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(4, 40, 12)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->received().size() >= 3; }, kWait));
  supervisor_->DropConnection();
  const std::vector<wire::pb::LeafBatch> first_connection = supervisor_->received();
  supervisor_->SetAutoAck(true);
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->registrations() == 2; }, kWait));
  ASSERT_TRUE(WaitFinished(4));
  EXPECT_EQ(Leaves(4), Expected(4, 40));
  // Every batch of the first connection came again, same key, same bytes.
  const std::vector<wire::pb::LeafBatch> all = supervisor_->received();
  for (const wire::pb::LeafBatch& sent : first_connection) {
    const std::string bytes = sent.SerializeAsString();
    const bool resent =
        std::any_of(all.begin() + static_cast<ptrdiff_t>(first_connection.size()), all.end(),
                    [&](const wire::pb::LeafBatch& b) { return b.SerializeAsString() == bytes; });
    EXPECT_TRUE(resent) << "first step " << sent.first_step();
  }
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return worker_->outbox_batches() == 0; }, kWait));
  EXPECT_NE(metrics::RenderText(*registry_).find("fieldprint_worker_reconnects_total 1"),
            std::string::npos);
}

TEST_F(WorkerTest, RestartedWorkerResumesFromItsOutbox) {
  supervisor_->SetAutoAck(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(5, 40, 8)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return Leaves(5).size() >= 12; }, kWait));
  worker_->Stop();
  worker_.reset();
  ASSERT_FALSE(supervisor_->replica(Id(5))->finished);
  supervisor_->SetAutoAck(true);
  // The new process knows nothing of the session until the supervisor resends its Assign; it
  // regenerates from step 0 and sends from where its outbox cursor says the last one stopped.
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_TRUE(WaitFinished(5));
  EXPECT_EQ(Leaves(5), Expected(5, 40));
  for (const std::string& rejection : supervisor_->rejections()) {
    // Only resent duplicates of batches the supervisor already had may be refused.
    EXPECT_NE(rejection.find("is not the next step"), std::string::npos) << rejection;
  }
}

TEST_F(WorkerTest, FailsOverFromADeadSupervisorAddress) {
  WorkerConfig config = Config();
  // Nothing listens on port 1; the connection is refused and the next address is tried.
  config.supervisors.insert(config.supervisors.begin(), {"supervisor-0", "127.0.0.1", 1});
  ASSERT_NO_FATAL_FAILURE(StartWorker(config));
  EXPECT_EQ(supervisor_->registrations(), 1);
  ASSERT_OK(supervisor_->Assign(MakeAssign(6, 8, 8)));
  ASSERT_TRUE(WaitFinished(6));
  EXPECT_EQ(Leaves(6), Expected(6, 8));
}

TEST_F(WorkerTest, WrongDigestFaultFlipsExactlyOneBitOfOneLeaf) {
  WorkerConfig config = Config();
  FaultPlan plan;
  plan.kind = FaultKind::kWrongDigest;
  plan.session = 0;
  plan.step = 5;
  plan.bit = 11;
  config.faults = plan;
  ASSERT_NO_FATAL_FAILURE(StartWorker(config));
  ASSERT_OK(supervisor_->Assign(MakeAssign(12, 10, 16)));
  ASSERT_TRUE(WaitFinished(12));
  std::vector<leaf::StepLeaf> expected = Expected(12, 10);
  expected[5].state_digest[1] ^= 0x08;  // bit 11: byte 1, bit 3
  EXPECT_EQ(Leaves(12), expected);
}

TEST_F(WorkerTest, QuarantineStopsTheReplicasAndRefusesNewSessions) {
  supervisor_->SetAutoCommit(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(13, 40, 4)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return Leaves(13).size() == 4; }, kWait));
  wire::pb::Envelope quarantine;
  quarantine.mutable_quarantine()->set_reason("test");
  ASSERT_OK(supervisor_->Send(quarantine));
  ASSERT_OK(supervisor_->CommitNow(Id(13), 4));  // would let a running replica go on
  ASSERT_OK(supervisor_->Assign(MakeAssign(14, 8, 8)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->errors().size() == 1; }, kWait));
  EXPECT_EQ(supervisor_->errors()[0].session_id(), Wire(Id(14)));
  EXPECT_EQ(supervisor_->errors()[0].code(),
            static_cast<uint32_t>(StatusCode::kFailedPrecondition));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(Leaves(13).size(), 4u);
  EXPECT_FALSE(supervisor_->replica(Id(14))->finished);
}

TEST_F(WorkerTest, AnAcceptedRegistrationEndsTheQuarantine) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  wire::pb::Envelope quarantine;
  quarantine.mutable_quarantine()->set_reason("test");
  ASSERT_OK(supervisor_->Send(quarantine));
  ASSERT_OK(supervisor_->Assign(MakeAssign(17, 8, 8)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->errors().size() == 1; }, kWait));
  EXPECT_EQ(supervisor_->errors()[0].session_id(), Wire(Id(17)));
  // An operator's release makes the supervisor close the stream; the worker registers again and
  // is accepted, which lifts its own quarantine.
  const int registrations = supervisor_->registrations();
  supervisor_->DropConnection();
  ASSERT_TRUE(supervisor_->WaitUntil(
      [&] { return supervisor_->registrations() > registrations && supervisor_->connected(); },
      kWait));
  ASSERT_OK(supervisor_->Assign(MakeAssign(18, 8, 8)));
  ASSERT_TRUE(
      supervisor_->WaitUntil([&] { return supervisor_->replica(Id(18))->finished; }, kWait));
  EXPECT_EQ(Leaves(18), Expected(18, 8));
  EXPECT_EQ(supervisor_->errors().size(), 1u);
}

TEST_F(WorkerTest, AbortedSessionStopsItsReplicaOnly) {
  supervisor_->SetAutoCommit(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(15, 40, 4)));
  ASSERT_OK(supervisor_->Assign(MakeAssign(16, 40, 4)));
  ASSERT_TRUE(supervisor_->WaitUntil(
      [&] { return Leaves(15).size() == 4 && Leaves(16).size() == 4; }, kWait));
  wire::pb::Envelope abort;
  abort.mutable_error()->set_code(static_cast<uint32_t>(StatusCode::kAborted));
  abort.mutable_error()->set_reason("placement timeout");
  abort.mutable_error()->set_session_id(Wire(Id(15)));
  ASSERT_OK(supervisor_->Send(abort));
  std::this_thread::sleep_for(milliseconds(200));  // the order reaches the loop
  // Both windows open; only the session the supervisor did not fail goes on.
  ASSERT_OK(supervisor_->CommitNow(Id(15), 4));
  ASSERT_OK(supervisor_->CommitNow(Id(16), 4));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return Leaves(16).size() == 8; }, kWait));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(Leaves(15).size(), 4u);
  const std::vector<leaf::StepLeaf> expected = Expected(16, 40);
  EXPECT_EQ(Leaves(16), std::vector<leaf::StepLeaf>(expected.begin(), expected.begin() + 8));
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(WorkerTest, CommitWithAForeignRootIsReportedAsDataLoss) {
  supervisor_->SetAutoCommit(false);
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  ASSERT_OK(supervisor_->Assign(MakeAssign(15, 12, 8)));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return Leaves(15).size() == 8; }, kWait));
  wire::pb::Envelope commit;
  commit.mutable_commit()->set_session_id(Wire(Id(15)));
  commit.mutable_commit()->set_verified_steps(6);
  commit.mutable_commit()->set_verified_root(std::string(kHashSize, 'r'));
  ASSERT_OK(supervisor_->Send(commit));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->errors().size() == 1; }, kWait));
  EXPECT_EQ(supervisor_->errors()[0].session_id(), Wire(Id(15)));
  EXPECT_EQ(supervisor_->errors()[0].code(), static_cast<uint32_t>(StatusCode::kDataLoss));
  EXPECT_NE(
      metrics::RenderText(*registry_).find("fieldprint_worker_commit_root_mismatches_total 1"),
      std::string::npos);
}

TEST_F(WorkerTest, RefusesSessionsItCannotReproduce) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  wire::pb::Assign wrong_profile = MakeAssign(7, 8, 8);
  wrong_profile.set_numerics_profile(std::string(kHashSize, 'x'));
  wire::pb::Assign unknown_model = MakeAssign(8, 8, 8);
  unknown_model.set_model("other");
  wire::pb::Assign window_mode = MakeAssign(9, 8, 8);
  window_mode.set_window_steps(16);
  wire::pb::Assign kv_scope = MakeAssign(10, 8, 8);
  kv_scope.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN_KV);
  for (const wire::pb::Assign& assign : {wrong_profile, unknown_model, window_mode, kv_scope}) {
    ASSERT_OK(supervisor_->Assign(assign));
  }
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->errors().size() == 4; }, kWait));
  const std::vector<wire::pb::Error> errors = supervisor_->errors();
  const std::vector<std::pair<uint8_t, StatusCode>> expected = {
      {7, StatusCode::kFailedPrecondition},
      {8, StatusCode::kFailedPrecondition},
      {9, StatusCode::kUnimplemented},
      {10, StatusCode::kUnimplemented}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(errors[i].session_id(), Wire(Id(expected[i].first)));
    EXPECT_EQ(errors[i].code(), static_cast<uint32_t>(expected[i].second));
  }
  EXPECT_TRUE(supervisor_->received().empty());
}

TEST_F(WorkerTest, BadPromptIsReportedForItsSession) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(Config()));
  wire::pb::Assign assign = MakeAssign(11, 8, 8);
  assign.add_prompt_token_ids(100'000);  // outside the vocabulary
  ASSERT_OK(supervisor_->Assign(assign));
  ASSERT_TRUE(supervisor_->WaitUntil([&] { return supervisor_->errors().size() == 1; }, kWait));
  EXPECT_EQ(supervisor_->errors()[0].session_id(), Wire(Id(11)));
  EXPECT_EQ(supervisor_->errors()[0].code(), static_cast<uint32_t>(StatusCode::kInvalidArgument));
}

TEST_F(WorkerTest, MissingCertificatesFailCreate) {
  WorkerConfig config = Config();
  config.name = "worker-9";  // no certificate was issued for it
  prometheus::Registry registry;
  EXPECT_FALSE(Worker::Create(config, registry).ok());
}

}  // namespace
}  // namespace fp::node::worker
