// Supervisor load benchmarks; see bench.h.
#include "supervisor/bench/bench.h"

#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <prometheus/registry.h>
#include <stdlib.h>

#include "common/base/log.h"
#include "common/base/temp_dir.h"
#include "common/cli.h"
#include "common/leaf/session_id.h"
#include "common/wire/certs.h"
#include "supervisor/bench/bench_util.h"
#include "supervisor/bench/bench_worker.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/net/http_client.h"
#include "supervisor/runtime/supervisor.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using boost::beast::http::verb;

// Bounds on the benchmark's own knobs.
constexpr uint32_t kMaxBenchWorkers = 256;
constexpr uint32_t kMaxBenchClients = 256;
constexpr double kMaxBenchSeconds = 3600;

struct BenchArgs {
  double seconds = 10;
  double warmup_seconds = 2;
  uint32_t workers = 4;
  uint32_t sessions = 32;
  uint32_t replicas = 3;
  uint32_t batch_steps = 64;
  uint32_t in_flight = 8;
  uint32_t io_threads = 1;
  uint32_t clients = 4;
  uint32_t steps = 1024;  // proofs: steps per session
};

// A supervisor on a temporary data directory with simulated workers connected over mTLS.
class BenchCluster {
 public:
  ~BenchCluster() { Stop(); }

  Status Start(const BenchArgs& args, uint64_t max_unverified_steps) {
    FP_ASSIGN_OR_RETURN(temp_, ScopedTempDir::Create("fieldprint-bench"));
    wire::CertsOptions certs;
    certs.names = {"supervisor-0"};
    for (uint32_t w = 0; w < args.workers; ++w) certs.names.push_back(BenchFleet::WorkerName(w));
    FP_RETURN_IF_ERROR(wire::InitCerts((temp_->path() / "certs").string(), certs));
    SupervisorOptions options;
    options.data_dir = (temp_->path() / "data").string();
    options.certs_dir = (temp_->path() / "certs").string();
    options.worker_port = 0;
    options.http_port = 0;
    options.io_threads = args.io_threads;
    options.defaults.replicas = args.replicas;
    options.defaults.max_unverified_steps = static_cast<uint32_t>(max_unverified_steps);
    options.defaults.models["bench"] = {std::string(32, 'n'), std::string(32, '\0')};
    FP_ASSIGN_OR_RETURN(supervisor_, Supervisor::Start(options, registry_));
    BenchWorkerOptions worker;
    worker.port = supervisor_->worker_port();
    worker.batch_steps = args.batch_steps;
    worker.max_in_flight = args.in_flight;
    FP_RETURN_IF_ERROR(
        workers_.Start(options.certs_dir, std::vector<BenchWorkerOptions>(args.workers, worker)));
    http_ = std::make_unique<HttpClient>("127.0.0.1", supervisor_->http_port());
    return OkStatus();
  }

  // Submits sessions of `max_tokens` steps; returns their ids (hex).
  StatusOr<std::vector<std::string>> Submit(uint32_t sessions, uint64_t max_tokens) {
    std::vector<std::string> ids;
    for (uint32_t s = 0; s < sessions; ++s) {
      const std::string body = fmt::format(
          R"({{"model":"bench","prompt_token_ids":[1,2,3,{}],"max_tokens":{},"seed":{}}})", s,
          max_tokens, s);
      FP_ASSIGN_OR_RETURN(HttpResponse response, http_->Request(verb::post, "/v1/sessions", body));
      if (response.status != 202) {
        return InternalError(fmt::format("submit: {} {}", response.status, response.body));
      }
      boost::system::error_code error;
      json::value value = json::parse(response.body, error);
      if (error || !value.is_object()) return InternalError("submit: bad JSON reply");
      ids.push_back(std::string(value.at("session_id").as_string()));
    }
    return ids;
  }

