// EtcdCluster: real etcd processes (Debian's etcd-server, 3.4) for tests and benchmarks of the
// etcd log backend: 1 or 3 members on free loopback ports, each with its data directory in one
// temporary folder, optionally with mutual TLS on client and peer ports using certificates made
// by `fieldprint certs` code (common/wire/certs.h). Members can be killed (SIGKILL), paused
// (SIGSTOP), resumed and restarted on their data directory. Every member is killed when the
// cluster is destroyed, and also when the thread that started it exits (PR_SET_PDEATHSIG), so a
// crashed test leaves no etcd behind.
//
// Elections are tuned for loopback (heartbeat 25 ms, election timeout 250 ms) so that a killed
// leader is replaced within about a second, not the default several seconds.
//
// Thread-safety: one thread uses a cluster (the one that started it: members die with it).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/base/temp_dir.h"
#include "supervisor/client/process.h"
#include "supervisor/log/etcd_client.h"

namespace fp::supervisor::testing {

inline constexpr size_t kMaxEtcdMembers = 7;

struct EtcdClusterOptions {
  size_t members = 3;  // 1..kMaxEtcdMembers
  bool tls = true;
  std::string etcd_binary = "etcd";  // looked up on PATH
  std::chrono::milliseconds start_timeout{20'000};
  size_t max_txn_ops = 128;  // --max-txn-ops of every member
};

class EtcdCluster {
 public:
  // True when `binary` can be executed (found on PATH); tests fail with a clear message without it.
  static bool Available(const std::string& binary = "etcd");

  // Creates the certificates (names etcd-0.. and "etcd-client") and starts every member, then
  // waits until each answers a linearizable read (starting again on fresh ports when a probed
  // port was taken meanwhile). Unavailable with the tail of a member's stderr when one does not
  // come up within start_timeout. The caller owns the result.
  static StatusOr<std::unique_ptr<EtcdCluster>> Start(const EtcdClusterOptions& options);
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  size_t size() const { return members_.size(); }
  // Client options for every member (first = `first`, then the others in order), with the
  // client certificate when the cluster runs TLS.
  etcd::ClientOptions ClientOptionsFor(size_t first = 0) const;
  etcd::Endpoint endpoint(size_t member) const;
  pid_t pid(size_t member) const;

  Status Kill(size_t member);    // SIGKILL, then reaped
  Status Pause(size_t member);   // SIGSTOP
  Status Resume(size_t member);  // SIGCONT
  // Starts a killed member again on its data directory and waits until it serves reads.
  Status Restart(size_t member);
  // Waits until `member` answers a linearizable read (Unavailable after `timeout`).
  Status WaitHealthy(size_t member, std::chrono::milliseconds timeout);

 private:
  struct Member {
    std::string name;
    uint16_t client_port = 0;
    uint16_t peer_port = 0;
    std::unique_ptr<client::ChildProcess> process;
  };
  explicit EtcdCluster(EtcdClusterOptions options) : options_(std::move(options)) {}
  static StatusOr<std::unique_ptr<EtcdCluster>> StartOnce(const EtcdClusterOptions& options);
  Status Spawn(size_t member, bool fresh);

  const EtcdClusterOptions options_;
  std::unique_ptr<ScopedTempDir> dir_;
  std::string initial_cluster_;
  std::vector<Member> members_;
};

}  // namespace fp::supervisor::testing
