// FaultyBackend: a Backend decorator that injects one planned fault (fault_plan.h) into the
// backend it wraps, through the Backend interface only, so the engine and the real backends stay
// untouched. Used by tests and the demo; a worker builds one only when fault injection passed
// its guard.
//
// Which sequence is which: a backend sees token chunks and block tables, not session ids. The
// generation loop tells the decorator the prompt of every session the plan targets
// (WatchSession). A sequence's first chunk (the one that starts at its first own row, after
// admission or a rebuild) begins with its prompt, so the decorator recognises it there and
// follows it afterwards by the first block of its block table, which stays the sequence's
// own until the sequence releases or rebuilds its cache (and then starts again with a first
// chunk). Two targeted sessions with the same leading prompt tokens cannot be told apart; the
// longer matching prompt wins.
//
// How each kind is applied:
//   hidden-bit  the pass is run with return_hidden; the bit is flipped in the target's hidden
//               row and its state digest recomputed with leaf::TensorStateDigest (the same
//               digest definition the backend uses); the sampled token is kept;
//   kv-row      an extra forward pass of one token, emit off, at the target's row kv_row with a
//               different token id (the recorded one plus 1), overwriting that row's K/V in every
//               layer; the row must already be cached when step `step` runs (else the fault is
//               skipped with a warning);
//   weight-bit  at LoadModel the model folder is copied into scratch_dir, the bit is flipped in
//               the copy's safetensors bytes and the inner backend loads the copy; the engine
//               still reports the original weights hash, as a corrupted node would;
//   stall, crash  before the pass in which the target emits step `step`.
// wrong-digest plans pass through unchanged: the streaming thread applies them.
//
// Thread-safety: like every Backend, driven by one thread (the generation loop's).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "node/backend/backend.h"
#include "node/worker/fault_plan.h"

namespace fp::node::worker {

// Sessions whose prompts the decorator remembers at once; the oldest is forgotten beyond this.
inline constexpr size_t kMaxWatchedSessions = 4096;
// A weight-bit fault copies the model; larger models are refused.
inline constexpr uint64_t kMaxFaultModelBytes = uint64_t{16} << 30;

struct FaultyBackendOptions {
  FaultPlan plan;
  std::string scratch_dir;  // weight-bit: the corrupted copy goes into scratch_dir/fault-model
};

class FaultyBackend : public Backend {
 public:
  // Wraps `inner` (owned). InvalidArgument if the plan does not validate, or is weight-bit
  // without a scratch_dir. The caller owns the result.
  static StatusOr<std::unique_ptr<FaultyBackend>> Create(std::unique_ptr<Backend> inner,
                                                         const FaultyBackendOptions& options);

  // Makes the session with `ordinal` recognisable by its prompt (copied). Call before its first
  // forward pass; calls for sessions the plan does not target are ignored.
  void WatchSession(uint64_t ordinal, const std::vector<int32_t>& prompt);
  // Forgets a session's prompt (it finished or was dropped).
  void UnwatchSession(uint64_t ordinal);
  // Faults applied so far.
  uint64_t fired() const { return fired_count_; }

  BackendIdentity identity() const override { return inner_->identity(); }
  // weight-bit: InvalidArgument if the tensor, element or bit does not exist in the model;
  // Internal for file errors while making the copy. Other kinds: hidden-bit's element and bit
  // are checked against the model here too.
  Status LoadModel(const Model& model, const DigestOptions& digest) override;
  Status LoadAnchors(const AnchorSet* anchors, AnchorMode mode) override;
  int64_t KvBytesPerBlock(int32_t block_size) const override {
    return inner_->KvBytesPerBlock(block_size);
  }
  Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override {
    return inner_->AllocateKvCache(num_blocks, block_size);
  }
  Status WriteAnchorPrefix(std::span<const int32_t> block_table) override {
    return inner_->WriteAnchorPrefix(block_table);
  }
  Status Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                 ForwardResult* result) override;
  Status ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin, int32_t end,
                    Tensor* key, Tensor* value) override {
    return inner_->ReadKvRows(block_table, layer, begin, end, key, value);
  }

 private:
  struct Tracked {
    int64_t ordinal = -1;   // -1: not a watched session
    int64_t kv_token = -1;  // kv-row: the token id at the fault row, once seen
  };

  FaultyBackend(std::unique_ptr<Backend> inner, const FaultyBackendOptions& options)
      : options_(options), inner_(std::move(inner)) {}

  // The watched session a first chunk belongs to, or -1.
  int64_t MatchPrompt(std::span<const int32_t> chunk) const;
  // Learns or looks up the sequence's ordinal (-1 when unknown) and records the kv-row token.
  int64_t Identify(const ForwardSequence& sequence);
  // True if the plan fires for this sequence in this pass (and marks it fired).
  bool Fires(const ForwardSequence& sequence, int64_t ordinal);
  Status RewriteKvRow(const ForwardSequence& sequence, const Tracked& tracked);
  // Flips the planned bit in the hidden rows `rows` (emitting-row indices) and redigests them.
  Status FlipHidden(const std::vector<size_t>& rows, const ForwardOptions& options,
                    ForwardResult* result);

  const FaultyBackendOptions options_;
  // Declared before inner_ so that it is destroyed after it: the inner backend borrows it.
  std::unique_ptr<Model> corrupted_model_;
  std::unique_ptr<Backend> inner_;
  const Model* model_ = nullptr;  // borrowed: the model the engine passed
  DType canonical_dtype_ = DType::kBf16;
  int quantize_bits_ = 0;
  int64_t prefix_rows_ = 0;
  std::map<uint64_t, std::vector<int32_t>> watched_;  // ordinal -> prompt
  std::map<int32_t, Tracked> tracked_;                // first block id -> sequence
  std::set<uint64_t> fired_ordinals_;
  uint64_t fired_count_ = 0;
};

}  // namespace fp::node::worker
