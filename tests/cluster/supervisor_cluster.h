// SupervisorCluster: a real fieldprint supervisor cluster on one machine for fault tests and the
// fault campaign: N etcd members (supervisor/log/testing/etcd_cluster.h, mutual TLS), M `fieldprint
// supervisor` processes of the built binary on one etcd prefix, and W workers of the tiny model
// (`fieldprint model mk-tiny`) that list every supervisor and fail over between them.
//
// Network (network_mode()): where the machine allows it (root, `ip netns add` works; probed once)
// and options.network_namespaces is set, each supervisor runs in a network namespace of its own
// joined by a veth pair (netns_link.h), listens on its namespace's address, and reaches etcd at
// 127.0.0.1 through the veth; a partition (SetLink) then acts on the veth and cuts the supervisor
// off from etcd, its workers and its clients at once. Otherwise (loopback) every process listens
// on 127.0.0.1 and each supervisor reaches each etcd member through its own FaultProxy
// (fault_proxy.h), so a partition cuts it off from etcd only. Either way one supervisor can be
// blackholed or reset while the others are not. Namespaces are deleted by Stop(); those of a
// killed run by a reaper that waits for the test's PID, or else by the next cluster's start (a
// sweep by name prefix and dead PID). The mode is decided once per cluster. Each starts
// from deploy/config/supervisor-cluster.toml when the source tree has it (else supervisor.toml),
// with the machine-specific options (ports, directories, certificates, etcd endpoints) given on
// the command line, which wins over the file.
//
// Faults: SIGKILL and restart (same data directory and ports), SIGSTOP/SIGCONT, a partition
// (see above), a full disk under the data directory, a member replaced from a peer's snapshot, and
// etcd member kills. The full disk is a small tmpfs per supervisor filled by a file when the
// process may mount (root), else a file-size limit of 0 (RLIMIT_FSIZE) set on the running
// supervisor, whose next write to its state then kills it with SIGXFSZ; disk_fault_mode() says
// which one ran.
//
// Layout of `dir`: certs/ (`fieldprint certs init`), model/, supervisor-N/ (data directories),
// worker-N/, admin.token, logs/NAME.out and NAME.log (stdout, stderr; NAME.log.K for earlier
// runs), logs/network.log (the `ip` commands' output in the netns mode).
//
// Thread-safety: one thread drives a cluster (processes die with that thread, PR_SET_PDEATHSIG);
// Member() and the accessors may also be called from other threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "supervisor/client/api_client.h"
#include "supervisor/client/process.h"
#include "supervisor/log/testing/etcd_cluster.h"
#include "tests/cluster/fault_proxy.h"
#include "tests/cluster/netns_link.h"

