// A small blocking HTTP/1.1 client (Boost.Beast) with keep-alive, for the supervisor's API: the
// user commands (supervisor/client), the operator commands (`supervisor release-worker`), the
// benchmarks and tests. Every call is bounded by the client's timeout: resolving and connecting
// each get one, and writing a request plus reading its response share one.
//
// Thread-safety: one HttpClient per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/verb.hpp>

#include "common/base/status.h"

namespace fp::supervisor {

// Largest response body the client reads.
inline constexpr size_t kMaxClientBodyBytes = size_t{64} << 20;

// Extra request headers (name, value), e.g. Authorization or Idempotency-Key.
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpResponse {
  unsigned status = 0;
  std::string content_type;
  std::string body;
};

class HttpClient {
 public:
  HttpClient(std::string host, uint16_t port,
             std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One request. GET and HEAD use the kept-alive connection and are resent once on a fresh one
  // if the server had closed it; other methods always use a fresh connection and are never
  // resent. DeadlineExceeded when the timeout passes, Unavailable on other network errors.
  StatusOr<HttpResponse> Request(boost::beast::http::verb method, const std::string& target,
                                 const std::string& body = "", const HttpHeaders& headers = {});

 private:
  Status Connect();
  // Runs the pending asynchronous operations to completion (each is bounded by a deadline).
  void RunIo();

  std::string host_;
  uint16_t port_;
  std::chrono::milliseconds timeout_;
  boost::asio::io_context io_;
  std::optional<boost::beast::tcp_stream> stream_;
};

}  // namespace fp::supervisor
