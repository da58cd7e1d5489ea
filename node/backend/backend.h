// Backend: what the engine needs from a compute device. The engine (node/engine/) decides what
// runs: which sequences, which token chunks, which KV blocks (node/kv/); a backend runs it: it
// holds the weights, owns the KV cache storage, and executes one forward pass over a batch of
// sequences, returning for each sequence that asked for it the sampled token, the state digest
// and, on request, the final hidden state and the logits.
//
// Determinism contract (docs/engine.md, "Rules every backend keeps"): every output for a
// sequence is a function of that sequence's tokens, positions, cached rows, the weights, the
// anchors and its sampling parameters only, bit for bit: never of the batch it shares, its
// position in the batch, how its prefill was chunked, which blocks hold its rows, the thread
// count, or the run. The CPU backend gets this from the kernels' fixed reduction orders
// (kernels/base/fixed_math.h); a CUDA backend must keep the same rule with its own kernels and
// will have its own numerics profile.
//
// Sampling and digests happen inside the backend so that a device backend can keep logits and
// hidden states on the device and send back 4 + 32 bytes per sequence per step.
//
// Thread-safety: a backend is driven by one thread (the engine's); no method may be called
// concurrently with another on the same backend.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "kernels/sampling/sampler.h"
#include "node/anchors/anchor_set.h"
#include "node/model/model.h"
#include "node/tensor.h"

namespace fp::node {

// Bounds one forward pass; the engine's options must stay within them.
inline constexpr int32_t kMaxBatchSequences = 256;
inline constexpr int32_t kMaxBatchTokens = 1 << 16;

// How the final hidden state is digested (DESIGN.md "State digest").
struct DigestOptions {
  DType canonical_dtype = DType::kBf16;  // the model's dtype (config torch_dtype)
  // Mantissa bits kept before digesting; -1 (or the dtype's width) means no rounding.
  int quantize_bits = -1;
};

// The backend's part of the numerics profile (common/leaf/numerics_profile.h).
struct BackendIdentity {
  std::string device_kind;  // "cpu", or the GPU's name
  uint32_t compute_capability_major = 0;
  uint32_t compute_capability_minor = 0;
  std::string kernel_build_id;          // identifies the kernels' numerics
  uint32_t tensor_parallel_degree = 1;  // GPUs one forward pass is split over
};

// One sequence's part of a forward pass.
struct ForwardSequence {
  std::span<const int32_t> tokens;       // [n >= 1] token ids of this chunk
  int32_t start_row = 0;                 // KV rows already filled; the chunk fills
                                         // [start_row, start_row + n), which are also the
                                         // tokens' RoPE positions
  std::span<const int32_t> block_table;  // block ids covering rows [0, start_row + n)
  // Emit: produce token, digest (and hidden/logits if asked) for the chunk's last token.
  bool emit = false;
  kernels::SamplingParams sampling{0.0f, 0, 1.0f, 0};  // read when emit; greedy by default
  uint64_t step = 0;  // the step number the emitted token gets (Philox counter)
};

struct ForwardOptions {
  bool return_hidden = false;  // fill ForwardResult::hidden
  bool return_logits = false;  // fill ForwardResult::logits
};

// One row per emitting sequence, in request order.
struct ForwardResult {
  std::vector<int32_t> tokens;
  std::vector<Hash> state_digests;
  Tensor hidden;  // [emitting, hidden_size] in the canonical dtype, when requested
  Tensor logits;  // [emitting, vocab_size] f32, when requested
};

class Backend {
 public:
  virtual ~Backend() = default;

  // What about the backend changes bits, for the numerics profile.
  virtual BackendIdentity identity() const = 0;

  // Takes the weights (borrowed: `model` must outlive the backend) and the digest options.
  // InvalidArgument if the model's shapes are outside what the backend supports.
  virtual Status LoadModel(const Model& model, const DigestOptions& digest) = 0;
  // Takes an anchor set (borrowed; may be null for no anchors) and its mode. Requires
  // LoadModel. InvalidArgument if the set does not fit the model.
  virtual Status LoadAnchors(const AnchorSet* anchors, AnchorMode mode) = 0;
  // Bytes one KV block of `block_size` rows occupies across all layers. Requires LoadModel.
  virtual int64_t KvBytesPerBlock(int32_t block_size) const = 0;
  // Allocates the KV cache: `num_blocks` blocks of `block_size` rows. Replaces any previous
  // cache. ResourceExhausted if the memory cannot be had. Requires LoadModel.
  virtual Status AllocateKvCache(int32_t num_blocks, int32_t block_size) = 0;

  // kPrefix mode: writes the anchor rows as rows [0, A) of the sequence whose blocks are
  // `block_table` (covering at least A rows). FailedPrecondition in any other mode.
  virtual Status WriteAnchorPrefix(std::span<const int32_t> block_table) = 0;

  // Runs the model over every sequence's chunk: writes their K/V rows into the cache and, for
  // the sequences with emit, computes the final hidden state of the chunk's last token (after
  // the final RMSNorm, rounded to the canonical dtype), its state digest, the logits from that
  // rounded state, and samples the token with (sampling, step). InvalidArgument for malformed
  // requests (empty chunk, rows past the block table or the model's positions, bad sampling
  // parameters); the cache rows of the batch are unspecified after an error.
  virtual Status Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                         ForwardResult* result) = 0;

  // Copies rows [begin, end) of one sequence's cache for layer `layer` into `key` and `value`
  // ([end - begin, kv_heads, head_dim] f32, owning). For building anchor sets and tests.
  // InvalidArgument for a layer or row range outside the table.
  virtual Status ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin,
                            int32_t end, Tensor* key, Tensor* value) = 0;
};

}  // namespace fp::node
