// Canonical final state conversion; see cuda_canonical.h. Element-wise, one thread per element,
// each conversion a single correctly rounded instruction, so bits depend only on the element.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/base/cuda_status.h"
#include "node/backend/cuda_canonical.h"

namespace fp::node::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void ToF32Kernel(const __nv_bfloat16* __restrict__ state, int64_t count,
                            float* __restrict__ canonical) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) canonical[i] = __bfloat162float(state[i]);
}

__global__ void ToF16Kernel(const __nv_bfloat16* __restrict__ state, int64_t count,
                            __half* __restrict__ canonical, __nv_bfloat16* __restrict__ head) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const __half h = __float2half_rn(__bfloat162float(state[i]));
  canonical[i] = h;
  head[i] = __float2bfloat16_rn(__half2float(h));
}

}  // namespace

Status LaunchCanonicalState(const void* state, DType dtype, int64_t rows, int64_t width,
                            void* canonical, void* head_input, cudaStream_t stream) {
  if (rows < 0 || width < 0) return InvalidArgumentError("canonical state: negative size");
  if (dtype != DType::kF16 && dtype != DType::kF32) {
    return InvalidArgumentError("canonical state: dtype must be f16 or f32");
  }
  if (state == nullptr || canonical == nullptr || (dtype == DType::kF16 && head_input == nullptr)) {
    return InvalidArgumentError("canonical state: null pointer");
  }
  const int64_t count = rows * width;
  if (count == 0) return OkStatus();
  const auto blocks = static_cast<unsigned>((count + kThreads - 1) / kThreads);
  const auto* in = static_cast<const __nv_bfloat16*>(state);
  if (dtype == DType::kF32) {
    ToF32Kernel<<<blocks, kThreads, 0, stream>>>(in, count, static_cast<float*>(canonical));
  } else {
    ToF16Kernel<<<blocks, kThreads, 0, stream>>>(in, count, static_cast<__half*>(canonical),
                                                 static_cast<__nv_bfloat16*>(head_input));
  }
  return kernels::CudaStatus(cudaGetLastError(), "canonical state kernel");
}

}  // namespace fp::node::cuda
