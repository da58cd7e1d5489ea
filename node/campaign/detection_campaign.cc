// The detection campaign; see detection_campaign.h. Its CLI (`bench detection`) is in
// detection_cli.cc.
#include "node/campaign/detection_campaign.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>

#include "common/base/temp_dir.h"
#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"
#include "node/model/tiny_model.h"

namespace fp::node::campaign {
namespace {

using Clock = std::chrono::steady_clock;

// Prefill chunk sizes the honest and faulty runs draw from: 1 (token by token), odd sizes that
// split prompts unevenly, and whole prompts.
constexpr int32_t kChunks[] = {1, 2, 3, 5, 7, 8, 13, 16, 31, 64, 512};
constexpr int32_t kMinOutputs = 8;  // a K/V fault needs a step >= 1 to precede
constexpr int32_t kMaxOutputs = 48;
constexpr int32_t kMaxPrompt = 48;
constexpr int kMaxArrivalDelaySteps = 40;

// SplitMix64: a small, fully specified generator, so a seed replays the campaign on any machine.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi] (the modulo bias is far below anything measured here).
  int64_t Uniform(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }
  // `count` distinct values of [0, n), in random order.
  std::vector<int> Sample(int n, int count) {
    std::vector<int> all(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    for (int i = 0; i < count; ++i) {
      std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(Uniform(i, n - 1))]);
    }
    all.resize(static_cast<size_t>(count));
    return all;
  }

 private:
  uint64_t state_;
};

// What one session produced in one run.
struct Trace {
  std::vector<Hash> leaves;
  std::vector<int32_t> tokens;
  std::vector<Bytes> hidden;  // canonical final hidden state per step (taps only)
};

struct Fault {
  FaultRecord record;
  uint64_t seed = 0;  // the session's sampling seed: how the tap recognises its rows
  bool fired = false;
};

struct RunPlan {
  std::vector<int> sessions;      // pool indices
  std::vector<int> arrival_step;  // per session: engine steps before it is submitted
  EngineOptions options;
  int threads = 1;
  bool record_hidden = false;
  std::vector<Fault*> faults;  // borrowed; at most one per session
};

struct RunResult {
  std::map<int, Trace> traces;  // pool index -> trace
  Status status;                // the first failed Step, if any
};

Status CheckOptions(const DetectionCampaignOptions& o) {
  if (o.faults < 1 || o.faults > kMaxCampaignFaults) {
    return InvalidArgumentError("faults must be in [1, 1000000]");
  }
  if (o.honest_steps < 0 || o.honest_steps > kMaxCampaignHonestSteps) {
    return InvalidArgumentError("honest steps must be in [0, 100000000]");
  }
  if (o.pool_sessions < kMaxCampaignBatch || o.pool_sessions > 4096) {
    return InvalidArgumentError("pool sessions must be in [32, 4096]");
  }
  if (o.faults_per_run < 1 || o.clean_per_run < 0 ||
      o.faults_per_run + o.clean_per_run > kMaxCampaignBatch) {
    return InvalidArgumentError("faults per run >= 1 and clean per run >= 0, at most 32 in all");
  }
  if (o.max_threads < 1 || o.max_threads > kMaxCampaignThreads) {
    return InvalidArgumentError("max threads must be in [1, 64]");
  }
  if (o.model_dir.empty() && o.shape != "tiny" && o.shape != "wide") {
    return InvalidArgumentError("shape must be tiny or wide");
  }
  return OkStatus();
}

TinyModelOptions ShapeOptions(const std::string& shape) {
  TinyModelOptions o;
  if (shape == "wide") {
    o.hidden_size = 1024;
    o.num_layers = 6;
    o.num_heads = 16;
    o.num_kv_heads = 4;
    o.intermediate_size = 2816;
  }
  return o;
}

