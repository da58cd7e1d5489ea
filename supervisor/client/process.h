// Child processes for the local cluster of `fieldprint demo` and the end-to-end tests: spawning
// another role of the same binary with its stdout and stderr in files, reading the lines it
// prints on stdout, and stopping it gracefully (SIGTERM, a deadline, then SIGKILL).
//
// Output goes to files, not pipes, so that a cluster kept running after the demo exits (--keep)
// never blocks on, or dies of, a pipe nobody reads. A child may be tied to the spawning thread
// (PR_SET_PDEATHSIG), so that a crashed test or demo leaves no orphans behind.
//
// Thread-safety: a ChildProcess is used by one thread; the free functions are safe from any
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

#include "common/base/status.h"

namespace fp::client {

// Bounds on what is read back from a child's output files.
inline constexpr size_t kMaxChildLineBytes = 64 * 1024;
inline constexpr size_t kMaxChildOutputBytes = size_t{16} << 20;
inline constexpr size_t kMaxChildArgs = 256;

struct ProcessOptions {
  std::vector<std::string> argv;  // argv[0] is the executable's path; 1..kMaxChildArgs entries
  std::string stdout_path;        // created or truncated; the child's stdout
  std::string stderr_path;        // created or truncated; the child's stderr
  // SIGKILL the child when the spawning thread exits (tests, and the demo without --keep).
  bool die_with_parent = true;
};

class ChildProcess {
 public:
  // Starts the child and returns once it has exec'd. InvalidArgument for an empty or oversized
  // argv; Unavailable when the output files cannot be created, fork fails or exec fails (with the
  // exec error). The caller owns the result; destroying it kills the child unless Release() was
  // called.
  static StatusOr<std::unique_ptr<ChildProcess>> Spawn(std::string name,
                                                       const ProcessOptions& options);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const ProcessOptions& options() const { return options_; }

  // True while the child has not exited (reaps it if it has).
  bool Running();
  // The first complete stdout line, from the start of the output, for which `match` is true.
  // DeadlineExceeded after `timeout`; Aborted when the child exits without printing one (the
  // message holds the tail of its stderr).
  StatusOr<std::string> WaitForLine(const std::function<bool(std::string_view)>& match,
                                    std::chrono::milliseconds timeout);
  // Sends `signal`. FailedPrecondition if the child was already reaped.
  Status Signal(int signal);
  // Waits up to `timeout` for the child to exit and returns its wait status. DeadlineExceeded
  // while it still runs; FailedPrecondition if it was reaped before (its status is exit_status()).
  StatusOr<int> WaitExit(std::chrono::milliseconds timeout);
  // SIGTERM, up to `grace` for a clean exit, then SIGKILL. Returns the wait status; a child that
  // already exited returns the status it exited with.
  int Stop(std::chrono::milliseconds grace);
  // Leaves the child running when this object is destroyed (a cluster kept with --keep).
  void Release() { released_ = true; }

  // The wait status of an exited child (valid once Running() is false).
  int exit_status() const { return exit_status_; }
  // The last `max_bytes` bytes of the child's stderr file ("" if unreadable).
  std::string StderrTail(size_t max_bytes) const;

 private:
  ChildProcess(std::string name, ProcessOptions options, pid_t pid);

  const std::string name_;
  const ProcessOptions options_;
  pid_t pid_;
  bool reaped_ = false;
  bool released_ = false;
  int exit_status_ = 0;
};

// "exited with code N" or "killed by signal N (NAME)", for a wait status.
std::string DescribeWaitStatus(int status);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released), for a
// listener whose port another process must know before the listener starts. Unavailable when no
// socket can be bound.
StatusOr<uint16_t> ProbeFreePort();

// The absolute path of the running executable (/proc/self/exe). Unavailable if unreadable.
StatusOr<std::string> SelfExecutable();

}  // namespace fp::client