  void Stop() {
    workers_.StopWorkers();
    if (supervisor_ != nullptr) supervisor_->Drain().IgnoreError();
    supervisor_.reset();
    temp_.reset();
  }

  BenchFleet& workers() { return workers_; }
  Supervisor& supervisor() { return *supervisor_; }
  const prometheus::Registry& registry() const { return registry_; }
  HttpClient& http() { return *http_; }

 private:
  std::unique_ptr<ScopedTempDir> temp_;  // certificates and the supervisor's data
  prometheus::Registry registry_;
  std::unique_ptr<Supervisor> supervisor_;
  BenchFleet workers_;
  std::unique_ptr<HttpClient> http_;
};

void PrintTable(const std::vector<std::pair<std::string, std::string>>& rows) {
  for (const auto& [name, value] : rows)
    std::fprintf(stderr, "%-34s %s\n", name.c_str(), value.c_str());
}

// The baseline, measured in the same run on the same disk: appends one at a time, each waiting
// for its own synced write (what the log would do without group commit).
StatusOr<double> SequentialSyncedAppendsPerSecond(double seconds) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ScopedTempDir> temp,
                      ScopedTempDir::Create("fieldprint-bench-baseline"));
  const std::filesystem::path& dir = temp->path();
  uint64_t appended = 0;
  double elapsed = 0;
  {
    FP_ASSIGN_OR_RETURN(std::unique_ptr<RocksLog> log, RocksLog::Open((dir / "log").string()));
    const auto start = Clock::now();
    while ((elapsed = std::chrono::duration<double>(Clock::now() - start).count()) < seconds) {
      pb::LogRecord record;
      record.mutable_tick()->set_unix_ms(appended);
      FP_RETURN_IF_ERROR(AppendAndWait(*log, std::move(record)).status());
      ++appended;
    }
  }
  return static_cast<double>(appended) / elapsed;
}

json::object Environment(const BenchArgs& args) {
  json::object env;
  env["cpu"] = CpuModel();
  env["load_average_1m"] = LoadAverage();
  env["cores"] = std::thread::hardware_concurrency();
  env["seconds"] = args.seconds;
  env["workers"] = args.workers;
  env["replicas"] = args.replicas;
  env["io_threads"] = args.io_threads;
  return env;
}

Status RunIngest(const BenchArgs& args) {
  InitLogging(LogLevel::kWarn, LogFormat::kText);
  json::object result = Environment(args);
  FP_ASSIGN_OR_RETURN(const double sequential, SequentialSyncedAppendsPerSecond(1.0));
  BenchCluster cluster;
  FP_RETURN_IF_ERROR(cluster.Start(args, 4096));
  FP_RETURN_IF_ERROR(cluster.Submit(args.sessions, wire::kMaxSessionTokens).status());
  Sleep(args.warmup_seconds);
  const std::string applied_metric = "fieldprint_supervisor_leaves_applied_total";
  const auto t0 = Clock::now();
  const uint64_t acked0 = cluster.workers().AckedLeaves();
  const double applied0 = CounterValue(cluster.registry(), applied_metric);
  Sleep(args.seconds);
  const auto t1 = Clock::now();
  const uint64_t acked1 = cluster.workers().AckedLeaves();
  const double applied1 = CounterValue(cluster.registry(), applied_metric);
  const uint64_t lag = cluster.supervisor().log().End() - cluster.supervisor().applied();
  const uint64_t errors = cluster.workers().Errors();
  cluster.workers().StopWorkers();
  const double elapsed = std::chrono::duration<double>(t1 - t0).count();
  std::vector<double> latencies = cluster.workers().Latencies(t0, t1);
  result["benchmark"] = "supervisor_ingest";
  result["baseline_sequential_synced_appends_per_second"] = sequential;
  result["baseline_leaves_per_second"] = sequential * args.batch_steps;
  result["sessions"] = args.sessions;
  result["batch_steps"] = args.batch_steps;
  result["in_flight_batches_per_worker"] = args.in_flight;
  result["leaves_per_second"] = static_cast<double>(acked1 - acked0) / elapsed;
  result["applied_leaves_per_second"] = (applied1 - applied0) / elapsed;
  result["apply_lag_records_at_end"] = lag;
  result["ack_latency_p50_seconds"] = Percentile(latencies, 0.50);
  result["ack_latency_p99_seconds"] = Percentile(latencies, 0.99);
  result["acks_sampled"] = latencies.size();
  result["worker_errors"] = errors;
  std::printf("%s\n", json::serialize(result).c_str());
  PrintTable(
      {{"leaves acked per second", fmt::format("{:.0f}", result["leaves_per_second"].as_double())},
       {"leaves applied per second",
        fmt::format("{:.0f}", result["applied_leaves_per_second"].as_double())},
       {"ack latency p50 / p99 (ms)",
        fmt::format("{:.2f} / {:.2f}", 1e3 * Percentile(latencies, 0.5),
                    1e3 * Percentile(latencies, 0.99))},
       {"apply lag at end (records)", std::to_string(lag)},
       {"worker errors", std::to_string(errors)}});
  cluster.Stop();
  return errors == 0 ? OkStatus() : InternalError("workers reported errors");
}

