// `fieldprint bench merkle`; see merkle_bench.h.
//
// Every figure is measured on one thread. The baseline (`openssl speed`) runs as a subprocess in
// the same invocation so that figure and baseline share the machine's state. Proofs are generated
// over a VirtualTreeReader (identical leaves except a few special ones, nodes held in memory), so
// generation times cover the proof algorithm and not storage reads; every generated proof is
// verified, and a proof that fails verification aborts the run with Internal.
#include "common/merkle/merkle_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>
#include <unistd.h>

#include "common/cli.h"
#include "common/merkle/internal/virtual_tree.h"
#include "common/merkle/merkle.h"

namespace fp {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using merkle::internal::VirtualTreeReader;

constexpr double kDefaultSeconds = 12.0;
constexpr double kMinSeconds = 0.05;
constexpr double kMaxSeconds = 600.0;
constexpr size_t kMessageSizes[] = {64, 1024, 16384};
constexpr uint64_t kProofTreeSize = uint64_t{1} << 32;
constexpr size_t kMaxProofSamples = 1'000'000;
constexpr size_t kLeafPoolSize = 4096;
static_assert((kLeafPoolSize & (kLeafPoolSize - 1)) == 0, "the pool is indexed with a mask");
constexpr size_t kMaxSubprocessOutputBytes = 1 << 16;
constexpr int kCallsPerClockRead = 64;
// Fixed, so that two runs draw the same sequence of "fresh random" indices and sizes.
constexpr uint64_t kIndexSeed = 0x6669656c647072;

// Shares of --seconds given to each measurement.
constexpr double kHashShare = 0.30;
constexpr double kNodeHashShare = 0.05;
constexpr double kFrontierShare = 0.25;
constexpr double kProofShare = 0.40;
static_assert(kHashShare + kNodeHashShare + kFrontierShare + kProofShare <= 1.0);

struct Options {
  double seconds = kDefaultSeconds;
};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// CPU time consumed by this thread. Rates divide by it, not by wall time, because `openssl speed`
// divides by CPU user time by default: on a shared host, time spent descheduled then slows
// neither the figure nor its baseline.
double ThreadCpuSeconds() {
  timespec now{};
  FP_CHECK(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) == 0);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

// Calls `op` until `seconds` of wall time have passed (at least kCallsPerClockRead times);
// returns calls per second of this thread's CPU time.
template <typename Op>
double CallsPerCpuSecond(double seconds, Op&& op) {
  uint64_t calls = 0;
  const Clock::time_point start = Clock::now();
  const double cpu_start = ThreadCpuSeconds();
  do {
    for (int i = 0; i < kCallsPerClockRead; ++i) op();
    calls += kCallsPerClockRead;
  } while (SecondsSince(start) < seconds);
  return static_cast<double>(calls) / (ThreadCpuSeconds() - cpu_start);
}

// ---------------------------------------------------------------------------------------------
// Host description.

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

// The 1-minute load average at the start, so that a figure from a busy host can be recognised;
// null where /proc/loadavg is missing.
json::value LoadAverage() {
  std::ifstream loadavg("/proc/loadavg");
  double one_minute = 0;
  if (!(loadavg >> one_minute)) return nullptr;
  return one_minute;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// ---------------------------------------------------------------------------------------------
// The openssl baseline.

// Runs `command` through the shell; its stdout, or Unavailable if it cannot run or exits non-zero.
StatusOr<std::string> RunCommand(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return UnavailableError("cannot start: " + command);
  std::string output;
  char buffer[4096];
  size_t read = 0;
  bool too_long = false;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    too_long = too_long || output.size() + read > kMaxSubprocessOutputBytes;
    if (!too_long) output.append(buffer, read);
  }
  const int status = pclose(pipe);
  if (too_long) return ResourceExhaustedError("output over 64 KiB from: " + command);
  if (status != 0) {
    return UnavailableError("exit status " + std::to_string(status) + " from: " + command);
  }
  return output;
}

std::string BaselineCommand(size_t bytes) {
  return "openssl speed -seconds 1 -bytes " + std::to_string(bytes) + " sha256";
}

// `openssl speed` prints its result as "sha256   <rate>k", in thousands of bytes per second.
StatusOr<double> OpensslBytesPerSecond(size_t bytes) {
  const std::string command = BaselineCommand(bytes);
  FP_ASSIGN_OR_RETURN(std::string output, RunCommand(command + " 2>/dev/null"));
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string name;
    std::string rate;
    if (!(words >> name >> rate) || name != "sha256" || rate.size() < 2 || rate.back() != 'k') {
      continue;
    }
    char* end = nullptr;
    const double thousands = std::strtod(rate.c_str(), &end);
    if (end == rate.c_str() + rate.size() - 1 && thousands > 0) return thousands * 1000.0;
  }
  return InternalError("no sha256 result line in the output of: " + command);
}

