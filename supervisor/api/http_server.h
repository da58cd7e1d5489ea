// HttpServer: serves the Api (api.h) over HTTP/1.1 with Boost.Beast.
//
// One HttpSession per TCP connection, kept alive by shared_from_this, on its own strand
// (Beast's session style, DoX/OnX pairs). Every read and write has a deadline; request headers,
// bodies and targets are bounded (api.h kMax...); at most kMaxHttpConnections connections are
// open (extra ones are closed at once); keep-alive serves up to kMaxRequestsPerHttpConnection
// requests. Actions that append a record wait for the log's callback, which is posted back to the
// session's strand. Follows (server-sent events, completions) poll the Api every
// kFollowPollInterval until done, for at most kMaxFollowDuration; draining ends them early.
//
// Thread-safety: Start, port and Stop may be called from any thread; sessions run on the
// io_context's threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include "common/base/status.h"
#include "supervisor/api/api.h"
#include "supervisor/log/log.h"

namespace fp::supervisor {

inline constexpr size_t kMaxHttpConnections = 1024;
inline constexpr size_t kMaxRequestsPerHttpConnection = 100'000;
inline constexpr std::chrono::milliseconds kFollowPollInterval{20};
inline constexpr std::chrono::seconds kMaxFollowDuration{900};

// Open sessions' close-if-idle callbacks, so that a drain can end idle keep-alive connections.
struct HttpSessionRegistry {
  std::mutex mutex;
  std::map<uint64_t, std::function<void()>> closers;  // guarded by mutex
  uint64_t next_id = 0;                               // guarded by mutex
};

// Metrics the server records; any pointer may be null.
struct HttpMetrics {
  prometheus::Family<prometheus::Counter>* proof_requests = nullptr;   // label kind
  prometheus::Family<prometheus::Histogram>* proof_latency = nullptr;  // label kind
};

struct HttpServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 0;                                // 0 picks a free port
  std::chrono::milliseconds read_timeout{10'000};   // one whole request
  std::chrono::milliseconds write_timeout{10'000};  // one reply or one stream chunk
};

class HttpServer : public std::enable_shared_from_this<HttpServer> {
 public:
  // Binds and starts accepting on `io`. `io`, `api` and `log` are borrowed and must outlive the
  // server and its sessions; `draining` (borrowed, may be null) ends follows early once set.
  // InvalidArgument for a bad address; Unavailable when the port cannot be bound.
  static StatusOr<std::shared_ptr<HttpServer>> Start(boost::asio::io_context& io, const Api& api,
                                                     Log& log, const HttpServerOptions& options,
                                                     HttpMetrics metrics,
                                                     const std::atomic<bool>* draining);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  // Stops accepting and closes idle keep-alive connections; busy sessions finish their current
  // request (follows end early once `draining` is set). Safe from any thread.
  void Stop();
  size_t open_connections() const { return open_->load(); }

 private:
  HttpServer(boost::asio::io_context& io, const Api& api, Log& log,
             const HttpServerOptions& options, HttpMetrics metrics,
             const std::atomic<bool>* draining);
  void DoAccept();

  boost::asio::io_context& io_;  // borrowed
  const Api& api_;               // borrowed
  Log& log_;                     // borrowed
  const HttpServerOptions options_;
  const HttpMetrics metrics_;
  const std::atomic<bool>* draining_;  // borrowed, may be null
  boost::asio::ip::tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::shared_ptr<std::atomic<size_t>> open_;
  std::shared_ptr<HttpSessionRegistry> registry_;
};

// The proof route a request target names ("step", "session", "consistency", "bundle",
// "checkpoint"), or empty for other routes: the bounded label set of the proof metrics.
std::string_view ProofRouteKind(std::string_view target);

}  // namespace fp::supervisor
