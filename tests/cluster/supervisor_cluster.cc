// SupervisorCluster; see supervisor_cluster.h.
#include "tests/cluster/supervisor_cluster.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/tlog/note.h"
#include "supervisor/net/http_client.h"

namespace fp::cluster_test {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kPollInterval{50};
constexpr size_t kFillerChunkBytes = size_t{1} << 20;
constexpr char kEtcdPrefix[] = "/fieldprint-cluster-test";
constexpr char kClusterOrigin[] = "fieldprint.test/cluster";
constexpr char kAdminToken[] = "cluster-test-admin-token-0123456789";

// The value of `key=` in a line of space-separated key=value pairs, or "".
std::string LineValue(std::string_view line, std::string_view key) {
  const std::string needle = std::string(key) + "=";
  for (size_t at = line.find(needle); at != std::string_view::npos;
       at = line.find(needle, at + 1)) {
    if (at == 0 || line[at - 1] == ' ') {
      const size_t start = at + needle.size();
      return std::string(line.substr(start, line.find(' ', start) - start));
    }
  }
  return "";
}

std::string Tail(const fs::path& path, size_t max_bytes) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  const std::string all = text.str();
  return all.size() > max_bytes ? all.substr(all.size() - max_bytes) : all;
}

Status Validate(const SupervisorClusterOptions& options) {
  if (options.binary.empty() || options.dir.empty() || options.source_dir.empty()) {
    return InvalidArgumentError("binary, source_dir and dir are required");
  }
  if (options.supervisors == 0 || options.supervisors > kMaxClusterSupervisors) {
    return InvalidArgumentError(fmt::format("supervisors: 1..{}", kMaxClusterSupervisors));
  }
  if (options.workers == 0 || options.workers > kMaxClusterWorkers) {
    return InvalidArgumentError(fmt::format("workers: 1..{}", kMaxClusterWorkers));
  }
  if (options.replicas == 0 || options.replicas > options.workers) {
    return InvalidArgumentError("replicas: 1..workers (one worker per replica)");
  }
  return OkStatus();
}

StatusOr<uint64_t> U64(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  if (value != nullptr && value->is_uint64()) return value->get_uint64();
  if (value != nullptr && value->is_int64() && value->get_int64() >= 0) return value->get_int64();
  return DataLossError(fmt::format("/v1/cluster: '{}' is missing or not a count", key));
}

}  // namespace

const char* DiskFaultModeName(DiskFaultMode mode) {
  return mode == DiskFaultMode::kTmpfs ? "tmpfs" : "file_size_limit";
}

const char* NetworkModeName(NetworkMode mode) {
  return mode == NetworkMode::kNetns ? "netns" : "loopback_proxy";
}

StatusOr<MemberView> ParseMemberView(std::string_view json_text) {
  boost::system::error_code error;
  json::value value = json::parse(json_text, error);
  if (error || !value.is_object()) return DataLossError("/v1/cluster: not a JSON object");
  const json::object& object = value.get_object();
  MemberView view;
  view.raw = std::string(json_text);
  const json::value* name = object.if_contains("name");
  const json::value* leader = object.if_contains("leader");
  const json::value* is_leader = object.if_contains("is_leader");
  if (name == nullptr || !name->is_string()) return DataLossError("/v1/cluster: no name");
  if (is_leader == nullptr || !is_leader->is_bool()) {
    return DataLossError("/v1/cluster: no is_leader");
  }
  view.id = std::string(name->get_string());
  view.is_leader = is_leader->get_bool();
  if (leader != nullptr && leader->is_string()) view.leader = std::string(leader->get_string());
  FP_ASSIGN_OR_RETURN(view.applied, U64(object, "applied"));
  FP_ASSIGN_OR_RETURN(view.log_end, U64(object, "log_end"));
  FP_ASSIGN_OR_RETURN(view.log_begin, U64(object, "log_begin"));
  const json::value* term = object.if_contains("term");
  if (term != nullptr && term->is_int64()) view.term = term->get_int64();
  return view;
}

