// FaultProxy; see fault_proxy.h.
#include "tests/cluster/fault_proxy.h"

#include <array>
#include <future>
#include <set>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

namespace fp::cluster_test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr size_t kReadChunkBytes = 16 * 1024;

// Closes `socket` with a reset (SO_LINGER 0) instead of an orderly FIN.
void Reset(tcp::socket& socket) {
  boost::system::error_code ignored;
  socket.set_option(asio::socket_base::linger(true, 0), ignored);
  socket.close(ignored);
}

}  // namespace

const char* ProxyModeName(ProxyMode mode) {
  switch (mode) {
    case ProxyMode::kPass:
      return "pass";
    case ProxyMode::kBlackhole:
      return "blackhole";
    case ProxyMode::kReject:
      return "reject";
  }
  return "?";
}

// The proxy's state, on its I/O thread only.
class FaultProxy::Impl {
 public:
  Impl(FaultProxy& owner, tcp::endpoint upstream)
      : owner_(owner), upstream_(upstream), acceptor_(io_), work_(asio::make_work_guard(io_)) {}

  Status Listen() {
    boost::system::error_code error;
    const tcp::endpoint local(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(local.protocol(), error);
    if (!error) acceptor_.bind(local, error);
    if (!error) acceptor_.listen(asio::socket_base::max_listen_connections, error);
    if (error) return UnavailableError(fmt::format("fault proxy: listen: {}", error.message()));
    return OkStatus();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void Run() {
    Accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  void Stop() {
    asio::post(io_, [this] {
      boost::system::error_code ignored;
      acceptor_.close(ignored);
      CloseAll(false);
      work_.reset();
    });
    if (thread_.joinable()) thread_.join();
  }
  void SetMode(ProxyMode mode) {
    std::promise<void> applied;
    asio::post(io_, [this, mode, &applied] {
      mode_ = mode;
      if (mode == ProxyMode::kReject) CloseAll(true);
      if (mode == ProxyMode::kPass) ResumeAll();
      applied.set_value();
    });
    applied.get_future().wait();
  }

  ProxyMode mode() const { return mode_; }
  asio::io_context& io() { return io_; }
  const tcp::endpoint& upstream() const { return upstream_; }
  void Forget(const std::shared_ptr<Link>& link) { links_.erase(link); }

 private:
  void Accept();
  void CloseAll(bool reset);
  void ResumeAll();

  FaultProxy& owner_;
  const tcp::endpoint upstream_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  ProxyMode mode_ = ProxyMode::kPass;
  std::set<std::shared_ptr<Link>> links_;
};

// One relayed connection: the client's socket, the upstream socket, and a direction each way.
class FaultProxy::Link : public std::enable_shared_from_this<FaultProxy::Link> {
 public:
  Link(Impl& proxy, tcp::socket client)
      : proxy_(proxy), client_(std::move(client)), upstream_(proxy.io()) {
    to_upstream_.from = &client_;
    to_upstream_.to = &upstream_;
    to_client_.from = &upstream_;
    to_client_.to = &client_;
  }

  // Connects upstream and relays, unless blackholed: then it waits for Resume().
  void Start() {
    if (proxy_.mode() == ProxyMode::kPass) ConnectUpstream();
  }
  // Back to kPass: connects if it never did, flushes what was held, reads again.
  void Resume() {
    if (closed_) return;
    if (!connecting_ && !connected_) {
      ConnectUpstream();
      return;
    }
    for (Direction* direction : {&to_upstream_, &to_client_}) Pump(*direction);
  }
  void Close(bool reset) {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    if (reset) {
      Reset(client_);
      Reset(upstream_);
    } else {
      client_.close(ignored);
      upstream_.close(ignored);
    }
  }

 private:
  struct Direction {
    tcp::socket* from = nullptr;
    tcp::socket* to = nullptr;
    std::array<char, kReadChunkBytes> buffer{};
    std::string held;      // read, not yet written
    std::string writing;   // being written
    bool reading = false;  // a read is pending
  };

  void ConnectUpstream() {
    connecting_ = true;
    upstream_.async_connect(proxy_.upstream(),
                            [self = shared_from_this()](const boost::system::error_code& error) {
                              self->connecting_ = false;
                              if (error) return self->Fail();
                              self->connected_ = true;
                              self->Pump(self->to_upstream_);
                              self->Pump(self->to_client_);
                            });
  }

  // Writes held bytes while passing, and keeps one read pending while there is room to hold.
  void Pump(Direction& direction) {
    if (closed_ || !connected_) return;
    const bool passing = proxy_.mode() == ProxyMode::kPass;
    if (passing && direction.writing.empty() && !direction.held.empty()) {
      direction.writing.swap(direction.held);
      asio::async_write(
          *direction.to, asio::buffer(direction.writing),
          [self = shared_from_this(), &direction](const boost::system::error_code& error, size_t) {
            if (error) return self->Fail();
            direction.writing.clear();
            self->Pump(direction);
          });
    }
    if (!direction.reading && direction.held.size() < kMaxProxyHeldBytes) {
      direction.reading = true;
      direction.from->async_read_some(asio::buffer(direction.buffer),
                                      [self = shared_from_this(), &direction](
                                          const boost::system::error_code& error, size_t bytes) {
                                        direction.reading = false;
                                        if (error) return self->Fail();
                                        direction.held.append(direction.buffer.data(), bytes);
                                        self->Pump(direction);
                                      });
    }
  }

  // A failed read, write or connect ends the link. An orderly close of one side becomes a close
  // of both (the protocols relayed here do not half-close).
  void Fail() {
    Close(false);
    proxy_.Forget(shared_from_this());
  }

  Impl& proxy_;
  tcp::socket client_;
  tcp::socket upstream_;
  Direction to_upstream_;
  Direction to_client_;
  bool connecting_ = false;
  bool connected_ = false;
  bool closed_ = false;
};

void FaultProxy::Impl::Accept() {
  acceptor_.async_accept([this](const boost::system::error_code& error, tcp::socket socket) {
    if (error == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!error) {
      owner_.accepted_.fetch_add(1);
      if (mode_ == ProxyMode::kReject || links_.size() >= kMaxProxyConnections) {
        Reset(socket);
      } else {
        auto link = std::make_shared<Link>(*this, std::move(socket));
        links_.insert(link);
        link->Start();
      }
    }
    Accept();
  });
}

void FaultProxy::Impl::CloseAll(bool reset) {
  for (const std::shared_ptr<Link>& link : links_) link->Close(reset);
  links_.clear();
}

void FaultProxy::Impl::ResumeAll() {
  // Resume can end a link (a failed connect), which erases it from links_: iterate a copy.
  const std::set<std::shared_ptr<Link>> links = links_;
  for (const std::shared_ptr<Link>& link : links) link->Resume();
}

StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(const std::string& upstream_host,
                                                        uint16_t upstream_port) {
  boost::system::error_code error;
  const asio::ip::address address = asio::ip::make_address(upstream_host, error);
  if (error) {
    return InvalidArgumentError(
        fmt::format("fault proxy: upstream '{}' is not an IP address", upstream_host));
  }
  std::unique_ptr<FaultProxy> proxy(new FaultProxy());
  proxy->impl_ = std::make_unique<Impl>(*proxy, tcp::endpoint(address, upstream_port));
  FP_RETURN_IF_ERROR(proxy->impl_->Listen());
  proxy->port_ = proxy->impl_->port();
  proxy->impl_->Run();
  return proxy;
}

FaultProxy::~FaultProxy() {
  if (impl_ != nullptr) impl_->Stop();
}

void FaultProxy::SetMode(ProxyMode mode) {
  mode_.store(mode);
  impl_->SetMode(mode);
}

}  // namespace fp::cluster_test
