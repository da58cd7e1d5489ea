// Tests of the SupervisorClient's registration handshake over real mutual TLS: a fake supervisor
// (a wire::Listener) answers Register with an accepting or refusing RegisterAck, with nothing, or
// with another frame first, and the client must accept, report the refusal, give up after its
// register timeout, or close.
#include "node/worker/supervisor_client.h"

#include <atomic>
#include <condition_variable>

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "common/wire/certs.h"
#include "common/wire/tls.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

namespace asio = boost::asio;
using ::fp::testing::StatusIs;

constexpr auto kWait = std::chrono::seconds(10);

enum class Answer { kAccept, kRefuse, kSilent, kHeartbeatFirst };

// A supervisor that answers every Register as told and counts the registrations it saw.
class FakeSupervisor {
 public:
  FakeSupervisor(const std::string& certs_dir, Answer answer) : answer_(answer) {
    tls_ = std::move(
        wire::MakeServerTlsContext(wire::TlsFilesForNode(certs_dir, "supervisor-0")).value());
    wire::ConnectionHandlers handlers;
    handlers.on_envelope = [this](const std::shared_ptr<wire::Connection>& connection,
                                  wire::pb::Envelope envelope) {
      if (envelope.has_registration()) OnRegister(connection);
    };
    handlers.on_close = [this](const std::shared_ptr<wire::Connection>& connection, const Status&) {
      std::lock_guard lock(mutex_);
      open_.erase(std::remove(open_.begin(), open_.end(), connection), open_.end());
    };
    listener_ =
        std::move(wire::Listener::Create(io_, *tls_, {asio::ip::make_address("127.0.0.1"), 0},
                                         std::move(handlers), wire::ConnectionOptions{})
                      .value());
    listener_->Start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~FakeSupervisor() {
    listener_->Stop();
    std::vector<std::shared_ptr<wire::Connection>> open;
    {
      std::lock_guard lock(mutex_);
      open.swap(open_);
    }
    for (auto& connection : open) connection->Close();
    work_.reset();
    io_.stop();
    thread_.join();
  }

  uint16_t port() const { return listener_->local_endpoint().port(); }
  int registrations() const { return registrations_.load(); }

 private:
  void OnRegister(const std::shared_ptr<wire::Connection>& connection) {
    {
      std::lock_guard lock(mutex_);
      open_.push_back(connection);
    }
    ++registrations_;
    wire::pb::Envelope reply;
    wire::pb::RegisterAck* ack = reply.mutable_register_ack();
    ack->set_supervisor_id("supervisor-0");
    switch (answer_) {
      case Answer::kAccept:
        ack->set_accepted(true);
        ack->set_max_replicas(3);
        break;
      case Answer::kRefuse:
        ack->set_code(static_cast<uint32_t>(StatusCode::kFailedPrecondition));
        ack->set_reason("worker-0 is quarantined (3 divergences)");
        break;
      case Answer::kSilent:
        return;
      case Answer::kHeartbeatFirst:
        reply.mutable_heartbeat()->set_sequence(0);
        break;
    }
    connection->Send(reply).IgnoreError();
  }

  const Answer answer_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  std::unique_ptr<asio::ssl::context> tls_;
  std::shared_ptr<wire::Listener> listener_;
  std::thread thread_;
  std::atomic<int> registrations_{0};
  std::mutex mutex_;
  std::vector<std::shared_ptr<wire::Connection>> open_;  // guarded by mutex_
};

class SupervisorClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "worker-0"};
    ASSERT_OK(wire::InitCerts(dir_.Join("certs"), certs));
    tls_ = std::move(
        wire::MakeClientTlsContext(wire::TlsFilesForNode(dir_.Join("certs"), "worker-0")).value());
    metrics_ = WorkerMetrics::Register(registry_);
  }

  void StartClient(uint16_t port, std::chrono::milliseconds register_timeout) {
    SupervisorClientOptions options;
    options.supervisors = {SupervisorAddress{"supervisor-0", "127.0.0.1", port}};
    options.register_timeout = register_timeout;
    options.reconnect =
        ReconnectPolicy{std::chrono::milliseconds(10), std::chrono::milliseconds(50)};
    options.jitter_seed = 7;
    ClientCallbacks callbacks;
    callbacks.registration = [] {
      wire::pb::Register registration;
      registration.set_max_replicas(3);
      registration.add_models("tiny");
      registration.set_numerics_profile_hash(std::string(32, 'p'));
      return registration;
    };
    callbacks.heartbeat = [] { return wire::pb::Heartbeat(); };
    callbacks.on_accepted = [this](uint64_t) { Note(accepted_); };
    callbacks.on_lost = [] {};
    callbacks.on_envelope = [](uint64_t, wire::pb::Envelope) {};
    callbacks.on_refused = [this](const Status& refusal) {
      std::lock_guard lock(mutex_);
      refusal_ = refusal;
      changed_.notify_all();
    };
    client_ = std::make_unique<SupervisorClient>(*tls_, options, std::move(callbacks), &metrics_);
    client_->Start();
  }

  void Note(int& counter) {
    std::lock_guard lock(mutex_);
    ++counter;
    changed_.notify_all();
  }

  // Waits until `done` holds (under the lock) or kWait passes.
  bool WaitUntil(const std::function<bool()>& done) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, kWait, done);
  }

  fp::testing::TempDir dir_;
  prometheus::Registry registry_;
  WorkerMetrics metrics_;
  std::unique_ptr<asio::ssl::context> tls_;
  std::unique_ptr<SupervisorClient> client_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int accepted_ = 0;               // guarded by mutex_
  std::optional<Status> refusal_;  // guarded by mutex_
};

