// The metrics HTTP server; see metrics_server.h.
//
// Shape follows Boost.Beast's asynchronous HTTP server example: an acceptor loop hands each
// socket, on its own strand, to a Connection that alternates DoRead/OnRead and OnWrite until the
// peer closes, a deadline expires, or keep-alive ends. Stop() stops the io_context, joins the
// thread and destroys the io_context, which destroys every pending handler and with it every
// Connection and its socket.
#include "common/metrics/metrics_server.h"

#include <exception>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/base/log.h"
#include "common/metrics/internal/http_handler.h"
#include "common/metrics/metrics.h"

namespace fp::metrics {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

constexpr std::string_view kComponent = "metrics";
// After a failed accept (out of file descriptors, say), wait before the next one rather than
// spinning on the same error.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

// One TCP connection. Lives as long as a handler of its own holds it.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `registry` and `active_connections` are borrowed from the server, which outlives every
  // connection (connections die when its io_context is destroyed).
  Connection(tcp::socket&& socket, const prometheus::Registry& registry,
             std::chrono::milliseconds timeout, size_t& active_connections)
      : stream_(std::move(socket)),
        buffer_(kMaxRequestHeaderBytes + kMaxRequestBodyBytes),
        registry_(registry),
        timeout_(timeout),
        active_connections_(active_connections) {
    ++active_connections_;
  }
  ~Connection() { --active_connections_; }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&Connection::DoRead, shared_from_this()));
  }

 private:
  void DoRead() {
    parser_.emplace();
    parser_->header_limit(kMaxRequestHeaderBytes);
    parser_->body_limit(kMaxRequestBodyBytes);
    stream_.expires_after(timeout_);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Connection::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code error, size_t /*bytes*/) {
    if (error == http::error::end_of_stream) return Close();
    if (error) {
      // Timeouts of idle keep-alive connections and oversized requests end here; the socket
      // closes when this object goes away.
      LogDebug(kComponent, "connection dropped", {{"step", "read"}, {"error", error.message()}});
      return;
    }
    const http::request<http::string_body> request = parser_->release();
    response_ = internal::HandleMetricsRequest(request, registry_);
    ++requests_;
    response_.keep_alive(request.keep_alive() && requests_ < kMaxRequestsPerConnection);
    stream_.expires_after(timeout_);
    http::async_write(stream_, response_,
                      beast::bind_front_handler(&Connection::OnWrite, shared_from_this()));
  }

  void OnWrite(beast::error_code error, size_t /*bytes*/) {
    if (error) {
      LogDebug(kComponent, "connection dropped", {{"step", "write"}, {"error", error.message()}});
      return;
    }
    if (!response_.keep_alive()) return Close();
    DoRead();
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;  // bounded: a request never needs more
  std::optional<http::request_parser<http::string_body>> parser_;  // fresh per request
  http::response<http::string_body> response_;  // kept alive until its write completes
  const prometheus::Registry& registry_;        // borrowed
  const std::chrono::milliseconds timeout_;
  size_t& active_connections_;  // borrowed; only touched on the server thread
  size_t requests_ = 0;
};

}  // namespace

namespace internal {

http::response<http::string_body> HandleMetricsRequest(
    const http::request<http::string_body>& request, const prometheus::Registry& registry) {
  std::string_view target(request.target().data(), request.target().size());
  target = target.substr(0, target.find('?'));
  http::response<http::string_body> response;
  response.version(request.version());
  response.set(http::field::server, "fieldprint");
  if (target != "/metrics") {
    response.result(http::status::not_found);
    response.set(http::field::content_type, "text/plain");
    response.body() = "not found\n";
  } else if (request.method() != http::verb::get && request.method() != http::verb::head) {
    response.result(http::status::method_not_allowed);
    response.set(http::field::allow, "GET, HEAD");
    response.set(http::field::content_type, "text/plain");
    response.body() = "method not allowed\n";
  } else {
    response.result(http::status::ok);
    response.set(http::field::content_type, "text/plain; version=0.0.4");
    response.body() = RenderText(registry);
  }
  response.prepare_payload();
  // HEAD: the headers of the GET response (Content-Length included) and no body.
  if (request.method() == http::verb::head) response.body().clear();
  return response;
}

}  // namespace internal