std::vector<SessionRequest> MakePool(const DetectionCampaignOptions& o, int64_t vocab,
                                     Random& random) {
  constexpr float kTemperatures[] = {0.0f, 0.7f, 1.0f};
  std::vector<SessionRequest> pool;
  for (int i = 0; i < o.pool_sessions; ++i) {
    SessionRequest r;
    // Distinct seeds: the taps tell sessions apart by them.
    const uint64_t seed = (o.seed << 20) + static_cast<uint64_t>(i);
    for (size_t b = 0; b < 8; ++b) r.id[b] = static_cast<uint8_t>(seed >> (8 * b));
    r.id[15] = 0xdc;
    const int64_t prompt = random.Uniform(1, kMaxPrompt);
    for (int64_t t = 0; t < prompt; ++t) {
      r.prompt.push_back(static_cast<int32_t>(random.Uniform(0, vocab - 1)));
    }
    r.sampling = {kTemperatures[random.Uniform(0, 2)], 0, 1.0f, seed};
    r.max_tokens = static_cast<int32_t>(random.Uniform(kMinOutputs, kMaxOutputs));
    pool.push_back(std::move(r));
  }
  return pool;
}

void FlipF32(float* value, int32_t bit) {
  uint32_t bits = 0;
  std::memcpy(&bits, value, sizeof(bits));
  bits ^= uint32_t{1} << bit;
  std::memcpy(value, &bits, sizeof(bits));
}

// The run's tap: injects residual and final-hidden faults, and records every emitted step's
// canonical hidden state per session seed.
class CampaignTap {
 public:
  CampaignTap(const RunPlan& plan, std::map<uint64_t, std::vector<Bytes>>* hidden)
      : plan_(plan), hidden_(hidden) {}

  void operator()(const TapEvent& event) {
    if (event.site == TapSite::kCanonicalHidden) {
      Record(event);
      return;
    }
    for (Fault* fault : plan_.faults) {
      const FaultSite site = fault->record.site;
      if (fault->fired) continue;
      if (site == FaultSite::kResidual && event.site == TapSite::kLayerOutput &&
          event.layer == fault->record.layer) {
        Inject(event, *fault, [&](const ForwardSequence&, int32_t position) {
          return position == fault->record.position;
        });
      } else if (site == FaultSite::kFinalHidden && event.site == TapSite::kFinalHidden) {
        Inject(event, *fault,
               [&](const ForwardSequence& s, int32_t) { return s.step == fault->record.step; });
      }
    }
  }

 private:
  template <typename Match>
  void Inject(const TapEvent& event, Fault& fault, Match match) {
    for (size_t row = 0; row < event.sequences.size(); ++row) {
      const ForwardSequence& s = event.batch[static_cast<size_t>(event.sequences[row])];
      if (s.sampling.seed != fault.seed || !match(s, event.positions[row])) continue;
      const size_t index =
          row * static_cast<size_t>(event.width) + static_cast<size_t>(fault.record.element);
      FlipF32(&event.values[index], fault.record.bit);
      fault.fired = true;
      return;
    }
  }

  void Record(const TapEvent& event) {
    const size_t rows = event.sequences.size();
    const size_t row_bytes = event.canonical.size() / rows;
    for (size_t row = 0; row < rows; ++row) {
      const ForwardSequence& s = event.batch[static_cast<size_t>(event.sequences[row])];
      std::vector<Bytes>& states = (*hidden_)[s.sampling.seed];
      if (states.size() <= s.step) states.resize(s.step + 1);
      const uint8_t* begin = event.canonical.data() + row * row_bytes;
      states[s.step].assign(begin, begin + row_bytes);
    }
  }

  const RunPlan& plan_;
  std::map<uint64_t, std::vector<Bytes>>* hidden_;  // borrowed
};

