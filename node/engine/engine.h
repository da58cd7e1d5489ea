// Engine: the worker's continuous-batching inference loop over one model and one backend.
//
// One scheduler. Each Step():
//   1. admits waiting sessions in arrival order while the KV budget can reserve their worst case
//      (prompt plus maximum output) and the batch has room; a session that does not fit waits,
//      and nothing running is ever evicted for memory;
//   2. builds one batch: every running session contributes its pending tokens (one for decode,
//      up to prefill_chunk_tokens of its prompt for prefill), within max_batch_tokens;
//   3. runs one Backend::Forward and, for every session whose chunk reached its last pending
//      token, records a step: the sampled token, the state digest of the final hidden state that
//      produced it, and the step leaf {session_id, step, token, state_digest};
//   4. finishes sessions that hit a stop token or their maximum, releasing their KV blocks.
//
// Steps and digests (docs/engine.md): a session's tokens are prompt ++ outputs; step s produces
// output s from the final hidden state at the position of token P + s - 1 (P = prompt length).
// Prefill is step-less: its computation folds into step 0, whose state is the hidden state of
// the prompt's last token (which depends on every prompt row of the KV cache).
//
// Rollback: Truncate(id, s) keeps outputs 0 .. s-1, drops the KV rows past them and regenerates
// from step s; RollbackMode::kRebuild drops the whole KV cache and re-prefills the kept tokens
// (repairs corruption at rest in older cache rows). Both regenerate the original leaves,
// because every backend keeps the determinism rules of backend/backend.h.
//
// Thread-safety: not thread-safe. One thread (the generation loop) owns the engine and makes
// every call; other threads exchange work with it through their own queues.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "common/base/status.h"
#include "common/leaf/numerics_profile.h"
#include "common/leaf/session_id.h"
#include "common/leaf/step_leaf.h"
#include "kernels/sampling/sampler.h"
#include "node/anchors/anchor_set.h"
#include "node/backend/backend.h"
#include "node/kv/kv_cache_manager.h"
#include "node/model/model.h"

namespace fp::node {

// Sessions the engine tracks at once (waiting, running and finished-but-not-removed).
inline constexpr size_t kMaxEngineSessions = 1 << 16;

struct EngineOptions {
  int64_t kv_budget_bytes = int64_t{256} << 20;
  int32_t prefill_chunk_tokens = 512;  // 1 .. kMaxBatchTokens
  int32_t max_batch_sequences = 32;    // 1 .. kMaxBatchSequences
  int32_t max_batch_tokens = 2048;     // max_batch_sequences .. kMaxBatchTokens
  int32_t max_context = 0;             // tokens per session; 0: max_position_embeddings
  AnchorMode anchor_mode = AnchorMode::kMix;
  int quantize_bits = -1;  // state digest rounding; -1: none (the canonical dtype's width)
};

struct SessionRequest {
  SessionId id{};
  std::vector<int32_t> prompt;                         // >= 1 token ids
  kernels::SamplingParams sampling{0.0f, 0, 1.0f, 0};  // greedy by default; seed inside
  int32_t max_tokens = 16;                             // >= 1; cut to the context
  std::vector<int32_t> stop_tokens;                    // outputs that end the session
};

enum class FinishReason : uint8_t {
  kNone = 0,    // still generating
  kStop = 1,    // produced a stop token (which is part of the output)
  kLength = 2,  // reached max_tokens or the context
};

enum class RollbackMode : uint8_t {
  kKeepCache = 0,  // drop KV rows after the kept tokens, keep the rest
  kRebuild = 1,    // drop the whole KV cache, re-prefill the kept tokens
};

enum class SessionState : uint8_t { kWaiting = 0, kRunning = 1, kFinished = 2 };

// What one Step produced for one session.
struct StepOutput {
  leaf::StepLeaf leaf;
  Hash leaf_hash{};  // leaf::StepLeafHash(leaf)
  FinishReason finish = FinishReason::kNone;
};

struct SessionSnapshot {
  SessionState state = SessionState::kWaiting;
  FinishReason finish = FinishReason::kNone;
  std::vector<int32_t> prompt;
  std::vector<int32_t> outputs;
  int64_t cached_rows = 0;  // the session's token rows in the KV cache (anchor prefix excluded)
};

struct EngineStats {
  size_t waiting = 0;
  size_t running = 0;
  size_t finished = 0;
  int32_t kv_blocks = 0;
  int32_t kv_free_blocks = 0;
};

class Engine {
 public:
  // Loads `model` (borrowed, must outlive the engine) and `anchors` (borrowed, may be null) into
  // `backend` (owned) and allocates the KV cache. InvalidArgument for options out of range, a
  // zero or too small KV budget, or anchors that do not fit the model; the backend's errors
  // otherwise. The caller owns the result.
  static StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                  std::unique_ptr<Backend> backend,
                                                  const AnchorSet* anchors,
                                                  const EngineOptions& options);

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a session. AlreadyExists for a known id; InvalidArgument for an empty prompt, a
  // token id outside the vocabulary, a prompt that leaves no room in the context, max_tokens < 1
  // or bad sampling parameters; ResourceExhausted if it could never fit the KV budget or the
  // engine tracks kMaxEngineSessions sessions.
  Status Submit(SessionRequest request);

