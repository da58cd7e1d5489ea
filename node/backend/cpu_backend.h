// CpuBackend: the reference backend. Runs the LLaMA forward pass with the kernels' CPU
// implementations (kernels/*: f32 activations, weights read in their stored dtype, fixed-order
// reductions), keeps the KV cache as f32 in host memory, and multi-threads through the kernels'
// ThreadPool. It is complete: every machine, CI included, runs true sessions end to end on it.
//
// Test and benchmark hooks (TEST_ methods, never reachable from a configuration): an activation
// tap that sees, and may change, the residual stream after each layer and the final hidden state
// of a forward pass (the detection campaign flips single bits through it, and observes the
// canonical hidden state of every step); a single-bit flip of one cached K/V element; and
// skipping the state digest (the verification overhead benchmark's "off" runs). Unused, they
// cost one branch per layer.
//
// Thread-safety: see Backend (one driving thread); the tap is called on that thread, between
// kernels. The thread pool's workers are internal.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "common/base/bytes.h"
#include "kernels/attention/paged_attention.h"
#include "kernels/base/thread_pool.h"
#include "kernels/rope/rope.h"
#include "node/backend/backend.h"

namespace fp::node {

// Where an activation tap is called during Forward.
enum class TapSite : uint8_t {
  kLayerOutput = 0,      // the residual stream after layer `layer`, every token row; mutable
  kFinalHidden = 1,      // emitting rows after the final RMSNorm, before the canonical rounding;
                         // mutable (a change reaches the digest and the logits)
  kCanonicalHidden = 2,  // emitting rows in the canonical dtype: exactly the digested bytes
};

// What a tap sees. Every span is borrowed for the duration of the call.
struct TapEvent {
  TapSite site = TapSite::kLayerOutput;
  int32_t layer = -1;                      // kLayerOutput: the layer just finished
  std::span<const ForwardSequence> batch;  // the pass's sequences, in request order
  int64_t width = 0;                       // elements per row (hidden_size)
  std::span<const int32_t> sequences;      // [rows] the batch index of each row
  std::span<const int32_t> positions;      // [rows] each row's cache row (= RoPE position)
  std::span<float> values;                 // kLayerOutput, kFinalHidden: [rows, width] f32
  ByteSpan canonical;                      // kCanonicalHidden: [rows, width], canonical dtype
};
using ActivationTap = std::function<void(const TapEvent&)>;

enum class KvPart : uint8_t { kKey = 0, kValue = 1 };

struct CpuBackendOptions {
  int num_threads = 1;  // 1 .. kernels::ThreadPool::kMaxThreads
};

class CpuBackend : public Backend {
 public:
  // InvalidArgument for a thread count out of range. The caller owns the result.
  static StatusOr<std::unique_ptr<CpuBackend>> Create(const CpuBackendOptions& options);

  BackendIdentity identity() const override;
  Status LoadModel(const Model& model, const DigestOptions& digest) override;
  Status LoadAnchors(const AnchorSet* anchors, AnchorMode mode) override;
  int64_t KvBytesPerBlock(int32_t block_size) const override;
  Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override;
  Status WriteAnchorPrefix(std::span<const int32_t> block_table) override;
  Status Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                 ForwardResult* result) override;
  Status ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin, int32_t end,
                    Tensor* key, Tensor* value) override;

  // Installs `tap` (an empty function removes it); it is called on the driving thread at every
  // TapSite of every later Forward until removed. The tap must not call into the backend.
  void TEST_SetActivationTap(ActivationTap tap) { tap_ = std::move(tap); }
  // Flips bit `bit` (0..31) of element `element` (0 .. kv_heads * head_dim - 1) of the f32 key or
  // value that cache row `row` of the sequence with `block_table` holds in layer `layer`.
  // InvalidArgument for coordinates outside the model or the table. Requires AllocateKvCache.
  Status TEST_FlipKvBit(std::span<const int32_t> block_table, int32_t layer, int32_t row,
                        KvPart part, int64_t element, int32_t bit);
  // With `skip`, Forward leaves every state digest zero instead of computing it: plain
  // generation, the baseline of the verification overhead benchmark. Tokens are unaffected.
  void TEST_SkipStateDigests(bool skip) { skip_digests_ = skip; }

 private:
  explicit CpuBackend(std::unique_ptr<kernels::ThreadPool> pool) : pool_(std::move(pool)) {}

  struct FreeDeleter {
    void operator()(float* p) const;
  };
  using FloatBuffer = std::unique_ptr<float[], FreeDeleter>;

  // Per-pass scratch, sized for the batch's token count.
  struct Scratch {
    std::vector<int32_t> tokens;     // [T]
    std::vector<int32_t> positions;  // [T]
    std::vector<int32_t> seq_ids;    // [T]
    std::vector<int32_t> tables;     // [num_seqs, max_blocks]
    std::vector<float> x;            // [T, hidden] residual stream
    std::vector<float> h;            // [T, hidden] normalised
    std::vector<float> q;            // [T, q_heads * head_dim]
    std::vector<float> k;            // [T, kv_heads * head_dim]
    std::vector<float> v;            // [T, kv_heads * head_dim]
    std::vector<float> attn;         // [T, q_heads * head_dim]
    std::vector<float> gate;         // [T, intermediate]
    std::vector<float> up;           // [T, intermediate]
    std::vector<float> out;          // [T, hidden] projection output
  };

  Status Validate(std::span<const ForwardSequence> batch, int64_t* total_tokens) const;
  Status PrepareBatch(std::span<const ForwardSequence> batch, int64_t total_tokens);
  Status RunLayer(size_t layer, int64_t total_tokens, int32_t num_seqs, int32_t max_blocks);
  Status FinishEmitting(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                        ForwardResult* result);
  // Calls tap_ at a final-hidden site for the emitting rows (`rows` [E, hidden]).
  void TapEmitting(TapSite site, std::span<const ForwardSequence> batch, std::span<float> values,
                   ByteSpan canonical);
  kernels::PagedKvCache CacheView(size_t layer);
  kernels::AnchorSet AnchorView(size_t layer) const;

  std::unique_ptr<kernels::ThreadPool> pool_;
  const Model* model_ = nullptr;  // borrowed
  DigestOptions digest_;
  std::optional<kernels::RopeTable> rope_;
  kernels::AttentionOptions attention_{};

  // Anchors widened to f32, per layer (empty without anchors or in prefix mode for gamma).
  AnchorMode anchor_mode_ = AnchorMode::kMix;
  int32_t num_anchors_ = 0;
  std::vector<std::vector<float>> anchor_key_;    // [layers][A, kv_heads, head_dim]
  std::vector<std::vector<float>> anchor_value_;  // [layers][A, kv_heads, head_dim]
  std::vector<std::vector<float>> gamma_;         // [layers][q_heads]

  int32_t num_blocks_ = 0;
  int32_t block_size_ = 0;
  std::vector<FloatBuffer> key_cache_;    // [layers][num_blocks, block_size, kv_heads, head_dim]
  std::vector<FloatBuffer> value_cache_;  // same layout

  Scratch s_;
  ActivationTap tap_;  // empty unless a test or benchmark installed one
  bool skip_digests_ = false;
};

}  // namespace fp::node