// Flips the K/V faults whose session is about to produce their step.
Status ApplyKvFaults(const RunPlan& plan, const std::vector<SessionRequest>& pool, Engine& engine,
                     CpuBackend& backend) {
  for (Fault* fault : plan.faults) {
    FaultRecord& r = fault->record;
    if (fault->fired || (r.site != FaultSite::kKey && r.site != FaultSite::kValue)) continue;
    const SessionRequest& request = pool[static_cast<size_t>(r.session)];
    StatusOr<SessionSnapshot> snapshot = engine.GetSession(request.id);
    if (!snapshot.ok() || snapshot->state != SessionState::kRunning ||
        snapshot->outputs.size() != r.step ||
        snapshot->cached_rows != static_cast<int64_t>(request.prompt.size() + r.step - 1)) {
      continue;
    }
    FP_ASSIGN_OR_RETURN(std::vector<int32_t> table, engine.BlockTable(request.id));
    FP_RETURN_IF_ERROR(backend.TEST_FlipKvBit(
        table, r.layer, r.position, r.site == FaultSite::kKey ? KvPart::kKey : KvPart::kValue,
        r.element, r.bit));
    fault->fired = true;
  }
  return OkStatus();
}

// Runs the plan's sessions through one engine until they finish or a step fails. Errors other
// than a failed step (engine creation, submission) are returned; a failed step is in the result.
StatusOr<RunResult> Run(const Model& model, const std::vector<SessionRequest>& pool,
                        const RunPlan& plan) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create({plan.threads}));
  CpuBackend* cpu = backend.get();  // borrowed: the engine owns it
  std::map<uint64_t, std::vector<Bytes>> hidden;
  if (plan.record_hidden || !plan.faults.empty()) {
    cpu->TEST_SetActivationTap(CampaignTap(plan, &hidden));
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(model, std::move(backend), nullptr, plan.options));
  std::map<SessionId, int> index;
  for (int session : plan.sessions) index[pool[static_cast<size_t>(session)].id] = session;
  RunResult result;
  std::vector<StepOutput> outputs;
  size_t submitted = 0;
  for (int step = 0;; ++step) {
    while (submitted < plan.sessions.size() &&
           (plan.arrival_step[submitted] <= step || !engine->HasWork())) {
      FP_RETURN_IF_ERROR(engine->Submit(pool[static_cast<size_t>(plan.sessions[submitted])]));
      ++submitted;
    }
    if (!engine->HasWork()) break;
    FP_RETURN_IF_ERROR(ApplyKvFaults(plan, pool, *engine, *cpu));
    outputs.clear();
    result.status = engine->Step(&outputs);
    if (!result.status.ok()) break;
    for (const StepOutput& out : outputs) {
      Trace& trace = result.traces[index.at(out.leaf.session_id)];
      FP_CHECK(trace.leaves.size() == out.leaf.step);
      trace.leaves.push_back(out.leaf_hash);
      trace.tokens.push_back(static_cast<int32_t>(out.leaf.token_id));
    }
  }
  for (int session : plan.sessions) {
    auto it = hidden.find(pool[static_cast<size_t>(session)].sampling.seed);
    if (it != hidden.end()) result.traces[session].hidden = std::move(it->second);
  }
  return result;
}

// Leaves of `trace` that differ from the reference (a missing or extra step counts as one).
int64_t CountDivergences(const Trace& reference, const Trace& trace, int64_t* compared) {
  const size_t n = std::min(reference.leaves.size(), trace.leaves.size());
  int64_t divergences = reference.leaves.size() == trace.leaves.size() ? 0 : 1;
  for (size_t t = 0; t < n; ++t) divergences += reference.leaves[t] != trace.leaves[t] ? 1 : 0;
  *compared += static_cast<int64_t>(n);
  return divergences;
}

