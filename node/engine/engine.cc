// The continuous-batching engine; see engine.h and docs/engine.md.
#include "node/engine/engine.h"

#include <algorithm>
#include <cmath>

namespace fp::node {
namespace {

Status ValidateOptions(const EngineOptions& o) {
  if (o.prefill_chunk_tokens < 1 || o.prefill_chunk_tokens > kMaxBatchTokens) {
    return InvalidArgumentError("engine: prefill_chunk_tokens must be in [1, 65536]");
  }
  if (o.max_batch_sequences < 1 || o.max_batch_sequences > kMaxBatchSequences) {
    return InvalidArgumentError("engine: max_batch_sequences must be in [1, 256]");
  }
  // Every running session can always take its decode token, so no session starves.
  if (o.max_batch_tokens < o.max_batch_sequences || o.max_batch_tokens > kMaxBatchTokens) {
    return InvalidArgumentError("engine: max_batch_tokens must be in [max_batch_sequences, 65536]");
  }
  if (o.max_context < 0) return InvalidArgumentError("engine: max_context must be >= 0");
  return OkStatus();
}

Status ValidateSampling(const kernels::SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return InvalidArgumentError("temperature must be finite and >= 0");
  }
  if (p.top_k < 0) return InvalidArgumentError("top_k must be >= 0");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return InvalidArgumentError("top_p must be in (0, 1]");
  return OkStatus();
}

Status ValidateIds(const std::vector<int32_t>& ids, int64_t vocab, std::string_view what) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return InvalidArgumentError(std::string(what) + " token id " + std::to_string(id) +
                                  " is outside [0, " + std::to_string(vocab) + ")");
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                 std::unique_ptr<Backend> backend,
                                                 const AnchorSet* anchors,
                                                 const EngineOptions& options) {
  FP_CHECK(backend != nullptr);
  FP_RETURN_IF_ERROR(ValidateOptions(options));
  const LlamaConfig& config = model.config();
  FP_RETURN_IF_ERROR(backend->LoadModel(model, {config.dtype, options.quantize_bits}));
  FP_RETURN_IF_ERROR(backend->LoadAnchors(anchors, options.anchor_mode));
  int64_t prefix_rows =
      anchors != nullptr && options.anchor_mode == AnchorMode::kPrefix ? anchors->num_anchors() : 0;
  int64_t positions = options.max_context == 0
                          ? config.max_positions
                          : std::min<int64_t>(options.max_context, config.max_positions);
  if (positions - prefix_rows < 2) {
    return InvalidArgumentError("engine: the context of " + std::to_string(positions) +
                                " positions leaves no room for a prompt and an output");
  }
  FP_ASSIGN_OR_RETURN(KvCacheManager kv,
                      KvCacheManager::Create(options.kv_budget_bytes,
                                             backend->KvBytesPerBlock(kKvBlockSize), kKvBlockSize));
  FP_RETURN_IF_ERROR(backend->AllocateKvCache(kv.num_blocks(), kKvBlockSize));
  std::unique_ptr<Engine> engine(new Engine(model, std::move(backend), std::move(kv), options));
  engine->prefix_rows_ = prefix_rows;
  engine->context_tokens_ = positions - prefix_rows;
  BackendIdentity id = engine->backend_->identity();
  leaf::NumericsProfile& p = engine->profile_;
  p.device_kind = id.device_kind;
  p.compute_capability_major = id.compute_capability_major;
  p.compute_capability_minor = id.compute_capability_minor;
  p.kernel_build_id = id.kernel_build_id;
  p.tensor_parallel_degree = id.tensor_parallel_degree;
  p.dtype = config.dtype;
  // Prefix and mix mode compute different bits from the same anchor set.
  p.determinism_mode = prefix_rows > 0 ? "batch_invariant+anchor_prefix" : "batch_invariant";
  p.model_weights_hash = model.weights_hash();
  if (anchors != nullptr) p.anchor_set_hash = anchors->hash();
  p.quantize_bits =
      options.quantize_bits == -1 ? DTypeMantissaBits(config.dtype) : options.quantize_bits;
  p.digest_scope = leaf::DigestScope::kHidden;
  FP_RETURN_IF_ERROR(leaf::ValidateNumericsProfile(p));
  return engine;
}

