// NetnsLink; see netns_link.h.
#include "tests/cluster/netns_link.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fp::cluster_test {
namespace {

namespace fs = std::filesystem;

constexpr char kNetnsDir[] = "/run/netns";
// A MAC address of no device: frames sent to it are dropped by the receiving veth end.
constexpr char kNowhereMac[] = "02:00:00:00:00:01";
constexpr size_t kSlotsPerRun = 5;  // kMaxClusterSupervisors; FindFreeNetnsSlots checks count

const std::string& NsenterPath() {
  static const std::string path = [] {
    for (const char* candidate : {"/usr/bin/nsenter", "/bin/nsenter", "/usr/sbin/nsenter"}) {
      if (access(candidate, X_OK) == 0) return std::string(candidate);
    }
    return std::string();
  }();
  return path;
}

// Runs a shell command (names and addresses are ours: nothing needs quoting but the log path).
bool Shell(const std::string& command) {
  const int status = std::system(command.c_str());
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string SlotAddress(size_t slot, int host) {
  return fmt::format("10.213.{}.{}", slot / 64, (slot % 64) * 4 + host);
}

std::string HostDevice(size_t slot) { return fmt::format("fvh{}", slot); }

bool WriteProcFile(const std::string& path, const std::string& value) {
  std::ofstream file(path);
  file << value;
  file.close();
  return static_cast<bool>(file);
}

}  // namespace

bool NetnsAvailable() {
  static const bool available = [] {
    if (geteuid() != 0 || NsenterPath().empty()) return false;
    const std::string probe = fmt::format("{}{}-probe", kNetnsPrefix, getpid());
    if (!Shell(fmt::format("ip netns add {} >/dev/null 2>&1", probe))) return false;
    return Shell(fmt::format("ip netns delete {} >/dev/null 2>&1", probe));
  }();
  return available;
}

// True for fpc-PID-... when PID no longer runs.
bool Stale(const std::string& name) {
  if (!name.starts_with(kNetnsPrefix)) return false;
  const std::string rest = name.substr(sizeof(kNetnsPrefix) - 1);
  const pid_t pid = static_cast<pid_t>(std::atol(rest.substr(0, rest.find('-')).c_str()));
  return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH;
}

size_t SweepStaleNetns() {
  size_t deleted = 0;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(kNetnsDir, error)) {
    const std::string name = entry.path().filename().string();
    if (Stale(name)) deleted += Shell(fmt::format("ip netns delete {} >/dev/null 2>&1", name));
  }
  // A namespace that still has sockets outlives its name, and its veth with it: each host end
  // carries its namespace's name as its alias.
  for (const fs::directory_entry& entry : fs::directory_iterator("/sys/class/net", error)) {
    const std::string device = entry.path().filename().string();
    if (!device.starts_with("fvh")) continue;
    std::ifstream alias_file(entry.path() / "ifalias");
    std::string alias;
    std::getline(alias_file, alias);
    if (Stale(alias)) Shell(fmt::format("ip link delete {} >/dev/null 2>&1", device));
  }
  return deleted;
}

StatusOr<size_t> FindFreeNetnsSlots(size_t count) {
  FP_CHECK(count >= 1 && count <= kSlotsPerRun);
  constexpr size_t kRuns = kMaxNetnsSlots / kSlotsPerRun;
  const size_t start = static_cast<size_t>(getpid()) % kRuns;
  for (size_t k = 0; k < kRuns; ++k) {
    const size_t base = ((start + k) % kRuns) * kSlotsPerRun;
    bool free = true;
    for (size_t s = 0; s < count && free; ++s) {
      free = !fs::exists(fs::path("/sys/class/net") / HostDevice(base + s));
    }
    if (free) return base;
  }
  return ResourceExhaustedError("no free network namespace slots (10.213.0.0/16 is in use)");
}

