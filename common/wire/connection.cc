// Connection and Listener; see connection.h for the design and the lifecycle.
#include "common/wire/connection.h"

#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>
#include <openssl/ssl.h>

#include "common/base/log.h"
#include "common/wire/tls.h"

namespace fp::wire {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

constexpr std::string_view kLogComponent = "wire";
// Pause before accepting again after an accept error (e.g. out of file descriptors), so that a
// persistent error does not spin the listener's strand.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};

void CheckHandlersAndOptions(const ConnectionHandlers& handlers, const ConnectionOptions& options) {
  FP_CHECK(handlers.on_envelope != nullptr);
  FP_CHECK(handlers.on_close != nullptr);
  FP_CHECK(options.connect_timeout.count() > 0);
  FP_CHECK(options.handshake_timeout.count() > 0);
  FP_CHECK(options.read_timeout.count() > 0);
  FP_CHECK(options.write_timeout.count() > 0);
  FP_CHECK(options.max_send_queue_frames >= 1);
  FP_CHECK(options.max_send_queue_frames <= kMaxSendQueueFrames);
}

std::string EndpointText(const tcp::endpoint& endpoint) {
  return fmt::format("{}:{}", endpoint.address().to_string(), endpoint.port());
}

// Errors from OpenSSL (alerts, verification failures) versus the network underneath.
bool IsTlsError(const error_code& error) {
  return error.category() == asio::error::get_ssl_category() ||
         error.category() == ssl::error::get_stream_category();
}

}  // namespace

// --- Connection: construction and start ---------------------------------------------------------

Connection::Connection(Stream stream, bool is_client, ConnectionHandlers handlers,
                       ConnectionOptions options)
    : stream_(std::move(stream)),
      is_client_(is_client),
      handlers_(std::move(handlers)),
      options_(options),
      resolver_(stream_.get_executor()),
      setup_timer_(stream_.get_executor()),
      read_timer_(stream_.get_executor()),
      write_timer_(stream_.get_executor()),
      read_buffer_(kReadChunkBytes) {
  CheckHandlersAndOptions(handlers_, options_);
}

Connection::~Connection() = default;

std::shared_ptr<Connection> Connection::Connect(asio::io_context& io, ssl::context& tls,
                                                std::string host, uint16_t port,
                                                std::string server_name,
                                                ConnectionHandlers handlers,
                                                ConnectionOptions options) {
  Stream stream(tcp::socket(asio::make_strand(io)), tls);
  std::shared_ptr<Connection> connection(
      new Connection(std::move(stream), /*is_client=*/true, std::move(handlers), options));
  connection->host_ = std::move(host);
  connection->port_ = port;
  connection->server_name_ = std::move(server_name);
  connection->remote_endpoint_ = fmt::format("{}:{}", connection->host_, port);
  return connection;
}

std::shared_ptr<Connection> Connection::Accept(tcp::socket socket, ssl::context& tls,
                                               ConnectionHandlers handlers,
                                               ConnectionOptions options) {
  error_code error;
  const tcp::endpoint peer = socket.remote_endpoint(error);
  std::shared_ptr<Connection> connection(new Connection(
      Stream(std::move(socket), tls), /*is_client=*/false, std::move(handlers), options));
  connection->remote_endpoint_ = error ? "unknown peer" : EndpointText(peer);
  return connection;
}

void Connection::Start() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    if (self->state_ == State::kClosed) return;  // closed before it started
    FP_CHECK(self->state_ == State::kIdle);
    if (self->is_client_) {
      self->DoResolve();
    } else {
      self->DoHandshake();
    }
  });
}

std::string Connection::peer_identity() const {
  std::lock_guard<std::mutex> lock(names_mutex_);
  return peer_identity_;
}

std::string Connection::remote_endpoint() const {
  std::lock_guard<std::mutex> lock(names_mutex_);
  return remote_endpoint_;
}

// --- Deadlines ----------------------------------------------------------------------------------

