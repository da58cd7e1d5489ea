// LocalCluster: a real fieldprint cluster on loopback, one process per role, for `fieldprint demo`
// and the end-to-end tests: fresh certificates (`certs init`), the embedded tiny model (`model
// mk-tiny`), N workers (`worker`, one of them optionally injecting a fault) and one supervisor
// (`supervisor`), all started from the same binary.
//
// Start order: the workers first, because the supervisor's `--model tiny=PROFILE` takes the
// numerics profile the workers compute and print; they point at a worker port probed free and
// keep reconnecting until the supervisor listens there. The HTTP port is ephemeral on the first
// start and reused on restarts, so the API's URL stays the same.
//
// Layout of `dir`: certs/, model/, supervisor/ (its data directory), worker-N/ (each worker's data
// directory), logs/NAME.out and logs/NAME.log (each process's stdout and stderr), faults.toml,
// verifier.key (the supervisor's public checkpoint key, for `fieldprint audit --key-file`).
//
// Thread-safety: one thread drives a LocalCluster.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "supervisor/client/process.h"

namespace fp::client {

inline constexpr uint32_t kMaxLocalWorkers = 16;
inline constexpr char kLocalModelName[] = "tiny";
inline constexpr char kLocalSupervisorName[] = "supervisor-0";

// A fault one worker injects (node/worker/fault_plan.h; needs --unsafe-fault-injection, which
// the cluster passes to that worker only).
struct WorkerFault {
  uint32_t worker = 0;              // index of the faulty worker
  std::string kind = "hidden-bit";  // hidden-bit, kv-row, wrong-digest, stall, crash, weight-bit
  int64_t session = 0;              // ordinal of the targeted session on that worker; -1: all
  uint64_t step = 0;
  int32_t bit = 14;
  int64_t element = 0;
  int64_t stall_ms = 0;  // stall only
};

struct LocalClusterOptions {
  std::string binary;  // the fieldprint executable
  std::string dir;     // working directory; created if missing, never removed by the cluster
  uint32_t workers = 3;
  uint32_t replicas = 3;                      // the supervisor's default per session
  uint32_t default_max_tokens = 16;           // the supervisor's default per session
  std::vector<std::string> extra_cert_names;  // more node certificates from the same CA
  std::optional<WorkerFault> fault;
  bool die_with_parent = true;  // see ProcessOptions
  std::string log_level = "info";
  std::string log_format = "text";  // "json" for tests that read the logs
  uint32_t worker_threads = 1;
  std::chrono::milliseconds start_timeout{30'000};  // per step of the start
  std::chrono::milliseconds stop_grace{10'000};     // SIGTERM to SIGKILL
  // Supervisor timing: short, so that the cluster reacts within a demo's or test's time.
  std::chrono::milliseconds worker_grace{1'500};
  std::chrono::milliseconds replica_deadline{20'000};
  std::chrono::milliseconds checkpoint_interval{200};
  std::chrono::milliseconds tick_interval{100};
};

// Called with one line per start milestone (may be empty).
using ProgressFn = std::function<void(const std::string&)>;

struct ProcessInfo {
  std::string name;
  pid_t pid = 0;
  uint16_t metrics_port = 0;  // workers; 0 for the supervisor (its metrics are at the API)
};

class LocalCluster {
 public:
  // Creates the certificates and the model, starts the workers and the supervisor, and waits
  // (each step bounded by start_timeout) until /readyz answers and every worker is registered.
  // InvalidArgument for bad options; the error of the step that failed otherwise, with the tail
  // of the failing process's stderr. The caller owns the result; destroying it stops the cluster
  // unless Keep() was called.
  static StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options,
                                                       const ProgressFn& progress);
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const LocalClusterOptions& options() const { return options_; }
  std::string api_url() const;  // http://127.0.0.1:PORT
  uint16_t http_port() const { return http_port_; }
  uint16_t worker_port() const { return worker_port_; }
  const std::string& numerics_profile() const { return profile_; }  // hex
  const std::string& verifier_key() const { return verifier_key_; }
  std::string verifier_key_file() const;
  std::string certs_dir() const;
  std::string log_path(const std::string& name) const;  // the process's stderr file
  std::string worker_name(uint32_t index) const;
  ProcessInfo supervisor_info() const;
  std::vector<ProcessInfo> worker_infos() const;

  // The argv of worker `name` with the TLS files of `certs_dir` (tests start impostors with it).
  std::vector<std::string> WorkerCommand(const std::string& name,
                                         const std::string& certs_dir) const;

  // Sends `signal` to worker `index` and, for a fatal one, waits for it to exit.
  Status KillWorker(uint32_t index, int signal);
  // Sends `signal` to the supervisor and waits for it to exit.
  Status KillSupervisor(int signal);
  // Starts the supervisor again on the same data directory and ports; waits for /readyz.
  Status RestartSupervisor();

  // Stops the workers, then the supervisor (SIGTERM, stop_grace, SIGKILL). Returns one line per
  // process describing how it exited. Idempotent.
  std::vector<std::string> Stop();
  // Leaves every process running after this object is gone (the demo's --keep).
  void Keep();

 private:
  explicit LocalCluster(LocalClusterOptions options) : options_(std::move(options)) {}
  Status Prepare(const ProgressFn& progress);
  Status RunTool(const std::string& name, std::vector<std::string> args);
  Status StartWorker(uint32_t index);
  Status StartSupervisorProcess();
  Status WaitForWorkers(std::chrono::milliseconds timeout);
  Status WriteVerifierKey();
  ProcessOptions ProcessFor(const std::string& name, std::vector<std::string> argv) const;

  const LocalClusterOptions options_;
  uint16_t worker_port_ = 0;
  uint16_t http_port_ = 0;  // 0 until the supervisor first started
  std::string profile_;     // hex
  std::string anchors_;     // hex
  std::string verifier_key_;
  std::unique_ptr<ChildProcess> supervisor_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::vector<uint16_t> worker_metrics_ports_;
  bool kept_ = false;
  bool stopped_ = false;
};

}  // namespace fp::client