StatusOr<std::unique_ptr<SupervisorCluster>> SupervisorCluster::Start(
    const SupervisorClusterOptions& options) {
  FP_RETURN_IF_ERROR(Validate(options));
  std::unique_ptr<SupervisorCluster> cluster(new SupervisorCluster(options));
  if (!supervisor::testing::EtcdCluster::Available()) {
    return FailedPreconditionError(
        "etcd is not installed (Debian: apt-get install etcd-server); the cluster tests need it");
  }
  supervisor::testing::EtcdClusterOptions etcd;
  etcd.members = options.etcd_members;
  etcd.start_timeout = options.start_timeout;
  FP_ASSIGN_OR_RETURN(cluster->etcd_, supervisor::testing::EtcdCluster::Start(etcd));
  FP_RETURN_IF_ERROR(cluster->Prepare());
  // The supervisors' --model needs the numerics profile a worker computes and prints at start:
  // one worker runs until it printed it. The workers proper start once every supervisor listens,
  // so that each connects to the first supervisor of its own list and the supervisors share them.
  FP_RETURN_IF_ERROR(cluster->StartWorker(0));
  cluster->workers_.back()->Stop(options.stop_grace);
  cluster->workers_.clear();
  for (size_t s = 0; s < options.supervisors; ++s) {
    FP_RETURN_IF_ERROR(cluster->StartSupervisor(s));
  }
  for (uint32_t w = 0; w < options.workers; ++w) FP_RETURN_IF_ERROR(cluster->StartWorker(w));
  FP_RETURN_IF_ERROR(cluster->WaitForWorkers());
  return cluster;
}

SupervisorCluster::~SupervisorCluster() { Stop(); }

Status SupervisorCluster::Prepare() {
  std::error_code error;
  fs::create_directories(fs::path(options_.dir) / "logs", error);
  if (error) {
    return UnavailableError(fmt::format("cannot create {}: {}", options_.dir, error.message()));
  }
  std::string names;
  for (size_t s = 0; s < options_.supervisors; ++s) names += name(s) + ",";
  for (uint32_t w = 0; w < options_.workers; ++w) names += fmt::format("worker-{},", w);
  names.pop_back();
  const std::string certs = (fs::path(options_.dir) / "certs").string();
  FP_RETURN_IF_ERROR(RunTool("certs", {"certs", "init", certs, "--names", names}));
  FP_RETURN_IF_ERROR(RunTool("model", {"model", "mk-tiny", model_dir()}));
  supervisors_.resize(options_.supervisors);
  disk_mode_ = DiskFaultMode::kFileSizeLimit;
  network_mode_ = options_.network_namespaces && NetnsAvailable() ? NetworkMode::kNetns
                                                                  : NetworkMode::kLoopback;
  size_t netns_slot = 0;
  if (network_mode_ == NetworkMode::kNetns) {
    SweepStaleNetns();  // namespaces of crashed runs
    FP_ASSIGN_OR_RETURN(netns_slot, FindFreeNetnsSlots(options_.supervisors));
  }
  for (size_t s = 0; s < options_.supervisors; ++s) {
    SupervisorProcess& process = supervisors_[s];
    FP_ASSIGN_OR_RETURN(process.worker_port, client::ProbeFreePort());
    FP_ASSIGN_OR_RETURN(process.http_port, client::ProbeFreePort());
    FP_RETURN_IF_ERROR(PrepareNetwork(s, netns_slot + s));
    fs::create_directories(data_dir(s), error);
    if (options_.data_disk_mb > 0) FP_RETURN_IF_ERROR(MountDataDisk(s));
  }
  FP_RETURN_IF_ERROR(ProvisionLedgerKey());
  // The admin routes (bootstrap snapshots, remove-member) take a bearer token from a file.
  std::ofstream token(admin_token_file(), std::ios::trunc);
  token << kAdminToken << "\n";
  token.close();
  if (!token) return UnavailableError("cannot write " + admin_token_file());
  return OkStatus();
}