TEST_F(SupervisorClientTest, AcceptingRegisterAckAcceptsTheConnection) {
  FakeSupervisor supervisor(dir_.Join("certs"), Answer::kAccept);
  StartClient(supervisor.port(), std::chrono::seconds(5));
  ASSERT_TRUE(WaitUntil([&] { return accepted_ == 1; }));
  EXPECT_NE(client_->accepted_generation(), 0u);
  EXPECT_EQ(client_->accepted_by(), "supervisor-0");
  EXPECT_EQ(client_->accepted_max_replicas(), 3u);
  EXPECT_OK(client_->last_refusal());
  client_->Stop();
}

// ---- Error paths ----

TEST_F(SupervisorClientTest, RefusalIsReportedWithTheSupervisorsCodeAndReason) {
  FakeSupervisor supervisor(dir_.Join("certs"), Answer::kRefuse);
  StartClient(supervisor.port(), std::chrono::seconds(5));
  ASSERT_TRUE(WaitUntil([&] { return refusal_.has_value(); }));
  EXPECT_THAT(*refusal_, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_NE(refusal_->message().find("quarantined"), std::string_view::npos);
  EXPECT_THAT(client_->last_refusal(), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(client_->accepted_generation(), 0u);
  // The client keeps trying (a released worker gets in without a restart of its client).
  const auto give_up = std::chrono::steady_clock::now() + kWait;
  while (supervisor.registrations() < 2 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(supervisor.registrations(), 2);
  client_->Stop();
  EXPECT_EQ(accepted_, 0);
}

TEST_F(SupervisorClientTest, SilentSupervisorIsAbandonedAfterTheRegisterTimeout) {
  FakeSupervisor supervisor(dir_.Join("certs"), Answer::kSilent);
  StartClient(supervisor.port(), std::chrono::milliseconds(100));
  const auto give_up = std::chrono::steady_clock::now() + kWait;
  while (supervisor.registrations() < 3 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Each attempt waited for an ack, gave up, and tried again.
  EXPECT_GE(supervisor.registrations(), 3);
  EXPECT_EQ(client_->accepted_generation(), 0u);
  client_->Stop();
  EXPECT_EQ(accepted_, 0);
}

TEST_F(SupervisorClientTest, FrameBeforeTheRegisterAckIsAProtocolError) {
  FakeSupervisor supervisor(dir_.Join("certs"), Answer::kHeartbeatFirst);
  StartClient(supervisor.port(), std::chrono::seconds(5));
  const auto give_up = std::chrono::steady_clock::now() + kWait;
  while (supervisor.registrations() < 2 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(supervisor.registrations(), 2);  // closed and retried, never accepted
  client_->Stop();
  EXPECT_EQ(accepted_, 0);
}

}  // namespace
}  // namespace fp::node::worker
