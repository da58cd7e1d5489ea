// FaultProxy: a TCP relay on 127.0.0.1 between one client process and one upstream address, for
// network faults on loopback: every supervisor reaches each etcd member through its own proxy,
// so cutting a supervisor's proxies partitions that supervisor from etcd while the others keep
// working.
//
// Modes:
//   kPass       bytes flow both ways.
//   kBlackhole  a partition that drops packets: open connections stay open but nothing is
//               relayed (bytes read meanwhile are held, as TCP would retransmit them), and new
//               connections are accepted but never reach the upstream, so handshakes hang until
//               the client's own deadline. Back to kPass, held bytes flow on, in order.
//   kReject     a partition that answers with resets: open connections are reset and new ones
//               are reset at once (the client sees "connection reset" or "refused" quickly).
//
// The proxies serve SupervisorCluster's loopback mode, where network namespaces are not allowed
// (no root): a relay needs neither root nor iptables, so the same test runs in CI containers.
// Where namespaces work, the cluster partitions a supervisor's veth instead (netns_link.h), which
// also cuts its workers and clients. etcd's TLS passes through unchanged (the
// proxy listens on 127.0.0.1, which the members' certificates name).
//
// Thread-safety: every public method is safe from any thread; relaying runs on the proxy's own
// I/O thread, and SetMode returns once that thread applied the mode.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "common/base/status.h"

namespace fp::cluster_test {

// Connections one proxy relays at once (more are reset), and bytes held per direction while
// blackholed (beyond it the direction stops reading, like a full TCP window).
inline constexpr size_t kMaxProxyConnections = 256;
inline constexpr size_t kMaxProxyHeldBytes = size_t{4} << 20;

enum class ProxyMode { kPass, kBlackhole, kReject };

const char* ProxyModeName(ProxyMode mode);

class FaultProxy {
 public:
  // Listens on 127.0.0.1 (an ephemeral port) and relays to upstream_host:upstream_port in
  // kPass mode. Unavailable when it cannot listen. The caller owns the result; destroying it
  // closes every connection and stops its thread.
  static StatusOr<std::unique_ptr<FaultProxy>> Start(const std::string& upstream_host,
                                                     uint16_t upstream_port);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  uint16_t port() const { return port_; }
  ProxyMode mode() const { return mode_.load(); }
  // Switches the mode (see above); returns after the I/O thread applied it.
  void SetMode(ProxyMode mode);
  // Connections accepted since the start (tests check that traffic went through the proxy).
  uint64_t accepted() const { return accepted_.load(); }

 private:
  class Link;
  class Impl;
  FaultProxy() = default;

  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
  std::atomic<ProxyMode> mode_{ProxyMode::kPass};
  std::atomic<uint64_t> accepted_{0};
};

}  // namespace fp::cluster_test