void Connection::ArmDeadline(asio::steady_timer& timer, std::chrono::milliseconds timeout,
                             const char* step) {
  timer.expires_after(timeout);
  timer.async_wait([self = shared_from_this(), &timer, timeout, step](const error_code& error) {
    // A disarmed or re-armed timer has a future expiry: its operation finished in time, even if
    // this completion was already queued when that happened.
    if (error == asio::error::operation_aborted) return;
    if (timer.expiry() > asio::steady_timer::clock_type::now()) return;
    if (self->state_ == State::kClosed) return;
    self->Abort(
        DeadlineExceededError(fmt::format("{}: no progress within {} ms", step, timeout.count())));
  });
}

void Connection::Disarm(asio::steady_timer& timer) {
  timer.expires_at(asio::steady_timer::time_point::max());
}

// --- Client connect and handshake ---------------------------------------------------------------

void Connection::DoResolve() {
  state_ = State::kConnecting;
  if (server_name_.empty()) {
    Abort(InvalidArgumentError("connect: no server name to verify the certificate against"));
    return;
  }
  // One deadline covers resolution and the TCP connect.
  ArmDeadline(setup_timer_, options_.connect_timeout, "connect");
  resolver_.async_resolve(
      host_, std::to_string(port_),
      [self = shared_from_this()](const error_code& error, tcp::resolver::results_type results) {
        self->OnResolve(error, results);
      });
}

void Connection::OnResolve(const error_code& error, const tcp::resolver::results_type& results) {
  if (state_ == State::kClosed) return;
  if (error) {
    Abort(UnavailableError(fmt::format("resolve {}: {}", host_, error.message())));
    return;
  }
  asio::async_connect(
      stream_.lowest_layer(), results,
      [self = shared_from_this()](const error_code& connect_error, const tcp::endpoint& endpoint) {
        self->OnConnect(connect_error, endpoint);
      });
}

void Connection::OnConnect(const error_code& error, const tcp::endpoint& endpoint) {
  Disarm(setup_timer_);
  if (state_ == State::kClosed) return;
  if (error) {
    Abort(UnavailableError(fmt::format("connect {}:{}: {}", host_, port_, error.message())));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(names_mutex_);
    remote_endpoint_ = EndpointText(endpoint);
  }
  SSL* ssl = stream_.native_handle();
  // SNI lets a server with several certificates choose; SSL_set1_host makes the chain check
  // also require the expected name, so no other node of the same CA can pose as the server.
  if (SSL_set_tlsext_host_name(ssl, server_name_.c_str()) != 1 ||
      SSL_set1_host(ssl, server_name_.c_str()) != 1) {
    Abort(InternalError("connect: cannot set the expected server name " + server_name_));
    return;
  }
  DoHandshake();
}

void Connection::DoHandshake() {
  state_ = State::kHandshaking;
  // Frames are small and latency-bound (an Ack is a few dozen bytes): without TCP_NODELAY,
  // Nagle's algorithm plus delayed ACKs hold them for ~40 ms. Failure only costs latency.
  error_code ignored;
  stream_.lowest_layer().set_option(boost::asio::ip::tcp::no_delay(true), ignored);
  ArmDeadline(setup_timer_, options_.handshake_timeout, "tls handshake");
  stream_.async_handshake(
      is_client_ ? ssl::stream_base::client : ssl::stream_base::server,
      [self = shared_from_this()](const error_code& error) { self->OnHandshake(error); });
}

void Connection::OnHandshake(const error_code& error) {
  Disarm(setup_timer_);
  if (state_ == State::kClosed) return;
  if (error) {
    const std::string text = fmt::format("tls handshake: {}", error.message());
    Abort(IsTlsError(error) ? UnauthenticatedError(text) : UnavailableError(text));
    return;
  }
  StatusOr<std::string> identity = PeerIdentity(stream_.native_handle());
  if (!identity.ok()) {
    Abort(identity.status());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(names_mutex_);
    peer_identity_ = *identity;
  }
  state_ = State::kOpen;
  LogEvent(LogLevel::kInfo, kLogComponent, "connection open",
           {{"peer", *identity}, {"endpoint", remote_endpoint()}});
  if (handlers_.on_open) handlers_.on_open(shared_from_this());
  if (state_ != State::kOpen) return;
  DoRead();
  MaybeWrite();
}

