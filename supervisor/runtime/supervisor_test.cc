// End-to-end tests of one in-process supervisor over real sockets: a test worker speaks the wire
// protocol over mutual TLS with certificates from `certs init`, and an HTTP client uses the API.
// EtcdSupervisorTest runs the same supervisor with its log in a real 1-member etcd (mTLS).
#include "supervisor/runtime/supervisor.h"

#include <condition_variable>
#include <deque>
#include <filesystem>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/leaf/step_leaf.h"
#include "common/wire/certs.h"
#include "common/wire/envelope.h"
#include "common/wire/tls.h"
#include "supervisor/log/testing/etcd_cluster.h"
#include "supervisor/net/http_client.h"
#include "supervisor/runtime/test_worker.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using boost::beast::http::verb;
using ::testing::HasSubstr;

constexpr auto kWait = std::chrono::seconds(10);

using testing::Leaves;
using testing::Registration;
using testing::TestWorker;

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "worker-0", "worker-1"};
    FP_CHECK_OK(wire::InitCerts(dir_.Join("certs"), certs));
    StartWith(Options());
    for (const char* name : {"worker-0", "worker-1"}) {
      auto tls = wire::MakeClientTlsContext(wire::TlsFilesForNode(dir_.Join("certs"), name));
      FP_CHECK_OK(tls);
      (tls_ == nullptr ? tls_ : tls_1_) = std::move(tls).value();
    }
    work_.emplace(boost::asio::make_work_guard(io_));
    thread_ = std::thread([this] { io_.run(); });
  }

  virtual SupervisorOptions Options() {
    SupervisorOptions options;
    options.data_dir = dir_.Join("data");
    options.certs_dir = dir_.Join("certs");
    options.worker_port = 0;
    options.http_port = 0;
    options.io_threads = 1;
    options.defaults.replicas = 1;
    options.defaults.models["tiny"] = {std::string(32, 'n'), std::string(32, '\0')};
    options.tick_interval = std::chrono::milliseconds(50);
    options.checkpoint_interval = std::chrono::milliseconds(50);
    return options;
  }

  // (Re)starts the supervisor on the same data directory, with a fresh metrics registry.
  void StartWith(const SupervisorOptions& options) {
    if (supervisor_ != nullptr) {
      ASSERT_OK(supervisor_->Drain());
    }
    supervisor_.reset();
    registry_ = std::make_unique<prometheus::Registry>();
    auto supervisor = Supervisor::Start(options, *registry_);
    FP_CHECK_OK(supervisor);
    supervisor_ = std::move(supervisor).value();
    http_ = std::make_unique<HttpClient>("127.0.0.1", supervisor_->http_port());
  }

  // GETs `target` until `done` holds for its JSON body (or kWait passes); returns the last body.
  json::value WaitFor(const std::string& target,
                      const std::function<bool(const json::value&)>& done) {
    const auto give_up = std::chrono::steady_clock::now() + kWait;
    json::value body;
    while (std::chrono::steady_clock::now() < give_up) {
      auto response = http_->Request(verb::get, target);
      if (response.ok() && response->status == 200) {
        body = json::parse(response->body);
        if (done(body)) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return body;
  }

  void TearDown() override {
    worker_.reset();
    ASSERT_OK(supervisor_->Drain());
    work_.reset();
    io_.stop();
    thread_.join();
  }

  TestWorker& Connect() {
    worker_ = std::make_unique<TestWorker>(io_, *tls_, supervisor_->worker_port());
    return *worker_;
  }

  std::string Submit(int max_tokens) {
    auto response = http_->Request(
        verb::post, "/v1/sessions",
        fmt::format(R"({{"model":"tiny","prompt_token_ids":[9],"max_tokens":{}}})", max_tokens));
    FP_CHECK_OK(response);
    FP_CHECK_MSG(response->status == 202, response->body);
    return std::string(json::parse(response->body).at("session_id").as_string());
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Supervisor> supervisor_;
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::unique_ptr<boost::asio::ssl::context> tls_;    // worker-0
  std::unique_ptr<boost::asio::ssl::context> tls_1_;  // worker-1
  std::unique_ptr<TestWorker> worker_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(SupervisorTest, WorkerRunsASessionToAVerifiedReceipt) {
  TestWorker& worker = Connect();
  worker.Send(Registration());
  const std::string id = Submit(3);
  std::optional<wire::pb::Envelope> assign = worker.Next(wire::pb::Envelope::kAssign);
  ASSERT_TRUE(assign.has_value());
  EXPECT_EQ(HexEncode(AsBytes(assign->assign().session_id())), id);
  EXPECT_EQ(assign->assign().sampling().max_tokens(), 3u);
  worker.Send(Leaves(assign->assign(), 3));
  std::optional<wire::pb::Envelope> ack = worker.Next(wire::pb::Envelope::kAck);
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->ack().step_count(), 3u);
  // A resend after a lost Ack is acknowledged with the same log position.
  worker.Send(Leaves(assign->assign(), 3));
  std::optional<wire::pb::Envelope> again = worker.Next(wire::pb::Envelope::kAck);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->ack().log_index(), ack->ack().log_index());
  std::optional<wire::pb::Envelope> commit;
  do {
    commit = worker.Next(wire::pb::Envelope::kCommit);
  } while (commit.has_value() && !commit->commit().session_verified());
  ASSERT_TRUE(commit.has_value());
  EXPECT_EQ(commit->commit().verified_steps(), 3u);
  // The HTTP side sees the same result, and streams the verified tokens.
  ASSERT_OK_AND_ASSIGN(HttpResponse state, http_->Request(verb::get, "/v1/sessions/" + id));
  json::value body = json::parse(state.body);
  EXPECT_EQ(body.at("phase").as_string(), "verified");
  EXPECT_EQ(HexEncode(AsBytes(commit->commit().verified_root())),
            body.at("session_root").as_string());
  ASSERT_OK_AND_ASSIGN(HttpResponse events,
                       http_->Request(verb::get, "/v1/sessions/" + id + "/events"));
  EXPECT_EQ(events.content_type, "text/event-stream");
  EXPECT_THAT(events.body, HasSubstr("{\"step\":2,\"token_id\":42}"));
  EXPECT_THAT(events.body, HasSubstr("event: verified"));
}

TEST_F(SupervisorTest, HeartbeatsAreEchoed) {
  TestWorker& worker = Connect();
  worker.Send(Registration());
  wire::pb::Envelope heartbeat;
  heartbeat.mutable_heartbeat()->set_sequence(77);
  worker.Send(heartbeat);
  std::optional<wire::pb::Envelope> echo = worker.Next(wire::pb::Envelope::kHeartbeat);
  ASSERT_TRUE(echo.has_value());
  EXPECT_EQ(echo->heartbeat().sequence(), 77u);
}

TEST_F(SupervisorTest, MetricsAreServedWithTheFieldprintPrefix) {
  ASSERT_OK_AND_ASSIGN(HttpResponse metrics, http_->Request(verb::get, "/metrics"));
  EXPECT_EQ(metrics.status, 200u);
  EXPECT_THAT(metrics.body, HasSubstr("fieldprint_supervisor_append_latency_seconds"));
  EXPECT_THAT(metrics.body, HasSubstr("fieldprint_supervisor_leaves_ingested_total"));
}

TEST_F(SupervisorTest, RegistrationIsAcknowledgedWithTheSupervisorsIdAndCapacity) {
  TestWorker& worker = Connect();
  worker.Send(Registration());
  std::optional<wire::pb::Envelope> ack = worker.Next(wire::pb::Envelope::kRegisterAck);
  ASSERT_TRUE(ack.has_value());
  EXPECT_TRUE(ack->register_ack().accepted());
  EXPECT_EQ(ack->register_ack().supervisor_id(), "supervisor-0");
  EXPECT_EQ(ack->register_ack().max_replicas(), 4u);
  EXPECT_OK(wire::ValidateEnvelope(*ack));
}

TEST_F(SupervisorTest, SessionThatCannotBePlacedFailsAfterThePlacementTimeout) {
  SupervisorOptions options = Options();
  options.applier.placement_timeout_ms = 200;
  StartWith(options);
  const std::string id = Submit(2);  // no worker is connected
  json::value state = WaitFor("/v1/sessions/" + id, [](const json::value& body) {
    return body.at("phase").as_string() == "failed";
  });
  EXPECT_EQ(state.at("phase").as_string(), "failed");
  EXPECT_THAT(std::string(state.at("failure").as_string()),
              HasSubstr("placement timeout: 0 of 1 replicas placed"));
  ASSERT_OK_AND_ASSIGN(HttpResponse metrics, http_->Request(verb::get, "/metrics"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr("fieldprint_supervisor_sessions_failed_total{reason=\"placement_timeout\"} 1"));
}

TEST_F(SupervisorTest, QuarantinedWorkerIsRefusedUntilAnOperatorReleasesIt) {
  SupervisorOptions options = Options();
  options.defaults.replicas = 2;
  options.applier.quarantine_divergences = 1;
  options.admin_token = "admin-token-for-tests";
  StartWith(options);
  TestWorker w0(io_, *tls_, supervisor_->worker_port());
  auto w1 = std::make_unique<TestWorker>(io_, *tls_1_, supervisor_->worker_port());
  w0.Send(Registration());
  w1->Send(Registration());
  ASSERT_TRUE(w0.Next(wire::pb::Envelope::kRegisterAck).has_value());
  ASSERT_TRUE(w1->Next(wire::pb::Envelope::kRegisterAck).has_value());
  Submit(2);
  std::optional<wire::pb::Envelope> a0 = w0.Next(wire::pb::Envelope::kAssign);
  std::optional<wire::pb::Envelope> a1 = w1->Next(wire::pb::Envelope::kAssign);
  ASSERT_TRUE(a0.has_value() && a1.has_value());
  // The replicas disagree: both workers pass the threshold of one divergence.
  w0.Send(Leaves(a0->assign(), 2, "zero "));
  w1->Send(Leaves(a1->assign(), 2, "one "));
  ASSERT_TRUE(w0.Next(wire::pb::Envelope::kQuarantine).has_value());
  EXPECT_TRUE(w0.WaitClosed().has_value());
  // Reconnecting: refused, with the reason.
  TestWorker again(io_, *tls_, supervisor_->worker_port());
  again.Send(Registration());
  std::optional<wire::pb::Envelope> refusal = again.Next(wire::pb::Envelope::kRegisterAck);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_FALSE(refusal->register_ack().accepted());
  EXPECT_EQ(refusal->register_ack().code(), static_cast<uint32_t>(StatusCode::kFailedPrecondition));
  EXPECT_THAT(refusal->register_ack().reason(), HasSubstr("quarantined"));
  EXPECT_TRUE(again.WaitClosed().has_value());
  // The admin route refuses a caller without the token, and releases with it.
  const std::string route = "/v1/admin/workers/worker-0/release";
  ASSERT_OK_AND_ASSIGN(HttpResponse anonymous, http_->Request(verb::post, route, "{}"));
  EXPECT_EQ(anonymous.status, 401u);
  ASSERT_OK_AND_ASSIGN(HttpResponse released,
                       http_->Request(verb::post, route, R"({"reason":"test"})",
                                      {{"Authorization", "Bearer admin-token-for-tests"}}));
  EXPECT_EQ(released.status, 202u) << released.body;
  WaitFor("/v1/workers", [](const json::value& body) {
    return body.at("workers").as_array()[0].at("phase").as_string() == "lost";
  });
  TestWorker back(io_, *tls_, supervisor_->worker_port());
  back.Send(Registration());
  std::optional<wire::pb::Envelope> accepted = back.Next(wire::pb::Envelope::kRegisterAck);
  ASSERT_TRUE(accepted.has_value());
  EXPECT_TRUE(accepted->register_ack().accepted());
}

TEST_F(SupervisorTest, LogIsTrimmedBehindSignedCheckpointsAndTheStateSurvivesARestart) {
  SupervisorOptions options = Options();
  options.log_retention_records = 2;
  options.log_trim_interval = std::chrono::milliseconds(20);
  StartWith(options);
  TestWorker& worker = Connect();
  worker.Send(Registration());
  const std::string id = Submit(3);
  std::optional<wire::pb::Envelope> assign = worker.Next(wire::pb::Envelope::kAssign);
  ASSERT_TRUE(assign.has_value());
  worker.Send(Leaves(assign->assign(), 3));
  WaitFor("/v1/sessions/" + id,
          [](const json::value& body) { return body.at("phase").as_string() == "verified"; });
  const auto give_up = std::chrono::steady_clock::now() + kWait;
  while (supervisor_->log().Begin() == 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const uint64_t begin = supervisor_->log().Begin();
  ASSERT_GT(begin, 0u);
  EXPECT_THAT(supervisor_->log().Read(0, 1).status(),
              fp::testing::StatusIs(StatusCode::kOutOfRange));
  worker_.reset();
  StartWith(options);  // the state is not rebuilt from the (trimmed) log, only continued
  json::value state = WaitFor("/v1/sessions/" + id, [](const json::value&) { return true; });
  EXPECT_EQ(state.at("phase").as_string(), "verified");
  EXPECT_GE(supervisor_->log().Begin(), begin);
}

// The supervisor on a 1-member etcd.
class EtcdSupervisorTest : public SupervisorTest {
 protected:
  void SetUp() override {
    // etcd is a test dependency (`make deps`): without it this test fails, never skips.
    ASSERT_TRUE(testing::EtcdCluster::Available())
        << "etcd is not on the PATH (make deps installs etcd-server)";
    testing::EtcdClusterOptions cluster;
    cluster.members = 1;
    auto started = testing::EtcdCluster::Start(cluster);
    FP_CHECK_OK(started);
    cluster_ = std::move(started).value();
    SupervisorTest::SetUp();
  }

  void TearDown() override {
    if (cluster_ != nullptr) SupervisorTest::TearDown();
  }

  SupervisorOptions Options() override {
    SupervisorOptions options = SupervisorTest::Options();
    options.log_backend = LogBackend::kEtcd;
    options.etcd.client = cluster_->ClientOptionsFor();
    options.etcd.prefix = "/supervisor-test";
    return options;
  }

  std::unique_ptr<testing::EtcdCluster> cluster_;
};

TEST_F(EtcdSupervisorTest, SessionIsVerifiedAndAFreshStateDirectoryRebuildsItFromEtcd) {
  TestWorker& worker = Connect();
  worker.Send(Registration());
  const std::string id = Submit(3);
  std::optional<wire::pb::Envelope> assign = worker.Next(wire::pb::Envelope::kAssign);
  ASSERT_TRUE(assign.has_value());
  const wire::pb::Envelope leaves = Leaves(assign->assign(), 3);
  worker.Send(leaves);
  ASSERT_TRUE(worker.Next(wire::pb::Envelope::kAck).has_value());
  // The root the test's own tree gave the leaves: the verified session must carry it.
  const std::string root = HexEncode(AsBytes(leaves.leaf_batch().session_root()));
  json::value first = WaitFor("/v1/sessions/" + id, [](const json::value& body) {
    return body.at("phase").as_string() == "verified";
  });
  ASSERT_EQ(first.at("phase").as_string(), "verified");
  EXPECT_EQ(first.at("session_root").as_string(), root);
  const uint64_t written = supervisor_->log().End();
  EXPECT_FALSE(std::filesystem::exists(dir_.Join("data") + "/log"));  // the log is in etcd

  // Same etcd, a data directory holding only this supervisor's key files (provisioned like the
  // TLS files: the ledger key, and the cosigner key its name is registered with): the state can
  // only come from replaying the etcd log.
  worker_.reset();
  SupervisorOptions fresh = Options();
  fresh.data_dir = dir_.Join("fresh");
  std::filesystem::create_directories(fresh.data_dir);
  for (const auto& file : std::filesystem::directory_iterator(dir_.Join("data"))) {
    if (file.path().extension() == ".key") {
      std::filesystem::copy_file(file.path(),
                                 std::filesystem::path(fresh.data_dir) / file.path().filename());
    }
  }
  StartWith(fresh);
  EXPECT_EQ(supervisor_->log().Begin(), 0u);
  EXPECT_GE(supervisor_->log().End(), written);
  json::value rebuilt = WaitFor("/v1/sessions/" + id, [](const json::value& body) {
    return body.at("phase").as_string() == "verified";
  });
  ASSERT_EQ(rebuilt.at("phase").as_string(), "verified");
  EXPECT_EQ(rebuilt.at("session_root").as_string(), root);
  EXPECT_GE(supervisor_->applied(), written);
  EXPECT_FALSE(std::filesystem::exists(fresh.data_dir + "/log"));
}

// ---- Error paths ----

TEST(SupervisorLogOptionsTest, BackendNamesAreParsedAndUnknownOnesRefused) {
  ASSERT_OK_AND_ASSIGN(LogBackend rocks, ParseLogBackend("rocksdb"));
  EXPECT_EQ(rocks, LogBackend::kRocksDb);
  ASSERT_OK_AND_ASSIGN(LogBackend etcd, ParseLogBackend("etcd"));
  EXPECT_EQ(etcd, LogBackend::kEtcd);
  const Status unknown = ParseLogBackend("leveldb").status();
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.message()), HasSubstr("leveldb"));
  EXPECT_THAT(ParseLogBackend("").status(), fp::testing::StatusIs(StatusCode::kInvalidArgument));
}

TEST(SupervisorLogOptionsTest, EtcdEndpointsAreHttpsUrlsWithPorts) {
  ASSERT_OK_AND_ASSIGN(std::vector<etcd::Endpoint> endpoints,
                       ParseEtcdEndpoints("https://etcd-0:2379, https://10.0.0.2:2380/,"
                                          "https://[::1]:12379"));
  ASSERT_EQ(endpoints.size(), 3u);
  EXPECT_EQ(endpoints[0].host, "etcd-0");
  EXPECT_EQ(endpoints[0].port, 2379);
  EXPECT_EQ(endpoints[1].host, "10.0.0.2");
  EXPECT_EQ(endpoints[1].port, 2380);
  EXPECT_EQ(endpoints[2].host, "::1");
  EXPECT_EQ(endpoints[2].port, 12379);
  for (const char* bad :
       {"", " , ", "http://etcd-0:2379", "https://etcd-0", "https://:2379", "https://etcd-0:0",
        "https://etcd-0:65536", "https://etcd-0:23x9", "https://a:1,etcd-1:2379"}) {
    EXPECT_THAT(ParseEtcdEndpoints(bad).status(),
                fp::testing::StatusIs(StatusCode::kInvalidArgument))
        << bad;
  }
}

TEST(SupervisorLogOptionsTest, EtcdBackendWithoutEndpointsOrWithBadClusterOptionsIsRefused) {
  fp::testing::TempDir dir;
  prometheus::Registry registry;
  SupervisorOptions options;
  options.data_dir = dir.Join("data");
  options.log_backend = LogBackend::kEtcd;
  const Status no_endpoints = Supervisor::Start(options, registry).status();
  EXPECT_EQ(no_endpoints.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_endpoints.message()), HasSubstr("etcd-endpoints"));
  options.etcd.client.endpoints = {{"127.0.0.1", 2379}};
  const auto refused = [&](SupervisorOptions bad, const char* why) {
    const Status status = Supervisor::Start(bad, registry).status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << why;
    EXPECT_THAT(std::string(status.message()), HasSubstr(why));
  };
  SupervisorOptions bad = options;
  bad.leader_ttl = std::chrono::milliseconds(1500);  // leases have whole seconds
  refused(bad, "leader-ttl-ms");
  bad = options;
  bad.leader_margin = std::chrono::milliseconds(4000);  // not below 2/3 of the 5 s TTL
  refused(bad, "leader-margin-ms");
  bad = options;
  bad.tls_name = "supervisor/0";  // a member's name is a key component in etcd
  refused(bad, "tls-name");
  EXPECT_FALSE(std::filesystem::exists(options.data_dir));  // refused before touching storage
}

