// HttpClient; see http_client.h.
#include "supervisor/net/http_client.h"

#include <boost/asio/connect.hpp>
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

Status HttpClient::Connect() {
  stream_.emplace(io_);
  beast::error_code error;
  tcp::resolver resolver(io_);
  auto endpoints = resolver.resolve(host_, std::to_string(port_), error);
  if (!error) {
    stream_->expires_after(timeout_);
    stream_->connect(endpoints, error);
  }
  if (error) {
    stream_.reset();
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
    stream_->expires_after(timeout_);
    http::write(*stream_, request, error);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxClientBodyBytes);
    if (!error) http::read(*stream_, buffer, parser, error);
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