// --- Reading ------------------------------------------------------------------------------------

void Connection::DoRead() {
  reading_ = true;
  ArmDeadline(read_timer_, options_.read_timeout, "read");
  stream_.async_read_some(asio::buffer(read_buffer_),
                          [self = shared_from_this()](const error_code& error, size_t bytes) {
                            self->OnRead(error, bytes);
                          });
}

void Connection::OnRead(const error_code& error, size_t bytes) {
  reading_ = false;
  Disarm(read_timer_);
  if (state_ == State::kClosed) return;
  if (error) {
    OnReadError(error);
    return;
  }
  if (state_ == State::kClosing) {  // the owner is closing: what arrives now is not wanted
    MaybeFinishClosing();
    return;
  }
  std::vector<pb::Envelope> envelopes;
  const Status decoded = decoder_.Feed(ByteSpan(read_buffer_.data(), bytes), envelopes);
  std::shared_ptr<Connection> self = shared_from_this();
  for (pb::Envelope& envelope : envelopes) {
    if (state_ != State::kOpen) break;  // a handler closed the connection
    handlers_.on_envelope(self, std::move(envelope));
  }
  if (!decoded.ok()) {
    BeginClose(decoded.WithContext("read"), /*peer_closed=*/false);
    return;
  }
  if (state_ == State::kOpen) {
    DoRead();
  } else {
    MaybeFinishClosing();
  }
}

void Connection::OnReadError(const error_code& error) {
  if (error == asio::error::operation_aborted && state_ == State::kClosing) {
    MaybeFinishClosing();  // we cancelled the read to shut down
    return;
  }
  if (error == asio::error::eof) {  // the peer's TLS close_notify
    if (decoder_.mid_frame()) {
      BeginClose(DataLossError(fmt::format("read: the peer closed the stream {} bytes into a frame",
                                           decoder_.buffered_bytes())),
                 /*peer_closed=*/true);
    } else {
      BeginClose(state_ == State::kClosing ? close_reason_ : OkStatus(), /*peer_closed=*/true);
    }
    return;
  }
  if (error == ssl::error::stream_truncated) {
    Abort(UnavailableError("read: the peer closed TCP without a TLS close_notify"));
    return;
  }
  const std::string text = fmt::format("read: {}", error.message());
  Abort(IsTlsError(error) ? UnauthenticatedError(text) : UnavailableError(text));
}

// --- Writing ------------------------------------------------------------------------------------

Status Connection::Send(const pb::Envelope& envelope) {
  Bytes frame;
  FP_RETURN_IF_ERROR(AppendFrame(envelope, frame));
  if (!accepting_sends_.load()) {
    return FailedPreconditionError("send: the connection is closing or closed");
  }
  if (queued_frames_.fetch_add(1) >= options_.max_send_queue_frames) {
    queued_frames_.fetch_sub(1);
    return ResourceExhaustedError(fmt::format("send: {} frames already queued for {}",
                                              options_.max_send_queue_frames, remote_endpoint()));
  }
  asio::post(stream_.get_executor(),
             [self = shared_from_this(), frame = std::move(frame)]() mutable {
               self->Enqueue(std::move(frame), /*counted=*/true);
             });
  return OkStatus();
}

void Connection::Enqueue(Bytes frame, bool counted) {
  // Posted by a Send that raced with the close, or arriving after the peer said goodbye and
  // reads nothing more.
  if (state_ == State::kClosed || peer_closed_) {
    if (counted) queued_frames_.fetch_sub(1);
    return;
  }
  if (!counted) queued_frames_.fetch_add(1);  // balances OnWrite's decrement
  send_queue_.push_back(std::move(frame));
  MaybeWrite();
}