class MetricsServer::Impl {
 public:
  Impl(const prometheus::Registry& registry, std::chrono::milliseconds timeout)
      : registry_(registry), timeout_(timeout) {}
  ~Impl() { Shutdown(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Opens, binds and listens; returns the bound port.
  StatusOr<uint16_t> Listen(const tcp::endpoint& endpoint) {
    beast::error_code error;
    const std::string where =
        endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
    if (acceptor_.open(endpoint.protocol(), error); error) {
      return UnavailableError("metrics server open " + where + ": " + error.message());
    }
    if (acceptor_.set_option(net::socket_base::reuse_address(true), error); error) {
      return UnavailableError("metrics server set_option " + where + ": " + error.message());
    }
    if (acceptor_.bind(endpoint, error); error) {
      return UnavailableError("metrics server bind " + where + ": " + error.message());
    }
    if (acceptor_.listen(net::socket_base::max_listen_connections, error); error) {
      return UnavailableError("metrics server listen " + where + ": " + error.message());
    }
    const tcp::endpoint bound = acceptor_.local_endpoint(error);
    if (error) return UnavailableError("metrics server local_endpoint: " + error.message());
    return bound.port();
  }

  void Run() {
    DoAccept();
    thread_ = std::thread([this] { RunLoop(); });
  }

  // Stops the io_context and joins its thread; the destructor then destroys pending handlers.
  void Shutdown() {
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void RunLoop() {
    for (;;) {
      try {
        ioc_.run();
        return;  // stopped
      } catch (const std::exception& error) {
        LogError(kComponent, "handler threw", {{"error", error.what()}});
      }
    }
  }

  void DoAccept() {
    acceptor_.async_accept(net::make_strand(ioc_),
                           beast::bind_front_handler(&Impl::OnAccept, this));
  }

  void OnAccept(beast::error_code error, tcp::socket socket) {
    if (error == net::error::operation_aborted) return;
    if (error) {
      LogWarn(kComponent, "accept failed", {{"error", error.message()}});
      retry_timer_.expires_after(kAcceptRetryDelay);
      retry_timer_.async_wait([this](beast::error_code wait_error) {
        if (!wait_error) DoAccept();
      });
      return;
    }
    if (active_connections_ >= kMaxMetricsConnections) {
      LogWarn(kComponent, "connection refused", {{"open_connections", active_connections_}});
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<Connection>(std::move(socket), registry_, timeout_, active_connections_)
          ->Start();
    }
    DoAccept();
  }

  const prometheus::Registry& registry_;  // borrowed
  const std::chrono::milliseconds timeout_;
  // Declared before ioc_ so it outlives the connections that ioc_'s destruction destroys.
  size_t active_connections_ = 0;  // server thread only
  net::io_context ioc_{1};
  tcp::acceptor acceptor_{ioc_};
  net::steady_timer retry_timer_{ioc_};
  std::thread thread_;
};

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const prometheus::Registry& registry,
                                                              const MetricsServerOptions& options) {
  if (options.connection_timeout <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("metrics server connection_timeout must be positive");
  }
  beast::error_code error;
  const net::ip::address address = net::ip::make_address(options.address, error);
  if (error) {
    return InvalidArgumentError("metrics server address '" + options.address +
                                "': " + error.message());
  }
  auto impl = std::make_unique<Impl>(registry, options.connection_timeout);
  FP_ASSIGN_OR_RETURN(const uint16_t port, impl->Listen(tcp::endpoint(address, options.port)));
  impl->Run();
  LogInfo(kComponent, "serving /metrics", {{"address", options.address}, {"port", port}});
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl), port));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, uint16_t port)
    : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (impl_ == nullptr) return;
  impl_->Shutdown();
  impl_.reset();
}

}  // namespace fp::metrics
