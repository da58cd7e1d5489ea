// NetnsLink: a network namespace of its own for one supervisor of SupervisorCluster
// (supervisor_cluster.h), joined to the test's namespace by a veth pair, so that a partition cuts
// the supervisor off from everything at once (etcd, workers, clients), like a real one.
//
// Design. Namespace `fpc-PID-SLOT` holds the veth end `eth0` with 10.213.X.Y+2/30; the test's
// namespace holds the other end `fvhSLOT` with 10.213.X.Y+1/30 (a /30 per supervisor, no bridge
// and no forwarding: supervisors talk to each other only through etcd). The etcd members listen
// on 127.0.0.1 of the test's namespace and their certificates name 127.0.0.1, so the supervisor
// must dial 127.0.0.1: the namespace's loopback has no 127.0.0.1 and routes 127.0.0.0/8 through
// eth0 instead, and both veth ends accept loopback addresses (route_localnet). Every byte between
// the supervisor and etcd, its workers and its clients thus crosses the veth.
//
// Faults on the veth, with iproute2 only (the machine has neither iptables nor nft, and tc has no
// netem here):
//   kBlackhole  both ends' neighbour entries point at a MAC address nobody has: frames are
//               dropped silently in both directions, open connections stall, new ones hang.
//   kReject     both ends down: new connections fail at once in both directions (network
//               unreachable); open connections see errors, not resets (without iptables nothing
//               sends a RST).
//   kPass       ends up, neighbours relearned, the loopback route put back.
//
// Cleanup: the destructor deletes the namespace (and with it the veth pair). A run killed without
// its destructors has it deleted by a reaper (a detached shell started with it that waits for the
// test's PID to go); should that fail too, SweepStaleNetns() deletes every fpc-PID-... whose PID
// no longer runs, and SupervisorCluster calls it before it creates its own.
//
// Thread-safety: a NetnsLink is used by one thread; the free functions are safe from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "tests/cluster/fault_proxy.h"

namespace fp::cluster_test {

// Slots (one per supervisor) in 10.213.0.0/16 at four addresses each.
inline constexpr size_t kMaxNetnsSlots = 16'384;
inline constexpr char kNetnsPrefix[] = "fpc-";

// True when this process can run supervisors in namespaces of their own: root, nsenter found, and
// `ip netns add` works. Probed once per process.
bool NetnsAvailable();

// Deletes every namespace named fpc-PID-... whose PID no longer runs; returns how many.
size_t SweepStaleNetns();

// The first of `count` consecutive free slots (no veth of that slot exists), starting at a place
// that depends on this process's PID. ResourceExhausted when none is free.
StatusOr<size_t> FindFreeNetnsSlots(size_t count);

class NetnsLink {
 public:
  // Creates the namespace and the veth pair of `slot` (< kMaxNetnsSlots), in kPass mode. The
  // stderr of the `ip` commands is appended to `log_path`. Internal naming the failed command;
  // what was created is deleted again. The caller owns the result.
  static StatusOr<std::unique_ptr<NetnsLink>> Create(size_t slot, std::string log_path);
  ~NetnsLink();
  NetnsLink(const NetnsLink&) = delete;
  NetnsLink& operator=(const NetnsLink&) = delete;

  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }  // the namespace's end
  ProxyMode mode() const { return mode_; }
  // `argv` run in the namespace (nsenter execs it: same PID, same signals).
  std::vector<std::string> Wrap(const std::vector<std::string>& argv) const;
  // Partitions or heals the veth (see above). Internal naming the failed command.
  Status SetMode(ProxyMode mode);

 private:
  NetnsLink() = default;
  Status Run(const std::string& command) const;
  Status Setup();

  std::string name_;          // the namespace
  std::string host_device_;   // the veth end in the test's namespace
  std::string host_address_;  // its address
  std::string address_;       // the namespace's end (eth0)
  std::string log_path_;
  ProxyMode mode_ = ProxyMode::kPass;
  bool created_ = false;
};

}  // namespace fp::cluster_test