StatusOr<std::unique_ptr<NetnsLink>> NetnsLink::Create(size_t slot, std::string log_path) {
  FP_CHECK(slot < kMaxNetnsSlots);
  std::unique_ptr<NetnsLink> link(new NetnsLink());
  link->name_ = fmt::format("{}{}-{}", kNetnsPrefix, getpid(), slot);
  link->host_device_ = HostDevice(slot);
  link->host_address_ = SlotAddress(slot, 1);
  link->address_ = SlotAddress(slot, 2);
  link->log_path_ = std::move(log_path);
  FP_RETURN_IF_ERROR(link->Setup());  // on failure the destructor deletes what exists
  // A reaper outside the test's process group and free of its death signal: when the test dies
  // without its destructors (SIGKILL, a ctest timeout), the namespace goes within a second.
  if (!Shell(fmt::format("setsid sh -c 'while kill -0 {} 2>/dev/null; do sleep 1; done; "
                         "ip link delete {}; ip netns delete {}' </dev/null >/dev/null 2>&1 &",
                         getpid(), link->host_device_, link->name_))) {
    return InternalError("cannot start the namespace reaper of " + link->name_);
  }
  return link;
}

Status NetnsLink::Setup() {
  FP_RETURN_IF_ERROR(Run(fmt::format("ip netns add {}", name_)));
  created_ = true;
  FP_RETURN_IF_ERROR(
      Run(fmt::format("ip link add {} type veth peer name eth0 netns {}", host_device_, name_)));
  FP_RETURN_IF_ERROR(Run(fmt::format("ip link set {} alias {}", host_device_, name_)));
  FP_RETURN_IF_ERROR(Run(fmt::format("ip addr add {}/30 dev {}", host_address_, host_device_)));
  // Segments from and to 127.0.0.1 cross this device (see the header).
  const std::string localnet =
      fmt::format("/proc/sys/net/ipv4/conf/{}/route_localnet", host_device_);
  if (!WriteProcFile(localnet, "1")) return InternalError("cannot write " + localnet);
  FP_RETURN_IF_ERROR(Run(fmt::format("ip link set {} up", host_device_)));
  FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} link set lo up", name_)));
  FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} addr del 127.0.0.1/8 dev lo", name_)));
  FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} addr add {}/30 dev eth0", name_, address_)));
  FP_RETURN_IF_ERROR(
      Run(fmt::format("{} --net={}/{} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet'",
                      NsenterPath(), kNetnsDir, name_)));
  return SetMode(ProxyMode::kPass);
}

NetnsLink::~NetnsLink() {
  // Deleting the veth explicitly: a namespace with sockets left (a killed supervisor's, in
  // TIME_WAIT or partitioned) outlives its name, and its veth with it.
  if (!created_) return;
  Shell(fmt::format("ip link delete {} >/dev/null 2>&1", host_device_));
  Run(fmt::format("ip netns delete {}", name_)).IgnoreError();
}

Status NetnsLink::Run(const std::string& command) const {
  if (!Shell(fmt::format("{} >>'{}' 2>&1", command, log_path_))) {
    return InternalError(fmt::format("`{}` failed (see {})", command, log_path_));
  }
  return OkStatus();
}

std::vector<std::string> NetnsLink::Wrap(const std::vector<std::string>& argv) const {
  std::vector<std::string> wrapped = {NsenterPath(), fmt::format("--net={}/{}", kNetnsDir, name_),
                                      "--"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

Status NetnsLink::SetMode(ProxyMode mode) {
  switch (mode) {
    case ProxyMode::kBlackhole:
      FP_RETURN_IF_ERROR(Run(fmt::format("ip neigh replace {} lladdr {} dev {} nud permanent",
                                         address_, kNowhereMac, host_device_)));
      FP_RETURN_IF_ERROR(
          Run(fmt::format("ip -n {} neigh replace {} lladdr {} dev eth0 nud permanent", name_,
                          host_address_, kNowhereMac)));
      break;
    case ProxyMode::kReject:
      FP_RETURN_IF_ERROR(Run(fmt::format("ip link set {} down", host_device_)));
      FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} link set eth0 down", name_)));
      break;
    case ProxyMode::kPass:
      FP_RETURN_IF_ERROR(Run(fmt::format("ip link set {} up", host_device_)));
      FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} link set eth0 up", name_)));
      FP_RETURN_IF_ERROR(Run(fmt::format("ip neigh flush dev {} nud all", host_device_)));
      FP_RETURN_IF_ERROR(Run(fmt::format("ip -n {} neigh flush dev eth0 nud all", name_)));
      // A device taken down loses its routes: put the loopback route back (idempotent).
      FP_RETURN_IF_ERROR(Run(fmt::format(
          "ip -n {} route replace 127.0.0.0/8 via {} dev eth0 onlink", name_, host_address_)));
      break;
  }
  mode_ = mode;
  return OkStatus();
}

}  // namespace fp::cluster_test
