// fieldprint_cluster_bench: ingest throughput and ack latency of a supervisor cluster on etcd
// against the standalone supervisor, measured in one run with the same load:
//
//   standalone  one supervisor, RocksDB log in its data directory (synced group commit);
//   cluster     N supervisors (default 3) on an M-member etcd (default 3, mutual TLS, Debian's
//               etcd-server started by supervisor/log/testing/etcd_cluster.h), one etcd prefix,
//               each applying the log into its own RocksDB state.
//
// Both run in this process with real mutual TLS and real sockets: simulated workers
// (bench_worker.h) speak the worker protocol and stream honest leaves for `sessions` sessions of
// R replicas; in the cluster, worker w connects to supervisor w mod N, so every supervisor
// appends (--one-writer puts them all on supervisor-0). Reported per configuration: leaf batches
// and leaves acknowledged per second (durable: fsynced, or committed by an etcd quorum),
// send-to-Ack latency p50/p99, leaves applied per second on the slowest supervisor, the apply lag
// at the end, and how many appends failed as unavailable or past their deadline (the workers resend
// those). One JSON object on stdout, a table on stderr.
//
// Everything shares the machine (etcd, supervisors, workers): the figures compare the two logs
// under equal conditions, they are not a capacity plan.
//
// Thread-safety: single-threaded main; the supervisors and workers run their own threads.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <prometheus/registry.h>

#include "common/base/log.h"
#include "common/base/temp_dir.h"
#include "common/tlog/note.h"
#include "common/wire/certs.h"
#include "supervisor/bench/bench_util.h"
#include "supervisor/bench/bench_worker.h"
#include "supervisor/client/api_client.h"
#include "supervisor/log/testing/etcd_cluster.h"
#include "supervisor/runtime/supervisor.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kMaxBenchSupervisors = 7;
constexpr uint32_t kMaxBenchWorkers = 256;
constexpr double kMaxBenchSeconds = 3600;
constexpr char kEtcdPrefix[] = "/fieldprint-bench";
// Sessions run long enough to outlast the measurement: nothing finishes during it.
constexpr uint64_t kBenchMaxUnverifiedSteps = 4096;

struct Args {
  double seconds = 10;
  double warmup_seconds = 3;
  uint32_t supervisors = 3;
  uint32_t etcd_members = 3;
  uint32_t workers = 6;
  uint32_t sessions = 32;
  uint32_t replicas = 3;
  uint32_t batch_steps = 64;
  uint32_t in_flight = 8;
  uint32_t io_threads = 1;
  size_t etcd_txns_in_flight = 1;
  // Every worker on supervisor-0, so one supervisor appends (no contention for log positions).
  bool one_writer = false;
};

// N in-process supervisors on one log (RocksDB for N = 1 without etcd, else etcd) with
// simulated workers spread over them.
class Fleet {
 public:
  ~Fleet() { Stop(); }

  Status Start(const Args& args, size_t supervisors, const testing::EtcdCluster* etcd) {
    FP_ASSIGN_OR_RETURN(temp_, ScopedTempDir::Create("fieldprint-cluster-bench"));
    const std::string certs = (temp_->path() / "certs").string();
    wire::CertsOptions names;
    names.names.clear();
    for (size_t s = 0; s < supervisors; ++s) names.names.push_back(SupervisorName(s));
    for (uint32_t w = 0; w < args.workers; ++w) names.names.push_back(BenchFleet::WorkerName(w));
    FP_RETURN_IF_ERROR(wire::InitCerts(certs, names));
    FP_RETURN_IF_ERROR(ProvisionLedgerKey(supervisors));
    registries_.resize(supervisors);
    for (size_t s = 0; s < supervisors; ++s) {
      registries_[s] = std::make_unique<prometheus::Registry>();
      FP_ASSIGN_OR_RETURN(std::unique_ptr<Supervisor> supervisor,
                          Supervisor::Start(Options(args, s, certs, etcd), *registries_[s]));
      supervisors_.push_back(std::move(supervisor));
    }
    std::vector<BenchWorkerOptions> workers(args.workers);
    for (uint32_t w = 0; w < args.workers; ++w) {
      const size_t s = args.one_writer ? 0 : w % supervisors;
      workers[w].port = supervisors_[s]->worker_port();
      workers[w].server_name = SupervisorName(s);
      workers[w].batch_steps = args.batch_steps;
      workers[w].max_in_flight = args.in_flight;
    }
    return workers_.Start(certs, workers);
  }