// ---------------------------------------------------------------------------------------------
// Measurements.

struct HashResult {
  size_t bytes;
  double sha256_bytes_per_second;
  double leaf_hash_bytes_per_second;
  StatusOr<double> openssl_bytes_per_second = InternalError("not measured");
};

HashResult MeasureHashing(size_t bytes, double seconds) {
  Bytes message(bytes, 0x5a);
  Hash digest{};
  // Each digest feeds the next message, so no call can be skipped or overlapped.
  auto chain = [&] { std::memcpy(message.data(), digest.data(), 8); };
  HashResult result{bytes, 0, 0};
  result.sha256_bytes_per_second = bytes * CallsPerCpuSecond(seconds / 2, [&] {
                                     digest = Sha256(ByteSpan(message));
                                     chain();
                                   });
  result.leaf_hash_bytes_per_second = bytes * CallsPerCpuSecond(seconds / 2, [&] {
                                        digest = merkle::LeafHash(message);
                                        chain();
                                      });
  result.openssl_bytes_per_second = OpensslBytesPerSecond(bytes);
  return result;
}

double MeasureNodeHashes(double seconds) {
  Hash left = merkle::LeafHash(AsBytes("left"));
  const Hash right = merkle::LeafHash(AsBytes("right"));
  return CallsPerCpuSecond(seconds, [&] { left = merkle::NodeHash(left, right); });
}

struct FrontierResult {
  double appends_per_second;
  double appends_per_second_reporting_nodes;
  uint64_t leaves_appended;
};

FrontierResult MeasureFrontier(double seconds) {
  std::vector<Hash> pool;
  for (uint64_t i = 0; i < kLeafPoolSize; ++i)
    pool.push_back(VirtualTreeReader::SpecialLeafHash(i));
  FrontierResult result{};
  merkle::Frontier plain;
  result.appends_per_second = CallsPerCpuSecond(
      seconds / 2, [&] { plain.Append(pool[plain.size() & (kLeafPoolSize - 1)], nullptr); });
  // The supervisor's pattern: collect the completed nodes of each append, then hand them off.
  merkle::Frontier reporting;
  std::vector<merkle::Node> completed;
  completed.reserve(merkle::kMaxLevels + 1);
  result.appends_per_second_reporting_nodes = CallsPerCpuSecond(seconds / 2, [&] {
    completed.clear();
    reporting.Append(pool[reporting.size() & (kLeafPoolSize - 1)], &completed);
  });
  result.leaves_appended = plain.size() + reporting.size();
  return result;
}

struct Latency {
  double median_us = 0;
  double p99_us = 0;
  size_t samples = 0;
};

Latency Summarize(std::vector<double>& nanoseconds) {
  Latency latency;
  latency.samples = nanoseconds.size();
  if (nanoseconds.empty()) return latency;
  std::sort(nanoseconds.begin(), nanoseconds.end());
  const size_t n = nanoseconds.size();
  latency.median_us = nanoseconds[n / 2] / 1000.0;
  // Nearest rank: the smallest sample with at least 99% of samples at or below it.
  const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(n)));
  latency.p99_us = nanoseconds[std::max<size_t>(rank, 1) - 1] / 1000.0;
  return latency;
}

double NanosecondsBetween(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double, std::nano>(end - start).count();
}

struct ProofResult {
  Latency inclusion_generate;
  Latency inclusion_verify;
  Latency consistency_generate;
  Latency consistency_verify;
  size_t inclusion_proof_hashes = 0;
  size_t consistency_proof_hashes_max = 0;
};

// Inclusion proofs for fresh random indices of the virtual tree, each generated and verified.
Status MeasureInclusion(const VirtualTreeReader& reader, const Hash& root, double seconds,
                        std::mt19937_64& random, ProofResult& result) {
  std::vector<double> generate_ns;
  std::vector<double> verify_ns;
  const Clock::time_point start = Clock::now();
  while (generate_ns.size() < kMaxProofSamples && SecondsSince(start) < seconds) {
    const uint64_t index = random() % kProofTreeSize;
    const Hash leaf = reader.LeafHashAt(index);
    const Clock::time_point t0 = Clock::now();
    StatusOr<std::vector<Hash>> proof = merkle::InclusionProof(reader, index, kProofTreeSize);
    const Clock::time_point t1 = Clock::now();
    FP_RETURN_IF_ERROR(proof.status());
    const Status verified = merkle::VerifyInclusion(leaf, index, kProofTreeSize, *proof, root);
    const Clock::time_point t2 = Clock::now();
    if (!verified.ok()) {
      return InternalError("generated inclusion proof failed: " + verified.ToString());
    }
    generate_ns.push_back(NanosecondsBetween(t0, t1));
    verify_ns.push_back(NanosecondsBetween(t1, t2));
    result.inclusion_proof_hashes = proof->size();
  }
  result.inclusion_generate = Summarize(generate_ns);
  result.inclusion_verify = Summarize(verify_ns);
  return OkStatus();
}

