// Tests of the API client's parsers and encoders: supervisor URLs, byte-level prompts, token
// hashes (known answers computed with Python's hashlib), session states and event streams in the
// shapes supervisor/api/api.cc writes, and error replies. Failover runs against small real HTTP
// servers on loopback (a fake transport peer: refusing, silent, 503, or answering), which record
// every request they read.
#include "supervisor/client/api_client.h"

#include <condition_variable>
#include <mutex>
#include <thread>

#include <arpa/inet.h>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/base/bytes.h"
#include "supervisor/client/process.h"
#include "tests/testutil/status_matchers.h"

namespace fp::client {
namespace {

using fp::testing::StatusIs;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMaxFakeRequestBytes = 1 << 16;

// What a fake supervisor read.
struct Received {
  std::string method;
  std::string target;
  std::string idempotency_key;
  std::string body;
};

std::string Reply(int status, const std::string& body) {
  return fmt::format(
      "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, body.size(), body);
}

// An HTTP server on 127.0.0.1 that handles one connection at a time: it reads one request and
// answers with what the handler returns, or (nullopt) holds the connection silently until the
// server is destroyed.
class FakeSupervisor {
 public:
  using Handler = std::function<std::optional<std::string>(const Received&)>;

  explicit FakeSupervisor(Handler handler) : handler_(std::move(handler)) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    FP_CHECK(bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    FP_CHECK(listen(listener_, 16) == 0);
    socklen_t length = sizeof(address);
    FP_CHECK(getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) == 0);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeSupervisor() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    shutdown(listener_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    close(listener_);
  }

  SupervisorUrl url() const { return SupervisorUrl{"127.0.0.1", port_}; }
  std::vector<Received> received() const {
    std::lock_guard lock(mutex_);
    return received_;
  }

 private:
  void Serve() {
    while (true) {
      const int connection = accept(listener_, nullptr, nullptr);
      if (connection < 0) return;
      std::optional<Received> request = Read(connection);
      if (request.has_value()) {
        {
          std::lock_guard lock(mutex_);
          received_.push_back(*request);
        }
        std::optional<std::string> reply = handler_(*request);
        if (reply.has_value()) {
          (void)!write(connection, reply->data(), reply->size());
        } else {
          std::unique_lock lock(mutex_);
          changed_.wait(lock, [this] { return stopping_; });
        }
      }
      close(connection);
    }
  }

  static std::optional<Received> Read(int connection) {
    std::string data;
    char buffer[4096];
    size_t header_end = std::string::npos;
    size_t body_bytes = 0;
    while (data.size() < kMaxFakeRequestBytes) {
      const ssize_t n = read(connection, buffer, sizeof(buffer));
      if (n <= 0) return std::nullopt;
      data.append(buffer, static_cast<size_t>(n));
      if (header_end == std::string::npos) {
        header_end = data.find("\r\n\r\n");
        if (header_end == std::string::npos) continue;
        const size_t length = data.find("Content-Length: ");
        if (length != std::string::npos && length < header_end) {
          body_bytes = std::stoul(data.substr(length + 16));
        }
      }
      if (data.size() >= header_end + 4 + body_bytes) break;
    }
    Received request;
    request.method = data.substr(0, data.find(' '));
    const size_t target = request.method.size() + 1;
    request.target = data.substr(target, data.find(' ', target) - target);
    const size_t key = data.find("Idempotency-Key: ");
    if (key != std::string::npos && key < header_end) {
      request.idempotency_key = data.substr(key + 17, data.find("\r\n", key) - key - 17);
    }
    request.body = data.substr(header_end + 4, body_bytes);
    return request;
  }

  const Handler handler_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;           // guarded by mutex_
  std::vector<Received> received_;  // guarded by mutex_
};

std::optional<std::string> Unavailable(const Received&) {
  return Reply(503, R"({"error":{"code":"UNAVAILABLE","message":"draining"}})");
}
std::optional<std::string> Silent(const Received&) { return std::nullopt; }
std::optional<std::string> Admits(const Received& request) {
  if (request.method != "POST") return Reply(404, R"({"error":{"code":"NOT_FOUND","message":""}})");
  return Reply(202, R"({"session_id":"00112233445566778899aabbccddeeff","phase":"waiting"})");
}

// A loopback URL where nothing listens.
SupervisorUrl DeadUrl() {
  StatusOr<uint16_t> port = ProbeFreePort();
  FP_CHECK(port.ok());
  return SupervisorUrl{"127.0.0.1", *port};
}

SubmitRequest TinySubmission() {
  SubmitRequest request;
  request.model = "tiny";
  request.prompt_token_ids = {72, 105};
  return request;
}

double Seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

constexpr char kSessionJson[] = R"({
  "session_id": "00112233445566778899aabbccddeeff", "phase": "verified", "model": "tiny",
  "verified_steps": 16, "max_tokens": 16, "divergences": 1, "admitted_unix_ms": 5,
  "replicas": [
    {"replica": 0, "worker_id": "worker-0", "epoch": 0, "stored_steps": 16, "next_step": 16,
     "finished": true},
    {"replica": 1, "worker_id": "worker-2", "epoch": 2, "stored_steps": 16, "next_step": 16,
     "finished": true}],
  "session_root": "ab", "ledger_index": 7, "verified_unix_ms": 9})";

class ApiClientTest : public ::testing::Test {};

TEST_F(ApiClientTest, ParsesSupervisorUrls) {
  ASSERT_OK_AND_ASSIGN(SupervisorUrl url, ParseSupervisorUrl("http://127.0.0.1:8080"));
  EXPECT_EQ(url.host, "127.0.0.1");
  EXPECT_EQ(url.port, 8080);
  EXPECT_EQ(url.ToString(), "http://127.0.0.1:8080");
  ASSERT_OK_AND_ASSIGN(SupervisorUrl slash, ParseSupervisorUrl("http://localhost:1/"));
  EXPECT_EQ(slash.host, "localhost");
  EXPECT_EQ(slash.port, 1);
}

TEST_F(ApiClientTest, ParsesSupervisorUrlLists) {
  ASSERT_OK_AND_ASSIGN(std::vector<SupervisorUrl> urls,
                       ParseSupervisorUrls("http://a:1, http://b:2/,http://127.0.0.1:3"));
  ASSERT_EQ(urls.size(), 3u);
  EXPECT_EQ(urls[0].ToString(), "http://a:1");
  EXPECT_EQ(urls[1].ToString(), "http://b:2");
  EXPECT_EQ(urls[2].ToString(), "http://127.0.0.1:3");
  ASSERT_OK_AND_ASSIGN(std::vector<SupervisorUrl> one, ParseSupervisorUrls("http://a:1"));
  EXPECT_EQ(one.size(), 1u);
}

TEST_F(ApiClientTest, SessionIdForIdempotencyKeyMatchesKnownAnswer) {
  // hashlib.sha256(b"fieldprint idempotency key\x00order-2291").hexdigest()[:32]
  EXPECT_EQ(SessionIdForIdempotencyKey("order-2291"), "2b7ab6b061f939f3bc202be945f43f73");
}

TEST_F(ApiClientTest, FailsOverPastDeadAndUnavailableSupervisorsWithOneIdempotencyKey) {
  FakeSupervisor draining(Unavailable);
  FakeSupervisor healthy(Admits);
  ApiClient api({DeadUrl(), draining.url(), healthy.url()}, FailoverOptions{});
  std::string key;
  ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(TinySubmission(), key));
  EXPECT_EQ(id, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(api.failovers(), 2u);
  EXPECT_EQ(api.url().ToString(), healthy.url().ToString());
  const std::vector<Received> first = draining.received();
  const std::vector<Received> second = healthy.received();
  ASSERT_EQ(first.size(), 1u);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_FALSE(key.empty());
  EXPECT_EQ(first[0].idempotency_key, key);
  EXPECT_EQ(second[0].idempotency_key, key);
  EXPECT_EQ(first[0].body, second[0].body);
  EXPECT_EQ(second[0].target, "/v1/sessions");
}

TEST_F(ApiClientTest, CallersIdempotencyKeyIsSentUnchanged) {
  FakeSupervisor healthy(Admits);
  ApiClient api({healthy.url()}, FailoverOptions{});
  SubmitRequest request = TinySubmission();
  request.idempotency_key = "order-2291";
  ASSERT_OK(api.Submit(request).status());
  ASSERT_EQ(healthy.received().size(), 1u);
  EXPECT_EQ(healthy.received()[0].idempotency_key, "order-2291");
}

TEST_F(ApiClientTest, TheSupervisorThatAnsweredStaysCurrent) {
  FakeSupervisor draining(Unavailable);
  FakeSupervisor healthy(Admits);
  ApiClient api({draining.url(), healthy.url()}, FailoverOptions{});
  ASSERT_OK(api.Submit(TinySubmission()).status());
  ASSERT_OK(api.Submit(TinySubmission()).status());
  EXPECT_EQ(draining.received().size(), 1u);
  EXPECT_EQ(healthy.received().size(), 2u);
  EXPECT_EQ(api.failovers(), 1u);
}

TEST_F(ApiClientTest, SilentSupervisorCostsOneAttemptTimeout) {
  FakeSupervisor silent(Silent);
  FakeSupervisor healthy(Admits);
  FailoverOptions options;
  options.attempt_timeout = milliseconds(300);
  options.request_deadline = milliseconds(5000);
  ApiClient api({silent.url(), healthy.url()}, options);
  const auto start = Clock::now();
  ASSERT_OK(api.Submit(TinySubmission()).status());
  const double elapsed = Seconds(Clock::now() - start);
  EXPECT_GE(elapsed, 0.29);
  EXPECT_LT(elapsed, 2.0);
  EXPECT_EQ(silent.received().size(), 1u);
}

TEST_F(ApiClientTest, SingleUrlClientMakesOneAttempt) {
  FakeSupervisor draining(Unavailable);
  ApiClient api(draining.url());
  EXPECT_THAT(api.Submit(TinySubmission()), StatusIs(StatusCode::kUnavailable));
  ASSERT_EQ(draining.received().size(), 1u);
  EXPECT_EQ(draining.received()[0].idempotency_key, "");
}

TEST_F(ApiClientTest, BytePromptIsOneTokenPerUtf8Byte) {
  EXPECT_EQ(BytePromptTokens("Hi"), (std::vector<uint32_t>{72, 105}));
  EXPECT_EQ(BytePromptTokens("\xc3\xa9"), (std::vector<uint32_t>{0xc3, 0xa9}));
  EXPECT_EQ(ByteOutputText({72, 105, 257}), "Hi<257>");
}

TEST_F(ApiClientTest, TokenHashMatchesKnownAnswers) {
  EXPECT_EQ(HexEncode(TokenHash({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexEncode(TokenHash({1})),
            "b40711a88c7039756fb8a73827eabe2c0fe5a0346ca7e0a104adc0fc764f528d");
  EXPECT_EQ(HexEncode(TokenHash({72, 105})),
            "44becf86785412342f88fe22ddbef28349922c4429ea5f3eacf42525bb5f8a3d");
}

TEST_F(ApiClientTest, SubmitBodyNamesOnlyWhatIsSet) {
  SubmitRequest request;
  request.model = "tiny";
  request.prompt_token_ids = {1, 2};
  request.seed = 7;
  boost::json::object body = SubmitBody(request);
  EXPECT_EQ(body.at("model").as_string(), "tiny");
  EXPECT_EQ(body.at("prompt_token_ids").as_array().size(), 2u);
  EXPECT_EQ(body.at("seed").to_number<uint64_t>(), 7u);
  EXPECT_FALSE(body.contains("max_tokens"));
  EXPECT_FALSE(body.contains("replicas"));
  request.max_tokens = 9;
  request.replicas = 3;
  body = SubmitBody(request);
  EXPECT_EQ(body.at("max_tokens").to_number<uint32_t>(), 9u);
  EXPECT_EQ(body.at("replicas").to_number<uint32_t>(), 3u);
}

TEST_F(ApiClientTest, ParsesSessionState) {
  ASSERT_OK_AND_ASSIGN(SessionView view, ParseSessionView(kSessionJson));
  EXPECT_EQ(view.session_id, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(view.phase, "verified");
  EXPECT_TRUE(view.done());
  EXPECT_EQ(view.verified_steps, 16u);
  EXPECT_EQ(view.divergences, 1u);
  ASSERT_EQ(view.replicas.size(), 2u);
  EXPECT_EQ(view.replicas[1].worker_id, "worker-2");
  EXPECT_TRUE(view.replicas[1].finished);
  EXPECT_EQ(view.epochs_advanced(), 2u);
  EXPECT_EQ(view.ledger_index, std::optional<uint64_t>(7));
}

TEST_F(ApiClientTest, ParsesEventStreamOfAVerifiedSession) {
  const std::string stream =
      "event: token\ndata: {\"step\":0,\"token_id\":72}\n\n"
      "event: token\ndata: {\"step\":1,\"token_id\":105}\n\n"
      "event: verified\ndata: {\"output_hash\":\"aa\",\"steps\":2}\n\n";
  ASSERT_OK_AND_ASSIGN(SessionOutput output, ParseEventStream(stream));
  EXPECT_EQ(output.token_ids, (std::vector<uint32_t>{72, 105}));
  EXPECT_EQ(output.receipt.at("steps").to_number<int>(), 2);
}

TEST_F(ApiClientTest, ErrorBodyKeepsTheSupervisorsCode) {
  EXPECT_THAT(StatusFromReply(409, R"({"error":{"code":"FAILED_PRECONDITION","message":"m"}})"),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(StatusFromReply(404, R"({"error":{"code":"NOT_FOUND","message":"no"}})"),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(StatusFromReply(503, "draining\n"), StatusIs(StatusCode::kUnavailable));
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(ApiClientTest, BadUrlsAreRefused) {
  for (const char* url : {"https://h:1", "h:1", "http://h", "http://h:0", "http://h:70000",
                          "http://h:1/v1", "http://u@h:1", "http://:1", "http://h:1x"}) {
    EXPECT_THAT(ParseSupervisorUrl(url), StatusIs(StatusCode::kInvalidArgument)) << url;
  }
}

TEST_F(ApiClientTest, BadUrlListsAreRefused) {
  EXPECT_THAT(ParseSupervisorUrls(""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSupervisorUrls("http://a:1,"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSupervisorUrls("http://a:1,https://b:2"),
              StatusIs(StatusCode::kInvalidArgument));
  std::string many;
  for (size_t i = 0; i <= kMaxSupervisorUrls; ++i) many += fmt::format("http://h:{},", i + 1);
  many.pop_back();
  EXPECT_THAT(ParseSupervisorUrls(many), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ApiClientTest, AllSupervisorsDownIsUnavailableAfterBoundedAttempts) {
  FakeSupervisor draining(Unavailable);
  FailoverOptions options;
  options.max_attempts = 5;
  options.round_pause = milliseconds(10);
  ApiClient api({DeadUrl(), draining.url()}, options);
  const auto start = Clock::now();
  EXPECT_THAT(api.Submit(TinySubmission()), StatusIs(StatusCode::kUnavailable));
  EXPECT_LT(Seconds(Clock::now() - start), 2.0);
  // Attempts alternate dead, draining, dead, draining, dead: two reach the draining one.
  EXPECT_EQ(draining.received().size(), 2u);
  EXPECT_EQ(api.failovers(), 4u);
}

TEST_F(ApiClientTest, RequestDeadlineBoundsEveryAttempt) {
  FakeSupervisor silent_a(Silent);
  FakeSupervisor silent_b(Silent);
  FailoverOptions options;
  options.attempt_timeout = milliseconds(10'000);
  options.request_deadline = milliseconds(600);
  ApiClient api({silent_a.url(), silent_b.url()}, options);
  const auto start = Clock::now();
  EXPECT_THAT(api.Session("00112233445566778899aabbccddeeff"),
              StatusIs(StatusCode::kDeadlineExceeded));
  const double elapsed = Seconds(Clock::now() - start);
  EXPECT_GE(elapsed, 0.5);
  EXPECT_LT(elapsed, 1.5);
}

TEST_F(ApiClientTest, AnswersOtherThan503And504AreNotFailedOver) {
  FakeSupervisor refusing([](const Received&) {
    return Reply(400, R"({"error":{"code":"INVALID_ARGUMENT","message":"bad prompt"}})");
  });
  FakeSupervisor healthy(Admits);
  ApiClient api({refusing.url(), healthy.url()}, FailoverOptions{});
  EXPECT_THAT(api.Submit(TinySubmission()), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_TRUE(healthy.received().empty());
  EXPECT_EQ(api.failovers(), 0u);
}

TEST_F(ApiClientTest, SessionStateWithoutAFieldIsDataLoss) {
  EXPECT_THAT(ParseSessionView(R"({"session_id":"x","phase":"running"})"),
              StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(ParseSessionView("not json"), StatusIs(StatusCode::kDataLoss));
  boost::json::object verified = boost::json::parse(kSessionJson).as_object();
  verified.erase("session_root");
  EXPECT_THAT(ParseSessionView(boost::json::serialize(verified)), StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, EventStreamThatSkipsAStepIsDataLoss) {
  EXPECT_THAT(ParseEventStream("event: token\ndata: {\"step\":1,\"token_id\":72}\n\n"),
              StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, EventStreamWithoutAReceiptIsDataLoss) {
  EXPECT_THAT(ParseEventStream("event: token\ndata: {\"step\":0,\"token_id\":72}\n\n"),
              StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, ErrorEventIsAborted) {
  EXPECT_THAT(ParseEventStream("event: error\ndata: {\"code\":\"ABORTED\"}\n\n"),
              StatusIs(StatusCode::kAborted));
}

TEST_F(ApiClientTest, MalformedStepProofIsDataLoss) {
  EXPECT_THAT(ParseStepProof(R"({"step":0,"tree_size":1,"root":"zz"})"),
              StatusIs(StatusCode::kDataLoss));
}

}  // namespace
}  // namespace fp::client
