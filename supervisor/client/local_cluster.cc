// LocalCluster; see local_cluster.h.
#include "supervisor/client/local_cluster.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <signal.h>

#include "common/tlog/note.h"
#include "supervisor/client/api_client.h"

namespace fp::client {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A signer key file is one short line.
constexpr size_t kMaxSignerKeyBytes = 4096;

std::string Ms(std::chrono::milliseconds duration) { return std::to_string(duration.count()); }

// The value of `key=` in a line of space-separated key=value pairs, or "".
std::string LineValue(std::string_view line, std::string_view key) {
  const std::string needle = std::string(key) + "=";
  size_t at = 0;
  while ((at = line.find(needle, at)) != std::string_view::npos) {
    if (at == 0 || line[at - 1] == ' ') {
      const size_t start = at + needle.size();
      return std::string(line.substr(start, line.find(' ', start) - start));
    }
    at += needle.size();
  }
  return "";
}

Status WriteFile(const fs::path& path, std::string_view text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
  file.close();
  if (!file) return UnavailableError(fmt::format("cannot write {}", path.string()));
  return OkStatus();
}

StatusOr<uint16_t> ParsePort(const std::string& text, std::string_view what) {
  unsigned port = 0;
  if (std::sscanf(text.c_str(), "%u", &port) != 1 || port > 65535) {
    return InternalError(fmt::format("{}: '{}' is not a port", what, text));
  }
  return static_cast<uint16_t>(port);
}

Status Validate(const LocalClusterOptions& options) {
  if (options.binary.empty()) return InvalidArgumentError("the fieldprint binary is required");
  if (options.dir.empty()) return InvalidArgumentError("a working directory is required");
  if (options.workers == 0 || options.workers > kMaxLocalWorkers) {
    return InvalidArgumentError(fmt::format("workers must be in 1..{}", kMaxLocalWorkers));
  }
  if (options.replicas == 0 || options.replicas > options.workers) {
    return InvalidArgumentError(
        fmt::format("replicas must be in 1..{} (one worker per replica)", options.workers));
  }
  if (options.fault.has_value() && options.fault->worker >= options.workers) {
    return InvalidArgumentError("the faulty worker's index is out of range");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const LocalClusterOptions& options,
                                                            const ProgressFn& progress) {
  FP_RETURN_IF_ERROR(Validate(options));
  std::unique_ptr<LocalCluster> cluster(new LocalCluster(options));
  const auto note = [&](const std::string& line) {
    if (progress) progress(line);
  };
  FP_RETURN_IF_ERROR(cluster->Prepare(note));
  FP_ASSIGN_OR_RETURN(cluster->worker_port_, ProbeFreePort());
  for (uint32_t i = 0; i < options.workers; ++i) FP_RETURN_IF_ERROR(cluster->StartWorker(i));
  std::string started;
  for (uint32_t i = 0; i < options.workers; ++i) {
    started += fmt::format("{}{} (pid {})", i == 0 ? "" : ", ", cluster->worker_name(i),
                           cluster->workers_[i]->pid());
  }
  note(fmt::format("workers started: {}", started));
  if (options.fault.has_value()) {
    const WorkerFault& fault = *options.fault;
    note(fmt::format("{} injects a fault: {} at step {} of its session #{} (bit {} of element {})",
                     cluster->worker_name(fault.worker), fault.kind, fault.step, fault.session,
                     fault.bit, fault.element));
  }
  FP_RETURN_IF_ERROR(cluster->StartSupervisorProcess());
  note(fmt::format("supervisor started (pid {}): API {}, workers connect to 127.0.0.1:{}",
                   cluster->supervisor_->pid(), cluster->api_url(), cluster->worker_port_));
  FP_RETURN_IF_ERROR(cluster->WaitForWorkers(options.start_timeout));
  note(fmt::format("{} workers registered; numerics profile {}", options.workers,
                   cluster->profile_.substr(0, 16)));
  FP_RETURN_IF_ERROR(cluster->WriteVerifierKey());
  return cluster;
}

LocalCluster::~LocalCluster() {
  if (!kept_) Stop();
}

Status LocalCluster::Prepare(const ProgressFn& progress) {
  std::error_code error;
  fs::create_directories(fs::path(options_.dir) / "logs", error);
  if (error) {
    return UnavailableError(fmt::format("cannot create {}: {}", options_.dir, error.message()));
  }
  std::string names = kLocalSupervisorName;
  for (uint32_t i = 0; i < options_.workers; ++i) names += "," + worker_name(i);
  for (const std::string& extra : options_.extra_cert_names) names += "," + extra;
  FP_RETURN_IF_ERROR(RunTool("certs", {"certs", "init", certs_dir(), "--names", names}));
  progress(fmt::format("certificates: a fresh CA and {} in {}", names, certs_dir()));
  const std::string model_dir = (fs::path(options_.dir) / "model").string();
  FP_RETURN_IF_ERROR(RunTool("model", {"model", "mk-tiny", model_dir}));
  progress(fmt::format("model: '{}' (byte-level tiny LLaMA, CPU engine) in {}", kLocalModelName,
                       model_dir));
  if (options_.fault.has_value()) {
    const WorkerFault& fault = *options_.fault;
    std::string toml =
        fmt::format("[faults]\nkind = \"{}\"\nsession = {}\nstep = {}\nbit = {}\nelement = {}\n",
                    fault.kind, fault.session, fault.step, fault.bit, fault.element);
    if (fault.kind == "stall") toml += fmt::format("stall-ms = {}\n", fault.stall_ms);
    FP_RETURN_IF_ERROR(WriteFile(fs::path(options_.dir) / "faults.toml", toml));
  }
  return OkStatus();
}

ProcessOptions LocalCluster::ProcessFor(const std::string& name,
                                        std::vector<std::string> argv) const {
  ProcessOptions process;
  process.argv = std::move(argv);
  process.stdout_path = (fs::path(options_.dir) / "logs" / (name + ".out")).string();
  process.stderr_path = log_path(name);
  process.die_with_parent = options_.die_with_parent;
  return process;
}

Status LocalCluster::RunTool(const std::string& name, std::vector<std::string> args) {
  args.insert(args.begin(), options_.binary);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> tool,
                      ChildProcess::Spawn(name, ProcessFor(name, std::move(args))));
  StatusOr<int> status = tool->WaitExit(options_.start_timeout);
  if (!status.ok()) return status.status();
  if (*status != 0) {
    return InternalError(fmt::format("`fieldprint {}` {}; stderr:\n{}", name,
                                     DescribeWaitStatus(*status), tool->StderrTail(4096)));
  }
  return OkStatus();
}

std::vector<std::string> LocalCluster::WorkerCommand(const std::string& name,
                                                     const std::string& certs_dir) const {
  const fs::path dir(options_.dir);
  return {options_.binary,
          "worker",
          "--name",
          name,
          "--certs-dir",
          certs_dir,
          "--supervisor",
          fmt::format("{}@127.0.0.1:{}", kLocalSupervisorName, worker_port_),
          "--model",
          fmt::format("{}={}", kLocalModelName, (dir / "model").string()),
          "--data-dir",
          (dir / name).string(),
          "--metrics-address",
          "127.0.0.1:0",
          "--threads",
          std::to_string(options_.worker_threads),
          "--kv-budget-mb",
          "64",
          "--window-steps",
          "4",
          "--window-ms",
          "20",
          "--heartbeat-ms",
          "1000",
          "--reconnect-initial-ms",
          "50",
          "--reconnect-max-ms",
          "300",
          "--drain-ms",
          "2000",
          "--log-level",
          options_.log_level,
          "--log-format",
          options_.log_format};
}

Status LocalCluster::StartWorker(uint32_t index) {
  const std::string name = worker_name(index);
  std::vector<std::string> argv = WorkerCommand(name, certs_dir());
  if (options_.fault.has_value() && options_.fault->worker == index) {
    argv.push_back("--config");
    argv.push_back((fs::path(options_.dir) / "faults.toml").string());
    argv.push_back("--unsafe-fault-injection");
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> worker,
                      ChildProcess::Spawn(name, ProcessFor(name, std::move(argv))));
  const std::string model_prefix = fmt::format("model={} ", kLocalModelName);
  FP_ASSIGN_OR_RETURN(
      std::string model_line,
      worker->WaitForLine([&](std::string_view line) { return line.starts_with(model_prefix); },
                          options_.start_timeout));
  FP_ASSIGN_OR_RETURN(
      std::string ports_line,
      worker->WaitForLine([](std::string_view line) { return line.starts_with("worker_profile="); },
                          options_.start_timeout));
  const std::string profile = LineValue(model_line, "profile");
  if (profile.empty()) return InternalError(fmt::format("{} printed '{}'", name, model_line));
  if (!profile_.empty() && profile != profile_) {
    return FailedPreconditionError(fmt::format(
        "{} computes numerics profile {} where the others compute {}", name, profile, profile_));
  }
  profile_ = profile;
  anchors_ = LineValue(model_line, "anchors");
  FP_ASSIGN_OR_RETURN(uint16_t metrics_port,
                      ParsePort(LineValue(ports_line, "metrics_port"), name));
  if (workers_.size() <= index) {
    workers_.resize(index + 1);
    worker_metrics_ports_.resize(index + 1);
  }
  workers_[index] = std::move(worker);
  worker_metrics_ports_[index] = metrics_port;
  return OkStatus();
}

Status LocalCluster::StartSupervisorProcess() {
  const fs::path dir(options_.dir);
  std::string model = fmt::format("{}={}", kLocalModelName, profile_);
  if (!anchors_.empty()) model += ":" + anchors_;
  std::vector<std::string> argv = {options_.binary,
                                   "supervisor",
                                   "--data-dir",
                                   (dir / "supervisor").string(),
                                   "--certs-dir",
                                   certs_dir(),
                                   "--tls-name",
                                   kLocalSupervisorName,
                                   "--worker-port",
                                   std::to_string(worker_port_),
                                   "--http-port",
                                   std::to_string(http_port_),
                                   "--replicas",
                                   std::to_string(options_.replicas),
                                   "--default-max-tokens",
                                   std::to_string(options_.default_max_tokens),
                                   "--model",
                                   model,
                                   "--tokenizer",
                                   fmt::format("{}={}", kLocalModelName, (dir / "model").string()),
                                   "--tick-interval-ms",
                                   Ms(options_.tick_interval),
                                   "--checkpoint-every",
                                   "1",
                                   "--checkpoint-interval-ms",
                                   Ms(options_.checkpoint_interval),
                                   "--worker-grace-ms",
                                   Ms(options_.worker_grace),
                                   "--replica-deadline-ms",
                                   Ms(options_.replica_deadline),
                                   "--log-level",
                                   options_.log_level,
                                   "--log-format",
                                   options_.log_format};
  FP_ASSIGN_OR_RETURN(
      supervisor_,
      ChildProcess::Spawn(kLocalSupervisorName, ProcessFor(kLocalSupervisorName, std::move(argv))));
  FP_ASSIGN_OR_RETURN(std::string ports,
                      supervisor_->WaitForLine(
                          [](std::string_view line) { return line.starts_with("worker_port="); },
                          options_.start_timeout));
  FP_ASSIGN_OR_RETURN(http_port_, ParsePort(LineValue(ports, "http_port"), "supervisor"));
  ApiClient api(SupervisorUrl{"127.0.0.1", http_port_});
  return api.WaitReady(options_.start_timeout);
}

Status LocalCluster::WaitForWorkers(std::chrono::milliseconds timeout) {
  ApiClient api(SupervisorUrl{"127.0.0.1", http_port_});
  const auto deadline = Clock::now() + timeout;
  while (true) {
    StatusOr<std::vector<WorkerView>> workers = api.Workers();
    size_t active = 0;
    if (workers.ok()) {
      for (const WorkerView& worker : *workers) active += worker.phase == "active" ? 1 : 0;
    }
    if (active >= options_.workers) return OkStatus();
    for (const std::unique_ptr<ChildProcess>& worker : workers_) {
      if (!worker->Running()) {
        return AbortedError(fmt::format("{} {}; stderr:\n{}", worker->name(),
                                        DescribeWaitStatus(worker->exit_status()),
                                        worker->StderrTail(4096)));
      }
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(fmt::format("{} of {} workers registered after {} ms (see {})",
                                               active, options_.workers, timeout.count(),
                                               (fs::path(options_.dir) / "logs").string()));
    }
    std::this_thread::sleep_for(kSessionPollInterval);
  }
}

Status LocalCluster::WriteVerifierKey() {
  const fs::path signer_file = fs::path(options_.dir) / "supervisor" / "checkpoint.key";
  std::ifstream file(signer_file, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  std::string key = text.str();
  if (!file || key.size() > kMaxSignerKeyBytes) {
    return UnavailableError(fmt::format("cannot read {}", signer_file.string()));
  }
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  StatusOr<tlog::NoteSigner> signer = tlog::NoteSigner::Parse(key);
  if (!signer.ok()) return signer.status().WithContext(signer_file.string());
  verifier_key_ = signer->Verifier().ToString();
  return WriteFile(verifier_key_file(), verifier_key_ + "\n");
}

std::string LocalCluster::api_url() const {
  return SupervisorUrl{"127.0.0.1", http_port_}.ToString();
}

std::string LocalCluster::verifier_key_file() const {
  return (fs::path(options_.dir) / "verifier.key").string();
}

std::string LocalCluster::certs_dir() const { return (fs::path(options_.dir) / "certs").string(); }

std::string LocalCluster::log_path(const std::string& name) const {
  return (fs::path(options_.dir) / "logs" / (name + ".log")).string();
}

std::string LocalCluster::worker_name(uint32_t index) const {
  return fmt::format("worker-{}", index);
}

ProcessInfo LocalCluster::supervisor_info() const {
  return ProcessInfo{kLocalSupervisorName, supervisor_ != nullptr ? supervisor_->pid() : 0, 0};
}

std::vector<ProcessInfo> LocalCluster::worker_infos() const {
  std::vector<ProcessInfo> infos;
  for (size_t i = 0; i < workers_.size(); ++i) {
    infos.push_back(ProcessInfo{workers_[i]->name(), workers_[i]->pid(), worker_metrics_ports_[i]});
  }
  return infos;
}

Status LocalCluster::KillWorker(uint32_t index, int signal) {
  if (index >= workers_.size()) return InvalidArgumentError("no such worker");
  FP_RETURN_IF_ERROR(workers_[index]->Signal(signal));
  if (signal == SIGKILL || signal == SIGTERM) {
    return workers_[index]->WaitExit(options_.stop_grace).status();
  }
  return OkStatus();
}

Status LocalCluster::KillSupervisor(int signal) {
  FP_RETURN_IF_ERROR(supervisor_->Signal(signal));
  return supervisor_->WaitExit(options_.stop_grace).status();
}

Status LocalCluster::RestartSupervisor() {
  if (supervisor_ != nullptr && supervisor_->Running()) {
    return FailedPreconditionError("the supervisor still runs");
  }
  // Keep the old stderr beside the new one: a test that fails wants both.
  std::error_code ignored;
  fs::rename(log_path(kLocalSupervisorName), log_path(kLocalSupervisorName) + ".1", ignored);
  return StartSupervisorProcess();
}

std::vector<std::string> LocalCluster::Stop() {
  std::vector<std::string> lines;
  if (stopped_ || kept_) return lines;
  stopped_ = true;
  // Workers first, while the supervisor can still acknowledge what they drain; all at once.
  for (const std::unique_ptr<ChildProcess>& worker : workers_) {
    if (worker != nullptr && worker->Running()) worker->Signal(SIGTERM).IgnoreError();
  }
  for (const std::unique_ptr<ChildProcess>& worker : workers_) {
    if (worker == nullptr) continue;
    const int status = worker->Stop(options_.stop_grace);
    lines.push_back(
        fmt::format("{} (pid {}) {}", worker->name(), worker->pid(), DescribeWaitStatus(status)));
  }
  if (supervisor_ != nullptr) {
    const int status = supervisor_->Stop(options_.stop_grace);
    lines.push_back(fmt::format("{} (pid {}) {}", supervisor_->name(), supervisor_->pid(),
                                DescribeWaitStatus(status)));
  }
  return lines;
}

void LocalCluster::Keep() {
  kept_ = true;
  if (supervisor_ != nullptr) supervisor_->Release();
  for (const std::unique_ptr<ChildProcess>& worker : workers_) worker->Release();
}

}  // namespace fp::client