void Connection::MaybeWrite() {
  if (writing_ || send_queue_.empty() || shutdown_started_) return;
  if (state_ != State::kOpen && state_ != State::kClosing) return;
  writing_ = true;
  ArmDeadline(write_timer_, options_.write_timeout, "write");
  asio::async_write(stream_, asio::buffer(send_queue_.front()),
                    [self = shared_from_this()](const error_code& error, size_t /*bytes*/) {
                      self->OnWrite(error);
                    });
}

void Connection::OnWrite(const error_code& error) {
  writing_ = false;
  Disarm(write_timer_);
  if (state_ == State::kClosed) return;
  if (error) {
    Abort(UnavailableError(fmt::format("write: {}", error.message())));
    return;
  }
  send_queue_.pop_front();
  queued_frames_.fetch_sub(1);
  if (state_ == State::kClosing) {
    MaybeFinishClosing();
  } else {
    MaybeWrite();
  }
}

// --- Closing ------------------------------------------------------------------------------------

void Connection::Close(Status reason) {
  accepting_sends_.store(false);
  asio::post(stream_.get_executor(), [self = shared_from_this(), reason = std::move(reason)] {
    self->BeginClose(reason, /*peer_closed=*/false);
  });
}

void Connection::BeginClose(Status reason, bool peer_closed) {
  if (state_ == State::kClosed) return;
  if (state_ != State::kOpen && state_ != State::kClosing) {
    Abort(reason.ok() ? CancelledError("closed before the connection opened") : reason);
    return;
  }
  accepting_sends_.store(false);
  if (peer_closed) {
    peer_closed_ = true;
    // The peer reads nothing more: drop what waits (not the frame being written).
    while (send_queue_.size() > (writing_ ? 1u : 0u)) {
      send_queue_.pop_back();
      queued_frames_.fetch_sub(1);
    }
  }
  if (state_ == State::kClosing) {
    MaybeFinishClosing();
    return;
  }
  state_ = State::kClosing;
  close_reason_ = reason;
  if (!reason.ok() && !peer_closed) {
    // Tell the peer why before closing; the frame is ours, so it skips the Send bound.
    Bytes frame;
    FP_CHECK_OK(AppendFrame(MakeErrorEnvelope(reason), frame));
    Enqueue(std::move(frame), /*counted=*/false);
  }
  MaybeFinishClosing();
}

void Connection::MaybeFinishClosing() {
  if (state_ != State::kClosing || writing_ || shutdown_started_) return;
  if (!send_queue_.empty()) {
    MaybeWrite();
    return;
  }
  if (reading_) {
    // TLS allows one read and one write in flight; the shutdown needs the read side.
    error_code ignored;
    stream_.lowest_layer().cancel(ignored);
    return;
  }
  shutdown_started_ = true;
  ArmDeadline(setup_timer_, options_.write_timeout, "tls shutdown");
  stream_.async_shutdown(
      [self = shared_from_this()](const error_code& error) { self->OnShutdown(error); });
}

void Connection::OnShutdown(const error_code& /*error*/) {
  Disarm(setup_timer_);
  if (state_ == State::kClosed) return;
  // The close_notify went out, or could not: either way the stream is done, and the reason for
  // the close is the one recorded when it began, not how the goodbye went.
  Abort(close_reason_);
}

void Connection::Abort(Status reason) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  accepting_sends_.store(false);
  error_code ignored;
  resolver_.cancel();
  setup_timer_.cancel();
  read_timer_.cancel();
  write_timer_.cancel();
  stream_.lowest_layer().close(ignored);
  queued_frames_.fetch_sub(send_queue_.size());
  send_queue_.clear();
  const std::string peer = peer_identity();
  if (reason.ok()) {
    LogEvent(LogLevel::kInfo, kLogComponent, "connection closed",
             {{"peer", peer}, {"endpoint", remote_endpoint()}});
  } else {
    LogEvent(LogLevel::kWarn, kLogComponent, "connection closed",
             {{"peer", peer}, {"endpoint", remote_endpoint()}, {"reason", reason}});
  }
  ConnectionHandlers handlers = std::move(handlers_);
  handlers_ = {};
  handlers.on_close(shared_from_this(), reason);
}

