// Tests of FaultProxy against a real echo server on loopback: bytes pass both ways in order; a
// blackhole holds them (nothing arrives, the connection stays open) and releases them in order
// when healed; new connections made during a blackhole reach the server only after the heal;
// reject resets open connections and new ones.
#include "tests/cluster/fault_proxy.h"

#include <atomic>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/testutil/status_matchers.h"

namespace fp::cluster_test {
namespace {

using std::chrono::milliseconds;

// Echoes every byte back, one connection per thread, and counts connections.
class EchoServer {
 public:
  EchoServer() {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    FP_CHECK(bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    FP_CHECK(listen(listener_, 16) == 0);
    socklen_t length = sizeof(address);
    FP_CHECK(getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) == 0);
    port_ = ntohs(address.sin_port);
    acceptor_ = std::thread([this] {
      while (true) {
        const int connection = accept(listener_, nullptr, nullptr);
        if (connection < 0) return;
        connections_.fetch_add(1);
        echoes_.emplace_back([connection] {
          char buffer[4096];
          ssize_t n;
          while ((n = read(connection, buffer, sizeof(buffer))) > 0) {
            if (write(connection, buffer, static_cast<size_t>(n)) != n) break;
          }
          close(connection);
        });
      }
    });
  }
  ~EchoServer() {
    shutdown(listener_, SHUT_RDWR);
    acceptor_.join();
    for (std::thread& echo : echoes_) echo.join();
    close(listener_);
  }
  uint16_t port() const { return port_; }
  int connections() const { return connections_.load(); }

 private:
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> connections_{0};
  std::thread acceptor_;
  std::vector<std::thread> echoes_;  // joined after the acceptor: only it appends
};

int Connect(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  FP_CHECK(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
  return fd;
}

// Reads until `bytes` arrived, the peer closed or errored, or `timeout` passed with no data.
std::string ReadFor(int fd, size_t bytes, milliseconds timeout, bool* failed = nullptr) {
  std::string data;
  while (data.size() < bytes) {
    pollfd poller{fd, POLLIN, 0};
    if (poll(&poller, 1, static_cast<int>(timeout.count())) <= 0) break;
    char buffer[4096];
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) {
      if (failed != nullptr) *failed = true;
      break;
    }
    data.append(buffer, static_cast<size_t>(n));
  }
  return data;
}

void Send(int fd, const std::string& text) {
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
}

class FaultProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(proxy_, FaultProxy::Start("127.0.0.1", echo_.port()));
  }
  EchoServer echo_;
  std::unique_ptr<FaultProxy> proxy_;
};

TEST_F(FaultProxyTest, PassRelaysBothWaysInOrder) {
  const int fd = Connect(proxy_->port());
  std::string sent;
  for (int i = 0; i < 200; ++i) sent += "chunk-" + std::to_string(i) + ";";
  Send(fd, sent);
  EXPECT_EQ(ReadFor(fd, sent.size(), milliseconds(2000)), sent);
  EXPECT_EQ(proxy_->accepted(), 1u);
  EXPECT_EQ(echo_.connections(), 1);
  close(fd);
}

TEST_F(FaultProxyTest, BlackholeHoldsBytesAndHealingReleasesThemInOrder) {
  const int fd = Connect(proxy_->port());
  Send(fd, "before;");
  ASSERT_EQ(ReadFor(fd, 7, milliseconds(2000)), "before;");
  proxy_->SetMode(ProxyMode::kBlackhole);
  Send(fd, "during-1;");
  Send(fd, "during-2;");
  bool failed = false;
  EXPECT_EQ(ReadFor(fd, 1, milliseconds(300), &failed), "");
  EXPECT_FALSE(failed) << "a blackhole keeps the connection open";
  proxy_->SetMode(ProxyMode::kPass);
  EXPECT_EQ(ReadFor(fd, 18, milliseconds(2000)), "during-1;during-2;");
  close(fd);
}

TEST_F(FaultProxyTest, ConnectionsMadeDuringABlackholeReachTheServerAfterHealing) {
  proxy_->SetMode(ProxyMode::kBlackhole);
  const int fd = Connect(proxy_->port());  // the proxy accepts: the handshake is the client's
  Send(fd, "hello;");
  EXPECT_EQ(ReadFor(fd, 1, milliseconds(300)), "");
  EXPECT_EQ(echo_.connections(), 0);
  proxy_->SetMode(ProxyMode::kPass);
  EXPECT_EQ(ReadFor(fd, 6, milliseconds(2000)), "hello;");
  EXPECT_EQ(echo_.connections(), 1);
  close(fd);
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(FaultProxyTest, RejectResetsOpenAndNewConnections) {
  const int open_fd = Connect(proxy_->port());
  Send(open_fd, "x");
  ASSERT_EQ(ReadFor(open_fd, 1, milliseconds(2000)), "x");
  proxy_->SetMode(ProxyMode::kReject);
  bool failed = false;
  EXPECT_EQ(ReadFor(open_fd, 1, milliseconds(2000), &failed), "");
  EXPECT_TRUE(failed) << "the open connection must end";
  close(open_fd);
  const int new_fd = Connect(proxy_->port());
  failed = false;
  EXPECT_EQ(ReadFor(new_fd, 1, milliseconds(2000), &failed), "");
  EXPECT_TRUE(failed) << "a new connection must be reset";
  close(new_fd);
  proxy_->SetMode(ProxyMode::kPass);
  const int healed = Connect(proxy_->port());
  Send(healed, "again");
  EXPECT_EQ(ReadFor(healed, 5, milliseconds(2000)), "again");
  close(healed);
}

TEST_F(FaultProxyTest, UpstreamThatRefusesEndsTheClientsConnection) {
  StatusOr<std::unique_ptr<FaultProxy>> dead = FaultProxy::Start("127.0.0.1", 1);
  ASSERT_OK(dead.status());
  const int fd = Connect((*dead)->port());
  bool failed = false;
  EXPECT_EQ(ReadFor(fd, 1, milliseconds(2000), &failed), "");
  EXPECT_TRUE(failed);
  close(fd);
}

TEST_F(FaultProxyTest, UpstreamMustBeAnAddress) {
  EXPECT_THAT(FaultProxy::Start("not an address", 80),
              fp::testing::StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::cluster_test
