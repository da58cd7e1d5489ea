// Cosigning in a running standalone supervisor (one member: the same path a cluster takes): it
// creates its cosigner key, registers it through the log, cosigns its checkpoints and serves them
// with its line, keeps its membership across a restart without a new record, and refuses to
// start with a ledger key or a cosigner key the log does not know it by.
//
// The in-process cluster of several supervisors is not used here: the runtime's leadership was
// being changed by another engineer when this was written, so multi-member cosigning is tested at
// the signer level instead (ledger_test.cc, two states over one log).
#include <algorithm>
#include <filesystem>
#include <thread>

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/tlog/cosignature.h"
#include "common/wire/certs.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/net/http_client.h"
#include "supervisor/runtime/supervisor.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

using boost::beast::http::verb;
using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

constexpr auto kWait = std::chrono::seconds(10);
constexpr std::string_view kOrigin = "cosigning.test/ledger";

class StandaloneCosigningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0"};
    FP_CHECK_OK(wire::InitCerts(dir_.Join("certs"), certs));
  }

  void TearDown() override {
    if (supervisor_ != nullptr) {
      EXPECT_OK(supervisor_->Drain());
    }
  }

  SupervisorOptions Options() const {
    SupervisorOptions options;
    options.data_dir = dir_.Join("data");
    options.certs_dir = dir_.Join("certs");
    options.origin = std::string(kOrigin);
    options.worker_port = 0;
    options.http_port = 0;
    options.io_threads = 1;
    options.tick_interval = std::chrono::milliseconds(50);
    options.checkpoint_interval = std::chrono::milliseconds(50);
    return options;
  }

  Status Start() {
    if (supervisor_ != nullptr) FP_RETURN_IF_ERROR(supervisor_->Drain());
    supervisor_.reset();
    registry_ = std::make_unique<prometheus::Registry>();
    FP_ASSIGN_OR_RETURN(supervisor_, Supervisor::Start(Options(), *registry_));
    http_ = std::make_unique<HttpClient>("127.0.0.1", supervisor_->http_port());
    return OkStatus();
  }

  void Stop() {
    ASSERT_OK(supervisor_->Drain());
    supervisor_.reset();
  }

  // GETs `target` until its 200 body satisfies `done` (or kWait passes); returns the last body.
  std::string WaitFor(const std::string& target,
                      const std::function<bool(const std::string&)>& done) {
    const auto give_up = std::chrono::steady_clock::now() + kWait;
    std::string body;
    while (std::chrono::steady_clock::now() < give_up) {
      StatusOr<HttpResponse> response = http_->Request(verb::get, target);
      if (response.ok() && response->status == 200) {
        body = response->body;
        if (done(body)) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return body;
  }

  // The log's CosignerJoined records.
  size_t JoinRecords() const {
    StatusOr<std::vector<LogEntry>> entries = supervisor_->log().Read(0, 100'000);
    FP_CHECK_OK(entries);
    return static_cast<size_t>(
        std::count_if(entries->begin(), entries->end(),
                      [](const LogEntry& e) { return e.record.has_cosigner_joined(); }));
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(StandaloneCosigningTest, ServedCheckpointCarriesTheSupervisorsOwnCosignature) {
  ASSERT_OK(Start());
  // The key file is the supervisor's, named after its TLS name, private to it.
  const std::string key_file = dir_.Join("data") + "/cosigner.key";
  ASSERT_OK_AND_ASSIGN(tlog::Cosigner cosigner, LoadCosigner(key_file, "supervisor-0"));
  EXPECT_EQ(std::filesystem::status(key_file).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  const std::string vkey = cosigner.Verifier().ToString();
  EXPECT_EQ(WaitFor("/v1/checkpoint/cosigners", [](const std::string& b) { return !b.empty(); }),
            vkey + "\n");
  ASSERT_OK_AND_ASSIGN(tlog::NoteSigner ledger,
                       LoadSigner(dir_.Join("data") + "/checkpoint.key", kOrigin));
  const tlog::NoteVerifier ledger_key = ledger.Verifier();
  const tlog::CosignatureVerifier cosigner_key = cosigner.Verifier();
  tlog::CosignaturePolicy policy;
  policy.cosigners = std::span(&cosigner_key, 1);
  policy.required = 1;
  const auto cosigned = [&](const std::string& note) {
    return tlog::OpenCosignedCheckpoint(note, std::span(&ledger_key, 1), kOrigin, policy).ok();
  };
  EXPECT_TRUE(cosigned(WaitFor("/v1/checkpoint", cosigned)));
  const std::string metrics = WaitFor("/metrics", [](const std::string& text) {
    return text.find("fieldprint_supervisor_cosignatures_total{result=\"applied\"} 0") ==
           std::string::npos;
  });
  EXPECT_THAT(metrics, HasSubstr("fieldprint_supervisor_cosignatures_total{result=\"applied\"}"));
  EXPECT_THAT(metrics,
              HasSubstr("fieldprint_supervisor_cosignatures_total{result=\"rejected\"} 0"));
}

TEST_F(StandaloneCosigningTest, RestartKeepsTheMembershipWithoutANewRecord) {
  ASSERT_OK(Start());
  WaitFor("/v1/checkpoint/cosigners", [](const std::string& b) { return !b.empty(); });
  ASSERT_OK(Start());
  EXPECT_EQ(JoinRecords(), 1u);
  EXPECT_THAT(WaitFor("/v1/checkpoint/cosigners", [](const std::string& b) { return !b.empty(); }),
              HasSubstr("supervisor-0+"));
}

// ---- Error paths ----

TEST_F(StandaloneCosigningTest, AnotherLedgerKeyIsRefusedAtStart) {
  ASSERT_OK(Start());
  WaitFor("/v1/checkpoint/cosigners", [](const std::string& b) { return !b.empty(); });
  Stop();
  const std::string key_file = dir_.Join("data") + "/checkpoint.key";
  std::filesystem::remove(key_file);
  ASSERT_OK(LoadOrCreateSigner(key_file, kOrigin).status());  // same origin, another key
  const Status refused = Start();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("ledger key"));
}

TEST_F(StandaloneCosigningTest, AnotherCosignerKeyUnderTheSameNameIsRefusedAtStart) {
  ASSERT_OK(Start());
  WaitFor("/v1/checkpoint/cosigners", [](const std::string& b) { return !b.empty(); });
  Stop();
  const std::string key_file = dir_.Join("data") + "/cosigner.key";
  std::filesystem::remove(key_file);
  ASSERT_OK(LoadOrCreateCosigner(key_file, "supervisor-0").status());
  const Status refused = Start();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("cosigner.key"));
}

}  // namespace
}  // namespace fp::supervisor