// --- Listener -----------------------------------------------------------------------------------

Listener::Listener(asio::io_context& io, ssl::context& tls, ConnectionHandlers handlers,
                   ConnectionOptions options)
    : io_(io),
      tls_(tls),
      handlers_(std::move(handlers)),
      options_(options),
      acceptor_(asio::make_strand(io)),
      retry_timer_(acceptor_.get_executor()),
      open_connections_(std::make_shared<std::atomic<size_t>>(0)) {
  CheckHandlersAndOptions(handlers_, options_);
}

StatusOr<std::shared_ptr<Listener>> Listener::Create(asio::io_context& io, ssl::context& tls,
                                                     const tcp::endpoint& endpoint,
                                                     ConnectionHandlers handlers,
                                                     ConnectionOptions options) {
  std::shared_ptr<Listener> listener(new Listener(io, tls, std::move(handlers), options));
  tcp::acceptor& acceptor = listener->acceptor_;
  error_code error;
  const char* step = "open";
  acceptor.open(endpoint.protocol(), error);
  if (!error) {
    step = "set SO_REUSEADDR";
    acceptor.set_option(tcp::acceptor::reuse_address(true), error);
  }
  if (!error) {
    step = "bind";
    acceptor.bind(endpoint, error);
  }
  if (!error) {
    step = "listen";
    acceptor.listen(asio::socket_base::max_listen_connections, error);
  }
  if (error) {
    return UnavailableError(
        fmt::format("listen on {}: {}: {}", EndpointText(endpoint), step, error.message()));
  }
  listener->local_endpoint_ = acceptor.local_endpoint(error);
  if (error) return UnavailableError("listen: local endpoint: " + error.message());
  return listener;
}

void Listener::Start() {
  asio::post(acceptor_.get_executor(), [self = shared_from_this()] { self->DoAccept(); });
}

void Listener::Stop() {
  asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
    self->stopped_ = true;
    error_code ignored;
    self->acceptor_.close(ignored);
    self->retry_timer_.cancel();
  });
}

void Listener::DoAccept() {
  if (stopped_) return;
  // Each connection gets its own strand.
  acceptor_.async_accept(asio::make_strand(io_),
                         [self = shared_from_this()](const error_code& error, tcp::socket socket) {
                           self->OnAccept(error, std::move(socket));
                         });
}

void Listener::OnAccept(const error_code& error, tcp::socket socket) {
  if (stopped_) return;
  if (error) {
    LogEvent(LogLevel::kWarn, kLogComponent, "accept failed",
             {{"endpoint", EndpointText(local_endpoint_)}, {"error", error.message()}});
    retry_timer_.expires_after(kAcceptRetryDelay);
    retry_timer_.async_wait([self = shared_from_this()](const error_code& wait_error) {
      if (!wait_error) self->DoAccept();
    });
    return;
  }
  if (open_connections_->load() >= kMaxConnections) {
    error_code ignored;
    const tcp::endpoint peer = socket.remote_endpoint(ignored);
    LogEvent(LogLevel::kWarn, kLogComponent, "connection refused: too many connections",
             {{"endpoint", EndpointText(peer)}, {"limit", kMaxConnections}});
    socket.close(ignored);
    DoAccept();
    return;
  }
  ConnectionHandlers handlers = handlers_;
  handlers.on_close = [count = open_connections_, on_close = handlers_.on_close](
                          const std::shared_ptr<Connection>& connection, const Status& status) {
    count->fetch_sub(1);
    on_close(connection, status);
  };
  open_connections_->fetch_add(1);
  Connection::Accept(std::move(socket), tls_, std::move(handlers), options_)->Start();
  DoAccept();
}

}  // namespace fp::wire