  // Through a failover client over every supervisor, each session under an Idempotency-Key: a
  // slow etcd append (504) or a busy supervisor is retried without admitting twice.
  Status Submit(uint32_t sessions) {
    std::vector<client::SupervisorUrl> urls;
    for (const auto& supervisor : supervisors_) {
      urls.push_back(client::SupervisorUrl{"127.0.0.1", supervisor->http_port()});
    }
    client::FailoverOptions failover;
    failover.request_deadline = std::chrono::seconds(60);
    failover.max_attempts = 12;
    client::ApiClient api(std::move(urls), failover);
    for (uint32_t s = 0; s < sessions; ++s) {
      client::SubmitRequest request;
      request.model = "bench";
      request.prompt_token_ids = {7, s};
      request.max_tokens = wire::kMaxSessionTokens;
      request.seed = s;
      request.idempotency_key = fmt::format("bench-session-{}", s);
      FP_RETURN_IF_ERROR(api.Submit(request).status());
    }
    return OkStatus();
  }

  // Leadership terms the supervisors learned of (a change during the measurement explains a
  // latency outlier).
  double LeaderChanges() const {
    double total = 0;
    for (const auto& registry : registries_) {
      total += CounterValue(*registry, "fieldprint_supervisor_leader_changes_total");
    }
    return total;
  }
  // Leaves applied so far by the supervisor that applied the fewest.
  double SlowestApplied() const {
    double slowest = -1;
    for (const auto& registry : registries_) {
      const double applied = CounterValue(*registry, "fieldprint_supervisor_leaves_applied_total");
      slowest = slowest < 0 ? applied : std::min(slowest, applied);
    }
    return slowest;
  }
  uint64_t MaxApplyLag() const {
    uint64_t lag = 0;
    for (const auto& supervisor : supervisors_) {
      const uint64_t end = supervisor->log().End();
      lag = std::max(lag, end > supervisor->applied() ? end - supervisor->applied() : 0);
    }
    return lag;
  }
  void Stop() {
    workers_.StopWorkers();
    for (auto& supervisor : supervisors_) supervisor->Drain().IgnoreError();
    supervisors_.clear();
    temp_.reset();
  }

  BenchFleet& workers() { return workers_; }

 private:
  static std::string SupervisorName(size_t s) { return fmt::format("supervisor-{}", s); }
  std::filesystem::path DataDir(size_t s) const { return temp_->path() / SupervisorName(s); }

  // Every supervisor of a cluster signs with one ledger key, provisioned before the first start.
  Status ProvisionLedgerKey(size_t supervisors) const {
    FP_ASSIGN_OR_RETURN(tlog::NoteSigner signer,
                        tlog::NoteSigner::Generate(SupervisorOptions().origin));
    for (size_t s = 0; s < supervisors; ++s) {
      std::error_code error;
      std::filesystem::create_directories(DataDir(s), error);
      const std::filesystem::path path = DataDir(s) / kCheckpointKeyFile;
      std::ofstream file(path, std::ios::trunc);
      file << signer.ToString() << "\n";
      file.close();
      std::filesystem::permissions(
          path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, error);
      if (!file || error) return UnavailableError(fmt::format("cannot write {}", path.string()));
    }
    return OkStatus();
  }

  SupervisorOptions Options(const Args& args, size_t s, const std::string& certs,
                            const testing::EtcdCluster* etcd) const {
    SupervisorOptions options;
    options.data_dir = DataDir(s).string();
    options.certs_dir = certs;
    options.tls_name = SupervisorName(s);
    options.worker_port = 0;
    options.http_port = 0;
    options.io_threads = args.io_threads;
    options.defaults.replicas = args.replicas;
    options.defaults.max_unverified_steps = kBenchMaxUnverifiedSteps;
    options.defaults.models["bench"] = {std::string(32, 'n'), std::string(32, '\0')};
    if (etcd != nullptr) {
      options.log_backend = LogBackend::kEtcd;
      options.etcd.client = etcd->ClientOptionsFor(s % etcd->size());
      options.etcd.prefix = kEtcdPrefix;
      options.etcd.max_txns_in_flight = args.etcd_txns_in_flight;
    }
    return options;
  }

