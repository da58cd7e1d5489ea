// A fault campaign against a SupervisorCluster under load: faults of the listed kinds in turn,
// each held for a while and then healed, with the recovery measured after each, then the
// convergence check (convergence.h) over everything the load generator wrote. The CTest runs a
// short one (a fault of each kind); tests/cluster/fault_campaign.sh runs a long one (minutes of
// leader kills) and prints its JSON and table.
//
// Fault kinds and what healing means:
//   kill_leader      SIGKILL of the leader; restarted on its data directory after the hold.
//   pause_leader     SIGSTOP of the leader (a paused process: it wakes up deposed); SIGCONT.
//   isolate_leader   the leader partitioned, dropping packets (SupervisorCluster::SetLink); healed.
//   reset_leader     the leader partitioned, failing connections (reset and refused through the
//                    proxies; network unreachable on a namespace's veth).
//   split            the leader and one follower partitioned (blackholed), the rest not.
// Where the partitions act depends on SupervisorCluster::network_mode(): in a namespace per
// supervisor ("netns") the victim is cut off from etcd, its workers and its clients; on loopback
// ("loopback_proxy") from etcd only. The report names the mode.
//   full_disk        the leader's data directory disk full (supervisor_cluster.h); freed, and
//                    the supervisor restarted if the full disk ended it.
//   replace_member   SIGKILL of a follower and the loss of its data directory (keys kept); healed
//                    by `fieldprint supervisor bootstrap` from the leader's snapshot and a start.
//   kill_etcd        SIGKILL of one etcd member (a different one each time); restarted.
//
// Recovery times, from the injection (seconds; absent when not reached within the timeout):
//   leader_s   another supervisor is leader and every answering supervisor names it (supervisor
//              faults only);
//   admit_s    the first acknowledged submission among those started after the fault;
//   verify_s   that session verified (placement and comparison need a working leader);
//   rejoin_s   after healing: the faulted supervisor (or etcd member) serves again and has
//              applied as far as the others (from the heal).
//
// Thread-safety: runs on the caller's thread (which must be the one that started the cluster).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

#include "tests/cluster/convergence.h"
#include "tests/cluster/load_generator.h"
#include "tests/cluster/supervisor_cluster.h"

namespace fp::cluster_test {

inline constexpr size_t kMaxCampaignFaults = 10'000;

enum class FaultKind {
  kKillLeader,
  kPauseLeader,
  kIsolateLeader,
  kResetLeader,
  kSplit,
  kFullDisk,
  kReplaceMember,
  kKillEtcd,
};
inline constexpr FaultKind kAllFaultKinds[] = {FaultKind::kKillLeader,    FaultKind::kPauseLeader,
                                               FaultKind::kIsolateLeader, FaultKind::kResetLeader,
                                               FaultKind::kSplit,         FaultKind::kFullDisk,
                                               FaultKind::kReplaceMember, FaultKind::kKillEtcd};

const char* FaultKindName(FaultKind kind);
// InvalidArgument naming the kinds for an unknown name.
StatusOr<FaultKind> ParseFaultKind(std::string_view name);

struct CampaignOptions {
  std::vector<FaultKind> kinds;           // injected in this order, cycling; non-empty
  size_t max_faults = 7;                  // 1..kMaxCampaignFaults
  std::chrono::milliseconds duration{0};  // also stop starting faults after this (0: no limit)
  std::chrono::milliseconds hold{1'500};  // how long a fault lasts before it is healed
  std::chrono::milliseconds settle{500};  // between a heal and the next fault
  std::chrono::milliseconds recovery_timeout{20'000};  // per measured recovery
  LoadOptions load;                                    // urls are filled in from the cluster
  ConvergenceOptions convergence;
};

struct FaultResult {
  FaultKind kind = FaultKind::kKillLeader;
  std::string target;  // the supervisor or etcd member
  std::optional<double> leader_s;
  std::optional<double> admit_s;
  std::optional<double> verify_s;
  std::optional<double> rejoin_s;
  std::string problem;  // an injection or heal that failed, or a recovery that timed out
};

struct CampaignReport {
  std::vector<FaultResult> faults;
  ConvergenceReport convergence;
  size_t writes = 0;
  double seconds = 0;
  std::string disk_fault_mode;
  std::string network_mode;  // NetworkModeName: where partitions act (supervisor_cluster.h)
  bool ok() const;           // convergence holds and no fault had a problem
};

// Runs the campaign on `cluster` (borrowed). Errors only when the harness cannot run at all
// (the watcher cannot start); everything else is in the report.
StatusOr<CampaignReport> RunCampaign(SupervisorCluster& cluster, const CampaignOptions& options);

// The report as JSON (counts, every fault with its recovery, per-kind medians and maxima, the
// violations) and as a text table.
boost::json::object CampaignJson(const CampaignReport& report);
std::string CampaignTable(const CampaignReport& report);

}  // namespace fp::cluster_test
