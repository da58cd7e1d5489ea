// HttpClient against raw loopback sockets: a server that answers, one that accepts and stays
// silent (the request must end at the client's deadline, not hang), and a closed port.
#include "supervisor/net/http_client.h"

#include <chrono>
#include <string>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::supervisor {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::StatusIs;

class HttpClientTest : public ::testing::Test {
 protected:
  HttpClientTest() : acceptor_(io_, tcp::endpoint(asio::ip::address_v4::loopback(), 0)) {}

  uint16_t port() const { return acceptor_.local_endpoint().port(); }

  // Accepts one connection on a thread; `answer` decides what the server does with it.
  template <typename Answer>
  void ServeOnce(Answer answer) {
    server_ = std::thread([this, answer] {
      tcp::socket socket(io_);
      acceptor_.accept(socket);
      answer(socket);
    });
  }

  ~HttpClientTest() override {
    if (server_.joinable()) server_.join();
  }

  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread server_;
};

TEST_F(HttpClientTest, ReadsAnAnswer) {
  ServeOnce([](tcp::socket& socket) {
    asio::streambuf request;
    asio::read_until(socket, request, "\r\n\r\n");
    const std::string response =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\n{}";
    asio::write(socket, asio::buffer(response));
  });
  HttpClient client("127.0.0.1", port(), milliseconds(5000));
  ASSERT_OK_AND_ASSIGN(HttpResponse response, client.Request(http::verb::get, "/healthz"));
  EXPECT_EQ(response.status, 200u);
  EXPECT_EQ(response.content_type, "application/json");
  EXPECT_EQ(response.body, "{}");
}

TEST_F(HttpClientTest, SilentServerEndsAtTheDeadline) {
  ServeOnce([](tcp::socket& socket) {
    // Read the request, never answer, and hold the connection well past the client's deadline.
    asio::streambuf request;
    asio::read_until(socket, request, "\r\n\r\n");
    std::this_thread::sleep_for(milliseconds(3000));
  });
  HttpClient client("127.0.0.1", port(), milliseconds(300));
  const auto start = steady_clock::now();
  EXPECT_THAT(client.Request(http::verb::post, "/v1/sessions", "{}"),
              StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_LT(steady_clock::now() - start, milliseconds(2500));
}

TEST_F(HttpClientTest, ClosedPortIsUnavailable) {
  const uint16_t closed = port();
  acceptor_.close();
  HttpClient client("127.0.0.1", closed, milliseconds(2000));
  EXPECT_THAT(client.Request(http::verb::get, "/healthz"), StatusIs(StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fp::supervisor