  std::unique_ptr<ScopedTempDir> temp_;
  std::vector<std::unique_ptr<prometheus::Registry>> registries_;
  std::vector<std::unique_ptr<Supervisor>> supervisors_;
  BenchFleet workers_;
};

// One configuration's measurement.
StatusOr<json::object> Measure(const Args& args, size_t supervisors,
                               const testing::EtcdCluster* etcd) {
  Fleet fleet;
  FP_RETURN_IF_ERROR(fleet.Start(args, supervisors, etcd));
  FP_RETURN_IF_ERROR(fleet.Submit(args.sessions));
  Sleep(args.warmup_seconds);
  const auto t0 = Clock::now();
  const uint64_t acked0 = fleet.workers().AckedLeaves();
  const double applied0 = fleet.SlowestApplied();
  const double changes0 = fleet.LeaderChanges();
  const double load0 = LoadAverage();
  Sleep(args.seconds);
  const auto t1 = Clock::now();
  const uint64_t acked1 = fleet.workers().AckedLeaves();
  const double applied1 = fleet.SlowestApplied();
  const uint64_t lag = fleet.MaxApplyLag();
  const double changes = fleet.LeaderChanges() - changes0;
  const uint64_t errors = fleet.workers().Errors();
  const std::string first_error = fleet.workers().FirstError();
  fleet.workers().StopWorkers();
  const double elapsed = std::chrono::duration<double>(t1 - t0).count();
  const std::vector<double> latencies = fleet.workers().Latencies(t0, t1);
  const double leaves = static_cast<double>(acked1 - acked0) / elapsed;
  json::object result;
  result["log"] = etcd != nullptr ? "etcd" : "rocksdb";
  result["supervisors"] = supervisors;
  result["etcd_members"] = etcd != nullptr ? etcd->size() : 0;
  result["leaves_per_second"] = leaves;
  result["batches_per_second"] = leaves / args.batch_steps;
  result["slowest_applied_leaves_per_second"] = (applied1 - applied0) / elapsed;
  result["ack_latency_p50_seconds"] = Percentile(latencies, 0.50);
  result["ack_latency_p99_seconds"] = Percentile(latencies, 0.99);
  result["acks_sampled"] = latencies.size();
  result["max_apply_lag_records_at_end"] = lag;
  result["worker_errors"] = errors;
  result["appends_failed_and_resent"] = fleet.workers().Refused();
  result["leader_changes"] = changes;
  result["load_average_1m_before"] = load0;
  result["load_average_1m_after"] = LoadAverage();
  fleet.Stop();
  if (errors > 0) {
    return InternalError(fmt::format("{} worker errors, the first: {}", errors, first_error));
  }
  return result;
}

void PrintRow(const json::object& r) {
  std::fprintf(
      stderr, "%-24s %10.0f %10.0f %10.0f %9.2f %9.2f %8lu\n",
      fmt::format("{} x{}", r.at("log").as_string().c_str(),
                  r.at("supervisors").to_number<uint64_t>())
          .c_str(),
      r.at("batches_per_second").to_number<double>(), r.at("leaves_per_second").to_number<double>(),
      r.at("slowest_applied_leaves_per_second").to_number<double>(),
      1e3 * r.at("ack_latency_p50_seconds").to_number<double>(),
      1e3 * r.at("ack_latency_p99_seconds").to_number<double>(),
      static_cast<unsigned long>(r.at("max_apply_lag_records_at_end").to_number<uint64_t>()));
}

