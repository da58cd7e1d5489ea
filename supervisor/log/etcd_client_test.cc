// Tests of the etcd gateway client against a real etcd member with mutual TLS (kv, txn, leases,
// compaction, deadlines) and against a fake gateway that answers with malformed or hostile
// replies.
#include "supervisor/log/etcd_client.h"

#include <atomic>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/wire/certs.h"
#include "supervisor/client/process.h"
#include "supervisor/log/testing/etcd_suite.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor::etcd {
namespace {

using ::fp::testing::StatusIs;
using ::testing::HasSubstr;
using SteadyClock = std::chrono::steady_clock;

// Serves every request on 127.0.0.1 with one canned reply: complete, cut off after part of the
// body, or never sent (the connection stays open and silent).
class FakeGateway {
 public:
  enum class Mode { kComplete, kTruncated, kSilent };
  FakeGateway(unsigned status, std::string body, Mode mode = Mode::kComplete)
      : status_(status), body_(std::move(body)), mode_(mode) {
    acceptor_.open(boost::asio::ip::tcp::v4());
    acceptor_.bind({boost::asio::ip::make_address("127.0.0.1"), 0});
    acceptor_.listen();
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeGateway() {
    stopping_ = true;
    boost::asio::ip::tcp::socket wake(io_);
    boost::system::error_code ignored;
    wake.connect(acceptor_.local_endpoint(), ignored);
    thread_.join();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  void Serve() {
    while (!stopping_) {
      boost::asio::ip::tcp::socket socket(io_);
      boost::system::error_code error;
      acceptor_.accept(socket, error);
      if (error || stopping_) return;
      boost::beast::flat_buffer buffer;
      boost::beast::http::request<boost::beast::http::string_body> request;
      boost::beast::http::read(socket, buffer, request, error);
      if (error) continue;
      if (mode_ == Mode::kSilent) {
        held_.push_back(std::move(socket));
        continue;
      }
      const size_t length = body_.size() + (mode_ == Mode::kTruncated ? 100 : 0);
      const std::string reply = fmt::format(
          "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
          "Connection: close\r\n\r\n{}",
          status_, length, body_);
      boost::asio::write(socket, boost::asio::buffer(reply), error);
    }
  }

  const unsigned status_;
  const std::string body_;
  const Mode mode_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::acceptor acceptor_{io_};
  std::vector<boost::asio::ip::tcp::socket> held_;  // serving thread only
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

class EtcdClientTest : public supervisor::testing::SharedEtcdTest<1> {
 protected:
  std::unique_ptr<Client> Connect(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    ClientOptions options = cluster_->ClientOptionsFor(0);
    options.request_timeout = timeout;
    auto client = Client::Create(options);
    FP_CHECK_OK(client);
    return std::move(client).value();
  }
  static std::unique_ptr<Client> ConnectFake(const FakeGateway& fake, size_t max_response_bytes) {
    ClientOptions options;
    options.endpoints = {{"127.0.0.1", fake.port()}};
    options.request_timeout = std::chrono::milliseconds(500);
    options.max_response_bytes = max_response_bytes;
    auto client = Client::Create(options);
    FP_CHECK_OK(client);
    return std::move(client).value();
  }
  // A key unique to the running test, so tests sharing the member never see each other's keys.
  static std::string Key(const std::string& suffix) {
    return fmt::format("/test/{}/{}",
                       ::testing::UnitTest::GetInstance()->current_test_info()->name(), suffix);
  }
  static TxnOp Put(const std::string& key, const std::string& value, int64_t lease = 0) {
    return {TxnOp::Kind::kPut, key, value, lease, {}, ""};
  }
};

TEST_F(EtcdClientTest, PrefixEndIsTheNextKeyAfterThePrefix) {
  EXPECT_EQ(PrefixEnd("a/"), "a0");
  EXPECT_EQ(PrefixEnd("a\xff"), "b");
  EXPECT_EQ(PrefixEnd("\xff\xff"), std::string(1, '\0'));
}

TEST_F(EtcdClientTest, BinaryKeysAndValuesRoundTrip) {
  auto client = Connect();
  std::string value;
  for (int byte = 0; byte < 256; ++byte) value.push_back(static_cast<char>(byte));
  const std::string key = Key(std::string("\x00\x01\xfe\xff", 4));
  TxnRequest put;
  put.success = {Put(key, value)};
  ASSERT_OK_AND_ASSIGN(TxnResponse written, client->Txn(put, std::nullopt));
  EXPECT_TRUE(written.succeeded);
  RangeRequest get;
  get.key = key;
  ASSERT_OK_AND_ASSIGN(RangeResponse read, client->Range(get));
  ASSERT_EQ(read.kvs.size(), 1u);
  EXPECT_EQ(read.kvs[0].key, key);
  EXPECT_EQ(read.kvs[0].value, value);
  EXPECT_EQ(read.kvs[0].create_revision, written.revision);
  EXPECT_EQ(read.kvs[0].version, 1);
}

TEST_F(EtcdClientTest, CreateOnlyTxnWritesOnceAndReportsTheStoredValue) {
  auto client = Connect();
  const std::string key = Key("once");
  auto create = [&](const std::string& value) {
    TxnRequest request;
    request.compares = {{key, Compare::Target::kCreate, Compare::Result::kEqual, 0, ""}};
    request.success = {Put(key, value)};
    RangeRequest stored;
    stored.key = key;
    request.failure = {{TxnOp::Kind::kRange, "", "", 0, stored, ""}};
    return client->Txn(request, std::nullopt);
  };
  ASSERT_OK_AND_ASSIGN(TxnResponse first, create("first"));
  EXPECT_TRUE(first.succeeded);
  ASSERT_OK_AND_ASSIGN(TxnResponse second, create("second"));
  EXPECT_FALSE(second.succeeded);
  ASSERT_EQ(second.results.size(), 1u);
  ASSERT_EQ(second.results[0].range.kvs.size(), 1u);
  EXPECT_EQ(second.results[0].range.kvs[0].value, "first");
}

TEST_F(EtcdClientTest, RangesAreOrderedByKeyAndLimited) {
  auto client = Connect();
  TxnRequest put;
  for (int i = 9; i >= 0; --i) put.success.push_back(Put(Key(fmt::format("{:02}", i)), "v"));
  ASSERT_OK(client->Txn(put, std::nullopt));
  RangeRequest range;
  range.key = Key("");
  range.range_end = PrefixEnd(range.key);
  range.limit = 3;
  ASSERT_OK_AND_ASSIGN(RangeResponse first, client->Range(range));
  ASSERT_EQ(first.kvs.size(), 3u);
  EXPECT_TRUE(first.more);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(first.kvs[i].key, Key(fmt::format("{:02}", i)));
  range.limit = 1;
  range.descending = true;
  range.keys_only = true;
  ASSERT_OK_AND_ASSIGN(RangeResponse last, client->Range(range));
  ASSERT_EQ(last.kvs.size(), 1u);
  EXPECT_EQ(last.kvs[0].key, Key("09"));
  EXPECT_EQ(last.kvs[0].value, "");
  ASSERT_OK_AND_ASSIGN(int64_t deleted, client->DeleteRange(range.key, range.range_end));
  EXPECT_EQ(deleted, 10);
}

TEST_F(EtcdClientTest, RevokingALeaseDeletesItsKeys) {
  auto client = Connect();
  ASSERT_OK_AND_ASSIGN(Lease lease, client->LeaseGrant(30));
  EXPECT_GE(lease.ttl_seconds, 30);
  TxnRequest put;
  put.success = {Put(Key("leased"), "v", lease.id)};
  ASSERT_OK(client->Txn(put, std::nullopt));
  ASSERT_OK_AND_ASSIGN(int64_t ttl, client->LeaseKeepAlive(lease.id));
  EXPECT_GT(ttl, 0);
  ASSERT_OK(client->LeaseRevoke(lease.id));
  RangeRequest get;
  get.key = Key("leased");
  ASSERT_OK_AND_ASSIGN(RangeResponse read, client->Range(get));
  EXPECT_TRUE(read.kvs.empty());
  EXPECT_THAT(client->LeaseKeepAlive(lease.id), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(client->LeaseRevoke(lease.id), StatusIs(StatusCode::kNotFound));
}

TEST_F(EtcdClientTest, CompactedRevisionsAreOutOfRange) {
  auto client = Connect();
  TxnRequest put;
  put.success = {Put(Key("x"), "1")};
  ASSERT_OK_AND_ASSIGN(TxnResponse first, client->Txn(put, std::nullopt));
  put.success = {Put(Key("x"), "2")};
  ASSERT_OK_AND_ASSIGN(TxnResponse second, client->Txn(put, std::nullopt));
  RangeRequest old;
  old.key = Key("x");
  old.revision = first.revision;
  ASSERT_OK_AND_ASSIGN(RangeResponse before, client->Range(old));
  ASSERT_EQ(before.kvs.size(), 1u);
  EXPECT_EQ(before.kvs[0].value, "1");
  ASSERT_OK(client->Compact(second.revision, true));
  EXPECT_THAT(client->Range(old), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(client->Compact(first.revision, false), StatusIs(StatusCode::kOutOfRange));
}

// ---- Error paths ----

TEST_F(EtcdClientTest, TooManyTxnOperationsAreRefusedBeforeSending) {
  ClientOptions options;
  options.endpoints = {{"127.0.0.1", 1}};
  ASSERT_OK_AND_ASSIGN(auto client, Client::Create(options));
  TxnRequest request;
  request.success.assign(kMaxTxnOps + 1, Put("k", "v"));
  EXPECT_THAT(client->Txn(request, std::nullopt), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EtcdClientTest, ClosedPortIsUnavailable) {
  ASSERT_OK_AND_ASSIGN(uint16_t port, client::ProbeFreePort());
  ClientOptions options;
  options.endpoints = {{"127.0.0.1", port}};
  ASSERT_OK_AND_ASSIGN(auto client, Client::Create(options));
  EXPECT_THAT(client->Range({}), StatusIs(StatusCode::kUnavailable));
}

TEST_F(EtcdClientTest, PausedMemberHitsTheRequestDeadline) {
  auto client = Connect(std::chrono::milliseconds(300));
  ASSERT_OK(cluster_->Pause(0));
  const auto start = SteadyClock::now();
  RangeRequest get;
  get.key = Key("k");
  StatusOr<RangeResponse> result = client->Range(get);
  const auto took = SteadyClock::now() - start;
  ASSERT_OK(cluster_->Resume(0));
  EXPECT_THAT(result, StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_LT(took, std::chrono::milliseconds(1500));
  ASSERT_OK(cluster_->WaitHealthy(0, std::chrono::seconds(10)));
  EXPECT_OK(client->Range(get));  // the client reconnects after the timeout
}

TEST_F(EtcdClientTest, ServerFromAnotherCaIsUnauthenticated) {
  fp::testing::TempDir other;
  wire::CertsOptions certs;
  certs.names = {"intruder"};
  ASSERT_OK(wire::InitCerts(other.Join("certs"), certs));
  ClientOptions options = cluster_->ClientOptionsFor(0);
  options.tls = wire::TlsFilesForNode(other.Join("certs"), "intruder");
  ASSERT_OK_AND_ASSIGN(auto client, Client::Create(options));
  EXPECT_THAT(client->Range({}), StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(EtcdClientTest, NonJsonReplyIsMalformed) {
  FakeGateway fake(200, "<html>proxy</html>");
  StatusOr<RangeResponse> result = ConnectFake(fake, 1 << 20)->Range({});
  EXPECT_THAT(result, StatusIs(StatusCode::kInternal));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("malformed"));
}

TEST_F(EtcdClientTest, ReplyWithoutHeaderIsMalformed) {
  FakeGateway fake(200, R"({"kvs":[]})");
  StatusOr<RangeResponse> result = ConnectFake(fake, 1 << 20)->Range({});
  EXPECT_THAT(result, StatusIs(StatusCode::kInternal));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("no header"));
}

TEST_F(EtcdClientTest, BadBase64OrRevisionIsMalformed) {
  FakeGateway bad_key(200, R"({"header":{"revision":"3"},"kvs":[{"key":"!!!"}]})");
  EXPECT_THAT(ConnectFake(bad_key, 1 << 20)->Range({}), StatusIs(StatusCode::kInternal));
  FakeGateway bad_revision(200, R"({"header":{"revision":"3x"}})");
  EXPECT_THAT(ConnectFake(bad_revision, 1 << 20)->Range({}), StatusIs(StatusCode::kInternal));
}

TEST_F(EtcdClientTest, TxnReplyWithWrongResponseCountIsMalformed) {
  FakeGateway fake(200, R"({"header":{"revision":"3"},"succeeded":true,"responses":[]})");
  TxnRequest request;
  request.success = {Put("k", "v")};
  EXPECT_THAT(ConnectFake(fake, 1 << 20)->Txn(request, std::nullopt),
              StatusIs(StatusCode::kInternal));
}

TEST_F(EtcdClientTest, GatewayErrorKeepsItsGrpcCode) {
  FakeGateway fake(503, R"({"error":"etcdserver: no leader","code":14,"message":"no leader"})");
  StatusOr<RangeResponse> result = ConnectFake(fake, 1 << 20)->Range({});
  EXPECT_THAT(result, StatusIs(StatusCode::kUnavailable));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("no leader"));
  FakeGateway no_code(500, "oops");
  EXPECT_THAT(ConnectFake(no_code, 1 << 20)->Range({}), StatusIs(StatusCode::kInternal));
}

TEST_F(EtcdClientTest, OversizedReplyIsResourceExhausted) {
  FakeGateway fake(200, std::string(4096, ' '));
  EXPECT_THAT(ConnectFake(fake, 1024)->Range({}), StatusIs(StatusCode::kResourceExhausted));
}

TEST_F(EtcdClientTest, TruncatedReplyIsUnavailable) {
  FakeGateway fake(200, R"({"header":{"revision":"3"}})", FakeGateway::Mode::kTruncated);
  EXPECT_THAT(ConnectFake(fake, 1 << 20)->Range({}), StatusIs(StatusCode::kUnavailable));
}

TEST_F(EtcdClientTest, SilentServerHitsTheRequestDeadline) {
  FakeGateway fake(200, "", FakeGateway::Mode::kSilent);
  const auto start = SteadyClock::now();
  EXPECT_THAT(ConnectFake(fake, 1 << 20)->Range({}), StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_LT(SteadyClock::now() - start, std::chrono::milliseconds(1500));
}

}  // namespace
}  // namespace fp::supervisor::etcd
