// RMSNorm (LLaMA convention) and the residual add around it.
//
// RmsNorm: out[i, :] = w * (x[i, :] * (1 / sqrt(mean(x[i, :]^2) + eps))), all in f32, where the
// sum of squares is DotF32(x, x) (kernels/base/fixed_math.h order), mean = sum / d, and each
// output element is w[j] * (x[i, j] * inv_rms) with the weight widened to f32. Rows are
// independent, so the result does not depend on m or on the row's position.
//
// Thread-safety: reentrant; concurrent calls must use disjoint outputs.
#pragma once

#include <cstdint>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

// Normalises the rows of x.
//   x:      [m, d] f32, row-major.
//   weight: [d] of weight_dtype, aligned to its element size; borrowed.
//   out:    [m, d] f32; may equal x (in place), must not otherwise overlap it.
// InvalidArgument on null pointers, m < 0, d < 1, a misaligned weight, or eps not finite and
// >= 0. m == 0 is a no-op.
Status RmsNorm(const float* x, const void* weight, DType weight_dtype, float eps, float* out,
               int64_t m, int64_t d, ThreadPool& pool);

// residual[i] = residual[i] + delta[i] for i in [0, count).
//   residual: [count] f32, updated in place.
//   delta:    [count] f32; must not overlap residual.
// InvalidArgument on null pointers or count < 0.
Status ResidualAdd(float* residual, const float* delta, int64_t count, ThreadPool& pool);

}  // namespace fp::kernels
