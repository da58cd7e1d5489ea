// HttpServer; see http_server.h.
#include "supervisor/api/http_server.h"

#include <optional>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include "common/base/log.h"
#include "common/metrics/metrics.h"

namespace fp::supervisor {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket socket, const Api& api, Log& log, const HttpServerOptions& options,
              const HttpMetrics& metrics, const std::atomic<bool>* draining,
              std::shared_ptr<std::atomic<size_t>> open,
              std::shared_ptr<HttpSessionRegistry> registry)
      : stream_(std::move(socket)),
        timer_(stream_.get_executor()),
        api_(api),
        log_(log),
        options_(options),
        metrics_(metrics),
        draining_(draining),
        open_(std::move(open)),
        registry_(std::move(registry)) {}
  ~HttpSession() {
    {
      std::lock_guard lock(registry_->mutex);
      registry_->closers.erase(id_);
    }
    --*open_;
  }

  void Start() {
    std::weak_ptr<HttpSession> weak = shared_from_this();
    {
      std::lock_guard lock(registry_->mutex);
      id_ = registry_->next_id++;
      registry_->closers[id_] = [weak] {
        if (auto self = weak.lock()) {
          asio::post(self->stream_.get_executor(), [self] { self->CloseIfIdle(); });
        }
      };
    }
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&HttpSession::DoRead, shared_from_this()));
  }

 private:
  bool Draining() const { return draining_ != nullptr && draining_->load(); }

  // Drain: a connection waiting for its next request is closed; a busy one finishes.
  void CloseIfIdle() {
    if (!idle_) return;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  void DoRead() {
    if (requests_ >= kMaxRequestsPerHttpConnection || Draining()) return DoClose();
    idle_ = buffer_.size() == 0;
    parser_.emplace();
    parser_->body_limit(kMaxRequestBodyBytes);
    parser_->header_limit(kMaxRequestHeaderBytes);
    stream_.expires_after(options_.read_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&HttpSession::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code error, size_t) {
    idle_ = false;
    if (error == http::error::end_of_stream) return DoClose();
    if (error == http::error::body_limit || error == http::error::header_limit ||
        error == http::error::buffer_overflow) {
      keep_alive_ = false;
      version_ = 11;
      HttpReply reply = Api::ErrorReply(ResourceExhaustedError(error == http::error::body_limit
                                                                   ? "request body too large"
                                                                   : "request header too large"));
      reply.status = error == http::error::body_limit ? 413 : 431;
      return WriteReply(reply);
    }
    if (error) return;  // timeout or reset: the socket closes with this session
    ++requests_;
    http::request<http::string_body> request = parser_->release();
    keep_alive_ = request.keep_alive();
    version_ = request.version();
    head_ = request.method() == http::verb::head;
    started_ = Clock::now();
    kind_ = ProofRouteKind(request.target());
    HttpRequest call{request.method(), std::string(request.target()), std::move(request.body())};
    call.idempotency_key = std::string(request["Idempotency-Key"]);
    call.authorization = std::string(request[http::field::authorization]);
    action_ = api_.Handle(call);
    if (!action_.append.has_value()) return Proceed();
    auto self = shared_from_this();
    log_.Append(std::move(*action_.append), [self](StatusOr<uint64_t> position) {
      asio::post(self->stream_.get_executor(),
                 [self, status = position.status()] { self->OnAppended(status); });
    });
  }

  void OnAppended(const Status& status) {
    if (!status.ok()) {
      action_.reply = api_.AppendFailed(status);
      action_.follow = Follow();
    }
    Proceed();
  }

  void Proceed() {
    follow_deadline_ = Clock::now() + kMaxFollowDuration;
    switch (action_.follow.kind) {
      case Follow::Kind::kNone:
        return WriteReply(action_.reply);
      case Follow::Kind::kCompletion:
        return PollCompletion();
      case Follow::Kind::kEvents:
      case Follow::Kind::kCompletionStream:
      case Follow::Kind::kSnapshot:
        return WriteStreamHeader();
    }
  }

  void RecordProofMetrics(unsigned status) {
    if (kind_.empty()) return;
    const prometheus::Labels labels = {{"kind", std::string(kind_)},
                                       {"outcome", status < 400 ? "ok" : "error"}};
    if (metrics_.proof_requests != nullptr) metrics_.proof_requests->Add(labels).Increment();
    if (metrics_.proof_latency != nullptr) {
      const std::chrono::duration<double> elapsed = Clock::now() - started_;
      metrics_.proof_latency->Add({{"kind", std::string(kind_)}}, latency_buckets_)
          .Observe(elapsed.count());
    }
  }

  void WriteReply(const HttpReply& reply) {
    RecordProofMetrics(reply.status);
    auto response = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(reply.status), version_);
    response->set(http::field::server, "fieldprint");
    response->set(http::field::content_type, reply.content_type);
    response->keep_alive(keep_alive_ && !Draining());
    response->content_length(reply.body.size());
    if (!head_) response->body() = reply.body;
    stream_.expires_after(options_.write_timeout);
    http::async_write(stream_, *response,
                      [self = shared_from_this(), response](beast::error_code error, size_t) {
                        self->OnWrite(response->need_eof(), error);
                      });
  }

  void OnWrite(bool close, beast::error_code error) {
    if (error) return;
    if (close) return DoClose();
    DoRead();
  }

  void PollCompletion() {
    PollResult result = api_.Poll(action_.follow);
    if (result.reply.has_value()) return WriteReply(*result.reply);
    if (Draining() || Clock::now() >= follow_deadline_) {
      return WriteReply(Api::ErrorReply(DeadlineExceededError(
          "the session is not verified yet; follow GET /v1/sessions/{id} instead")));
    }
    WaitThen(&HttpSession::PollCompletion);
  }

  void WaitThen(void (HttpSession::*next)()) {
    timer_.expires_after(kFollowPollInterval);
    timer_.async_wait([self = shared_from_this(), next](beast::error_code error) {
      if (!error) ((*self).*next)();
    });
  }

  void WriteStreamHeader() {
    RecordProofMetrics(action_.reply.status);
    stream_response_.emplace(static_cast<http::status>(action_.reply.status), version_);
    stream_response_->set(http::field::server, "fieldprint");
    stream_response_->set(http::field::content_type, action_.reply.content_type);
    stream_response_->set(http::field::cache_control, "no-cache");
    stream_response_->chunked(true);
    stream_response_->keep_alive(false);  // a follow ends its connection
    stream_serializer_.emplace(*stream_response_);
    stream_.expires_after(options_.write_timeout);
    http::async_write_header(stream_, *stream_serializer_,
                             [self = shared_from_this()](beast::error_code error, size_t) {
                               if (!error) self->PollStream();
                             });
  }

  void PollStream() {
    if (Draining() || Clock::now() >= follow_deadline_) return WriteLastChunk();
    PollResult result = api_.Poll(action_.follow);
    if (result.chunk.empty()) {
      if (result.done) return WriteLastChunk();
      return WaitThen(&HttpSession::PollStream);
    }
    chunk_ = std::move(result.chunk);
    stream_.expires_after(options_.write_timeout);
    asio::async_write(
        stream_, http::make_chunk(asio::buffer(chunk_)),
        [self = shared_from_this(), done = result.done](beast::error_code error, size_t) {
          if (error) return;
          if (done) return self->WriteLastChunk();
          // More may be ready at once (a snapshot always is): poll again without the pause,
          // which is only for follows that found nothing new.
          self->PollStream();
        });
  }

  void WriteLastChunk() {
    stream_.expires_after(options_.write_timeout);
    asio::async_write(stream_, http::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code, size_t) { self->DoClose(); });
  }

  void DoClose() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  const Api& api_;                    // borrowed
  Log& log_;                          // borrowed
  const HttpServerOptions& options_;  // borrowed from the server, which outlives sessions
  const HttpMetrics& metrics_;        // borrowed likewise
  const std::atomic<bool>* draining_;
  std::shared_ptr<std::atomic<size_t>> open_;
  std::shared_ptr<HttpSessionRegistry> registry_;
  uint64_t id_ = 0;
  bool idle_ = false;  // waiting for a request's first byte
  const prometheus::Histogram::BucketBoundaries latency_buckets_ =
      metrics::Buckets(metrics::kLatencyBucketsRequestSeconds);

  beast::flat_buffer buffer_{8192};
  std::optional<http::request_parser<http::string_body>> parser_;
  size_t requests_ = 0;
  bool keep_alive_ = false;
  bool head_ = false;
  unsigned version_ = 11;
  Clock::time_point started_;
  std::string_view kind_;
  ApiAction action_;
  Clock::time_point follow_deadline_;
  std::optional<http::response<http::empty_body>> stream_response_;
  std::optional<http::response_serializer<http::empty_body>> stream_serializer_;
  std::string chunk_;
};

}  // namespace