// One client's loop: random step proofs until `deadline`; returns latencies (seconds).
StatusOr<std::vector<double>> ProofClient(uint16_t port, const std::vector<std::string>& ids,
                                          uint64_t steps, Clock::time_point deadline,
                                          uint64_t seed) {
  HttpClient client("127.0.0.1", port);
  std::mt19937_64 random(seed);
  std::vector<double> latencies;
  bool checked = false;
  while (Clock::now() < deadline) {
    const std::string& id = ids[random() % ids.size()];
    const uint64_t step = random() % steps;
    const auto start = Clock::now();
    FP_ASSIGN_OR_RETURN(
        HttpResponse response,
        client.Request(verb::get, fmt::format("/v1/sessions/{}/proof/step/{}", id, step)));
    latencies.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    if (response.status != 200) {
      return InternalError(fmt::format("proof: {} {}", response.status, response.body));
    }
    if (!checked) {  // check one proof per client independently of the server
      json::value value = json::parse(response.body);
      std::vector<Hash> proof;
      for (const json::value& h : value.at("proof").as_array()) {
        FP_ASSIGN_OR_RETURN(Hash hash, HashFromHex(h.as_string()));
        proof.push_back(hash);
      }
      FP_ASSIGN_OR_RETURN(Hash leaf, HashFromHex(value.at("leaf").at("leaf_hash").as_string()));
      FP_ASSIGN_OR_RETURN(Hash root, HashFromHex(value.at("root").as_string()));
      FP_RETURN_IF_ERROR(merkle::VerifyInclusion(leaf, step, steps, proof, root));
      checked = true;
    }
  }
  return latencies;
}

