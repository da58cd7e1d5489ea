// RopeTable construction (HF's default and llama3 inverse frequencies) and ApplyRope.
//
// Thread-safety: see rope.h.
#include <cmath>
#include <numbers>
#include <string>

#include "kernels/rope/rope.h"

namespace fp::kernels {
namespace {

Status ValidateRopeConfig(const RopeConfig& config) {
  if (config.head_dim < 2 || config.head_dim > kRopeMaxHeadDim || config.head_dim % 2 != 0) {
    return InvalidArgumentError("rope: head_dim " + std::to_string(config.head_dim) +
                                " must be even and in [2, " + std::to_string(kRopeMaxHeadDim) +
                                "]");
  }
  if (!(config.theta > 0.0) || !std::isfinite(config.theta)) {
    return InvalidArgumentError("rope: theta must be finite and > 0");
  }
  if (config.max_positions < 1 || config.max_positions > kRopeMaxPositions) {
    return InvalidArgumentError("rope: max_positions " + std::to_string(config.max_positions) +
                                " is outside [1, " + std::to_string(kRopeMaxPositions) + "]");
  }
  const RopeScaling& scaling = config.scaling;
  if (scaling.type == RopeScalingType::kNone) return OkStatus();
  if (scaling.type != RopeScalingType::kLlama3) {
    return InvalidArgumentError("rope: unknown rope scaling type");
  }
  if (!(scaling.factor > 0.0) || !std::isfinite(scaling.factor)) {
    return InvalidArgumentError("rope: llama3 factor must be finite and > 0");
  }
  if (!(scaling.low_freq_factor > 0.0) || !std::isfinite(scaling.high_freq_factor) ||
      !(scaling.high_freq_factor > scaling.low_freq_factor)) {
    return InvalidArgumentError(
        "rope: llama3 needs 0 < low_freq_factor < high_freq_factor (finite)");
  }
  if (scaling.original_max_position_embeddings < 1) {
    return InvalidArgumentError("rope: llama3 original_max_position_embeddings must be >= 1");
  }
  return OkStatus();
}

// HF _compute_llama3_parameters, per frequency: long wavelengths are divided by `factor`, short
// ones kept, and the band in between interpolated.
double Llama3InvFreq(double inv_freq, const RopeScaling& scaling) {
  const double old_context = static_cast<double>(scaling.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / scaling.low_freq_factor;
  const double high_freq_wavelen = old_context / scaling.high_freq_factor;
  const double wavelen = 2.0 * std::numbers::pi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / scaling.factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const double smooth = (old_context / wavelen - scaling.low_freq_factor) /
                        (scaling.high_freq_factor - scaling.low_freq_factor);
  return (1.0 - smooth) * inv_freq / scaling.factor + smooth * inv_freq;
}

Status ValidateApply(const RopeTable& table, const float* q, const float* k,
                     const int32_t* positions, int64_t num_tokens, int32_t q_heads,
                     int32_t kv_heads, int32_t head_dim) {
  if (num_tokens < 0 || q_heads < 0 || kv_heads < 0) {
    return InvalidArgumentError("rope: negative size");
  }
  if (head_dim != table.head_dim()) {
    return InvalidArgumentError("rope: head_dim " + std::to_string(head_dim) +
                                " does not match the table's " + std::to_string(table.head_dim()));
  }
  if (num_tokens == 0) return OkStatus();
  if (positions == nullptr || (q == nullptr && q_heads > 0) || (k == nullptr && kv_heads > 0)) {
    return InvalidArgumentError("rope: null pointer");
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] < 0 || positions[t] >= table.max_positions()) {
      return InvalidArgumentError("rope: position " + std::to_string(positions[t]) + " of token " +
                                  std::to_string(t) + " is outside the table [0, " +
                                  std::to_string(table.max_positions()) + ")");
    }
  }
  return OkStatus();
}

void RotateHeads(float* heads, int32_t count, int32_t half, const float* cos, const float* sin) {
  for (int32_t h = 0; h < count; ++h) {
    float* x = heads + static_cast<int64_t>(h) * 2 * half;
    for (int32_t i = 0; i < half; ++i) {
      const float first = x[i];
      const float second = x[i + half];
      x[i] = first * cos[i] - second * sin[i];
      x[i + half] = second * cos[i] + first * sin[i];
    }
  }
}

}  // namespace

StatusOr<RopeTable> RopeTable::Create(const RopeConfig& config) {
  FP_RETURN_IF_ERROR(ValidateRopeConfig(config));
  RopeTable table;
  table.head_dim_ = config.head_dim;
  table.max_positions_ = config.max_positions;
  const int32_t half = config.head_dim / 2;
  table.inv_freq_.resize(static_cast<size_t>(half));
  for (int32_t i = 0; i < half; ++i) {
    const double exponent = static_cast<double>(2 * i) / static_cast<double>(config.head_dim);
    double inv_freq = 1.0 / std::pow(config.theta, exponent);
    if (config.scaling.type == RopeScalingType::kLlama3) {
      inv_freq = Llama3InvFreq(inv_freq, config.scaling);
    }
    table.inv_freq_[static_cast<size_t>(i)] = static_cast<float>(inv_freq);
  }
  const size_t entries = static_cast<size_t>(config.max_positions) * static_cast<size_t>(half);
  table.cos_.resize(entries);
  table.sin_.resize(entries);
  for (int32_t position = 0; position < config.max_positions; ++position) {
    for (int32_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(position) * table.inv_freq_[static_cast<size_t>(i)];
      const size_t index =
          static_cast<size_t>(position) * static_cast<size_t>(half) + static_cast<size_t>(i);
      table.cos_[index] = static_cast<float>(std::cos(static_cast<double>(angle)));
      table.sin_[index] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return table;
}

const float* RopeTable::cos(int32_t position) const {
  FP_CHECK(position >= 0 && position < max_positions_);
  return cos_.data() + static_cast<size_t>(position) * static_cast<size_t>(head_dim_ / 2);
}

const float* RopeTable::sin(int32_t position) const {
  FP_CHECK(position >= 0 && position < max_positions_);
  return sin_.data() + static_cast<size_t>(position) * static_cast<size_t>(head_dim_ / 2);
}

Status ApplyRope(const RopeTable& table, float* q, float* k, const int32_t* positions,
                 int64_t num_tokens, int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                 ThreadPool& pool) {
  FP_RETURN_IF_ERROR(
      ValidateApply(table, q, k, positions, num_tokens, q_heads, kv_heads, head_dim));
  const int32_t half = head_dim / 2;
  pool.ParallelFor(num_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* cos = table.cos(positions[t]);
      const float* sin = table.sin(positions[t]);
      if (q_heads > 0) RotateHeads(q + t * q_heads * head_dim, q_heads, half, cos, sin);
      if (kv_heads > 0) RotateHeads(k + t * kv_heads * head_dim, kv_heads, half, cos, sin);
    }
  });
  return OkStatus();
}

}  // namespace fp::kernels