TEST_F(SupervisorTest, LeavesBeforeRegistrationCloseTheConnection) {
  TestWorker& worker = Connect();
  wire::pb::Assign assign;
  assign.set_session_id(std::string(16, 'x'));
  worker.Send(Leaves(assign, 1));
  // The supervisor says why, then closes.
  std::optional<wire::pb::Envelope> error = worker.Next(wire::pb::Envelope::kError);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->error().code(), static_cast<uint32_t>(StatusCode::kFailedPrecondition));
  EXPECT_TRUE(worker.WaitClosed().has_value());
}

TEST_F(SupervisorTest, MessagesOnlySupervisorsSendCloseTheConnection) {
  TestWorker& worker = Connect();
  worker.Send(Registration());
  // Registered first, so that the only reason to close is the message below.
  ASSERT_TRUE(worker.Next(wire::pb::Envelope::kRegisterAck).has_value());
  wire::pb::Envelope quarantine;
  quarantine.mutable_quarantine()->set_reason("no");
  worker.Send(quarantine);
  std::optional<wire::pb::Envelope> error = worker.Next(wire::pb::Envelope::kError);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->error().code(), static_cast<uint32_t>(StatusCode::kInvalidArgument));
  EXPECT_TRUE(worker.WaitClosed().has_value());
}

TEST_F(SupervisorTest, OversizedHttpBodiesGet413BeforeTheBodyIsRead) {
  // Only the header goes out: the server must answer from the announced length alone.
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), supervisor_->http_port()});
  const std::string request =
      fmt::format("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                  kMaxRequestBodyBytes + 1);
  boost::asio::write(socket, boost::asio::buffer(request));
  std::string reply(64, '\0');
  boost::system::error_code error;
  const size_t got = boost::asio::read(socket, boost::asio::buffer(reply), error);
  EXPECT_THAT(reply.substr(0, got), HasSubstr("HTTP/1.1 413"));
}

}  // namespace
}  // namespace fp::supervisor
