// AnchorSet: per layer, anchor keys and values [A, kv_heads, head_dim] and a mixing weight gamma
// per query head (DESIGN.md sections 2 and 3), stored as a safetensors file and content-addressed
// by SHA-256.
//
// File layout: for each layer i, tensors "layers.<i>.anchor_key" and "layers.<i>.anchor_value"
// ([A, kv_heads, head_dim], bf16/f16/f32) and "layers.<i>.gamma" ([q_heads] f32, each in
// [0, 1]); metadata {"format": "fieldprint-anchors-v1"}. The hash is SHA-256 of the canonical
// serialisation (SerializeSafetensors of these tensors and that metadata), so it does not
// depend on how a foreign writer laid out the header.
//
// Modes: kMix (default) mixes the anchor attention into every query head with weight gamma;
// kPrefix writes the anchor rows as the first A rows of every sequence's KV cache and runs plain
// causal attention over them (gamma unused).
//
// Thread-safety: immutable after creation; may be shared.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "node/model/config.h"
#include "node/tensor.h"

namespace fp::node {

inline constexpr int64_t kMaxAnchors = 1 << 16;

enum class AnchorMode : uint8_t {
  kMix = 0,
  kPrefix = 1,
};

// "mix" or "prefix"; InvalidArgument otherwise.
StatusOr<AnchorMode> ParseAnchorMode(std::string_view name);
std::string_view AnchorModeName(AnchorMode mode);

struct AnchorLayer {
  Tensor key;    // [A, kv_heads, head_dim], bf16/f16/f32, no RoPE applied at use
  Tensor value;  // [A, kv_heads, head_dim], same dtype as key
  Tensor gamma;  // [q_heads] f32, each in [0, 1]
};

class AnchorSet {
 public:
  // Takes ownership of `layers` (owning tensors). InvalidArgument for no layers, A outside
  // [1, kMaxAnchors], shapes or dtypes that differ between layers, or a gamma outside [0, 1].
  static StatusOr<std::unique_ptr<AnchorSet>> Create(std::vector<AnchorLayer> layers);
  // Reads a file; errors as Create plus those of SafetensorsFile::Open, and InvalidArgument for
  // a missing or unexpected tensor name. The caller owns the result.
  static StatusOr<std::unique_ptr<AnchorSet>> Load(const std::string& path);

  AnchorSet(const AnchorSet&) = delete;
  AnchorSet& operator=(const AnchorSet&) = delete;

  // Writes the canonical serialisation to `path` (atomically).
  Status Save(const std::string& path) const;
  // A copy with every gamma set to `gamma`. InvalidArgument unless 0 <= gamma <= 1.
  StatusOr<std::unique_ptr<AnchorSet>> WithGamma(float gamma) const;
  // OK when the set fits the model: as many layers, the same KV heads, head_dim and query heads.
  // InvalidArgument naming the mismatch otherwise.
  Status CheckCompatible(const LlamaConfig& config) const;

  int64_t num_anchors() const { return layers_[0].key.dim(0); }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t kv_heads() const { return layers_[0].key.dim(1); }
  int64_t head_dim() const { return layers_[0].key.dim(2); }
  int64_t q_heads() const { return layers_[0].gamma.dim(0); }
  const std::vector<AnchorLayer>& layers() const { return layers_; }
  const Hash& hash() const { return hash_; }

 private:
  explicit AnchorSet(std::vector<AnchorLayer> layers) : layers_(std::move(layers)) {}
  StatusOr<Bytes> Serialize() const;

  std::vector<AnchorLayer> layers_;
  Hash hash_{};
};

}  // namespace fp::node