  // One scheduler iteration (see the file comment); appends this iteration's outputs to
  // `outputs` in batch order. OK with nothing appended when there is no work. A backend error is
  // returned as is; the sessions of that batch are then in an unspecified state (Truncate or
  // Remove them).
  Status Step(std::vector<StepOutput>* outputs);

  // True while some session waits or runs.
  bool HasWork() const { return !waiting_.empty() || !running_.empty(); }

  // Rolls a session back to `to_step` steps (DESIGN.md section 5.6). NotFound for an unknown
  // id; OutOfRange unless to_step <= steps produced (< for a finished session: a finished
  // session has nothing more to generate). A finished session's KV was released, so it is
  // requeued and re-prefilled whatever the mode.
  Status Truncate(const SessionId& id, uint64_t to_step, RollbackMode mode);

  // NotFound for an unknown id.
  StatusOr<SessionSnapshot> GetSession(const SessionId& id) const;
  // Forgets a finished session. NotFound for an unknown id; FailedPrecondition if it has not
  // finished.
  Status Remove(const SessionId& id);

  const leaf::NumericsProfile& numerics_profile() const { return profile_; }
  EngineStats stats() const;
  // Tokens a session may hold (prompt plus outputs).
  int64_t context_tokens() const { return context_tokens_; }
  const Model& model() const { return model_; }
  // The backend (borrowed), for tools that read the cache (anchor building, tests).
  Backend& backend() { return *backend_; }
  // A copy of a running session's block table. NotFound unless it is running.
  StatusOr<std::vector<int32_t>> BlockTable(const SessionId& id) const;
  // Rows before a session's own tokens (the anchor prefix in prefix mode, else 0).
  int64_t prefix_rows() const { return prefix_rows_; }

 private:
  struct Session {
    SessionRequest request;
    uint64_t seq = 0;             // key in the KV manager
    std::vector<int32_t> tokens;  // prompt ++ outputs
    int32_t max_outputs = 0;      // max_tokens cut to the context
    int64_t cached_rows = 0;      // rows of `tokens` in the cache
    bool prefix_written = false;  // prefix mode: anchor rows are in this session's cache
    SessionState state = SessionState::kWaiting;
    FinishReason finish = FinishReason::kNone;
    uint64_t steps() const { return tokens.size() - request.prompt.size(); }
  };
  struct Planned {
    Session* session;
    int32_t tokens;  // chunk length
    bool emit;
  };

  Engine(const Model& model, std::unique_ptr<Backend> backend, KvCacheManager kv,
         const EngineOptions& options)
      : model_(model), backend_(std::move(backend)), kv_(std::move(kv)), options_(options) {}

  void AdmitWaiting();
  std::vector<Planned> PlanBatch();
  Status RunBatch(const std::vector<Planned>& plan, std::vector<StepOutput>* outputs);
  void Finish(Session& session, FinishReason reason);

  const Model& model_;
  std::unique_ptr<Backend> backend_;
  KvCacheManager kv_;
  const EngineOptions options_;
  leaf::NumericsProfile profile_;
  int64_t prefix_rows_ = 0;
  int64_t context_tokens_ = 0;
  uint64_t next_seq_ = 1;
  std::map<SessionId, Session> sessions_;
  std::deque<SessionId> waiting_;   // arrival order
  std::vector<SessionId> running_;  // admission order
};

}  // namespace fp::node
