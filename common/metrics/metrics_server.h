// MetricsServer: serves a prometheus::Registry over HTTP/1.1 at GET /metrics for scraping.
//
// A small Boost.Beast server on its own io_context thread: one Connection object per TCP
// connection (kept alive by shared_from_this, on its own strand), a deadline on every read and
// write, bounded request headers and bodies, at most kMaxMetricsConnections open connections
// (extra ones are closed at once), keep-alive up to kMaxRequestsPerConnection requests. GET or
// HEAD /metrics answers 200 with the text format (Content-Type "text/plain; version=0.0.4"); any
// other path answers 404, any other method 405.
//
// Thread-safety: Start, port and Stop are called from the owning thread; the registry is read on
// the server thread (prometheus-cpp registries are thread-safe).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/base/status.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace fp::metrics {

inline constexpr size_t kMaxMetricsConnections = 64;
inline constexpr size_t kMaxRequestsPerConnection = 1000;
inline constexpr size_t kMaxRequestHeaderBytes = 8 * 1024;
inline constexpr size_t kMaxRequestBodyBytes = 4 * 1024;

struct MetricsServerOptions {
  std::string address = "127.0.0.1";  // an IPv4 or IPv6 literal; "0.0.0.0" listens everywhere
  uint16_t port = 0;                  // 0 picks an ephemeral port; see MetricsServer::port()
  // Each read (a whole request) and each write must finish within this; an idle keep-alive
  // connection is closed when it expires.
  std::chrono::milliseconds connection_timeout{10'000};
};

class MetricsServer {
 public:
  // Binds, listens and starts the server thread. The caller owns the result; `registry` is
  // borrowed and must outlive the server. InvalidArgument for a bad address or a non-positive
  // timeout; Unavailable when the socket cannot be opened, bound (port in use) or listened on.
  static StatusOr<std::unique_ptr<MetricsServer>> Start(const prometheus::Registry& registry,
                                                        const MetricsServerOptions& options);

  // Stops the server (see Stop).
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The bound port (the ephemeral one when options.port was 0).
  uint16_t port() const { return port_; }

  // Stops accepting, closes every open connection, joins the server thread. Idempotent. Must not
  // be called from the server thread.
  void Stop();

 private:
  class Impl;
  MetricsServer(std::unique_ptr<Impl> impl, uint16_t port);

  std::unique_ptr<Impl> impl_;  // null once stopped
  const uint16_t port_;
};

}  // namespace fp::metrics