Status SupervisorCluster::PrepareNetwork(size_t supervisor, size_t netns_slot) {
  SupervisorProcess& process = supervisors_[supervisor];
  if (network_mode_ == NetworkMode::kNetns) {
    FP_ASSIGN_OR_RETURN(process.netns, NetnsLink::Create(netns_slot, log_path("network")));
    return OkStatus();
  }
  for (size_t m = 0; m < etcd_->size(); ++m) {
    const supervisor::etcd::Endpoint member = etcd_->endpoint(m);
    FP_ASSIGN_OR_RETURN(std::unique_ptr<FaultProxy> proxy,
                        FaultProxy::Start(member.host, member.port));
    process.proxies.push_back(std::move(proxy));
  }
  return OkStatus();
}

std::string SupervisorCluster::admin_token_file() const {
  return (fs::path(options_.dir) / "admin.token").string();
}

Status SupervisorCluster::ProvisionLedgerKey() {
  // Every supervisor of a cluster signs with the one ledger key, provisioned like its TLS files.
  FP_ASSIGN_OR_RETURN(tlog::NoteSigner signer, tlog::NoteSigner::Generate(kClusterOrigin));
  const std::string text = signer.ToString() + "\n";
  for (size_t s = 0; s < options_.supervisors; ++s) {
    const std::string path = (fs::path(data_dir(s)) / "checkpoint.key").string();
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const bool written =
        fd >= 0 && write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    if (fd >= 0) close(fd);
    if (!written) return UnavailableError(fmt::format("cannot write {}", path));
  }
  return OkStatus();
}

Status SupervisorCluster::MountDataDisk(size_t supervisor) {
  if (geteuid() != 0) return OkStatus();  // the file-size limit stands in
  const std::string size = fmt::format("size={}m", options_.data_disk_mb);
  if (mount("tmpfs", data_dir(supervisor).c_str(), "tmpfs", 0, size.c_str()) != 0) {
    return OkStatus();  // no CAP_SYS_ADMIN here (a container): the file-size limit stands in
  }
  supervisors_[supervisor].disk_mounted = true;
  disk_mode_ = DiskFaultMode::kTmpfs;
  return OkStatus();
}

client::ProcessOptions SupervisorCluster::ProcessFor(const std::string& name,
                                                     std::vector<std::string> argv) const {
  client::ProcessOptions process;
  process.argv = std::move(argv);
  process.stdout_path = (fs::path(options_.dir) / "logs" / (name + ".out")).string();
  process.stderr_path = log_path(name);
  return process;
}

Status SupervisorCluster::RunTool(const std::string& name, std::vector<std::string> args) {
  args.insert(args.begin(), options_.binary);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<client::ChildProcess> tool,
                      client::ChildProcess::Spawn(name, ProcessFor(name, std::move(args))));
  FP_ASSIGN_OR_RETURN(int status, tool->WaitExit(options_.start_timeout));
  if (status != 0) {
    return InternalError(fmt::format("`fieldprint {}` {}: {}", name,
                                     client::DescribeWaitStatus(status), tool->StderrTail(4096)));
  }
  return OkStatus();
}

