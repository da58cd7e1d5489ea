// fieldprint_sim: runs the deterministic cluster simulation (cluster_sim.h) for one seed or a
// range of seeds, and replays a failing seed with its event trace:
//
//   fieldprint_sim --seed 123 --trace          # one seed, every event on stdout
//   fieldprint_sim --seed 1 --count 5000       # seeds 1..5000, a line per failing seed
//   fieldprint_sim --seed 9 --bug fencing      # with a planted bug (the checker must fail)
//
// Exit code: 0 when every seed kept every invariant, 1 when one did not, 2 on bad usage or when
// the simulation could not run.
//
// Thread-safety: a single-threaded program.
#include <chrono>
#include <cstdio>
#include <map>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/base/log.h"
#include "supervisor/sim/cluster_sim.h"

namespace {

using fp::supervisor::sim::ClusterSimOptions;
using fp::supervisor::sim::ClusterSimResult;
using fp::supervisor::sim::ModelBug;
using fp::supervisor::sim::NodeBug;

// Seeds per invocation: a bound, not a target.
constexpr uint64_t kMaxSeedsPerRun = 1'000'000;

int RunSeeds(ClusterSimOptions options, uint64_t count, bool trace) {
  if (trace) {
    options.trace = [](std::string_view line) { fmt::print("{}\n", line); };
  }
  uint64_t failed = 0;
  const auto started = std::chrono::steady_clock::now();
  const uint64_t first = options.seed;
  for (uint64_t seed = first; seed < first + count; ++seed) {
    options.seed = seed;
    fp::StatusOr<ClusterSimResult> result = fp::supervisor::sim::RunClusterSim(options);
    if (!result.ok()) {
      fmt::print(stderr, "seed {}: the simulation could not run: {}\n", seed,
                 result.status().ToString());
      return 2;
    }
    if (count == 1 || !result->ok()) {
      fmt::print(
          "{}\n  rounds {}, log {} (begins at {}), acked {}, refused {}, abandoned {}, "
          "crashes {}, terms {}, fenced {}, divergences {}, trace {}, state {}\n",
          result->Summary(seed), result->rounds, result->log_records, result->log_begin,
          result->appends_acked, result->appends_refused, result->appends_abandoned,
          result->crashes, result->terms, result->fenced, result->divergences,
          fp::HexEncode(result->trace_hash).substr(0, 16),
          fp::HexEncode(result->state_hash).substr(0, 16));
    }
    if (!result->ok()) ++failed;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  fmt::print("{} seeds from {}: {} failed, {:.1f} s ({:.1f} seeds/s)\n", count, first, failed,
             seconds, static_cast<double>(count) / seconds);
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Deterministic simulation of a supervisor cluster against a model of the log"};
  ClusterSimOptions options;
  uint64_t count = 1;
  bool trace = false;
  std::string bug = "none";
  app.add_option("--seed", options.seed, "The (first) seed")->required();
  app.add_option("--count", count, "How many consecutive seeds to run")
      ->check(CLI::Range(uint64_t{1}, kMaxSeedsPerRun));
  app.add_flag("--trace", trace, "Print every event");
  app.add_option("--supervisors", options.supervisors, "Supervisors in the cluster")
      ->check(CLI::Range(1, fp::supervisor::sim::kMaxSimSupervisors));
  app.add_option("--max-crashes", options.max_crashes, "Supervisor crashes per seed, at most");
  app.add_option("--max-pauses", options.max_pauses, "Leader pauses per seed, at most");
  app.add_option("--bug", bug, "A planted bug: none, idempotency, fencing, reapply")
      ->check(CLI::IsMember({"none", "idempotency", "fencing", "reapply"}));
  CLI11_PARSE(app, argc, argv);
  // The supervisors' own log lines would drown the trace; errors still show.
  fp::InitLogging(fp::LogLevel::kError, fp::LogFormat::kText);

  const std::map<std::string, std::pair<ModelBug, NodeBug>> bugs = {
      {"none", {ModelBug::kNone, NodeBug::kNone}},
      {"idempotency", {ModelBug::kIgnoreIdempotency, NodeBug::kNone}},
      {"fencing", {ModelBug::kIgnoreFencing, NodeBug::kNone}},
      {"reapply", {ModelBug::kNone, NodeBug::kReapplyAfterRestart}},
  };
  std::tie(options.model_bug, options.node_bug) = bugs.at(bug);
  fp::StatusOr<std::unique_ptr<fp::supervisor::sim::SimScratch>> scratch =
      fp::supervisor::sim::SimScratch::Create();
  if (!scratch.ok()) {
    fmt::print(stderr, "{}\n", scratch.status().ToString());
    return 2;
  }
  options.dir = (*scratch)->path();
  options.store_template = (*scratch)->Options(options.seed).store_template;
  return RunSeeds(options, count, trace);
}
