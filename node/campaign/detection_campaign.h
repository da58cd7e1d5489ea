// The detection campaign behind `fieldprint bench detection`: how reliably step leaves catch
// single-bit faults, and that they never diverge without one.
//
// Design. Everything runs in-process on the CPU backend, over one model (the default tiny model,
// or a wider random-weight LLaMA shape). A pool of seeded sessions (random prompts, lengths and
// sampling) is first run one at a time: that is the honest replica of every session, its step
// leaves and, recorded through CpuBackend's activation tap, the canonical final hidden state of
// every step (the exact bytes the state digest covers).
//
// Faults. Each fault is one bit flip at a random place: the residual stream after a random layer
// at a random token row of the session (a prompt row or a generated one), one element of a
// cached key or value (a random cached row and layer, just before a random step), or the final
// hidden state of a random step (after the final RMSNorm, before the rounding to the canonical
// dtype). Faulty replicas run in batches of distinct sessions, most of them carrying one fault
// and the rest none. Each faulty session is compared with its honest replica step by step, both
// by leaf and, independently of the digest, by hidden state bytes and token:
//   detected       the first differing leaf is the first step whose hidden state changed, at
//                  the injected step or k steps later (a cached K/V flip moves a later step's
//                  state only once it crosses a rounding edge of the canonical dtype);
//   step error     the engine refused the step (a flip made a logit NaN or infinite); loud,
//                  not silent;
//   absorbed       no hidden state of the session ever changed: the flip was lost in the
//                  rounding to the canonical dtype;
//   missed         some hidden state or token changed but its leaf did not, or a leaf changed
//                  with neither: a bug, reported with the fault's coordinates.
// A faulty batch whose step fails is rerun one fault at a time, so the error is attributed.
//
// Honest runs. Pool sessions run again in random batch compositions (1 to 32 sessions, random
// companions, staggered arrivals, a random prefill chunk, batch token budget, batch width and
// thread count), and every leaf is compared with the honest replica's: any difference is a false
// divergence. The fault-free companions of faulty batches are compared the same way (a fault must
// never leak into another session).
//
// Everything is drawn from one SplitMix64 stream seeded by `seed`, so a seed replays the whole
// campaign.
//
// Thread-safety: a call uses only its arguments (and a temporary model folder it removes).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fp::node::campaign {

// Bounds: the campaign holds every session's honest states in memory.
inline constexpr int64_t kMaxCampaignFaults = 1'000'000;
inline constexpr int64_t kMaxCampaignHonestSteps = 100'000'000;
inline constexpr int kMaxCampaignBatch = 32;
inline constexpr int kMaxCampaignThreads = 64;

enum class FaultSite : uint8_t {
  kResidual = 0,     // residual stream after a layer, one token row
  kKey = 1,          // one cached key element
  kValue = 2,        // one cached value element
  kFinalHidden = 3,  // final hidden state of a step, before the canonical rounding
};
inline constexpr int kFaultSites = 4;
// "residual", "kv-key", "kv-value", "final-hidden".
const char* FaultSiteName(FaultSite site);

enum class FaultOutcome : uint8_t {
  kDetected = 0,   // first differing leaf = first changed hidden state
  kStepError = 1,  // the engine refused a step before any leaf differed
  kAbsorbed = 2,   // no hidden state or token changed
  kMissed = 3,     // a state changed without its leaf, or a leaf without its state: a bug
};

struct DetectionCampaignOptions {
  std::string model_dir;       // empty: a random-weight model of `shape`
  std::string shape = "tiny";  // "tiny" (the mk-tiny default) or "wide" (hidden 1024, 6 layers)
  uint64_t seed = 1;
  int64_t faults = 1000;           // 1..kMaxCampaignFaults
  int64_t honest_steps = 100'000;  // at least this many leaves compared in honest batches
  int pool_sessions = 256;         // distinct sessions (prompt, sampling, length)
  int faults_per_run = 12;         // faulty sessions per faulty batch, 1..kMaxCampaignBatch
  int clean_per_run = 4;           // fault-free companions per faulty batch
  int max_threads = 2;             // honest runs draw their thread count from 1..max_threads
};

// One injected fault and what became of it.
struct FaultRecord {
  FaultSite site = FaultSite::kResidual;
  int32_t session = 0;   // pool index
  uint64_t step = 0;     // the step whose forward pass the flip hits (or precedes, for K/V)
  int32_t layer = 0;     // residual, K/V
  int32_t position = 0;  // cache row (= token position)
  int64_t element = 0;
  int32_t bit = 0;  // 0..31 of the f32 value
  FaultOutcome outcome = FaultOutcome::kAbsorbed;
  int64_t first_leaf_diff = -1;   // step, or -1
  int64_t first_state_diff = -1;  // first step whose hidden state or token changed, or -1
  int64_t error_step = -1;        // step at which the engine refused, or -1
  bool token_changed = false;     // the detecting step's token differed too
  int64_t steps_compared = 0;     // steps of the session compared (until an error)
};

struct SiteSummary {
  int64_t injected = 0;
  int64_t changed_state = 0;      // detected + missed (a hidden state or token changed)
  int64_t detected_at_step = 0;   // first differing leaf at the injected step
  int64_t detected_later = 0;     // ... at a later step (the state changed only then)
  int64_t detected_by_token = 0;  // detections where the token differed too
  int64_t max_later_steps = 0;    // largest injected-to-detected distance
  int64_t step_errors = 0;
  int64_t absorbed = 0;
  int64_t missed = 0;
};

struct DetectionCampaignResult {
  std::string model;  // shape or folder, and the model's dimensions
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  std::array<SiteSummary, kFaultSites> sites{};
  int64_t faults = 0;
  int64_t detected_within_one_step = 0;  // first differing leaf = first changed state
  int64_t changed_state = 0;
  int64_t missed = 0;
  std::vector<FaultRecord> anomalies;  // every missed fault (must stay empty)
  int64_t faulty_runs = 0;
  int64_t solo_reruns = 0;  // faults rerun alone after their batch's step failed
  int64_t honest_runs = 0;
  int64_t honest_steps = 0;  // leaves compared in honest batches
  int64_t honest_divergences = 0;
  int64_t companion_steps = 0;  // leaves of fault-free companions in faulty batches
  int64_t companion_divergences = 0;
  int64_t reference_steps = 0;  // steps of the honest replicas (sessions run alone)
  double seconds = 0;
};

// Runs the campaign. InvalidArgument for options out of range; the model's and the engine's
// errors otherwise (a step error of a faulty replica is an outcome, not an error; an honest
// step error is returned).
StatusOr<DetectionCampaignResult> RunDetectionCampaign(const DetectionCampaignOptions& options);

}  // namespace fp::node::campaign