Status Engine::Submit(SessionRequest request) {
  if (sessions_.contains(request.id)) {
    return AlreadyExistsError("session " + SessionIdToHex(request.id) + " already exists");
  }
  if (sessions_.size() >= kMaxEngineSessions) {
    return ResourceExhaustedError("engine: too many sessions");
  }
  const int64_t vocab = model_.config().vocab_size;
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  if (prompt == 0) return InvalidArgumentError("prompt is empty");
  if (prompt >= context_tokens_) {
    return InvalidArgumentError("prompt of " + std::to_string(prompt) +
                                " tokens leaves no room in the context of " +
                                std::to_string(context_tokens_) + " tokens");
  }
  if (request.max_tokens < 1) return InvalidArgumentError("max_tokens must be >= 1");
  FP_RETURN_IF_ERROR(ValidateIds(request.prompt, vocab, "prompt"));
  FP_RETURN_IF_ERROR(ValidateIds(request.stop_tokens, vocab, "stop"));
  FP_RETURN_IF_ERROR(ValidateSampling(request.sampling));
  Session s;
  s.max_outputs =
      static_cast<int32_t>(std::min<int64_t>(request.max_tokens, context_tokens_ - prompt));
  // The last output is never fed back, so the cache holds at most prompt + outputs - 1 rows.
  int64_t rows = prefix_rows_ + prompt + s.max_outputs - 1;
  if (kv_.BlocksFor(rows) > kv_.num_blocks()) {
    return ResourceExhaustedError("session needs " + std::to_string(kv_.BlocksFor(rows)) +
                                  " KV blocks but the budget holds " +
                                  std::to_string(kv_.num_blocks()));
  }
  s.seq = next_seq_++;
  s.tokens = request.prompt;
  s.request = std::move(request);
  SessionId id = s.request.id;
  sessions_.emplace(id, std::move(s));
  waiting_.push_back(id);
  return OkStatus();
}

void Engine::AdmitWaiting() {
  // Strict arrival order: a large session at the head is not overtaken by smaller ones, so it
  // cannot starve.
  while (!waiting_.empty() && running_.size() < static_cast<size_t>(options_.max_batch_sequences)) {
    Session& s = sessions_.at(waiting_.front());
    int64_t rows = prefix_rows_ + static_cast<int64_t>(s.request.prompt.size()) + s.max_outputs - 1;
    if (!kv_.TryReserve(s.seq, rows)) break;
    s.state = SessionState::kRunning;
    running_.push_back(waiting_.front());
    waiting_.pop_front();
  }
}

std::vector<Engine::Planned> Engine::PlanBatch() {
  std::vector<Planned> plan;
  int64_t budget = options_.max_batch_tokens;
  // Decodes first (one token each; they always fit, see ValidateOptions), then prefill chunks
  // in admission order with what is left of the token budget.
  for (int pass = 0; pass < 2; ++pass) {
    for (const SessionId& id : running_) {
      Session& s = sessions_.at(id);
      int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.cached_rows;
      FP_CHECK(pending >= 1);
      if ((pending == 1) != (pass == 0) || budget == 0) continue;
      int64_t n = std::min<int64_t>({pending, options_.prefill_chunk_tokens, budget});
      budget -= n;
      plan.push_back({&s, static_cast<int32_t>(n), n == pending});
    }
  }
  return plan;
}

Status Engine::Step(std::vector<StepOutput>* outputs) {
  AdmitWaiting();
  if (running_.empty()) return OkStatus();
  std::vector<Planned> plan = PlanBatch();
  return RunBatch(plan, outputs);
}

