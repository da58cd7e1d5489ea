// fieldprint_fault_campaign: the long fault campaign (campaign.h) as a program, for
// tests/cluster/fault_campaign.sh: a supervisor cluster of real processes under load, faults of
// the chosen kinds every few seconds for the given time, then the convergence check. Prints the
// report as one JSON object on stdout and a table on stderr; exits 0 only when every guarantee
// held and every recovery was observed.
//
// Thread-safety: single-threaded main (the harness starts its own threads).
#include <cstdio>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/temp_dir.h"
#include "tests/cluster/campaign.h"

namespace {

using fp::cluster_test::CampaignOptions;
using std::chrono::milliseconds;

// Bounds of the options.
constexpr double kMaxCampaignSeconds = 24 * 3600;

struct Args {
  std::string binary;
  std::string source_dir;
  std::string dir;  // empty: a temporary directory, removed afterwards
  double seconds = 300;
  std::vector<std::string> faults = {"kill_leader"};
  int hold_ms = 2000;
  int settle_ms = 1000;
  size_t supervisors = 3;
  size_t etcd_members = 3;
  uint32_t workers = 3;
  uint32_t clients = 2;
  int pause_ms = 250;
  size_t references = 5;
  std::string log_level = "info";
  bool loopback = false;  // no network namespaces even where the machine allows them
};

fp::Status Run(const Args& args) {
  std::unique_ptr<fp::ScopedTempDir> temp;
  std::string dir = args.dir;
  if (dir.empty()) {
    FP_ASSIGN_OR_RETURN(temp, fp::ScopedTempDir::Create("fieldprint-campaign"));
    dir = temp->Join("cluster");
  }
  fp::cluster_test::SupervisorClusterOptions cluster_options;
  cluster_options.binary = args.binary;
  cluster_options.source_dir = args.source_dir;
  cluster_options.dir = dir;
  cluster_options.supervisors = args.supervisors;
  cluster_options.etcd_members = args.etcd_members;
  cluster_options.workers = args.workers;
  cluster_options.data_disk_mb = 64;
  cluster_options.log_level = args.log_level;
  cluster_options.network_namespaces = !args.loopback;
  FP_ASSIGN_OR_RETURN(auto cluster, fp::cluster_test::SupervisorCluster::Start(cluster_options));
  CampaignOptions options;
  for (const std::string& name : args.faults) {
    FP_ASSIGN_OR_RETURN(fp::cluster_test::FaultKind kind, fp::cluster_test::ParseFaultKind(name));
    options.kinds.push_back(kind);
  }
  options.max_faults = fp::cluster_test::kMaxCampaignFaults;
  options.duration = milliseconds(static_cast<int64_t>(args.seconds * 1000));
  options.hold = milliseconds(args.hold_ms);
  options.settle = milliseconds(args.settle_ms);
  options.load.clients = args.clients;
  options.load.pause = milliseconds(args.pause_ms);
  options.load.run_id = "campaign";
  options.load.max_writes = fp::cluster_test::kMaxLoadWrites;
  options.load.failover.attempt_timeout = milliseconds(1000);
  options.load.failover.request_deadline = milliseconds(5000);
  options.convergence.timeout = milliseconds(180'000);
  options.convergence.reference_samples = args.references;
  FP_ASSIGN_OR_RETURN(fp::cluster_test::CampaignReport report,
                      fp::cluster_test::RunCampaign(*cluster, options));
  boost::json::object json = fp::cluster_test::CampaignJson(report);
  json["supervisors"] = args.supervisors;
  json["etcd_members"] = args.etcd_members;
  json["workers"] = args.workers;
  std::printf("%s\n", boost::json::serialize(json).c_str());
  std::fprintf(stderr, "%s", fp::cluster_test::CampaignTable(report).c_str());
  if (!report.ok()) {
    cluster->Stop();
    std::fprintf(stderr, "%s", cluster->LogTails(3000).c_str());
    return fp::AbortedError("the campaign found violations or unrecovered faults");
  }
  return fp::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app("A fault campaign against a local fieldprint supervisor cluster on etcd");
  app.add_option("--binary", args.binary, "The fieldprint executable")->required();
  app.add_option("--source-dir", args.source_dir, "The source tree (deploy/config)")->required();
  app.add_option("--dir", args.dir, "Working directory (kept); default: a temporary one");
  app.add_option("--seconds", args.seconds, "How long faults keep coming")
      ->check(CLI::Range(1.0, kMaxCampaignSeconds));
  app.add_option("--faults", args.faults,
                 "Fault kinds, in turn (kill_leader, pause_leader, "
                 "isolate_leader, reset_leader, split, full_disk, replace_member, "
                 "kill_etcd)")
      ->delimiter(',');
  app.add_flag("--loopback", args.loopback,
               "Supervisors on 127.0.0.1 behind fault proxies even where network namespaces work");
  app.add_option("--hold-ms", args.hold_ms, "Least time a fault lasts")
      ->check(CLI::Range(0, 600'000));
  app.add_option("--settle-ms", args.settle_ms, "Pause after a heal")
      ->check(CLI::Range(0, 600'000));
  app.add_option("--supervisors", args.supervisors, "Supervisor processes")
      ->check(CLI::Range(size_t{2}, fp::cluster_test::kMaxClusterSupervisors));
  app.add_option("--etcd-members", args.etcd_members, "etcd members")
      ->check(CLI::Range(size_t{1}, fp::supervisor::testing::kMaxEtcdMembers));
  app.add_option("--workers", args.workers, "Worker processes (3 replicas per session)")
      ->check(CLI::Range(3u, fp::cluster_test::kMaxClusterWorkers));
  app.add_option("--clients", args.clients, "Load clients")
      ->check(CLI::Range(1u, fp::cluster_test::kMaxLoadClients));
  app.add_option("--pause-ms", args.pause_ms, "Pause between one client's submissions")
      ->check(CLI::Range(0, 60'000));
  app.add_option("--references", args.references, "Sessions checked against `fieldprint generate`")
      ->check(CLI::Range(size_t{0}, size_t{1000}));
  app.add_option("--log-level", args.log_level,
                 "Log level of every process (debug shows every "
                 "record the supervisors reject)");
  CLI11_PARSE(app, argc, argv);
  const fp::Status status = Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "fieldprint_fault_campaign: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
