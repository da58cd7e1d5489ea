// RunCampaign; see campaign.h.
#include "tests/cluster/campaign.h"

#include <algorithm>
#include <map>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>

namespace fp::cluster_test {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kPollInterval{50};
constexpr milliseconds kWatchInterval{250};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

milliseconds Left(Clock::time_point deadline) {
  return std::max(milliseconds(1),
                  std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
}

void Note(FaultResult& result, const Status& status) {
  if (status.ok()) return;
  result.problem += (result.problem.empty() ? "" : "; ") + status.ToString();
}

// Which supervisors a fault of `kind` impairs, given the current leader.
std::vector<size_t> Victims(FaultKind kind, size_t leader, size_t supervisors) {
  if (kind == FaultKind::kKillEtcd) return {};
  if (kind == FaultKind::kSplit && supervisors > 2) return {leader, (leader + 1) % supervisors};
  if (kind == FaultKind::kReplaceMember) return {(leader + 1) % supervisors};
  return {leader};
}

Status Inject(SupervisorCluster& cluster, FaultKind kind, const std::vector<size_t>& victims,
              size_t etcd_member) {
  switch (kind) {
    case FaultKind::kKillLeader:
    case FaultKind::kReplaceMember:
      return cluster.Kill(victims[0]);
    case FaultKind::kPauseLeader:
      return cluster.Pause(victims[0]);
    case FaultKind::kIsolateLeader:
    case FaultKind::kSplit:
      for (size_t victim : victims)
        FP_RETURN_IF_ERROR(cluster.SetLink(victim, ProxyMode::kBlackhole));
      return OkStatus();
    case FaultKind::kResetLeader:
      return cluster.SetLink(victims[0], ProxyMode::kReject);
    case FaultKind::kFullDisk:
      return cluster.FillDisk(victims[0]);
    case FaultKind::kKillEtcd:
      return cluster.etcd().Kill(etcd_member);
  }
  return InternalError("unknown fault kind");
}

Status Heal(SupervisorCluster& cluster, FaultKind kind, const std::vector<size_t>& victims,
            size_t etcd_member) {
  switch (kind) {
    case FaultKind::kReplaceMember:
      return cluster.Replace(victims[0], (victims[0] + 1) % cluster.size());
    case FaultKind::kKillLeader:
      return cluster.Restart(victims[0]);
    case FaultKind::kPauseLeader:
      return cluster.Resume(victims[0]);
    case FaultKind::kIsolateLeader:
    case FaultKind::kResetLeader:
    case FaultKind::kSplit:
      for (size_t victim : victims) FP_RETURN_IF_ERROR(cluster.SetLink(victim, ProxyMode::kPass));
      return OkStatus();
    case FaultKind::kFullDisk:
      FP_RETURN_IF_ERROR(cluster.FreeDisk(victims[0]));
      // The full disk may have ended the process (a failed write is fatal): start it again.
      return cluster.Running(victims[0]) ? OkStatus() : cluster.Restart(victims[0]);
    case FaultKind::kKillEtcd:
      return cluster.etcd().Restart(etcd_member);
  }
  return InternalError("unknown fault kind");
}

// Recovery while the fault holds: a leader among the others, an admission, a verification.
void MeasureRecovery(SupervisorCluster& cluster, const LoadGenerator& load, FaultKind kind,
                     const std::vector<size_t>& victims, Clock::time_point injected,
                     const CampaignOptions& options, FaultResult& result) {
  const auto deadline = injected + options.recovery_timeout;
  if (!victims.empty()) {
    // A full disk need not stop its supervisor at once (it writes its state only on flushes), so
    // any agreed leader counts there; other faults need a leader among the unharmed.
    const std::vector<size_t> excluded =
        kind == FaultKind::kFullDisk ? std::vector<size_t>{} : victims;
    StatusOr<size_t> leader = cluster.WaitForLeader(Left(deadline), excluded);
    if (leader.ok()) {
      result.leader_s = SecondsSince(injected);
    } else {
      Note(result, leader.status().WithContext("new leader"));
    }
  }
  std::optional<WriteRecord> first;
  while (!(first = load.FirstAckStartedAfter(injected)).has_value() && Clock::now() < deadline) {
    std::this_thread::sleep_for(kPollInterval);
  }
  if (!first.has_value()) {
    Note(result, DeadlineExceededError("no submission acknowledged after the fault"));
    return;
  }
  result.admit_s = std::chrono::duration<double>(first->finished - injected).count();
  client::FailoverOptions failover = options.load.failover;
  client::ApiClient api = cluster.FailoverApi(failover);
  StatusOr<client::SessionView> view = api.WaitDone(first->session_id, Left(deadline), {});
  if (view.ok() && view->phase == "verified") {
    result.verify_s = SecondsSince(injected);
  } else {
    Note(result, view.ok() ? InternalError("session " + view->phase)
                           : view.status().WithContext("verification after the fault"));
  }
}

// After healing: the victims serve again and applied as far as the others had at the heal.
void MeasureRejoin(SupervisorCluster& cluster, const std::vector<size_t>& victims,
                   Clock::time_point healed, const CampaignOptions& options, FaultResult& result) {
  const auto deadline = healed + options.recovery_timeout;
  uint64_t target = 0;
  for (size_t s = 0; s < cluster.size(); ++s) {
    if (std::find(victims.begin(), victims.end(), s) != victims.end()) continue;
    StatusOr<MemberView> view = cluster.Member(s);
    if (view.ok()) target = std::max(target, view->applied);
  }
  for (size_t victim : victims) {
    while (true) {
      StatusOr<MemberView> view = cluster.Member(victim);
      if (view.ok() && view->applied >= target) break;
      if (Clock::now() >= deadline) {
        Note(result, DeadlineExceededError(fmt::format(
                         "{} did not catch up to {}: {}", cluster.name(victim), target,
                         view.ok() ? std::to_string(view->applied) : view.status().ToString())));
        return;
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }
  result.rejoin_s = SecondsSince(healed);
}

FaultResult RunFault(SupervisorCluster& cluster, const LoadGenerator& load, FaultKind kind,
                     size_t etcd_member, const CampaignOptions& options) {
  FaultResult result;
  result.kind = kind;
  size_t leader = 0;
  if (kind != FaultKind::kKillEtcd) {
    StatusOr<size_t> found = cluster.WaitForLeader(options.recovery_timeout);
    if (!found.ok()) {
      Note(result, found.status().WithContext("no leader to fault"));
      return result;
    }
    leader = *found;
  }
  const std::vector<size_t> victims = Victims(kind, leader, cluster.size());
  result.target = victims.empty() ? fmt::format("etcd-{}", etcd_member) : cluster.name(leader);
  if (victims.size() > 1) result.target += "+" + cluster.name(victims[1]);
  const auto injected = Clock::now();
  Status injection = Inject(cluster, kind, victims, etcd_member);
  if (!injection.ok()) {
    Note(result, injection.WithContext("inject"));
    return result;
  }
  MeasureRecovery(cluster, load, kind, victims, injected, options, result);
  std::this_thread::sleep_until(injected + options.hold);
  const auto healed = Clock::now();
  const Status heal = Heal(cluster, kind, victims, etcd_member);
  Note(result, heal.WithContext("heal"));
  if (kind == FaultKind::kKillEtcd) {
    // Restart returned once the member served linearizable reads again.
    if (heal.ok()) result.rejoin_s = SecondsSince(healed);
  } else if (heal.ok()) {
    MeasureRejoin(cluster, victims, healed, options, result);
  }
  return result;
}

std::optional<double> Median(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

json::value OrNull(const std::optional<double>& value) {
  return value.has_value() ? json::value(*value) : json::value(nullptr);
}

std::string Seconds(const std::optional<double>& value) {
  return value.has_value() ? fmt::format("{:.2f}", *value) : "-";
}

}  // namespace

const char* FaultKindName(FaultKind kind) {
  switch (kind) {
    case FaultKind::kKillLeader:
      return "kill_leader";
    case FaultKind::kPauseLeader:
      return "pause_leader";
    case FaultKind::kIsolateLeader:
      return "isolate_leader";
    case FaultKind::kResetLeader:
      return "reset_leader";
    case FaultKind::kSplit:
      return "split";
    case FaultKind::kFullDisk:
      return "full_disk";
    case FaultKind::kReplaceMember:
      return "replace_member";
    case FaultKind::kKillEtcd:
      return "kill_etcd";
  }
  return "?";
}

StatusOr<FaultKind> ParseFaultKind(std::string_view name) {
  std::string known;
  for (FaultKind kind : kAllFaultKinds) {
    if (name == FaultKindName(kind)) return kind;
    known += std::string(known.empty() ? "" : ", ") + FaultKindName(kind);
  }
  return InvalidArgumentError(fmt::format("unknown fault kind '{}' (known: {})", name, known));
}

bool CampaignReport::ok() const {
  return convergence.ok() && std::all_of(faults.begin(), faults.end(),
                                         [](const FaultResult& f) { return f.problem.empty(); });
}

StatusOr<CampaignReport> RunCampaign(SupervisorCluster& cluster, const CampaignOptions& options) {
  FP_CHECK(!options.kinds.empty());
  FP_CHECK(options.max_faults >= 1 && options.max_faults <= kMaxCampaignFaults);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWatcher> watcher,
                      CheckpointWatcher::Start(cluster, kWatchInterval));
  LoadOptions load_options = options.load;
  load_options.urls = cluster.urls();
  LoadGenerator load(load_options);
  const auto start = Clock::now();
  load.Start();
  CampaignReport report;
  report.disk_fault_mode = DiskFaultModeName(cluster.disk_fault_mode());
  report.network_mode = NetworkModeName(cluster.network_mode());
  size_t etcd_kills = 0;
  for (size_t i = 0; i < options.max_faults; ++i) {
    if (options.duration.count() > 0 && Clock::now() - start >= options.duration) break;
    const FaultKind kind = options.kinds[i % options.kinds.size()];
    const size_t member = etcd_kills % cluster.etcd().size();
    if (kind == FaultKind::kKillEtcd) ++etcd_kills;
    report.faults.push_back(RunFault(cluster, load, kind, member, options));
    std::this_thread::sleep_for(options.settle);
  }
  load.Stop();
  report.seconds = SecondsSince(start);
  const std::vector<WriteRecord> writes = load.Records();
  report.writes = writes.size();
  report.convergence = CheckConvergence(cluster, writes, *watcher, options.convergence);
  watcher->Stop();
  return report;
}

json::object CampaignJson(const CampaignReport& report) {
  json::object out;
  out["ok"] = report.ok();
  out["seconds"] = report.seconds;
  out["disk_fault_mode"] = report.disk_fault_mode;
  out["network_mode"] = report.network_mode;
  const ConvergenceReport& c = report.convergence;
  out["writes"] = report.writes;
  out["acknowledged_checked"] = c.acknowledged;
  out["indeterminate"] = c.indeterminate;
  out["indeterminate_admitted"] = c.indeterminate_admitted;
  out["rejected"] = c.rejected;
  out["session_reads"] = c.session_reads;
  out["reference_checked"] = c.reference_checked;
  out["checkpoints_observed"] = c.checkpoints_observed;
  out["consistency_proofs"] = c.consistency_proofs;
  out["final_checkpoint_size"] = c.final_checkpoint_size;
  out["final_checkpoint_cosigners"] = c.cosigners;
  json::array applied;
  for (uint64_t position : c.applied) applied.emplace_back(position);
  out["applied_positions"] = std::move(applied);
  json::array faults;
  std::map<std::string, std::map<std::string, std::vector<double>>> by_kind;
  std::map<std::string, size_t> counts;
  for (const FaultResult& fault : report.faults) {
    const std::string kind = FaultKindName(fault.kind);
    ++counts[kind];
    faults.push_back(json::object{{"kind", kind},
                                  {"target", fault.target},
                                  {"leader_s", OrNull(fault.leader_s)},
                                  {"admit_s", OrNull(fault.admit_s)},
                                  {"verify_s", OrNull(fault.verify_s)},
                                  {"rejoin_s", OrNull(fault.rejoin_s)},
                                  {"problem", fault.problem}});
    for (const auto& [name, value] : {std::pair{"leader_s", fault.leader_s},
                                      {"admit_s", fault.admit_s},
                                      {"verify_s", fault.verify_s},
                                      {"rejoin_s", fault.rejoin_s}}) {
      if (value.has_value()) by_kind[kind][name].push_back(*value);
    }
  }
  out["faults"] = std::move(faults);
  json::object summary;
  for (const auto& [kind, count] : counts) {
    json::object entry{{"injected", count}};
    for (const auto& [name, values] : by_kind[kind]) {
      entry[name + "_median"] = OrNull(Median(values));
      entry[name + "_max"] = *std::max_element(values.begin(), values.end());
    }
    summary[kind] = std::move(entry);
  }
  out["by_kind"] = std::move(summary);
  json::array violations;
  for (const std::string& violation : c.violations) violations.emplace_back(violation);
  out["violations"] = std::move(violations);
  return out;
}

std::string CampaignTable(const CampaignReport& report) {
  std::string text = fmt::format("{:<16} {:>8} {:>9} {:>9} {:>9} {:>9}\n", "fault", "injected",
                                 "leader_s", "admit_s", "verify_s", "rejoin_s");
  std::map<std::string, std::vector<const FaultResult*>> by_kind;
  for (const FaultResult& fault : report.faults)
    by_kind[FaultKindName(fault.kind)].push_back(&fault);
  for (const auto& [kind, faults] : by_kind) {
    std::map<std::string, std::vector<double>> values;
    for (const FaultResult* fault : faults) {
      if (fault->leader_s) values["leader"].push_back(*fault->leader_s);
      if (fault->admit_s) values["admit"].push_back(*fault->admit_s);
      if (fault->verify_s) values["verify"].push_back(*fault->verify_s);
      if (fault->rejoin_s) values["rejoin"].push_back(*fault->rejoin_s);
    }
    text += fmt::format("{:<16} {:>8} {:>9} {:>9} {:>9} {:>9}\n", kind, faults.size(),
                        Seconds(Median(values["leader"])), Seconds(Median(values["admit"])),
                        Seconds(Median(values["verify"])), Seconds(Median(values["rejoin"])));
  }
  const ConvergenceReport& c = report.convergence;
  text += fmt::format(
      "(medians, seconds from injection; rejoin from the heal)\n"
      "writes {}: acknowledged {} (each checked on every supervisor), indeterminate {} ({} "
      "admitted everywhere, the rest nowhere), rejected {}\n"
      "checkpoints seen {}, consistency proofs {}, final checkpoint size {} cosigned by {}, "
      "reference runs {}\n"
      "network: {}; disk faults: {}; violations: {}\n",
      report.writes, c.acknowledged, c.indeterminate, c.indeterminate_admitted, c.rejected,
      c.checkpoints_observed, c.consistency_proofs, c.final_checkpoint_size, c.cosigners,
      c.reference_checked, report.network_mode, report.disk_fault_mode, c.violations.size());
  for (const FaultResult& fault : report.faults) {
    if (!fault.problem.empty()) {
      text += fmt::format("problem: {} on {}: {}\n", FaultKindName(fault.kind), fault.target,
                          fault.problem);
    }
  }
  for (const std::string& violation : c.violations) text += "VIOLATION " + violation + "\n";
  return text;
}

}  // namespace fp::cluster_test