namespace fp::cluster_test {

inline constexpr size_t kMaxClusterSupervisors = 5;
inline constexpr uint32_t kMaxClusterWorkers = 8;
inline constexpr char kClusterModelName[] = "tiny";
// Bytes the filler of a full disk writes at most (the tmpfs is smaller).
inline constexpr size_t kMaxFillerBytes = size_t{1} << 30;

enum class DiskFaultMode { kTmpfs, kFileSizeLimit };
const char* DiskFaultModeName(DiskFaultMode mode);

// kNetns: a network namespace per supervisor; kLoopback: 127.0.0.1 and fault proxies.
enum class NetworkMode { kLoopback, kNetns };
const char* NetworkModeName(NetworkMode mode);  // "loopback_proxy", "netns"

struct SupervisorClusterOptions {
  std::string binary;      // the fieldprint executable
  std::string source_dir;  // the source tree (deploy/config/)
  std::string dir;         // working directory; created if missing, never removed here
  size_t supervisors = 3;  // 1..kMaxClusterSupervisors
  size_t etcd_members = 3;
  uint32_t workers = 3;  // 1..kMaxClusterWorkers
  uint32_t replicas = 3;
  uint32_t default_max_tokens = 8;
  // Data directories on a tmpfs of this size when root (see DiskFaultMode); 0: plain folders.
  size_t data_disk_mb = 0;
  // A network namespace per supervisor when the machine allows it (see NetworkMode); false:
  // loopback and fault proxies everywhere.
  bool network_namespaces = true;
  // More supervisor flags (after the harness's own; later flags win).
  std::vector<std::string> supervisor_flags;
  std::chrono::milliseconds start_timeout{30'000};
  std::chrono::milliseconds stop_grace{5'000};
  std::string log_level = "info";
};

// One supervisor's view of the cluster (GET /v1/cluster).
struct MemberView {
  std::string id;      // this supervisor's name
  std::string leader;  // the leader it knows; empty if none
  bool is_leader = false;
  int64_t term = 0;        // the leader's term (fencing token)
  uint64_t applied = 0;    // next log position it will apply
  uint64_t log_begin = 0;  // first position the log retains (trimming)
  uint64_t log_end = 0;    // one past the last durable position it has seen
  std::string raw;         // the reply, for reports
};

// Parses the JSON of GET /v1/cluster. DataLoss when a field is missing.
StatusOr<MemberView> ParseMemberView(std::string_view json_text);

class SupervisorCluster {
 public:
  // Starts etcd, writes certificates and the model, starts the workers (they print the numerics
  // profile the supervisors need), then the supervisors, and waits (each step bounded by
  // start_timeout) until every supervisor is ready and every worker registered. The caller owns
  // the result; destroying it stops every process and unmounts the data disks.
  static StatusOr<std::unique_ptr<SupervisorCluster>> Start(
      const SupervisorClusterOptions& options);
  ~SupervisorCluster();
  SupervisorCluster(const SupervisorCluster&) = delete;
  SupervisorCluster& operator=(const SupervisorCluster&) = delete;

  const SupervisorClusterOptions& options() const { return options_; }
  size_t size() const { return supervisors_.size(); }
  std::string name(size_t supervisor) const;  // "supervisor-N"
  client::SupervisorUrl url(size_t supervisor) const;
  std::vector<client::SupervisorUrl> urls() const;
  // A client of one supervisor: one attempt per request, within `timeout`.
  client::ApiClient Api(size_t supervisor,
                        std::chrono::milliseconds timeout = std::chrono::seconds(3)) const;
  // A client of every supervisor, failing over between them.
  client::ApiClient FailoverApi(const client::FailoverOptions& options) const;
  const std::string& numerics_profile() const { return profile_; }
  std::string model_dir() const;
  std::string log_path(const std::string& process) const;
  std::string data_dir(size_t supervisor) const;
  std::string admin_token_file() const;  // the supervisors' admin token
  supervisor::testing::EtcdCluster& etcd() { return *etcd_; }
  DiskFaultMode disk_fault_mode() const { return disk_mode_; }
  NetworkMode network_mode() const { return network_mode_; }
  // The address a supervisor listens on (its namespace's, or 127.0.0.1).
  std::string host(size_t supervisor) const;
  bool Running(size_t supervisor);

  // SIGKILL, and waits for the exit.
  Status Kill(size_t supervisor);
  // Starts a supervisor that is not running again on its data directory and ports, and waits
  // until it answers /readyz. FailedPrecondition while it runs.
  Status Restart(size_t supervisor);
  Status Pause(size_t supervisor);   // SIGSTOP
  Status Resume(size_t supervisor);  // SIGCONT
  // Replaces a stopped member's machine: deletes everything in its data directory but the key
  // files, installs a snapshot of `peer`'s state (`fieldprint supervisor bootstrap`), and starts
  // it. FailedPrecondition while it runs; the bootstrap's error otherwise.
  Status Replace(size_t supervisor, size_t peer);
  // Partitions `supervisor` (kBlackhole: packets dropped; kReject: connections fail) or heals it
  // (kPass): in kNetns mode on its veth (from etcd, workers and clients; netns_link.h), in
  // kLoopback mode on every proxy between it and etcd (from etcd only). Internal when an `ip`
  // command fails.
  Status SetLink(size_t supervisor, ProxyMode mode);
  // Makes the data directory's disk full (see DiskFaultMode); FreeDisk undoes it (the supervisor
  // may have exited meanwhile: Restart it).
  Status FillDisk(size_t supervisor);
  Status FreeDisk(size_t supervisor);

  // GET /v1/cluster of one supervisor, within `timeout`.
  StatusOr<MemberView> Member(size_t supervisor,
                              std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;
  // The index of the supervisor that reports itself leader (and that every other answering
  // supervisor names), skipping `excluded`; DeadlineExceeded after `timeout`.
  StatusOr<size_t> WaitForLeader(std::chrono::milliseconds timeout,
                                 const std::vector<size_t>& excluded = {}) const;

  // Stops the workers, then the supervisors, then etcd. Returns a line per process. Idempotent.
  std::vector<std::string> Stop();
  // The last `max_bytes` of each process's stderr, for a failed test's report.
  std::string LogTails(size_t max_bytes) const;

 private:
  struct SupervisorProcess {
    uint16_t worker_port = 0;
    uint16_t http_port = 0;
    std::vector<std::unique_ptr<FaultProxy>> proxies;  // one per etcd member (kLoopback)
    std::unique_ptr<NetnsLink> netns;                  // kNetns
    std::unique_ptr<client::ChildProcess> process;
    bool disk_mounted = false;
    int runs = 0;
  };
  explicit SupervisorCluster(SupervisorClusterOptions options) : options_(std::move(options)) {}
  Status Prepare();
  Status RunTool(const std::string& name, std::vector<std::string> args);
  Status MountDataDisk(size_t supervisor);
  Status PrepareNetwork(size_t supervisor, size_t netns_slot);
  // Writes one fresh ledger key (checkpoint.key) into every data directory.
  Status ProvisionLedgerKey();
  Status StartWorker(uint32_t index);
  Status StartSupervisor(size_t supervisor);
  std::vector<std::string> SupervisorCommand(size_t supervisor) const;
  std::string ConfigFile() const;
  Status WaitForWorkers();
  client::ProcessOptions ProcessFor(const std::string& name, std::vector<std::string> argv) const;

  const SupervisorClusterOptions options_;
  std::unique_ptr<supervisor::testing::EtcdCluster> etcd_;
  std::vector<SupervisorProcess> supervisors_;
  std::vector<std::unique_ptr<client::ChildProcess>> workers_;
  std::string profile_;  // hex
  std::string anchors_;  // hex
  DiskFaultMode disk_mode_ = DiskFaultMode::kFileSizeLimit;
  NetworkMode network_mode_ = NetworkMode::kLoopback;
  bool stopped_ = false;
};

}  // namespace fp::cluster_test
