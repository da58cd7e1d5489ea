// EtcdCluster; see etcd_cluster.h.
#include "supervisor/log/testing/etcd_cluster.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <unistd.h>

#include "common/wire/certs.h"
#include "common/wire/tls.h"

namespace fp::supervisor::testing {
namespace {

constexpr char kClientName[] = "etcd-client";
constexpr std::chrono::milliseconds kHealthPollInterval{50};
constexpr std::chrono::milliseconds kKillGrace{0};
// Cluster starts tried when a member finds its probed port taken.
constexpr int kMaxEtcdStartAttempts = 3;

// The executable's absolute path: `binary` itself if it has a '/', else the first match on PATH.
std::string FindExecutable(const std::string& binary) {
  if (binary.find('/') != std::string::npos) return access(binary.c_str(), X_OK) == 0 ? binary : "";
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/bin:/bin";
  while (!dirs.empty()) {
    const size_t colon = dirs.find(':');
    const std::string candidate = std::string(dirs.substr(0, colon)) + "/" + binary;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
  }
  return "";
}

}  // namespace

bool EtcdCluster::Available(const std::string& binary) { return !FindExecutable(binary).empty(); }

StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::Start(const EtcdClusterOptions& options) {
  if (options.members < 1 || options.members > kMaxEtcdMembers) {
    return InvalidArgumentError(fmt::format("etcd cluster: 1..{} members", kMaxEtcdMembers));
  }
  // A probed free port can be taken by another test before etcd binds it (tests run in
  // parallel): then the whole cluster starts again on fresh ports.
  StatusOr<std::unique_ptr<EtcdCluster>> cluster = StartOnce(options);
  for (int attempt = 1;
       attempt < kMaxEtcdStartAttempts && !cluster.ok() &&
       cluster.status().message().find("address already in use") != std::string_view::npos;
       ++attempt) {
    cluster = StartOnce(options);
  }
  return cluster;
}

StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::StartOnce(const EtcdClusterOptions& options) {
  auto cluster = std::unique_ptr<EtcdCluster>(new EtcdCluster(options));
  FP_ASSIGN_OR_RETURN(cluster->dir_, ScopedTempDir::Create("fieldprint-etcd"));
  const char* scheme = options.tls ? "https" : "http";
  wire::CertsOptions certs;
  certs.names = {kClientName};
  for (size_t i = 0; i < options.members; ++i) {
    Member member;
    member.name = fmt::format("etcd-{}", i);
    FP_ASSIGN_OR_RETURN(member.client_port, client::ProbeFreePort());
    FP_ASSIGN_OR_RETURN(member.peer_port, client::ProbeFreePort());
    if (!cluster->initial_cluster_.empty()) cluster->initial_cluster_ += ",";
    cluster->initial_cluster_ +=
        fmt::format("{}={}://127.0.0.1:{}", member.name, scheme, member.peer_port);
    certs.names.push_back(member.name);
    cluster->members_.push_back(std::move(member));
  }
  if (options.tls) FP_RETURN_IF_ERROR(wire::InitCerts(cluster->dir_->Join("certs"), certs));
  for (size_t i = 0; i < options.members; ++i) FP_RETURN_IF_ERROR(cluster->Spawn(i, true));
  for (size_t i = 0; i < options.members; ++i) {
    FP_RETURN_IF_ERROR(cluster->WaitHealthy(i, options.start_timeout));
  }
  return cluster;
}

EtcdCluster::~EtcdCluster() {
  for (Member& member : members_) {
    if (member.process == nullptr) continue;
    member.process->Signal(SIGCONT).IgnoreError();  // a paused member must not linger
    member.process->Signal(SIGKILL).IgnoreError();
    member.process->Stop(kKillGrace);
  }
}

Status EtcdCluster::Spawn(size_t index, bool fresh) {
  Member& member = members_[index];
  const std::string scheme = options_.tls ? "https" : "http";
  const std::string data = dir_->Join(member.name);
  const std::string client_url = fmt::format("{}://127.0.0.1:{}", scheme, member.client_port);
  const std::string peer_url = fmt::format("{}://127.0.0.1:{}", scheme, member.peer_port);
  client::ProcessOptions process;
  process.argv = {FindExecutable(options_.etcd_binary),
                  "--name=" + member.name,
                  "--data-dir=" + data,
                  "--listen-client-urls=" + client_url,
                  "--advertise-client-urls=" + client_url,
                  "--listen-peer-urls=" + peer_url,
                  "--initial-advertise-peer-urls=" + peer_url,
                  "--initial-cluster=" + initial_cluster_,
                  std::string("--initial-cluster-state=") + (fresh ? "new" : "existing"),
                  "--initial-cluster-token=fieldprint-test",
                  "--heartbeat-interval=25",
                  "--election-timeout=250",
                  fmt::format("--max-txn-ops={}", options_.max_txn_ops),
                  "--log-level=warn",
                  "--logger=zap"};
  if (process.argv[0].empty()) {
    return UnavailableError(fmt::format("etcd cluster: \"{}\" not found", options_.etcd_binary));
  }
  if (options_.tls) {
    const wire::TlsFiles files = wire::TlsFilesForNode(dir_->Join("certs"), member.name);
    for (const char* side : {"", "peer-"}) {
      process.argv.push_back(fmt::format("--{}cert-file={}", side, files.cert_file));
      process.argv.push_back(fmt::format("--{}key-file={}", side, files.key_file));
      process.argv.push_back(fmt::format("--{}trusted-ca-file={}", side, files.ca_file));
      process.argv.push_back(fmt::format("--{}client-cert-auth", side));
    }
  }
  process.stdout_path = dir_->Join(member.name + ".out");
  process.stderr_path = dir_->Join(member.name + ".err");
  FP_ASSIGN_OR_RETURN(member.process, client::ChildProcess::Spawn(member.name, process));
  return OkStatus();
}

etcd::Endpoint EtcdCluster::endpoint(size_t member) const {
  return {"127.0.0.1", members_.at(member).client_port};
}

pid_t EtcdCluster::pid(size_t member) const { return members_.at(member).process->pid(); }

etcd::ClientOptions EtcdCluster::ClientOptionsFor(size_t first) const {
  etcd::ClientOptions options;
  for (size_t i = 0; i < members_.size(); ++i) {
    options.endpoints.push_back(endpoint((first + i) % members_.size()));
  }
  if (options_.tls) options.tls = wire::TlsFilesForNode(dir_->Join("certs"), kClientName);
  options.max_txn_ops = options_.max_txn_ops;
  return options;
}

Status EtcdCluster::Kill(size_t member) {
  client::ChildProcess& process = *members_.at(member).process;
  process.Signal(SIGCONT).IgnoreError();
  FP_RETURN_IF_ERROR(process.Signal(SIGKILL));
  process.Stop(kKillGrace);
  return OkStatus();
}

Status EtcdCluster::Pause(size_t member) { return members_.at(member).process->Signal(SIGSTOP); }

Status EtcdCluster::Resume(size_t member) { return members_.at(member).process->Signal(SIGCONT); }

Status EtcdCluster::Restart(size_t member) {
  if (members_.at(member).process->Running()) {
    return FailedPreconditionError(fmt::format("etcd-{} is still running", member));
  }
  FP_RETURN_IF_ERROR(Spawn(member, false));
  return WaitHealthy(member, options_.start_timeout);
}

Status EtcdCluster::WaitHealthy(size_t member, std::chrono::milliseconds timeout) {
  etcd::ClientOptions options = ClientOptionsFor(member);
  options.endpoints.resize(1);
  options.request_timeout = std::chrono::milliseconds(1000);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> client, etcd::Client::Create(options));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Status last;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!members_.at(member).process->Running()) {
      return UnavailableError(
          fmt::format("etcd-{} exited: {}", member, members_[member].process->StderrTail(2000)));
    }
    etcd::RangeRequest probe;
    probe.key = "/health-probe";
    StatusOr<etcd::RangeResponse> response = client->Range(probe);  // linearizable
    if (response.ok()) return OkStatus();
    last = response.status();
    std::this_thread::sleep_for(kHealthPollInterval);
  }
  return UnavailableError(fmt::format("etcd-{} not healthy within {} ms: {}; stderr: {}", member,
                                      timeout.count(), last.ToString(),
                                      members_[member].process->StderrTail(2000)));
}

}  // namespace fp::supervisor::testing
