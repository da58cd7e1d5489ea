// fieldprint_log_bench: appends per second and ack latency (p50/p99) of the two Log backends in
// one run, the standalone RocksDB log (synced WAL) and the etcd log on a local 3-member etcd
// cluster with mutual TLS. `appenders` threads each append LeafBatch records of `leaves` leaves
// in a closed loop (append, wait for the ack, repeat), as many workers with one batch in flight
// would. Prints one JSON object on stdout and a table on stderr (the supervisor bench style).
//
// Thread-safety: main() runs the benchmark on its thread plus the appender threads it starts.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/temp_dir.h"
#include "supervisor/bench/bench_util.h"
#include "supervisor/log/etcd_log.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/log/testing/etcd_cluster.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using SteadyClock = std::chrono::steady_clock;

constexpr uint32_t kMaxAppenders = 1024;
constexpr uint32_t kMaxLeaves = 4096;

struct Args {
  double seconds = 5;
  double warmup_seconds = 1;
  uint32_t appenders = 32;
  uint32_t leaves = 64;
  uint32_t members = 3;
  uint32_t txns_in_flight = 1;  // EtcdLogOptions::max_txns_in_flight
  uint32_t txn_records = 62;    // EtcdLogOptions::max_txn_records (etcd's --max-txn-ops follows)
};

struct Result {
  uint64_t appends = 0;
  double appends_per_second = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  uint64_t failures = 0;
};

pb::LogRecord Batch(uint32_t appender, uint64_t index, uint32_t leaves) {
  pb::LogRecord record;
  pb::LeafBatch* batch = record.mutable_leaf_batch();
  batch->set_worker_id(fmt::format("bench-{}", appender % 8));
  batch->set_session_id(fmt::format("{:016}", appender));
  batch->set_replica(appender % 3);
  batch->set_first_step(index * leaves);
  for (uint32_t i = 0; i < leaves; ++i) batch->add_token_ids(1000 + i);
  batch->set_state_digests(std::string(32 * size_t{leaves}, static_cast<char>(index)));
  return record;
}

