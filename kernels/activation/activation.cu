// SwiGLU, residual add and embedding kernels and their launchers; see activation_cuda.h.
//
// Design. Memory-bound element-wise work over a flat grid: one thread per group of kVector
// elements of one row (kVector = 8, one 16-byte access per operand, when the widths and the
// pointers allow it; 1 otherwise). Strided rows let one kernel read the separate gate/up buffers
// and the fused [gate | up] buffer alike.
//
// Thread-safety: see activation_cuda.h.
#include <string>

#include <cuda_bf16.h>

#include "kernels/activation/activation_cuda.h"
#include "kernels/activation/internal/exp_f32_device.cuh"
#include "kernels/base/cuda_status.h"

namespace fp::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;
constexpr int64_t kMaxGridBlocks = (int64_t{1} << 31) - 1;

template <int kCount>
struct alignas(kCount * 2) Group {
  __nv_bfloat16 v[kCount];
};

enum class Op { kSwiGlu, kAdd };

// Silu(g) * u exactly as swiglu.h: a rounded division, then a rounded product.
__device__ __forceinline__ float SwiGluValue(float gate, float up) {
  const float silu = __fdiv_rn(gate, __fadd_rn(1.0f, internal::DeviceExpF32(-gate)));
  return __fmul_rn(silu, up);
}

// out[r, j] = op(a[r, j], b[r, j]) for a [rows, width] grid; a, b and out rows are a_stride,
// b_stride and width elements apart.
template <Op kOp, int kCount>
__global__ void __launch_bounds__(kThreads)
    BinaryKernel(const __nv_bfloat16* a, int64_t a_stride, const __nv_bfloat16* b, int64_t b_stride,
                 __nv_bfloat16* out, int64_t rows, int64_t width) {
  const int64_t groups = width / kCount;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (item >= rows * groups) return;
  const int64_t row = item / groups;
  const int64_t column = item % groups * kCount;
  const Group<kCount> x = *reinterpret_cast<const Group<kCount>*>(a + row * a_stride + column);
  const Group<kCount> y = *reinterpret_cast<const Group<kCount>*>(b + row * b_stride + column);
  Group<kCount> result;
#pragma unroll
  for (int e = 0; e < kCount; ++e) {
    const float left = __bfloat162float(x.v[e]);
    const float right = __bfloat162float(y.v[e]);
    result.v[e] =
        __float2bfloat16_rn(kOp == Op::kSwiGlu ? SwiGluValue(left, right) : __fadd_rn(left, right));
  }
  *reinterpret_cast<Group<kCount>*>(out + row * width + column) = result;
}

template <int kCount>
__global__ void __launch_bounds__(kThreads)
    EmbeddingKernel(const int32_t* __restrict__ token_ids, const __nv_bfloat16* __restrict__ table,
                    __nv_bfloat16* __restrict__ out, int64_t num_tokens, int64_t vocab_size,
                    int64_t dim, uint32_t* error_flags) {
  const int64_t groups = dim / kCount;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (item >= num_tokens * groups) return;
  const int64_t token = item / groups;
  const int64_t column = item % groups * kCount;
  int64_t id = token_ids[token];
  if (id < 0 || id >= vocab_size) {
    if (column == 0) atomicOr(error_flags, kEmbeddingErrorTokenId);
    id = id < 0 ? 0 : vocab_size - 1;
  }
  *reinterpret_cast<Group<kCount>*>(out + token * dim + column) =
      *reinterpret_cast<const Group<kCount>*>(table + id * dim + column);
}