Status SupervisorCluster::StartWorker(uint32_t index) {
  const std::string worker = fmt::format("worker-{}", index);
  const fs::path dir(options_.dir);
  std::vector<std::string> argv = {options_.binary, "worker",      "--name",
                                   worker,          "--certs-dir", (dir / "certs").string()};
  // Every supervisor, starting at a different one per worker so that the cluster's supervisors
  // all hold workers; a worker moves on through the list when its supervisor fails.
  for (size_t k = 0; k < options_.supervisors; ++k) {
    const size_t s = (index + k) % options_.supervisors;
    argv.push_back("--supervisor");
    argv.push_back(fmt::format("{}@{}:{}", name(s), host(s), supervisors_[s].worker_port));
  }
  const std::vector<std::string> flags = {
      "--model", fmt::format("{}={}", kClusterModelName, model_dir()), "--data-dir",
      (dir / worker).string(), "--metrics-address", "127.0.0.1:0", "--threads", "1",
      "--kv-budget-mb", "64", "--window-steps", "4", "--window-ms", "20", "--heartbeat-ms", "500",
      // A supervisor silent this long (paused) is left for the next one in the list.
      "--read-timeout-ms", "2000", "--connect-timeout-ms", "1000", "--reconnect-initial-ms", "50",
      "--reconnect-max-ms", "500", "--drain-ms", "1000", "--log-level", options_.log_level,
      "--log-format", "json"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  FP_ASSIGN_OR_RETURN(std::unique_ptr<client::ChildProcess> process,
                      client::ChildProcess::Spawn(worker, ProcessFor(worker, std::move(argv))));
  const std::string model_prefix = fmt::format("model={} ", kClusterModelName);
  FP_ASSIGN_OR_RETURN(
      std::string model_line,
      process->WaitForLine([&](std::string_view line) { return line.starts_with(model_prefix); },
                           options_.start_timeout));
  const std::string profile = LineValue(model_line, "profile");
  if (profile.empty()) return InternalError(fmt::format("{} printed '{}'", worker, model_line));
  if (!profile_.empty() && profile != profile_) {
    return FailedPreconditionError(
        fmt::format("{} computes profile {}, the others {}", worker, profile, profile_));
  }
  profile_ = profile;
  anchors_ = LineValue(model_line, "anchors");
  workers_.push_back(std::move(process));
  return OkStatus();
}

std::string SupervisorCluster::ConfigFile() const {
  const fs::path config_dir = fs::path(options_.source_dir) / "deploy" / "config";
  const fs::path cluster_config = config_dir / "supervisor-cluster.toml";
  return (fs::exists(cluster_config) ? cluster_config : config_dir / "supervisor.toml").string();
}

std::vector<std::string> SupervisorCluster::SupervisorCommand(size_t supervisor) const {
  const SupervisorProcess& process = supervisors_[supervisor];
  // Through the proxies on loopback; straight to the members (through the veth) in a namespace.
  std::string endpoints;
  for (const std::unique_ptr<FaultProxy>& proxy : process.proxies) {
    endpoints += fmt::format("{}https://127.0.0.1:{}", endpoints.empty() ? "" : ",", proxy->port());
  }
  for (size_t m = 0; process.netns != nullptr && m < etcd_->size(); ++m) {
    const supervisor::etcd::Endpoint member = etcd_->endpoint(m);
    endpoints +=
        fmt::format("{}https://{}:{}", endpoints.empty() ? "" : ",", member.host, member.port);
  }
  const supervisor::etcd::ClientOptions etcd_client = etcd_->ClientOptionsFor();
  std::string model = fmt::format("{}={}", kClusterModelName, profile_);
  if (!anchors_.empty()) model += ":" + anchors_;
  // Short timers so that the cluster reacts within a test: elections within about two seconds,
  // members publishing their positions often so that trimming (which waits for every member)
  // follows the load.
  const std::vector<std::pair<std::string, std::string>> flags = {
      {"--config", ConfigFile()},
      {"--data-dir", data_dir(supervisor)},
      {"--certs-dir", (fs::path(options_.dir) / "certs").string()},
      {"--tls-name", name(supervisor)},
      {"--origin", kClusterOrigin},
      {"--worker-address", host(supervisor)},
      {"--worker-port", std::to_string(process.worker_port)},
      {"--http-address", host(supervisor)},
      {"--http-port", std::to_string(process.http_port)},
      {"--metrics-port", "0"},  // metrics at the API only: three members share the host
      {"--admin-token-file", admin_token_file()},
      {"--log-backend", "etcd"},
      {"--etcd-endpoints", endpoints},
      {"--etcd-prefix", kEtcdPrefix},
      {"--etcd-ca-file", etcd_client.tls->ca_file},
      {"--etcd-cert-file", etcd_client.tls->cert_file},
      {"--etcd-key-file", etcd_client.tls->key_file},
      {"--replicas", std::to_string(options_.replicas)},
      {"--default-max-tokens", std::to_string(options_.default_max_tokens)},
      {"--model", model},
      {"--tick-interval-ms", "100"},
      {"--checkpoint-every", "1"},
      {"--checkpoint-interval-ms", "200"},
      {"--worker-grace-ms", "1500"},
      {"--replica-deadline-ms", "15000"},
      {"--leader-ttl-ms", "2000"},
      {"--leader-margin-ms", "500"},
      {"--leader-poll-ms", "100"},
      {"--member-publish-interval-ms", "500"},
      {"--log-retention-records", "500"},
      {"--log-trim-interval-ms", "1000"},
      {"--log-level", options_.log_level},
      {"--log-format", "json"}};
  std::vector<std::string> argv = {options_.binary, "supervisor"};
  for (const auto& [flag, value] : flags) {
    argv.push_back(flag);
    argv.push_back(value);
  }
  argv.insert(argv.end(), options_.supervisor_flags.begin(), options_.supervisor_flags.end());
  return process.netns != nullptr ? process.netns->Wrap(argv) : argv;
}

Status SupervisorCluster::StartSupervisor(size_t supervisor) {
  SupervisorProcess& process = supervisors_[supervisor];
  const std::string process_name = name(supervisor);
  if (process.runs > 0) {
    // Keep the earlier stderr beside the new one: a failed test wants every run.
    std::error_code ignored;
    fs::rename(log_path(process_name), fmt::format("{}.{}", log_path(process_name), process.runs),
               ignored);
  }
  ++process.runs;
  FP_ASSIGN_OR_RETURN(process.process,
                      client::ChildProcess::Spawn(
                          process_name, ProcessFor(process_name, SupervisorCommand(supervisor))));
  FP_RETURN_IF_ERROR(
      process.process
          ->WaitForLine([](std::string_view line) { return line.starts_with("worker_port="); },
                        options_.start_timeout)
          .status());
  return Api(supervisor).WaitReady(options_.start_timeout);
}

Status SupervisorCluster::WaitForWorkers() {
  const auto deadline = Clock::now() + options_.start_timeout;
  for (size_t s = 0; s < size(); ++s) {
    client::ApiClient api = Api(s);
    while (true) {
      StatusOr<std::vector<client::WorkerView>> workers = api.Workers();
      size_t active = 0;
      if (workers.ok()) {
        for (const client::WorkerView& worker : *workers) active += worker.phase == "active";
      }
      if (active >= options_.workers) break;
      if (Clock::now() >= deadline) {
        return DeadlineExceededError(fmt::format("{} sees {} of {} workers active after {} ms",
                                                 name(s), active, options_.workers,
                                                 options_.start_timeout.count()));
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }
  return OkStatus();
}

std::string SupervisorCluster::name(size_t supervisor) const {
  return fmt::format("supervisor-{}", supervisor);
}

std::string SupervisorCluster::host(size_t supervisor) const {
  const SupervisorProcess& process = supervisors_.at(supervisor);
  return process.netns != nullptr ? process.netns->address() : "127.0.0.1";
}

client::SupervisorUrl SupervisorCluster::url(size_t supervisor) const {
  return client::SupervisorUrl{host(supervisor), supervisors_.at(supervisor).http_port};
}

std::vector<client::SupervisorUrl> SupervisorCluster::urls() const {
  std::vector<client::SupervisorUrl> all;
  for (size_t s = 0; s < size(); ++s) all.push_back(url(s));
  return all;
}

client::ApiClient SupervisorCluster::Api(size_t supervisor, milliseconds timeout) const {
  return client::ApiClient(url(supervisor), timeout);
}

client::ApiClient SupervisorCluster::FailoverApi(const client::FailoverOptions& options) const {
  return client::ApiClient(urls(), options);
}

std::string SupervisorCluster::model_dir() const {
  return (fs::path(options_.dir) / "model").string();
}

std::string SupervisorCluster::log_path(const std::string& process) const {
  return (fs::path(options_.dir) / "logs" / (process + ".log")).string();
}

std::string SupervisorCluster::data_dir(size_t supervisor) const {
  return (fs::path(options_.dir) / name(supervisor)).string();
}

bool SupervisorCluster::Running(size_t supervisor) {
  const SupervisorProcess& process = supervisors_.at(supervisor);
  return process.process != nullptr && process.process->Running();
}

Status SupervisorCluster::Kill(size_t supervisor) {
  client::ChildProcess& process = *supervisors_.at(supervisor).process;
  FP_RETURN_IF_ERROR(process.Signal(SIGKILL));
  return process.WaitExit(options_.stop_grace).status();
}

Status SupervisorCluster::Restart(size_t supervisor) {
  if (Running(supervisor)) {
    return FailedPreconditionError(fmt::format("{} still runs", name(supervisor)));
  }
  return StartSupervisor(supervisor);
}

Status SupervisorCluster::Replace(size_t supervisor, size_t peer) {
  if (Running(supervisor)) {
    return FailedPreconditionError(fmt::format("{} still runs", name(supervisor)));
  }
  // A new machine: nothing but the key files, which are provisioned like the TLS files.
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(data_dir(supervisor), error)) {
    if (entry.path().extension() != ".key") fs::remove_all(entry.path(), error);
    if (error)
      return UnavailableError(fmt::format("wiping {}: {}", entry.path().string(), error.message()));
  }
  FP_RETURN_IF_ERROR(RunTool(fmt::format("bootstrap-{}", supervisor),
                             {"supervisor", "bootstrap", "--config", ConfigFile(), "--tls-name",
                              name(supervisor), "--data-dir", data_dir(supervisor), "--from",
                              url(peer).ToString(), "--admin-token-file", admin_token_file()}));
  return StartSupervisor(supervisor);
}

Status SupervisorCluster::Pause(size_t supervisor) {
  return supervisors_.at(supervisor).process->Signal(SIGSTOP);
}

Status SupervisorCluster::Resume(size_t supervisor) {
  return supervisors_.at(supervisor).process->Signal(SIGCONT);
}

Status SupervisorCluster::SetLink(size_t supervisor, ProxyMode mode) {
  SupervisorProcess& process = supervisors_.at(supervisor);
  if (process.netns != nullptr) return process.netns->SetMode(mode);
  for (const std::unique_ptr<FaultProxy>& proxy : process.proxies) proxy->SetMode(mode);
  return OkStatus();
}

Status SupervisorCluster::FillDisk(size_t supervisor) {
  if (disk_mode_ == DiskFaultMode::kFileSizeLimit) {
    const rlimit none{0, 0};
    if (prlimit(supervisors_.at(supervisor).process->pid(), RLIMIT_FSIZE, &none, nullptr) != 0) {
      return InternalError(fmt::format("prlimit: {}", std::strerror(errno)));
    }
    return OkStatus();
  }
  const std::string filler = (fs::path(data_dir(supervisor)) / "filler").string();
  const int fd = open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return InternalError(fmt::format("open {}: {}", filler, std::strerror(errno)));
  const std::string chunk(kFillerChunkBytes, 'x');
  size_t written = 0;
  int error = 0;
  while (written < kMaxFillerBytes) {
    const ssize_t n = write(fd, chunk.data(), chunk.size());
    if (n <= 0) {
      error = errno;
      break;
    }
    written += static_cast<size_t>(n);
  }
  close(fd);
  if (error != ENOSPC) {
    return InternalError(fmt::format("filling {}: stopped after {} bytes without ENOSPC ({})",
                                     filler, written, std::strerror(error)));
  }
  return OkStatus();
}

Status SupervisorCluster::FreeDisk(size_t supervisor) {
  if (disk_mode_ == DiskFaultMode::kFileSizeLimit) {
    if (!Running(supervisor)) return OkStatus();  // SIGXFSZ ended it: a restart has no limit
    const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
    if (prlimit(supervisors_[supervisor].process->pid(), RLIMIT_FSIZE, &unlimited, nullptr) != 0) {
      return InternalError(fmt::format("prlimit: {}", std::strerror(errno)));
    }
    return OkStatus();
  }
  std::error_code error;
  fs::remove(fs::path(data_dir(supervisor)) / "filler", error);
  if (error) return InternalError(fmt::format("removing the filler: {}", error.message()));
  return OkStatus();
}

StatusOr<MemberView> SupervisorCluster::Member(size_t supervisor, milliseconds timeout) const {
  supervisor::HttpClient http(host(supervisor), supervisors_.at(supervisor).http_port, timeout);
  FP_ASSIGN_OR_RETURN(supervisor::HttpResponse response,
                      http.Request(boost::beast::http::verb::get, "/v1/cluster"));
  if (response.status != 200) {
    return client::StatusFromReply(response.status, response.body).WithContext(name(supervisor));
  }
  return ParseMemberView(response.body);
}

StatusOr<size_t> SupervisorCluster::WaitForLeader(milliseconds timeout,
                                                  const std::vector<size_t>& excluded) const {
  const auto deadline = Clock::now() + timeout;
  std::string last = "no supervisor answered";
  while (true) {
    std::vector<MemberView> views(size());
    std::vector<bool> answered(size(), false);
    for (size_t s = 0; s < size(); ++s) {
      if (std::find(excluded.begin(), excluded.end(), s) != excluded.end()) continue;
      StatusOr<MemberView> view = Member(s, milliseconds(500));
      if (view.ok()) {
        views[s] = std::move(*view);
        answered[s] = true;
      }
    }
    for (size_t s = 0; s < size(); ++s) {
      if (!answered[s] || !views[s].is_leader) continue;
      bool agreed = true;
      for (size_t o = 0; o < size(); ++o)
        agreed = agreed && (!answered[o] || views[o].leader == name(s));
      if (agreed) return s;
      last = fmt::format("{} leads but not every member names it", name(s));
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("no agreed leader after {} ms ({})", timeout.count(), last));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

std::vector<std::string> SupervisorCluster::Stop() {
  std::vector<std::string> lines;
  if (stopped_) return lines;
  stopped_ = true;
  for (const std::unique_ptr<client::ChildProcess>& worker : workers_) {
    if (worker->Running()) worker->Signal(SIGTERM).IgnoreError();
  }
  for (const std::unique_ptr<client::ChildProcess>& worker : workers_) {
    const int status = worker->Stop(options_.stop_grace);
    lines.push_back(fmt::format("{} {}", worker->name(), client::DescribeWaitStatus(status)));
  }
  for (size_t s = 0; s < supervisors_.size(); ++s) {
    SupervisorProcess& process = supervisors_[s];
    SetLink(s, ProxyMode::kPass).IgnoreError();  // a partitioned supervisor drains too
    if (process.process != nullptr) {
      process.process->Signal(SIGCONT).IgnoreError();
      const int status = process.process->Stop(options_.stop_grace);
      lines.push_back(fmt::format("{} {}", name(s), client::DescribeWaitStatus(status)));
    }
    if (process.disk_mounted && umount2(data_dir(s).c_str(), MNT_DETACH) == 0) {
      process.disk_mounted = false;
    }
  }
  supervisors_.clear();  // deletes the namespaces (NetnsLink)
  etcd_.reset();
  return lines;
}

std::string SupervisorCluster::LogTails(size_t max_bytes) const {
  std::string text;
  std::error_code error;
  for (const fs::directory_entry& entry :
       fs::directory_iterator(fs::path(options_.dir) / "logs", error)) {
    text +=
        fmt::format("==== {} (tail)\n{}\n", entry.path().string(), Tail(entry.path(), max_bytes));
  }
  return text;
}

}  // namespace fp::cluster_test
