// Tensor-parallel residual reduction; see cuda_tp_reduce.h. One thread per 8 consecutive
// elements: two 16-byte loads of f32 per rank, one 16-byte load and store of bf16.
#include <algorithm>

#include <cuda_bf16.h>

#include "kernels/base/cuda_status.h"
#include "node/backend/cuda_tp_reduce.h"

namespace fp::node::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;  // elements per thread
static_assert(kVector == kTpReduceAlignment);
// Grid bound: a grid-stride loop covers any count; 8192 CTAs of 256 threads fill an H100 many
// times over.
constexpr int64_t kMaxBlocks = 8192;

__global__ void TpResidualSumKernel(const float* __restrict__ partials, int ranks, int64_t count,
                                    __nv_bfloat16* __restrict__ x) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kVector;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVector;
       i < count; i += stride) {
    float sum[kVector];
    const auto* p0 = reinterpret_cast<const float4*>(partials + i);
    const float4 a = p0[0], b = p0[1];
    sum[0] = a.x, sum[1] = a.y, sum[2] = a.z, sum[3] = a.w;
    sum[4] = b.x, sum[5] = b.y, sum[6] = b.z, sum[7] = b.w;
    for (int r = 1; r < ranks; ++r) {
      const auto* pr = reinterpret_cast<const float4*>(partials + r * count + i);
      const float4 c = pr[0], d = pr[1];
      const float add[kVector] = {c.x, c.y, c.z, c.w, d.x, d.y, d.z, d.w};
#pragma unroll
      for (int j = 0; j < kVector; ++j) sum[j] = __fadd_rn(sum[j], add[j]);
    }
    uint4 packed = *reinterpret_cast<const uint4*>(x + i);
    auto* values = reinterpret_cast<__nv_bfloat16*>(&packed);
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      values[j] = __float2bfloat16_rn(__fadd_rn(__bfloat162float(values[j]), sum[j]));
    }
    *reinterpret_cast<uint4*>(x + i) = packed;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status LaunchTpResidualSum(const float* partials, int ranks, int64_t count, void* x,
                           cudaStream_t stream) {
  if (partials == nullptr || x == nullptr) return InvalidArgumentError("tp reduce: null pointer");
  if (!Aligned16(partials) || !Aligned16(x)) {
    return InvalidArgumentError("tp reduce: buffers must be 16-byte aligned");
  }
  if (ranks < 1 || ranks > kMaxTpReduceRanks) {
    return InvalidArgumentError("tp reduce: ranks must be in [1, 8]");
  }
  if (count < 0 || count % kTpReduceAlignment != 0) {
    return InvalidArgumentError("tp reduce: count must be a non-negative multiple of 8");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(partials);
  const auto* q = static_cast<const uint8_t*>(x);
  const int64_t partial_bytes = count * ranks * 4, x_bytes = count * 2;
  if (count > 0 && p < q + x_bytes && q < p + partial_bytes) {
    return InvalidArgumentError("tp reduce: x overlaps the partials");
  }
  if (count == 0) return OkStatus();
  const int64_t threads_needed = count / kVector;
  const auto blocks =
      static_cast<unsigned>(std::min(kMaxBlocks, (threads_needed + kThreads - 1) / kThreads));
  TpResidualSumKernel<<<blocks, kThreads, 0, stream>>>(partials, ranks, count,
                                                       static_cast<__nv_bfloat16*>(x));
  return kernels::CudaStatus(cudaGetLastError(), "tp reduce kernel");
}

}  // namespace fp::node::cuda
