// Batch-invariant matrix multiplication for linear layers: y = x * w^T, with w stored the way
// Hugging Face safetensors store nn.Linear weights ([out_features, in_features], row-major).
//
// Determinism: every y[i, j] is DotF32(x row i, w row j) in the fixed order of
// kernels/base/fixed_math.h (w widened to f32 element by element). It does not depend on m, on
// the row's position in x, on blocking or on the thread count: the blocked implementation keeps
// the 8 partial sums of each output across k-blocks instead of restarting them.
//
// Thread-safety: reentrant; concurrent calls must use disjoint outputs (and ThreadPool calls are
// serialised by the pool).
#pragma once

#include <cstdint>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

// Caps on sizes, so index arithmetic stays far from overflow.
inline constexpr int64_t kGemmMaxDim = int64_t{1} << 24;

// y[m, n] = x[m, k] * w[n, k]^T.
//   x: [m, k] f32, row-major.
//   w: [n, k] of w_dtype (bf16, f16 or f32), row-major, aligned to its element size; borrowed.
//   y: [m, n] f32, row-major; must not overlap x or w.
// m == 0 or n == 0 is a no-op; k == 0 writes zeros. InvalidArgument on null pointers, negative
// or too large sizes, or a misaligned w. The pool runs the blocks; results do not depend on it.
Status Gemm(const float* x, const void* w, DType w_dtype, float* y, int64_t m, int64_t n, int64_t k,
            ThreadPool& pool);

}  // namespace fp::kernels