Status RunProofs(const BenchArgs& args) {
  InitLogging(LogLevel::kWarn, LogFormat::kText);
  BenchCluster cluster;
  FP_RETURN_IF_ERROR(cluster.Start(args, 4096));
  FP_ASSIGN_OR_RETURN(std::vector<std::string> ids, cluster.Submit(args.sessions, args.steps));
  const auto setup_deadline = Clock::now() + std::chrono::minutes(5);
  while (cluster.workers().VerifiedSessions() <
         static_cast<uint64_t>(args.sessions) * args.replicas) {
    if (Clock::now() > setup_deadline) return DeadlineExceededError("sessions did not verify");
    Sleep(0.05);
  }
  cluster.workers().StopWorkers();
  const uint16_t port = cluster.supervisor().http_port();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(args.seconds));
  std::vector<std::thread> threads;
  std::vector<StatusOr<std::vector<double>>> results(args.clients, std::vector<double>());
  const auto t0 = Clock::now();
  for (uint32_t c = 0; c < args.clients; ++c) {
    threads.emplace_back([&, c] { results[c] = ProofClient(port, ids, args.steps, deadline, c); });
  }
  for (std::thread& thread : threads) thread.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> latencies;
  for (auto& result : results) {
    FP_RETURN_IF_ERROR(result.status());
    latencies.insert(latencies.end(), result->begin(), result->end());
  }
  json::object result = Environment(args);
  result["benchmark"] = "supervisor_proofs";
  result["sessions"] = args.sessions;
  result["steps_per_session"] = args.steps;
  result["clients"] = args.clients;
  result["requests"] = latencies.size();
  result["requests_per_second"] = static_cast<double>(latencies.size()) / elapsed;
  result["latency_p50_seconds"] = Percentile(latencies, 0.50);
  result["latency_p99_seconds"] = Percentile(latencies, 0.99);
  std::printf("%s\n", json::serialize(result).c_str());
  PrintTable(
      {{"step proofs per second", fmt::format("{:.0f}", result["requests_per_second"].as_double())},
       {"latency p50 / p99 (ms)", fmt::format("{:.3f} / {:.3f}", 1e3 * Percentile(latencies, 0.5),
                                              1e3 * Percentile(latencies, 0.99))}});
  cluster.Stop();
  return OkStatus();
}

void AddCommonOptions(CLI::App* command, BenchArgs& args) {
  command->add_option("--seconds", args.seconds, "Measured duration")
      ->check(CLI::Range(0.1, kMaxBenchSeconds));
  command->add_option("--workers", args.workers, "Simulated workers (connections)")
      ->check(CLI::Range(1u, kMaxBenchWorkers));
  command->add_option("--sessions", args.sessions, "Sessions submitted")
      ->check(CLI::Range(1u, 100'000u));
  command->add_option("--replicas", args.replicas, "Replicas per session")
      ->check(CLI::Range(1u, wire::kMaxReplicas));
  command->add_option("--io-threads", args.io_threads, "Supervisor network threads")
      ->check(CLI::Range(1u, kMaxIoThreads));
  command->add_option("--batch-steps", args.batch_steps, "Leaves per LeafBatch")
      ->check(CLI::Range(1u, static_cast<uint32_t>(wire::kMaxLeafBatchSteps)));
  command->add_option("--in-flight", args.in_flight, "Unacknowledged batches per worker")
      ->check(CLI::Range(1u, static_cast<uint32_t>(wire::kMaxSendQueueFrames)));
}

}  // namespace

void AddBenchCommands(CLI::App& bench) {
  auto ingest_args = std::make_shared<BenchArgs>();
  CLI::App* ingest =
      bench.add_subcommand("ingest", "Supervisor: leaves acknowledged per second over mTLS");
  AddCommonOptions(ingest, *ingest_args);
  ingest->add_option("--warmup-seconds", ingest_args->warmup_seconds, "Unmeasured warm-up")
      ->check(CLI::Range(0.0, kMaxBenchSeconds));
  SetAction(ingest, [ingest_args] { return RunIngest(*ingest_args); });

  auto proofs_args = std::make_shared<BenchArgs>();
  proofs_args->sessions = 16;
  proofs_args->seconds = 5;
  CLI::App* proofs =
      bench.add_subcommand("proofs", "Supervisor: step inclusion proofs per second over HTTP");
  AddCommonOptions(proofs, *proofs_args);
  proofs->add_option("--clients", proofs_args->clients, "Concurrent keep-alive HTTP clients")
      ->check(CLI::Range(1u, kMaxBenchClients));
  proofs->add_option("--steps", proofs_args->steps, "Steps per session")
      ->check(CLI::Range(1u, static_cast<uint32_t>(wire::kMaxSessionTokens)));
  SetAction(proofs, [proofs_args] { return RunProofs(*proofs_args); });
}

}  // namespace fp::supervisor