// Consistency proofs from fresh random sizes in [1, 2^32) to the whole virtual tree.
Status MeasureConsistency(const VirtualTreeReader& reader, const Hash& root, double seconds,
                          std::mt19937_64& random, ProofResult& result) {
  std::vector<double> generate_ns;
  std::vector<double> verify_ns;
  const Clock::time_point start = Clock::now();
  while (generate_ns.size() < kMaxProofSamples && SecondsSince(start) < seconds) {
    const uint64_t size1 = 1 + random() % (kProofTreeSize - 1);
    FP_ASSIGN_OR_RETURN(Hash root1, merkle::RootAt(reader, size1));
    const Clock::time_point t0 = Clock::now();
    StatusOr<std::vector<Hash>> proof = merkle::ConsistencyProof(reader, size1, kProofTreeSize);
    const Clock::time_point t1 = Clock::now();
    FP_RETURN_IF_ERROR(proof.status());
    const Status verified = merkle::VerifyConsistency(size1, kProofTreeSize, *proof, root1, root);
    const Clock::time_point t2 = Clock::now();
    if (!verified.ok()) {
      return InternalError("generated consistency proof failed: " + verified.ToString());
    }
    generate_ns.push_back(NanosecondsBetween(t0, t1));
    verify_ns.push_back(NanosecondsBetween(t1, t2));
    result.consistency_proof_hashes_max =
        std::max(result.consistency_proof_hashes_max, proof->size());
  }
  result.consistency_generate = Summarize(generate_ns);
  result.consistency_verify = Summarize(verify_ns);
  return OkStatus();
}

StatusOr<ProofResult> MeasureProofs(double seconds) {
  const VirtualTreeReader reader(kProofTreeSize, {0, 1, kProofTreeSize / 3, kProofTreeSize - 1});
  FP_ASSIGN_OR_RETURN(Hash root, merkle::RootAt(reader, kProofTreeSize));
  std::mt19937_64 random(kIndexSeed);
  ProofResult result;
  FP_RETURN_IF_ERROR(MeasureInclusion(reader, root, seconds / 2, random, result));
  FP_RETURN_IF_ERROR(MeasureConsistency(reader, root, seconds / 2, random, result));
  return result;
}

// ---------------------------------------------------------------------------------------------
// Output.

json::object LatencyJson(const Latency& latency) {
  return {{"median", latency.median_us}, {"p99", latency.p99_us}, {"samples", latency.samples}};
}

json::array HashJson(const std::vector<HashResult>& hashes) {
  json::array out;
  for (const HashResult& hash : hashes) {
    json::object entry{{"message_bytes", hash.bytes},
                       {"fieldprint_sha256_bytes_per_second", hash.sha256_bytes_per_second},
                       {"fieldprint_leaf_hash_bytes_per_second", hash.leaf_hash_bytes_per_second},
                       {"baseline_command", BaselineCommand(hash.bytes)}};
    if (hash.openssl_bytes_per_second.ok()) {
      const double baseline = *hash.openssl_bytes_per_second;
      entry["openssl_speed_bytes_per_second"] = baseline;
      entry["fieldprint_sha256_vs_openssl"] = hash.sha256_bytes_per_second / baseline;
    } else {
      entry["openssl_speed_bytes_per_second"] = nullptr;
      entry["baseline_error"] = hash.openssl_bytes_per_second.status().ToString();
    }
    out.push_back(std::move(entry));
  }
  return out;
}

json::object ProofJson(const ProofResult& proofs) {
  return {
      {"tree_size", kProofTreeSize},
      {"virtual_tree", true},
      {"tree",
       "virtual: 2^32 identical leaves except 4 special ones, every node held in memory, so "
       "generation times cover the proof algorithm and exclude storage reads; indices and sizes "
       "are fresh uniform random draws (fixed seed); every generated proof was verified"},
      {"inclusion_proof_hashes", proofs.inclusion_proof_hashes},
      {"consistency_proof_hashes_max", proofs.consistency_proof_hashes_max},
      {"inclusion_generate_us", LatencyJson(proofs.inclusion_generate)},
      {"inclusion_verify_us", LatencyJson(proofs.inclusion_verify)},
      {"consistency_generate_us", LatencyJson(proofs.consistency_generate)},
      {"consistency_verify_us", LatencyJson(proofs.consistency_verify)},
  };
}

