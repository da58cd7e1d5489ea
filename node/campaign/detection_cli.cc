// `bench detection`; see detection_cli.h.
#include "node/campaign/detection_cli.h"

#include <cstdio>
#include <memory>

#include <boost/json.hpp>

#include "common/base/log.h"
#include "common/cli.h"
#include "node/campaign/detection_campaign.h"

namespace fp {
namespace {

using node::campaign::DetectionCampaignResult;
using node::campaign::FaultRecord;
using node::campaign::FaultSite;
using node::campaign::SiteSummary;

boost::json::object SiteJson(const SiteSummary& s) {
  return {{"injected", s.injected},
          {"changed_state", s.changed_state},
          {"detected_at_injected_step", s.detected_at_step},
          {"detected_later", s.detected_later},
          {"max_steps_to_detection", s.max_later_steps},
          {"detected_token_also_changed", s.detected_by_token},
          {"step_errors", s.step_errors},
          {"absorbed_no_state_change", s.absorbed},
          {"missed", s.missed}};
}

boost::json::object FaultJson(const FaultRecord& r) {
  return {{"site", node::campaign::FaultSiteName(r.site)},
          {"session", r.session},
          {"step", r.step},
          {"layer", r.layer},
          {"position", r.position},
          {"element", r.element},
          {"bit", r.bit},
          {"first_leaf_diff", r.first_leaf_diff},
          {"first_state_diff", r.first_state_diff},
          {"error_step", r.error_step}};
}

std::string ResultJson(const node::campaign::DetectionCampaignOptions& o,
                       const DetectionCampaignResult& r) {
  boost::json::object sites;
  for (int i = 0; i < node::campaign::kFaultSites; ++i) {
    sites[node::campaign::FaultSiteName(static_cast<FaultSite>(i))] =
        SiteJson(r.sites[static_cast<size_t>(i)]);
  }
  boost::json::array anomalies;
  for (const FaultRecord& a : r.anomalies) anomalies.push_back(FaultJson(a));
  const double within = r.changed_state == 0 ? 1.0
                                             : static_cast<double>(r.detected_within_one_step) /
                                                   static_cast<double>(r.changed_state);
  boost::json::object record{{"bench", "detection"},
                             {"model", r.model},
                             {"hidden_size", r.hidden_size},
                             {"num_layers", r.num_layers},
                             {"seed", o.seed},
                             {"faults", r.faults},
                             {"changed_state", r.changed_state},
                             {"detected_within_one_step", r.detected_within_one_step},
                             {"detected_within_one_step_fraction", within},
                             {"missed", r.missed},
                             {"sites", sites},
                             {"missed_faults", anomalies},
                             {"faulty_runs", r.faulty_runs},
                             {"solo_reruns", r.solo_reruns},
                             {"honest_runs", r.honest_runs},
                             {"honest_steps", r.honest_steps},
                             {"honest_false_divergences", r.honest_divergences},
                             {"companion_steps", r.companion_steps},
                             {"companion_false_divergences", r.companion_divergences},
                             {"reference_steps", r.reference_steps},
                             {"seconds", r.seconds}};
  return boost::json::serialize(record);
}

void PrintTable(const DetectionCampaignResult& r) {
  std::fprintf(stderr, "%-13s %8s %8s %8s %8s %9s %8s %9s %7s\n", "site", "injected", "changed",
               "at-step", "later", "max-later", "errors", "absorbed", "missed");
  for (int i = 0; i < node::campaign::kFaultSites; ++i) {
    const SiteSummary& s = r.sites[static_cast<size_t>(i)];
    std::fprintf(stderr, "%-13s %8lld %8lld %8lld %8lld %9lld %8lld %9lld %7lld\n",
                 node::campaign::FaultSiteName(static_cast<FaultSite>(i)),
                 static_cast<long long>(s.injected), static_cast<long long>(s.changed_state),
                 static_cast<long long>(s.detected_at_step),
                 static_cast<long long>(s.detected_later),
                 static_cast<long long>(s.max_later_steps), static_cast<long long>(s.step_errors),
                 static_cast<long long>(s.absorbed), static_cast<long long>(s.missed));
  }
  std::fprintf(stderr,
               "detected at the first changed step: %lld of %lld; missed %lld\n"
               "honest: %lld leaves in %lld batches, %lld false divergences; fault-free "
               "companions: %lld leaves, %lld divergences; %.1f s\n",
               static_cast<long long>(r.detected_within_one_step),
               static_cast<long long>(r.changed_state), static_cast<long long>(r.missed),
               static_cast<long long>(r.honest_steps), static_cast<long long>(r.honest_runs),
               static_cast<long long>(r.honest_divergences),
               static_cast<long long>(r.companion_steps),
               static_cast<long long>(r.companion_divergences), r.seconds);
}

}  // namespace

void AddDetectionBench(CLI::App& bench) {
  auto o = std::make_shared<node::campaign::DetectionCampaignOptions>();
  CLI::App* command = bench.add_subcommand(
      "detection",
      "Fault detection campaign: single-bit faults vs honest replicas, and honest "
      "batches checked for false divergences");
  command->add_option("--model", o->model_dir, "Model folder (default: a random model of --shape)");
  command->add_option("--shape", o->shape,
                      "tiny (mk-tiny default) or wide (hidden 1024, 6 layers)");
  command->add_option("--seed", o->seed, "Campaign seed (replays the campaign)");
  command->add_option("--faults", o->faults, "Faults to inject")->check(CLI::Range(1, 1'000'000));
  command->add_option("--honest-steps", o->honest_steps, "Leaves to compare in honest batches")
      ->check(CLI::Range(0, 100'000'000));
  command->add_option("--pool", o->pool_sessions, "Distinct sessions")->check(CLI::Range(32, 4096));
  command->add_option("--faults-per-run", o->faults_per_run, "Faulty sessions per faulty batch")
      ->check(CLI::Range(1, 32));
  command->add_option("--clean-per-run", o->clean_per_run, "Fault-free companions per batch")
      ->check(CLI::Range(0, 31));
  command->add_option("--max-threads", o->max_threads, "Honest batches use 1..N threads")
      ->check(CLI::Range(1, 64));
  SetAction(command, [o]() -> Status {
    InitLogging(LogLevel::kWarn, LogFormat::kText);
    FP_ASSIGN_OR_RETURN(DetectionCampaignResult r, node::campaign::RunDetectionCampaign(*o));
    std::printf("%s\n", ResultJson(*o, r).c_str());
    PrintTable(r);
    if (r.missed != 0 || r.honest_divergences != 0 || r.companion_divergences != 0) {
      return InternalError("the campaign found missed faults or false divergences (see JSON)");
    }
    return OkStatus();
  });
}

}  // namespace fp