bool AlignedTo(const void* pointer, int bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

Status CheckGrid(int64_t items, const char* what) {
  if ((items + kThreads - 1) / kThreads > kMaxGridBlocks) {
    return InvalidArgumentError(std::string(what) + ": too many elements for one launch");
  }
  return OkStatus();
}

// The shared validation and dispatch of the two-operand kernels.
template <Op kOp>
Status LaunchBinary(const char* what, const void* a, int64_t a_stride, const void* b,
                    int64_t b_stride, void* out, int64_t rows, int64_t width, cudaStream_t stream) {
  if (rows < 0 || width < 0) return InvalidArgumentError(std::string(what) + ": negative size");
  if (width > 0 && rows > kMaxElementwiseCount / width) {
    return InvalidArgumentError(std::string(what) + ": more than kMaxElementwiseCount elements");
  }
  if (rows == 0 || width == 0) return OkStatus();
  if (a == nullptr || b == nullptr || out == nullptr) {
    return InvalidArgumentError(std::string(what) + ": null pointer");
  }
  if (!AlignedTo(a, 2) || !AlignedTo(b, 2) || !AlignedTo(out, 2)) {
    return InvalidArgumentError(std::string(what) + ": a bf16 pointer is not 2-byte aligned");
  }
  const bool vector = width % kVector == 0 && a_stride % kVector == 0 && b_stride % kVector == 0 &&
                      AlignedTo(a, 16) && AlignedTo(b, 16) && AlignedTo(out, 16);
  const int count = vector ? kVector : 1;
  const int64_t items = rows * (width / count);
  FP_RETURN_IF_ERROR(CheckGrid(items, what));
  const auto blocks = static_cast<unsigned>((items + kThreads - 1) / kThreads);
  const auto* ab = static_cast<const __nv_bfloat16*>(a);
  const auto* bb = static_cast<const __nv_bfloat16*>(b);
  auto* ob = static_cast<__nv_bfloat16*>(out);
  if (vector) {
    BinaryKernel<kOp, kVector>
        <<<blocks, kThreads, 0, stream>>>(ab, a_stride, bb, b_stride, ob, rows, width);
  } else {
    BinaryKernel<kOp, 1>
        <<<blocks, kThreads, 0, stream>>>(ab, a_stride, bb, b_stride, ob, rows, width);
  }
  return CudaStatus(cudaGetLastError(), what);
}

}  // namespace

Status LaunchSwiGlu(const void* gate, const void* up, void* out, int64_t rows, int64_t width,
                    cudaStream_t stream) {
  return LaunchBinary<Op::kSwiGlu>("swiglu", gate, width, up, width, out, rows, width, stream);
}

Status LaunchSwiGluFused(const void* gate_up, void* out, int64_t rows, int64_t width,
                         cudaStream_t stream) {
  if (width < 0) return InvalidArgumentError("swiglu_fused: negative size");
  const void* up =
      gate_up == nullptr ? nullptr : static_cast<const __nv_bfloat16*>(gate_up) + width;
  return LaunchBinary<Op::kSwiGlu>("swiglu_fused", gate_up, 2 * width, up, 2 * width, out, rows,
                                   width, stream);
}

Status LaunchResidualAdd(void* residual, const void* delta, int64_t count, cudaStream_t stream) {
  return LaunchBinary<Op::kAdd>("residual_add", residual, count, delta, count, residual, 1, count,
                                stream);
}

Status LaunchEmbedding(const int32_t* token_ids, const void* table, void* out, int64_t num_tokens,
                       int64_t vocab_size, int64_t dim, uint32_t* error_flags,
                       cudaStream_t stream) {
  if (num_tokens < 0 || num_tokens > kMaxEmbeddingTokens || vocab_size < 1 ||
      vocab_size > kMaxEmbeddingVocab || dim < 1 || dim > kMaxEmbeddingDim) {
    return InvalidArgumentError("embedding: num_tokens " + std::to_string(num_tokens) +
                                ", vocab_size " + std::to_string(vocab_size) + " or dim " +
                                std::to_string(dim) + " out of range");
  }
  if (num_tokens == 0) return OkStatus();
  if (token_ids == nullptr || table == nullptr || out == nullptr || error_flags == nullptr) {
    return InvalidArgumentError("embedding: null pointer");
  }
  if (!AlignedTo(token_ids, 4) || !AlignedTo(table, 2) || !AlignedTo(out, 2) ||
      !AlignedTo(error_flags, 4)) {
    return InvalidArgumentError("embedding: misaligned pointer");
  }
  const bool vector = dim % kVector == 0 && AlignedTo(table, 16) && AlignedTo(out, 16);
  const int count = vector ? kVector : 1;
  const int64_t items = num_tokens * (dim / count);
  FP_RETURN_IF_ERROR(CheckGrid(items, "embedding"));
  const auto blocks = static_cast<unsigned>((items + kThreads - 1) / kThreads);
  const auto* tb = static_cast<const __nv_bfloat16*>(table);
  auto* ob = static_cast<__nv_bfloat16*>(out);
  if (vector) {
    EmbeddingKernel<kVector><<<blocks, kThreads, 0, stream>>>(token_ids, tb, ob, num_tokens,
                                                              vocab_size, dim, error_flags);
  } else {
    EmbeddingKernel<1><<<blocks, kThreads, 0, stream>>>(token_ids, tb, ob, num_tokens, vocab_size,
                                                        dim, error_flags);
  }
  return CudaStatus(cudaGetLastError(), "EmbeddingKernel launch");
}

}  // namespace fp::kernels