// Compares a faulty session with its honest replica, leaf by leaf and state by state.
void Classify(const Trace& reference, const Trace& trace, bool step_failed, FaultRecord* r) {
  const size_t n = std::min(reference.leaves.size(), trace.leaves.size());
  bool anomaly = !step_failed && trace.leaves.size() != reference.leaves.size();
  for (size_t t = 0; t < n; ++t) {
    const bool leaf_diff = trace.leaves[t] != reference.leaves[t];
    const bool token_diff = trace.tokens[t] != reference.tokens[t];
    const bool state_diff =
        t >= trace.hidden.size() || trace.hidden[t] != reference.hidden[t] || token_diff;
    if (leaf_diff != state_diff) anomaly = true;
    if (leaf_diff && r->first_leaf_diff < 0) {
      r->first_leaf_diff = static_cast<int64_t>(t);
      r->token_changed = token_diff;
    }
    if (state_diff && r->first_state_diff < 0) r->first_state_diff = static_cast<int64_t>(t);
  }
  r->steps_compared = static_cast<int64_t>(n);
  if (step_failed) r->error_step = static_cast<int64_t>(trace.leaves.size());
  if (anomaly) {
    r->outcome = FaultOutcome::kMissed;
  } else if (r->first_leaf_diff >= 0) {
    r->outcome = FaultOutcome::kDetected;
  } else {
    r->outcome = step_failed ? FaultOutcome::kStepError : FaultOutcome::kAbsorbed;
  }
}

// Draws one fault for pool session `session` (seed `seed`, P prompt tokens, N outputs).
Fault DrawFault(const LlamaConfig& config, const SessionRequest& request, int session,
                Random& random) {
  Fault f;
  FaultRecord& r = f.record;
  f.seed = request.sampling.seed;
  r.session = session;
  r.site = static_cast<FaultSite>(random.Uniform(0, kFaultSites - 1));
  const int64_t p = static_cast<int64_t>(request.prompt.size());
  const int64_t n = request.max_tokens;
  r.bit = static_cast<int32_t>(random.Uniform(0, 31));
  r.layer = static_cast<int32_t>(random.Uniform(0, config.num_layers - 1));
  switch (r.site) {
    case FaultSite::kResidual:
      // Every row the session ever computes: the prompt's, and each fed-back output's.
      r.position = static_cast<int32_t>(random.Uniform(0, p + n - 2));
      r.step = static_cast<uint64_t>(std::max<int64_t>(0, r.position - (p - 1)));
      r.element = random.Uniform(0, config.hidden_size - 1);
      break;
    case FaultSite::kKey:
    case FaultSite::kValue:
      // Just before step s, rows [0, P + s - 1) are cached.
      r.step = static_cast<uint64_t>(random.Uniform(1, n - 1));
      r.position = static_cast<int32_t>(random.Uniform(0, p + static_cast<int64_t>(r.step) - 2));
      r.element = random.Uniform(0, config.num_kv_heads * config.head_dim - 1);
      break;
    case FaultSite::kFinalHidden:
      r.layer = -1;
      r.step = static_cast<uint64_t>(random.Uniform(0, n - 1));
      r.position = static_cast<int32_t>(p - 1 + static_cast<int64_t>(r.step));
      r.element = random.Uniform(0, config.hidden_size - 1);
      break;
  }
  return f;
}

EngineOptions RandomOptions(int batch, Random& random) {
  EngineOptions options;
  options.prefill_chunk_tokens =
      kChunks[random.Uniform(0, static_cast<int64_t>(std::size(kChunks)) - 1)];
  options.max_batch_sequences =
      random.Uniform(0, 1) == 0 ? batch : static_cast<int32_t>(random.Uniform(1, batch));
  options.max_batch_tokens = static_cast<int32_t>(
      random.Uniform(options.max_batch_sequences, options.max_batch_sequences + 256));
  return options;
}

class Campaign {
 public:
  Campaign(const DetectionCampaignOptions& options, const Model& model)
      : o_(options), model_(model), random_(options.seed) {}

  Status Run(DetectionCampaignResult* result);

 private:
  Status BuildReferences(DetectionCampaignResult* result);
  Status RunFaultyBatch(std::vector<Fault>& faults, DetectionCampaignResult* result);
  Status RunHonestBatch(DetectionCampaignResult* result);
  void Summarise(const std::vector<Fault>& faults, DetectionCampaignResult* result) const;