std::string_view ProofRouteKind(std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  if (path == "/v1/checkpoint") return "checkpoint";
  if (path == "/v1/ledger/consistency") return "consistency";
  if (path.starts_with("/v1/ledger/proof/session/")) return "session";
  if (path.starts_with("/v1/sessions/") && path.find("/proof/step/") != std::string_view::npos) {
    return "step";
  }
  if (path.starts_with("/v1/sessions/") && path.ends_with("/bundle")) return "bundle";
  return {};
}

HttpServer::HttpServer(asio::io_context& io, const Api& api, Log& log,
                       const HttpServerOptions& options, HttpMetrics metrics,
                       const std::atomic<bool>* draining)
    : io_(io),
      api_(api),
      log_(log),
      options_(options),
      metrics_(metrics),
      draining_(draining),
      acceptor_(asio::make_strand(io)),
      open_(std::make_shared<std::atomic<size_t>>(0)),
      registry_(std::make_shared<HttpSessionRegistry>()) {}

StatusOr<std::shared_ptr<HttpServer>> HttpServer::Start(asio::io_context& io, const Api& api,
                                                        Log& log, const HttpServerOptions& options,
                                                        HttpMetrics metrics,
                                                        const std::atomic<bool>* draining) {
  beast::error_code error;
  const asio::ip::address address = asio::ip::make_address(options.address, error);
  if (error) return InvalidArgumentError(fmt::format("bad address '{}'", options.address));
  std::shared_ptr<HttpServer> server(new HttpServer(io, api, log, options, metrics, draining));
  const tcp::endpoint endpoint(address, options.port);
  server->acceptor_.open(endpoint.protocol(), error);
  if (!error) server->acceptor_.set_option(asio::socket_base::reuse_address(true), error);
  if (!error) server->acceptor_.bind(endpoint, error);
  if (!error) server->acceptor_.listen(asio::socket_base::max_listen_connections, error);
  if (error) {
    return UnavailableError(
        fmt::format("http listen on {}:{}: {}", options.address, options.port, error.message()));
  }
  server->port_ = server->acceptor_.local_endpoint().port();
  asio::dispatch(server->acceptor_.get_executor(), [server] { server->DoAccept(); });
  return server;
}

void HttpServer::DoAccept() {
  acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](
                                                     beast::error_code error, tcp::socket socket) {
    if (error == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
    if (!error) {
      if (self->open_->load() >= kMaxHttpConnections) {
        beast::error_code ignored;
        socket.close(ignored);
      } else {
        ++*self->open_;
        std::make_shared<HttpSession>(std::move(socket), self->api_, self->log_, self->options_,
                                      self->metrics_, self->draining_, self->open_, self->registry_)
            ->Start();
      }
    }
    self->DoAccept();
  });
}

void HttpServer::Stop() {
  asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
    beast::error_code ignored;
    self->acceptor_.close(ignored);
  });
  std::vector<std::function<void()>> closers;
  {
    std::lock_guard lock(registry_->mutex);
    for (auto& [id, closer] : registry_->closers) closers.push_back(closer);
  }
  for (auto& closer : closers) closer();
}

}  // namespace fp::supervisor
