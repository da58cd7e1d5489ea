// HttpClient; see http_client.h.
#include "supervisor/net/http_client.h"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

namespace fp::supervisor {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

HttpClient::HttpClient(std::string host, uint16_t port, std::chrono::milliseconds timeout)
    : host_(std::move(host)), port_(port), timeout_(timeout) {}

HttpClient::~HttpClient() {
  if (stream_.has_value()) {
    beast::error_code ignored;
    stream_->socket().shutdown(tcp::socket::shutdown_both, ignored);
  }
}

void HttpClient::RunIo() {
  io_.restart();
  io_.run();
}

Status HttpClient::Connect() {
  stream_.emplace(io_);
  // Name resolution has no stream to carry a deadline, so it runs under run_for and is cancelled
  // (and drained) when the deadline passes.
  tcp::resolver resolver(io_);
  tcp::resolver::results_type endpoints;
  beast::error_code error;
  bool resolved = false;
  resolver.async_resolve(host_, std::to_string(port_),
                         [&](beast::error_code e, tcp::resolver::results_type results) {
                           error = e;
                           endpoints = std::move(results);
                           resolved = true;
                         });
  io_.restart();
  io_.run_for(timeout_);
  if (!resolved) {
    resolver.cancel();
    RunIo();
    stream_.reset();
    return DeadlineExceededError(fmt::format("resolve {}: timed out", host_));
  }
  if (!error) {
    stream_->expires_after(timeout_);
    stream_->async_connect(endpoints,
                           [&](beast::error_code e, const tcp::endpoint&) { error = e; });
    RunIo();
  }
  if (error) {
    stream_.reset();
    if (error == beast::error::timeout) {
      return DeadlineExceededError(fmt::format("connect {}:{}: timed out", host_, port_));
    }
    return UnavailableError(fmt::format("connect {}:{}: {}", host_, port_, error.message()));
  }
  stream_->socket().set_option(tcp::no_delay(true), error);
  return OkStatus();
}

StatusOr<HttpResponse> HttpClient::Request(http::verb method, const std::string& target,
                                           const std::string& body, const HttpHeaders& headers) {
  // Only a request that is safe to repeat is resent after a failure: a POST may have reached the
  // server before the connection broke, and resending it could submit a session twice. So a
  // non-idempotent request goes on a fresh connection, which the server cannot have closed
  // while it sat idle, and is never retried.
  const bool idempotent = method == http::verb::get || method == http::verb::head;
  if (!idempotent) stream_.reset();
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!stream_.has_value()) FP_RETURN_IF_ERROR(Connect());
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, host_);
    request.keep_alive(true);
    for (const auto& [name, value] : headers) request.set(name, value);
    if (!body.empty()) {
      request.set(http::field::content_type, "application/json");
      request.body() = body;
    }
    request.prepare_payload();
    beast::error_code error;
    // One deadline covers writing the request and reading the whole response. The operations are
    // asynchronous because a tcp_stream's deadline applies to asynchronous operations only.
    stream_->expires_after(timeout_);
    http::async_write(*stream_, request, [&](beast::error_code e, size_t) { error = e; });
    RunIo();
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxClientBodyBytes);
    if (!error) {
      http::async_read(*stream_, buffer, parser, [&](beast::error_code e, size_t) { error = e; });
      RunIo();
    }
    if (error) {
      stream_.reset();
      // A kept-alive connection the server closed fails at once: retry once on a fresh one.
      if (idempotent && attempt == 0 &&
          (error == http::error::end_of_stream || error == boost::asio::error::connection_reset ||
           error == boost::asio::error::broken_pipe)) {
        continue;
      }
      if (error == beast::error::timeout) return DeadlineExceededError("http request timed out");
      return UnavailableError("http: " + error.message());
    }
    HttpResponse response;
    response.status = parser.get().result_int();
    response.content_type = std::string(parser.get()[http::field::content_type]);
    response.body = std::move(parser.get().body());
    if (!parser.get().keep_alive()) stream_.reset();
    return response;
  }
  return UnavailableError("http: connection closed twice");
}

}  // namespace fp::supervisor