void PrintTable(const std::vector<HashResult>& hashes, double node_hashes_per_second,
                const FrontierResult& frontier, const ProofResult& proofs) {
  std::fprintf(stderr, "%-34s %14s %14s %8s\n", "sha256 (MB/s)", "fieldprint", "openssl speed",
               "ratio");
  for (const HashResult& hash : hashes) {
    const std::string label = std::to_string(hash.bytes) + "-byte messages";
    const double ours = hash.sha256_bytes_per_second / 1e6;
    if (hash.openssl_bytes_per_second.ok()) {
      const double baseline = *hash.openssl_bytes_per_second / 1e6;
      std::fprintf(stderr, "%-34s %14.1f %14.1f %8.2f\n", label.c_str(), ours, baseline,
                   ours / baseline);
    } else {
      std::fprintf(stderr, "%-34s %14.1f %14s %8s\n", label.c_str(), ours, "n/a", "");
    }
  }
  std::fprintf(stderr, "%-34s %14.2f M/s\n", "node hashes", node_hashes_per_second / 1e6);
  std::fprintf(stderr, "%-34s %14.2f M/s\n", "frontier appends", frontier.appends_per_second / 1e6);
  std::fprintf(stderr, "%-34s %14.2f M/s\n", "frontier appends + completed nodes",
               frontier.appends_per_second_reporting_nodes / 1e6);
  std::fprintf(stderr, "proofs on a virtual 2^32-leaf tree (us)   %10s %10s %10s\n", "median",
               "p99", "samples");
  const std::pair<const char*, const Latency*> rows[] = {
      {"inclusion generate", &proofs.inclusion_generate},
      {"inclusion verify", &proofs.inclusion_verify},
      {"consistency generate", &proofs.consistency_generate},
      {"consistency verify", &proofs.consistency_verify}};
  for (const auto& [label, latency] : rows) {
    std::fprintf(stderr, "  %-39s %10.2f %10.2f %10zu\n", label, latency->median_us,
                 latency->p99_us, latency->samples);
  }
}

Status RunMerkleBench(const Options& options) {
  const double budget = options.seconds;
  std::ostringstream command;
  command << "fieldprint bench merkle --seconds " << budget;
  json::object out;
  out["benchmark"] = "merkle";
  out["command"] = command.str();
  out["date"] = UtcNow();
  out["host"] = HostName();
  out["cpu"] = CpuModel();
  out["cpus_online"] = std::thread::hardware_concurrency();
  out["load_average_1m"] = LoadAverage();
  out["threads"] = 1;
  out["budget_seconds"] = budget;
  out["rates_per"] = "second of thread CPU time, as openssl speed divides by CPU user time";
  out["latencies_in"] = "wall-clock microseconds per operation";
  StatusOr<std::string> version = RunCommand("openssl version 2>/dev/null");
  out["openssl_version"] =
      version.ok() ? json::value(version->substr(0, version->find('\n'))) : json::value(nullptr);

  std::vector<HashResult> hashes;
  const double per_size = budget * kHashShare / std::size(kMessageSizes);
  for (size_t bytes : kMessageSizes) hashes.push_back(MeasureHashing(bytes, per_size));
  out["sha256"] = HashJson(hashes);
  const double node_hashes_per_second = MeasureNodeHashes(budget * kNodeHashShare);
  out["node_hashes_per_second"] = node_hashes_per_second;
  const FrontierResult frontier = MeasureFrontier(budget * kFrontierShare);
  out["frontier"] = {
      {"appends_per_second", frontier.appends_per_second},
      {"appends_per_second_reporting_nodes", frontier.appends_per_second_reporting_nodes},
      {"leaves_appended", frontier.leaves_appended}};
  FP_ASSIGN_OR_RETURN(ProofResult proofs, MeasureProofs(budget * kProofShare));
  out["proofs"] = ProofJson(proofs);

  std::printf("%s\n", json::serialize(out).c_str());
  std::fflush(stdout);
  PrintTable(hashes, node_hashes_per_second, frontier, proofs);
  return OkStatus();
}

}  // namespace

void AddMerkleBench(CLI::App& bench) {
  auto options = std::make_shared<Options>();
  CLI::App* command = bench.add_subcommand(
      "merkle",
      "RFC 6962 Merkle: SHA-256 against `openssl speed`, Frontier appends, proof generation and "
      "verification on a virtual 2^32-leaf tree");
  command
      ->add_option("--seconds", options->seconds,
                   "time for fieldprint's own measurements; the openssl baseline adds about 1 s "
                   "per message size")
      ->check(CLI::Range(kMinSeconds, kMaxSeconds))
      ->capture_default_str();
  SetAction(command, [options] { return RunMerkleBench(*options); });
}

}  // namespace fp
