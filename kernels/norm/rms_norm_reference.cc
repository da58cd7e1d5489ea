// RmsNorm and ResidualAdd on the CPU, one row per work item.
//
// Thread-safety: reentrant.
#include <cmath>
#include <string>

#include "kernels/base/fixed_math.h"
#include "kernels/base/half.h"
#include "kernels/norm/rms_norm.h"

namespace fp::kernels {
namespace {

Status ValidateRmsNorm(const float* x, const void* weight, DType weight_dtype, float eps,
                       const float* out, int64_t m, int64_t d) {
  if (m < 0) return InvalidArgumentError("rms_norm: m = " + std::to_string(m) + " is negative");
  if (d < 1) return InvalidArgumentError("rms_norm: d = " + std::to_string(d) + " is not >= 1");
  if (!std::isfinite(eps) || eps < 0.0f) {
    return InvalidArgumentError("rms_norm: eps must be finite and >= 0");
  }
  if (!IsKnownDType(weight_dtype)) return InvalidArgumentError("rms_norm: unknown weight dtype");
  if (m == 0) return OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return InvalidArgumentError("rms_norm: null pointer");
  }
  if (!IsAlignedFor(weight, weight_dtype)) {
    return InvalidArgumentError("rms_norm: weight is not aligned for its dtype");
  }
  return OkStatus();
}

}  // namespace

Status RmsNorm(const float* x, const void* weight, DType weight_dtype, float eps, float* out,
               int64_t m, int64_t d, ThreadPool& pool) {
  FP_RETURN_IF_ERROR(ValidateRmsNorm(x, weight, weight_dtype, eps, out, m, d));
  pool.ParallelFor(m, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* in = x + row * d;
      float* result = out + row * d;
      const float mean_square = DotF32(in, in, d) / static_cast<float>(d);
      const float inv_rms = 1.0f / std::sqrt(mean_square + eps);
      for (int64_t j = 0; j < d; ++j) {
        result[j] = LoadAsF32(weight, weight_dtype, static_cast<size_t>(j)) * (in[j] * inv_rms);
      }
    }
  });
  return OkStatus();
}

Status ResidualAdd(float* residual, const float* delta, int64_t count, ThreadPool& pool) {
  if (count < 0) return InvalidArgumentError("residual_add: count is negative");
  if (count == 0) return OkStatus();
  if (residual == nullptr || delta == nullptr) {
    return InvalidArgumentError("residual_add: null pointer");
  }
  pool.ParallelFor(count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) residual[i] = residual[i] + delta[i];
  });
  return OkStatus();
}

}  // namespace fp::kernels