Result Measure(Log& log, const Args& args) {
  std::atomic<bool> stop{false};
  std::atomic<bool> measuring{false};
  std::mutex mutex;
  std::vector<double> latencies_ms;
  std::atomic<uint64_t> failures{0};
  std::vector<std::thread> threads;
  for (uint32_t a = 0; a < args.appenders; ++a) {
    threads.emplace_back([&, a] {
      std::vector<double> mine;
      for (uint64_t i = 0; !stop; ++i) {
        const auto start = SteadyClock::now();
        StatusOr<uint64_t> position = AppendAndWait(log, Batch(a, i, args.leaves));
        const double ms =
            std::chrono::duration<double, std::milli>(SteadyClock::now() - start).count();
        if (!position.ok()) {
          ++failures;
        } else if (measuring) {
          mine.push_back(ms);
        }
      }
      std::lock_guard lock(mutex);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  Sleep(args.warmup_seconds);
  measuring = true;
  const auto start = SteadyClock::now();
  Sleep(args.seconds);
  measuring = false;
  const double elapsed = std::chrono::duration<double>(SteadyClock::now() - start).count();
  stop = true;
  for (std::thread& thread : threads) thread.join();
  Result result;
  result.appends = latencies_ms.size();
  result.appends_per_second = static_cast<double>(latencies_ms.size()) / elapsed;
  result.p50_ms = Percentile(latencies_ms, 0.50);
  result.p99_ms = Percentile(latencies_ms, 0.99);
  result.failures = failures;
  return result;
}

json::object ToJson(const Result& result) {
  return {{"appends", result.appends},
          {"appends_per_second", result.appends_per_second},
          {"ack_latency_p50_ms", result.p50_ms},
          {"ack_latency_p99_ms", result.p99_ms},
          {"failures", result.failures}};
}

Status Run(const Args& args) {
  FP_ASSIGN_OR_RETURN(auto dir, ScopedTempDir::Create("fieldprint-log-bench"));
  Result rocks;
  {
    FP_ASSIGN_OR_RETURN(auto log, RocksLog::Open(dir->Join("rocks")));
    rocks = Measure(*log, args);
  }
  testing::EtcdClusterOptions cluster_options;
  cluster_options.members = args.members;
  cluster_options.max_txn_ops =
      std::max<size_t>(etcd::kMaxTxnOps, 2 * size_t{args.txn_records} + 2);
  FP_ASSIGN_OR_RETURN(auto cluster, testing::EtcdCluster::Start(cluster_options));
  EtcdLogOptions options;
  options.client = cluster->ClientOptionsFor(0);
  options.prefix = "/bench";
  options.max_txns_in_flight = args.txns_in_flight;
  options.max_txn_records = args.txn_records;
  FP_ASSIGN_OR_RETURN(auto etcd_log, OpenEtcdLog(options));
  const Result etcd = Measure(*etcd_log, args);
  const EtcdLog::Stats stats = etcd_log->stats();
  etcd_log.reset();
  const size_t record_bytes = Batch(0, 1, args.leaves).ByteSizeLong();
  json::object out{
      {"benchmark", "log_append"},        {"appenders", args.appenders},
      {"leaves_per_record", args.leaves}, {"record_bytes", record_bytes},
      {"seconds", args.seconds},          {"hardware_threads", std::thread::hardware_concurrency()},
      {"rocksdb", ToJson(rocks)},         {"etcd", ToJson(etcd)}};
  out["etcd"].as_object()["members"] = args.members;
  out["etcd"].as_object()["txns_in_flight"] = args.txns_in_flight;
  out["etcd"].as_object()["max_txn_records"] = args.txn_records;
  out["etcd"].as_object()["max_in_flight_seen"] = stats.max_in_flight;
  out["etcd"].as_object()["pipeline_stalls"] = stats.stalls;
  out["etcd"].as_object()["pipeline_overtakes"] = stats.overtakes;
  out["etcd"].as_object()["records_per_txn"] =
      stats.txns == 0 ? 0.0 : static_cast<double>(stats.records) / static_cast<double>(stats.txns);
  std::printf("%s\n", json::serialize(out).c_str());
  std::fprintf(stderr, "%-28s %12s %10s %10s\n", "backend", "appends/s", "p50 ms", "p99 ms");
  std::fprintf(stderr, "%-28s %12.0f %10.2f %10.2f\n", "rocksdb (synced WAL)",
               rocks.appends_per_second, rocks.p50_ms, rocks.p99_ms);
  std::fprintf(
      stderr, "%-28s %12.0f %10.2f %10.2f\n",
      fmt::format("etcd ({} members, mTLS, {} txns)", args.members, args.txns_in_flight).c_str(),
      etcd.appends_per_second, etcd.p50_ms, etcd.p99_ms);
  return OkStatus();
}

}  // namespace
}  // namespace fp::supervisor

int main(int argc, char** argv) {
  fp::supervisor::Args args;
  CLI::App app("Append throughput and ack latency: RocksDB log vs etcd log");
  app.add_option("--seconds", args.seconds, "measured seconds per backend")
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup-seconds", args.warmup_seconds)->check(CLI::Range(0.0, 600.0));
  app.add_option("--appenders", args.appenders, "closed-loop appender threads")
      ->check(CLI::Range(1u, fp::supervisor::kMaxAppenders));
  app.add_option("--leaves", args.leaves, "leaves per LeafBatch record")
      ->check(CLI::Range(1u, fp::supervisor::kMaxLeaves));
  app.add_option("--members", args.members, "etcd members")->check(CLI::Range(1u, 7u));
  app.add_option("--txns-in-flight", args.txns_in_flight, "etcd append txns in flight")
      ->check(CLI::Range(size_t{1}, fp::supervisor::kMaxEtcdTxnsInFlight));
  app.add_option("--txn-records", args.txn_records, "records per etcd append txn at most")
      ->check(CLI::Range(size_t{1}, (fp::supervisor::etcd::kMaxTxnOpsLimit - 2) / 2));
  CLI11_PARSE(app, argc, argv);
  const fp::Status status = fp::supervisor::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "log bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