Status Run(const Args& args) {
  InitLogging(LogLevel::kWarn, LogFormat::kText);
  if (!testing::EtcdCluster::Available()) {
    return FailedPreconditionError("etcd is not installed (apt-get install etcd-server)");
  }
  FP_ASSIGN_OR_RETURN(json::object standalone, Measure(args, 1, nullptr));
  testing::EtcdClusterOptions etcd_options;
  etcd_options.members = args.etcd_members;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<testing::EtcdCluster> etcd,
                      testing::EtcdCluster::Start(etcd_options));
  FP_ASSIGN_OR_RETURN(json::object cluster, Measure(args, args.supervisors, etcd.get()));
  json::object out;
  out["benchmark"] = "supervisor_cluster_ingest";
  out["cpu"] = CpuModel();
  out["cores"] = std::thread::hardware_concurrency();
  out["seconds"] = args.seconds;
  out["workers"] = args.workers;
  out["sessions"] = args.sessions;
  out["replicas"] = args.replicas;
  out["batch_steps"] = args.batch_steps;
  out["in_flight_batches_per_worker"] = args.in_flight;
  out["etcd_txns_in_flight"] = args.etcd_txns_in_flight;
  out["one_writer"] = args.one_writer;
  out["cluster_over_standalone_leaves"] =
      cluster.at("leaves_per_second").to_number<double>() /
      std::max(1.0, standalone.at("leaves_per_second").to_number<double>());
  out["standalone"] = standalone;
  out["cluster"] = cluster;
  std::printf("%s\n", json::serialize(out).c_str());
  std::fprintf(stderr, "%-24s %10s %10s %10s %9s %9s %8s\n", "log", "batches/s", "leaves/s",
               "applied/s", "p50 ms", "p99 ms", "lag");
  PrintRow(standalone);
  PrintRow(cluster);
  return OkStatus();
}

}  // namespace
}  // namespace fp::supervisor

int main(int argc, char** argv) {
  fp::supervisor::Args args;
  CLI::App app("Ingest of a supervisor cluster on etcd against the standalone supervisor");
  app.add_option("--seconds", args.seconds, "Measured time per configuration")
      ->check(CLI::Range(0.1, fp::supervisor::kMaxBenchSeconds));
  app.add_option("--warmup-seconds", args.warmup_seconds, "Unmeasured warm-up")
      ->check(CLI::Range(0.0, fp::supervisor::kMaxBenchSeconds));
  app.add_option("--supervisors", args.supervisors, "Supervisors of the cluster")
      ->check(CLI::Range(1u, fp::supervisor::kMaxBenchSupervisors));
  app.add_option("--etcd-members", args.etcd_members, "etcd members")
      ->check(CLI::Range(1u, static_cast<uint32_t>(fp::supervisor::testing::kMaxEtcdMembers)));
  app.add_option("--workers", args.workers, "Simulated workers (connections)")
      ->check(CLI::Range(1u, fp::supervisor::kMaxBenchWorkers));
  app.add_option("--sessions", args.sessions, "Sessions submitted")
      ->check(CLI::Range(1u, 100'000u));
  app.add_option("--replicas", args.replicas, "Replicas per session")
      ->check(CLI::Range(1u, fp::wire::kMaxReplicas));
  app.add_option("--batch-steps", args.batch_steps, "Leaves per LeafBatch")
      ->check(CLI::Range(1u, static_cast<uint32_t>(fp::wire::kMaxLeafBatchSteps)));
  app.add_option("--in-flight", args.in_flight, "Unacknowledged batches per worker")
      ->check(CLI::Range(1u, static_cast<uint32_t>(fp::wire::kMaxSendQueueFrames)));
  app.add_option("--io-threads", args.io_threads, "Network threads per supervisor")
      ->check(CLI::Range(1u, fp::supervisor::kMaxIoThreads));
  app.add_option("--etcd-txns-in-flight", args.etcd_txns_in_flight,
                 "Append transactions each supervisor keeps in flight")
      ->check(CLI::Range(size_t{1}, fp::supervisor::kMaxEtcdTxnsInFlight));
  app.add_flag("--one-writer", args.one_writer,
               "Cluster: every worker on supervisor-0 (one appender) instead of spread over all");
  CLI11_PARSE(app, argc, argv);
  const fp::Status status = fp::supervisor::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "fieldprint_cluster_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