  const DetectionCampaignOptions& o_;
  const Model& model_;
  Random random_;
  std::vector<SessionRequest> pool_;
  std::vector<Trace> references_;
};

Status Campaign::BuildReferences(DetectionCampaignResult* result) {
  for (int i = 0; i < o_.pool_sessions; ++i) {
    RunPlan plan;
    plan.sessions = {i};
    plan.arrival_step = {0};
    plan.options.max_batch_sequences = 1;
    plan.options.max_batch_tokens = 512;
    plan.record_hidden = true;
    FP_ASSIGN_OR_RETURN(RunResult run, campaign::Run(model_, pool_, plan));
    FP_RETURN_IF_ERROR(run.status);
    Trace& trace = run.traces[i];
    FP_CHECK(trace.hidden.size() == trace.leaves.size());
    result->reference_steps += static_cast<int64_t>(trace.leaves.size());
    references_.push_back(std::move(trace));
  }
  return OkStatus();
}

Status Campaign::RunFaultyBatch(std::vector<Fault>& faults, DetectionCampaignResult* result) {
  const int batch = static_cast<int>(faults.size()) + o_.clean_per_run;
  std::vector<int> sessions = random_.Sample(o_.pool_sessions, batch);
  const LlamaConfig& config = model_.config();
  RunPlan plan;
  plan.sessions = sessions;
  plan.arrival_step.assign(sessions.size(), 0);
  plan.options = RandomOptions(batch, random_);
  plan.options.max_batch_sequences = batch;  // all at once: a K/V fault finds its session
  plan.options.max_batch_tokens = std::max(plan.options.max_batch_tokens, batch);
  for (size_t i = 0; i < faults.size(); ++i) {
    const int session = sessions[i];
    faults[i] = DrawFault(config, pool_[static_cast<size_t>(session)], session, random_);
    plan.faults.push_back(&faults[i]);
  }
  FP_ASSIGN_OR_RETURN(RunResult run, campaign::Run(model_, pool_, plan));
  ++result->faulty_runs;
  if (run.status.ok()) {
    for (Fault& f : faults) {
      FP_CHECK(f.fired);  // every drawn coordinate is computed (or cached) exactly once
      const size_t s = static_cast<size_t>(f.record.session);
      Classify(references_[s], run.traces[f.record.session], false, &f.record);
    }
    for (size_t i = faults.size(); i < sessions.size(); ++i) {
      result->companion_divergences +=
          CountDivergences(references_[static_cast<size_t>(sessions[i])], run.traces[sessions[i]],
                           &result->companion_steps);
    }
    return OkStatus();
  }
  // A step failed: rerun each fault alone so the failure is attributed to its fault.
  for (Fault& f : faults) {
    RunPlan solo = plan;
    solo.sessions = {f.record.session};
    solo.arrival_step = {0};
    solo.options.max_batch_sequences = 1;
    f.fired = false;
    solo.faults = {&f};
    FP_ASSIGN_OR_RETURN(RunResult alone, campaign::Run(model_, pool_, solo));
    ++result->solo_reruns;
    const size_t s = static_cast<size_t>(f.record.session);
    Classify(references_[s], alone.traces[f.record.session], !alone.status.ok(), &f.record);
  }
  return OkStatus();
}

