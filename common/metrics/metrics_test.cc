// Tests the metrics helpers and, over real loopback HTTP with a Beast client, MetricsServer.
#include "common/metrics/metrics.h"

#include <chrono>
#include <string>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>

#include "common/metrics/internal/http_handler.h"
#include "common/metrics/metrics_server.h"
#include "tests/testutil/status_matchers.h"

namespace fp::metrics {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using ::fp::testing::StatusIs;

// A blocking HTTP/1.1 client over one loopback connection.
class TestClient {
 public:
  explicit TestClient(uint16_t port) : socket_(ioc_) {
    socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  }

  http::response<http::string_body> Get(const std::string& target,
                                        http::verb method = http::verb::get) {
    http::request<http::string_body> request(method, target, 11);
    request.set(http::field::host, "127.0.0.1");
    http::write(socket_, request);
    http::response_parser<http::string_body> parser;
    parser.skip(method == http::verb::head);
    http::read(socket_, buffer_, parser);
    return parser.release();
  }

  // Reads until the server closes the connection; returns the error that ended the read.
  beast::error_code ReadUntilClosed() {
    char byte;
    beast::error_code error;
    while (!error) socket_.read_some(net::buffer(&byte, 1), error);
    return error;
  }

  tcp::socket& socket() { return socket_; }

 private:
  net::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

bool IsClosedByPeer(const beast::error_code& error) {
  return error == net::error::eof || error == net::error::connection_reset;
}

class MetricsTest : public ::testing::Test {
 protected:
  void StartServer(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    MetricsServerOptions options;
    options.connection_timeout = timeout;
    ASSERT_OK_AND_ASSIGN(server_, MetricsServer::Start(registry_, options));
    ASSERT_NE(server_->port(), 0);
  }

