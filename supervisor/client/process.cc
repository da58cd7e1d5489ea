// Child processes; see process.h.
#include "supervisor/client/process.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fp::client {
namespace {

using Clock = std::chrono::steady_clock;

// How often the waits poll the child and its output.
constexpr std::chrono::milliseconds kPollInterval{10};
// Descriptors the child marks close-on-exec when close_range is not available.
constexpr long kMaxInheritedDescriptors = 65536;

std::string Errno(std::string_view what) {
  return fmt::format("{}: {}", what, std::strerror(errno));
}

// Reads at most `max_bytes` from the end of `path` ("" if unreadable).
std::string ReadTail(const std::string& path, size_t max_bytes) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) return "";
  const std::streamoff size = file.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                                   ? size - static_cast<std::streamoff>(max_bytes)
                                   : 0;
  file.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(file.gcount()));
  return text;
}

// Runs in the forked child: only async-signal-safe calls until exec. Never returns.
[[noreturn]] void ExecChild(char* const* argv, int stdin_fd, int stdout_fd, int stderr_fd,
                            int error_fd, bool die_with_parent, pid_t parent) {
  if (die_with_parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);  // a blocked mask would survive exec
  signal(SIGPIPE, SIG_DFL);
  if (dup2(stdin_fd, STDIN_FILENO) < 0 || dup2(stdout_fd, STDOUT_FILENO) < 0 ||
      dup2(stderr_fd, STDERR_FILENO) < 0) {
    const int error = errno;
    [[maybe_unused]] ssize_t ignored = write(error_fd, &error, sizeof(error));
    _exit(127);
  }
  // Nothing else of the parent's leaks into the child; error_fd stays open until exec.
  if (close_range(3, UINT_MAX, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < kMaxInheritedDescriptors; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  execv(argv[0], argv);
  const int error = errno;
  [[maybe_unused]] ssize_t ignored = write(error_fd, &error, sizeof(error));
  _exit(127);
}

// Descriptors the parent opens for one spawn; closed on every path.
struct SpawnFds {
  int in = -1;
  int out = -1;
  int err = -1;
  int pipe_read = -1;
  int pipe_write = -1;
  ~SpawnFds() {
    for (int fd : {in, out, err, pipe_read, pipe_write}) {
      if (fd >= 0) close(fd);
    }
  }
};

Status OpenSpawnFds(const ProcessOptions& options, SpawnFds& fds) {
  fds.in = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fds.in < 0) return UnavailableError(Errno("open /dev/null"));
  fds.out = open(options.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fds.out < 0) return UnavailableError(Errno("create " + options.stdout_path));
  fds.err = open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fds.err < 0) return UnavailableError(Errno("create " + options.stderr_path));
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return UnavailableError(Errno("pipe"));
  fds.pipe_read = pipe_fds[0];
  fds.pipe_write = pipe_fds[1];
  return OkStatus();
}

}  // namespace

ChildProcess::ChildProcess(std::string name, ProcessOptions options, pid_t pid)
    : name_(std::move(name)), options_(std::move(options)), pid_(pid) {}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(std::string name,
                                                            const ProcessOptions& options) {
  if (options.argv.empty() || options.argv.size() > kMaxChildArgs) {
    return InvalidArgumentError(
        fmt::format("{}: a command needs 1..{} arguments", name, kMaxChildArgs));
  }
  SpawnFds fds;
  FP_RETURN_IF_ERROR(OpenSpawnFds(options, fds));
  std::vector<char*> argv;
  for (const std::string& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return UnavailableError(Errno("fork"));
  if (pid == 0) {
    ExecChild(argv.data(), fds.in, fds.out, fds.err, fds.pipe_write, options.die_with_parent,
              parent);
  }
  close(fds.pipe_write);
  fds.pipe_write = -1;
  // The pipe closes at exec (close-on-exec): no bytes means the command is running.
  int exec_error = 0;
  ssize_t got;
  do {
    got = read(fds.pipe_read, &exec_error, sizeof(exec_error));
  } while (got < 0 && errno == EINTR);
  if (got > 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    return UnavailableError(
        fmt::format("{}: cannot run {}: {}", name, options.argv[0], std::strerror(exec_error)));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(std::move(name), options, pid));
}

ChildProcess::~ChildProcess() {
  if (released_ || reaped_) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
}

bool ChildProcess::Running() {
  if (reaped_) return false;
  int status = 0;
  const pid_t done = waitpid(pid_, &status, WNOHANG);
  if (done == pid_) {
    reaped_ = true;
    exit_status_ = status;
    return false;
  }
  return true;
}

StatusOr<std::string> ChildProcess::WaitForLine(const std::function<bool(std::string_view)>& match,
                                                std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    // Checked before reading, so the lines of a child that printed and then exited still count.
    const bool running = Running();
    const std::string text = ReadTail(options_.stdout_path, kMaxChildOutputBytes);
    size_t start = 0;
    for (size_t end = text.find('\n'); end != std::string::npos; end = text.find('\n', start)) {
      std::string_view line(text.data() + start, std::min(end - start, kMaxChildLineBytes));
      if (match(line)) return std::string(line);
      start = end + 1;
    }
    if (!running) {
      return AbortedError(fmt::format("{} {} before printing the expected line; stderr:\n{}", name_,
                                      DescribeWaitStatus(exit_status_), StderrTail(4096)));
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("{} printed no expected line within {} ms", name_, timeout.count()));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

Status ChildProcess::Signal(int signal) {
  if (reaped_) return FailedPreconditionError(fmt::format("{} has exited", name_));
  if (kill(pid_, signal) != 0) return UnavailableError(Errno("kill " + name_));
  return OkStatus();
}

StatusOr<int> ChildProcess::WaitExit(std::chrono::milliseconds timeout) {
  if (reaped_) return FailedPreconditionError(fmt::format("{} was reaped before", name_));
  const auto deadline = Clock::now() + timeout;
  while (Running()) {
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("{} (pid {}) still runs after {} ms", name_, pid_, timeout.count()));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
  return exit_status_;
}

int ChildProcess::Stop(std::chrono::milliseconds grace) {
  if (!Running()) return exit_status_;
  kill(pid_, SIGTERM);
  if (WaitExit(grace).ok()) return exit_status_;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  reaped_ = true;
  exit_status_ = status;
  return exit_status_;
}

std::string ChildProcess::StderrTail(size_t max_bytes) const {
  return ReadTail(options_.stderr_path, max_bytes);
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    const char* name = sigabbrev_np(signal);
    return fmt::format("killed by signal {} (SIG{})", signal, name != nullptr ? name : "?");
  }
  return fmt::format("wait status {}", status);
}

StatusOr<uint16_t> ProbeFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return UnavailableError(Errno("socket"));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  const std::string error = bound ? "" : Errno("bind 127.0.0.1:0");
  close(fd);
  if (!bound) return UnavailableError(error);
  return static_cast<uint16_t>(ntohs(address.sin_port));
}

StatusOr<std::string> SelfExecutable() {
  char path[PATH_MAX];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (length <= 0) return UnavailableError(Errno("readlink /proc/self/exe"));
  return std::string(path, static_cast<size_t>(length));
}

}  // namespace fp::client