Status Campaign::RunHonestBatch(DetectionCampaignResult* result) {
  const int batch = static_cast<int>(random_.Uniform(1, kMaxCampaignBatch));
  RunPlan plan;
  plan.sessions = random_.Sample(o_.pool_sessions, batch);
  const int64_t at_once = random_.Uniform(1, batch);
  for (int i = 0; i < batch; ++i) {
    plan.arrival_step.push_back(
        i < at_once ? 0 : static_cast<int>(random_.Uniform(0, kMaxArrivalDelaySteps)));
  }
  std::sort(plan.arrival_step.begin(), plan.arrival_step.end());
  plan.options = RandomOptions(batch, random_);
  plan.threads = static_cast<int>(random_.Uniform(1, o_.max_threads));
  FP_ASSIGN_OR_RETURN(RunResult run, campaign::Run(model_, pool_, plan));
  FP_RETURN_IF_ERROR(run.status);
  ++result->honest_runs;
  for (int session : plan.sessions) {
    result->honest_divergences += CountDivergences(references_[static_cast<size_t>(session)],
                                                   run.traces[session], &result->honest_steps);
  }
  return OkStatus();
}

void Campaign::Summarise(const std::vector<Fault>& faults, DetectionCampaignResult* result) const {
  for (const Fault& f : faults) {
    const FaultRecord& r = f.record;
    SiteSummary& s = result->sites[static_cast<size_t>(r.site)];
    ++s.injected;
    ++result->faults;
    switch (r.outcome) {
      case FaultOutcome::kDetected: {
        ++s.changed_state;
        ++result->changed_state;
        ++result->detected_within_one_step;
        const int64_t later = r.first_leaf_diff - static_cast<int64_t>(r.step);
        ++(later == 0 ? s.detected_at_step : s.detected_later);
        s.max_later_steps = std::max(s.max_later_steps, later);
        s.detected_by_token += r.token_changed ? 1 : 0;
        break;
      }
      case FaultOutcome::kStepError:
        ++s.step_errors;
        break;
      case FaultOutcome::kAbsorbed:
        ++s.absorbed;
        break;
      case FaultOutcome::kMissed:
        ++s.missed;
        ++s.changed_state;
        ++result->changed_state;
        ++result->missed;
        result->anomalies.push_back(r);
        break;
    }
  }
}

Status Campaign::Run(DetectionCampaignResult* result) {
  pool_ = MakePool(o_, model_.config().vocab_size, random_);
  FP_RETURN_IF_ERROR(BuildReferences(result));
  std::vector<Fault> all;
  for (int64_t left = o_.faults; left > 0;) {
    std::vector<Fault> faults(static_cast<size_t>(std::min<int64_t>(left, o_.faults_per_run)));
    FP_RETURN_IF_ERROR(RunFaultyBatch(faults, result));
    left -= static_cast<int64_t>(faults.size());
    all.insert(all.end(), faults.begin(), faults.end());
  }
  Summarise(all, result);
  while (result->honest_steps < o_.honest_steps) FP_RETURN_IF_ERROR(RunHonestBatch(result));
  return OkStatus();
}

}  // namespace

const char* FaultSiteName(FaultSite site) {
  switch (site) {
    case FaultSite::kResidual:
      return "residual";
    case FaultSite::kKey:
      return "kv-key";
    case FaultSite::kValue:
      return "kv-value";
    case FaultSite::kFinalHidden:
      return "final-hidden";
  }
  return "unknown";
}

StatusOr<DetectionCampaignResult> RunDetectionCampaign(const DetectionCampaignOptions& options) {
  FP_RETURN_IF_ERROR(CheckOptions(options));
  const Clock::time_point start = Clock::now();
  std::unique_ptr<ScopedTempDir> temp;
  std::string dir = options.model_dir;
  if (dir.empty()) {
    FP_ASSIGN_OR_RETURN(temp, ScopedTempDir::Create("fieldprint-detection"));
    dir = temp->Join("model");
    FP_RETURN_IF_ERROR(WriteTinyModel(dir, ShapeOptions(options.shape)));
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir));
  DetectionCampaignResult result;
  const LlamaConfig& c = model->config();
  result.model = options.model_dir.empty() ? options.shape : options.model_dir;
  result.hidden_size = c.hidden_size;
  result.num_layers = c.num_layers;
  Campaign campaign(options, *model);
  FP_RETURN_IF_ERROR(campaign.Run(&result));
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace fp::node::campaign
