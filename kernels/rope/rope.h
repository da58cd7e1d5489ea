// Rotary position embedding, Hugging Face LLaMA convention ("rotate_half": dimension i pairs with
// i + head_dim / 2), with optional llama3 frequency scaling.
//
// Numerics: inv_freq[i] = theta^(-2i / head_dim) (then the llama3 adjustment of HF's
// _compute_llama3_parameters when configured) is computed in double and rounded once to f32;
// the angle is f32(position) * inv_freq[i] rounded to f32 (as HF's f32 matmul does); cos and sin
// are taken in double of that f32 angle and rounded to f32. Applying the rotation is
//   out[i]       = x[i] * cos[i] - x[i + h] * sin[i]
//   out[i + h]   = x[i + h] * cos[i] + x[i] * sin[i]      (h = head_dim / 2)
// with each product rounded, then the sum rounded (no fused multiply-add).
//
// Thread-safety: a RopeTable is immutable after Create and may be shared; ApplyRope is reentrant
// for disjoint q and k.
#pragma once

#include <cstdint>
#include <vector>

#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

inline constexpr int32_t kRopeMaxHeadDim = 1024;
inline constexpr int32_t kRopeMaxPositions = 1 << 22;

enum class RopeScalingType : uint8_t {
  kNone = 0,
  kLlama3 = 1,  // HF rope_type "llama3"
};

struct RopeScaling {
  RopeScalingType type;
  // The fields below are read only for kLlama3 (HF config.json rope_scaling keys).
  double factor;                             // "factor", > 0
  double low_freq_factor;                    // "low_freq_factor", > 0
  double high_freq_factor;                   // "high_freq_factor", > low_freq_factor
  int64_t original_max_position_embeddings;  // "original_max_position_embeddings", > 0
};

struct RopeConfig {
  int32_t head_dim;       // even, 2..kRopeMaxHeadDim; the whole head is rotated
  double theta;           // "rope_theta", > 0 (LLaMA: 10000 or 500000)
  int32_t max_positions;  // table covers positions [0, max_positions), 1..kRopeMaxPositions
  RopeScaling scaling;
};

// Precomputed cos/sin for every position. Memory: max_positions * head_dim * 4 bytes.
class RopeTable {
 public:
  // InvalidArgument on a config outside the documented ranges. The caller owns the result.
  static StatusOr<RopeTable> Create(const RopeConfig& config);

  int32_t head_dim() const { return head_dim_; }
  int32_t max_positions() const { return max_positions_; }
  // [head_dim / 2] f32: the (scaled) inverse frequencies.
  const float* inv_freq() const { return inv_freq_.data(); }
  // [head_dim / 2] f32 for `position` (0 <= position < max_positions, FP_CHECKed).
  const float* cos(int32_t position) const;
  const float* sin(int32_t position) const;

 private:
  RopeTable() = default;

  int32_t head_dim_ = 0;
  int32_t max_positions_ = 0;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  std::vector<float> cos_;       // [max_positions, head_dim / 2]
  std::vector<float> sin_;       // [max_positions, head_dim / 2]
};

// Rotates q and k in place at the tokens' positions.
//   q:         [num_tokens, q_heads, head_dim] f32, row-major.
//   k:         [num_tokens, kv_heads, head_dim] f32, row-major; may be null when kv_heads == 0.
//   positions: [num_tokens] int32, each in [0, table.max_positions()).
// InvalidArgument on null pointers, negative sizes, head_dim != table.head_dim(), or a position
// outside the table (nothing is modified then). num_tokens == 0 is a no-op.
Status ApplyRope(const RopeTable& table, float* q, float* k, const int32_t* positions,
                 int64_t num_tokens, int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                 ThreadPool& pool);

}  // namespace fp::kernels