  prometheus::Registry registry_;
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsTest, RenderTextShowsRegisteredMetrics) {
  RegisterCounter(registry_, "fieldprint_test_leaves_total", "Leaves.").Add({}).Increment(2);
  RegisterGauge(registry_, "fieldprint_test_queue_depth", "Depth.").Add({{"queue", "a"}}).Set(4);
  auto& histogram = RegisterHistogram(registry_, "fieldprint_test_append_seconds", "Append.");
  histogram.Add({}, Buckets(kLatencyBucketsFastSeconds)).Observe(3e-6);
  const std::string text = RenderText(registry_);
  EXPECT_NE(text.find("# TYPE fieldprint_test_leaves_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("fieldprint_test_leaves_total 2"), std::string::npos) << text;
  EXPECT_NE(text.find("fieldprint_test_queue_depth{queue=\"a\"} 4"), std::string::npos) << text;
  EXPECT_NE(text.find("fieldprint_test_append_seconds_bucket{le=\"2.5e-06\"} 0"), std::string::npos)
      << text;
  EXPECT_NE(text.find("fieldprint_test_append_seconds_bucket{le=\"5e-06\"} 1"), std::string::npos)
      << text;
}

TEST_F(MetricsTest, RegisteringTwiceReturnsTheSameFamily) {
  auto& first = RegisterCounter(registry_, "fieldprint_test_events_total", "Events.");
  auto& second = RegisterCounter(registry_, "fieldprint_test_events_total", "Events.");
  EXPECT_EQ(&first, &second);
}

TEST_F(MetricsTest, BucketSetsStrictlyIncrease) {
  for (std::span<const double> buckets : {std::span<const double>(kLatencyBucketsFastSeconds),
                                          std::span<const double>(kLatencyBucketsRequestSeconds),
                                          std::span<const double>(kLatencyBucketsLongSeconds)}) {
    for (size_t i = 1; i < buckets.size(); ++i) EXPECT_LT(buckets[i - 1], buckets[i]);
    EXPECT_EQ(Buckets(buckets).size(), buckets.size());
  }
}

TEST_F(MetricsTest, ServesCounterOverHttp) {
  auto& counter = RegisterCounter(registry_, "fieldprint_test_requests_total", "Requests.").Add({});
  counter.Increment();
  counter.Increment();
  counter.Increment();
  StartServer();
  TestClient client(server_->port());
  const auto response = client.Get("/metrics");
  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_EQ(response[http::field::content_type], "text/plain; version=0.0.4");
  EXPECT_NE(response.body().find("\nfieldprint_test_requests_total 3\n"), std::string::npos)
      << response.body();
}

TEST_F(MetricsTest, KeepAliveServesFreshValues) {
  auto& gauge = RegisterGauge(registry_, "fieldprint_test_depth", "Depth.").Add({});
  StartServer();
  TestClient client(server_->port());
  gauge.Set(1);
  EXPECT_NE(client.Get("/metrics").body().find("fieldprint_test_depth 1"), std::string::npos);
  gauge.Set(2);
  EXPECT_NE(client.Get("/metrics?x=1").body().find("fieldprint_test_depth 2"), std::string::npos);
}

TEST_F(MetricsTest, HeadHasNoBody) {
  RegisterCounter(registry_, "fieldprint_test_x_total", "X.").Add({}).Increment();
  StartServer();
  TestClient client(server_->port());
  const auto response = client.Get("/metrics", http::verb::head);
  EXPECT_EQ(response.result(), http::status::ok);
  EXPECT_TRUE(response.body().empty());
  EXPECT_NE(response[http::field::content_length], "0");
}

TEST_F(MetricsTest, StopClosesOpenConnectionsAndIsIdempotent) {
  StartServer();
  const uint16_t port = server_->port();
  TestClient client(port);
  EXPECT_EQ(client.Get("/metrics").result(), http::status::ok);
  server_->Stop();
  EXPECT_TRUE(IsClosedByPeer(client.ReadUntilClosed()));
  server_->Stop();
  net::io_context ioc;
  tcp::socket socket(ioc);
  beast::error_code error;
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), error);
  EXPECT_EQ(error, net::error::connection_refused);
}

TEST_F(MetricsTest, HandlerMapsMethodsAndPaths) {
  http::request<http::string_body> request(http::verb::post, "/metrics", 11);
  auto response = internal::HandleMetricsRequest(request, registry_);
  EXPECT_EQ(response.result(), http::status::method_not_allowed);
  EXPECT_EQ(response[http::field::allow], "GET, HEAD");
  request.method(http::verb::get);
  request.target("/metricsx");
  EXPECT_EQ(internal::HandleMetricsRequest(request, registry_).result(), http::status::not_found);
}

// Error paths.

TEST_F(MetricsTest, UnknownPathIs404) {
  StartServer();
  TestClient client(server_->port());
  EXPECT_EQ(client.Get("/").result(), http::status::not_found);
  EXPECT_EQ(client.Get("/metrics/extra").result(), http::status::not_found);
}

TEST_F(MetricsTest, IdleConnectionIsClosedAtTheDeadline) {
  StartServer(std::chrono::milliseconds(200));
  TestClient client(server_->port());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(IsClosedByPeer(client.ReadUntilClosed()));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(MetricsTest, OversizedRequestHeaderClosesTheConnection) {
  StartServer();
  TestClient client(server_->port());
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " +
                              std::string(kMaxRequestHeaderBytes + 100, 'a') + "\r\n\r\n";
  beast::error_code error;
  net::write(client.socket(), net::buffer(request), error);
  EXPECT_TRUE(IsClosedByPeer(client.ReadUntilClosed()));
}

TEST_F(MetricsTest, BadAddressIsInvalidArgument) {
  MetricsServerOptions options;
  options.address = "not-an-address";
  EXPECT_THAT(MetricsServer::Start(registry_, options), StatusIs(StatusCode::kInvalidArgument));
  options.address = "127.0.0.1";
  options.connection_timeout = std::chrono::milliseconds(0);
  EXPECT_THAT(MetricsServer::Start(registry_, options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(MetricsTest, PortInUseIsUnavailable) {
  StartServer();
  MetricsServerOptions options;
  options.port = server_->port();
  EXPECT_THAT(MetricsServer::Start(registry_, options), StatusIs(StatusCode::kUnavailable));
}

TEST_F(MetricsTest, NamesBreakingTheRulesAreProgrammerErrors) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_DEATH(CheckMetricName("requests_total", MetricType::kCounter), "fieldprint_");
  EXPECT_DEATH(CheckMetricName("fieldprint_requests", MetricType::kCounter), "_total");
  EXPECT_DEATH(CheckMetricName("fieldprint_depth_total", MetricType::kGauge), "_total");
  EXPECT_DEATH(CheckMetricName("fieldprint_latency_ms", MetricType::kHistogram), "base units");
  EXPECT_DEATH(CheckMetricName("fieldprint_rpc_milliseconds", MetricType::kHistogram), "base");
  EXPECT_DEATH(CheckMetricName("fieldprint_Bytes", MetricType::kGauge), "a-z0-9");
  EXPECT_DEATH(CheckMetricName("fieldprint_a__b", MetricType::kGauge), "__");
  EXPECT_DEATH(CheckMetricName("fieldprint_x_count", MetricType::kHistogram), "suffix");
  EXPECT_DEATH(CheckLabelNames({{"session_id", "x"}}), "unbounded");
  EXPECT_DEATH(CheckLabelNames({{"le", "x"}}), "reserved");
  EXPECT_DEATH(RegisterCounter(registry_, "fieldprint_bad", "Bad."), "_total");
  RegisterGauge(registry_, "fieldprint_clash_bytes", "Clash.");
  EXPECT_DEATH(RegisterHistogram(registry_, "fieldprint_clash_bytes", "Clash."), "clash_bytes");
}

TEST_F(MetricsTest, WellFormedNamesPass) {
  CheckMetricName("fieldprint_leaves_appended_total", MetricType::kCounter);
  CheckMetricName("fieldprint_rpc_latency_seconds", MetricType::kHistogram);
  CheckMetricName("fieldprint_kv_cache_bytes", MetricType::kGauge);
  CheckMetricName("fieldprint_h100_ratio", MetricType::kGauge);
  CheckLabelNames({{"replica_role", "leader"}, {"code", "ok"}});
}

}  // namespace
}  // namespace fp::metrics