Status Engine::RunBatch(const std::vector<Planned>& plan, std::vector<StepOutput>* outputs) {
  for (const Planned& p : plan) {
    Session& s = *p.session;
    kv_.EnsureRows(s.seq, prefix_rows_ + s.cached_rows + p.tokens);
    if (prefix_rows_ > 0 && !s.prefix_written) {
      FP_RETURN_IF_ERROR(backend_->WriteAnchorPrefix(kv_.BlockTable(s.seq)));
      s.prefix_written = true;
    }
  }
  std::vector<ForwardSequence> batch;
  for (const Planned& p : plan) {
    const Session& s = *p.session;
    ForwardSequence f;
    f.tokens = std::span<const int32_t>(s.tokens).subspan(static_cast<size_t>(s.cached_rows),
                                                          static_cast<size_t>(p.tokens));
    f.start_row = static_cast<int32_t>(prefix_rows_ + s.cached_rows);
    f.block_table = kv_.BlockTable(s.seq);
    f.emit = p.emit;
    f.sampling = s.request.sampling;
    f.step = s.steps();
    batch.push_back(f);
  }
  ForwardResult result;
  FP_RETURN_IF_ERROR(backend_->Forward(batch, ForwardOptions{}, &result));
  size_t row = 0;
  for (const Planned& p : plan) {
    Session& s = *p.session;
    s.cached_rows += p.tokens;
    if (!p.emit) continue;
    FP_CHECK(row < result.tokens.size());
    StepOutput out;
    out.leaf = {s.request.id, s.steps(), static_cast<uint32_t>(result.tokens[row]),
                result.state_digests[row]};
    out.leaf_hash = leaf::StepLeafHash(out.leaf);
    s.tokens.push_back(result.tokens[row]);
    ++row;
    const auto& stops = s.request.stop_tokens;
    if (std::find(stops.begin(), stops.end(), s.tokens.back()) != stops.end()) {
      Finish(s, FinishReason::kStop);
    } else if (s.steps() >= static_cast<uint64_t>(s.max_outputs)) {
      Finish(s, FinishReason::kLength);
    }
    out.finish = s.finish;
    outputs->push_back(out);
  }
  FP_CHECK(row == result.tokens.size());
  return OkStatus();
}

void Engine::Finish(Session& s, FinishReason reason) {
  s.finish = reason;
  s.state = SessionState::kFinished;
  s.cached_rows = 0;
  s.prefix_written = false;
  kv_.Release(s.seq);
  running_.erase(std::find(running_.begin(), running_.end(), s.request.id));
}

Status Engine::Truncate(const SessionId& id, uint64_t to_step, RollbackMode mode) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFoundError("unknown session " + SessionIdToHex(id));
  Session& s = it->second;
  bool finished = s.state == SessionState::kFinished;
  if (to_step > s.steps() || (finished && to_step == s.steps())) {
    return OutOfRangeError("session " + SessionIdToHex(id) + " has " + std::to_string(s.steps()) +
                           " steps; cannot roll back to step " + std::to_string(to_step));
  }
  s.tokens.resize(s.request.prompt.size() + to_step);
  s.finish = FinishReason::kNone;
  if (finished) {
    s.state = SessionState::kWaiting;
    waiting_.push_back(id);
    return OkStatus();
  }
  if (s.state == SessionState::kWaiting) return OkStatus();  // holds no cache yet
  // The newest token is never in the cache: it is the input of the next forward pass.
  int64_t keep = mode == RollbackMode::kRebuild
                     ? 0
                     : std::min<int64_t>(s.cached_rows, static_cast<int64_t>(s.tokens.size()) - 1);
  s.cached_rows = keep;
  if (keep == 0) {
    // Nothing of the session survives: drop the anchor prefix too, so a rebuild rewrites every
    // row it will read.
    kv_.Truncate(s.seq, 0);
    s.prefix_written = false;
  } else {
    kv_.Truncate(s.seq, prefix_rows_ + keep);
  }
  return OkStatus();
}

StatusOr<SessionSnapshot> Engine::GetSession(const SessionId& id) const {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFoundError("unknown session " + SessionIdToHex(id));
  const Session& s = it->second;
  SessionSnapshot snap;
  snap.state = s.state;
  snap.finish = s.finish;
  snap.prompt = s.request.prompt;
  snap.outputs.assign(s.tokens.begin() + static_cast<ptrdiff_t>(s.request.prompt.size()),
                      s.tokens.end());
  snap.cached_rows = s.cached_rows;
  return snap;
}

Status Engine::Remove(const SessionId& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFoundError("unknown session " + SessionIdToHex(id));
  if (it->second.state != SessionState::kFinished) {
    return FailedPreconditionError("session " + SessionIdToHex(id) + " has not finished");
  }
  sessions_.erase(it);
  return OkStatus();
}

EngineStats Engine::stats() const {
  EngineStats st;
  st.waiting = waiting_.size();
  st.running = running_.size();
  st.finished = sessions_.size() - st.waiting - st.running;
  st.kv_blocks = kv_.num_blocks();
  st.kv_free_blocks = kv_.free_blocks();
  return st;
}

StatusOr<std::vector<int32_t>> Engine::BlockTable(const SessionId& id) const {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.state != SessionState::kRunning) {
    return NotFoundError("session " + SessionIdToHex(id) + " is not running");
  }
  std::span<const int32_t> table = kv_.BlockTable(it->second.seq);
  return std::vector<int32_t>(table.begin(), table.end());
}

}  // namespace fp::node
