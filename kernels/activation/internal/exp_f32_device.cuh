// ExpF32 (kernels/base/fixed_math.h) for device code, bit for bit: the same range reduction,
// polynomial and two-step scaling, written with explicit round-to-nearest intrinsics so nvcc
// cannot contract a multiply and an add into an FMA (its default, --fmad=true, would change
// bits). Needs a build without flush-to-zero (no --use_fast_math): subnormal results are exact,
// as on the CPU. Shared by SwiGLU (activation.cu) and the sampler (sampler.cu); the GPU tests
// compare it with the CPU function on every bf16 value and on random f32 inputs.
//
// Thread-safety: a pure function.
#pragma once

#include <cstdint>

namespace fp::kernels::internal {

__device__ __forceinline__ float DeviceExpF32(float x) {
  if (x != x) return x;
  if (x > 88.7228394f) return __int_as_float(0x7f800000);
  if (x < -104.0f) return 0.0f;
  const float k = floorf(__fadd_rn(__fmul_rn(x, 1.44269502f), 0.5f));
  const float r =
      __fsub_rn(__fsub_rn(x, __fmul_rn(k, 0.693359375f)), __fmul_rn(k, -2.12194440e-4f));
  float p = 1.0f / 5040.0f;
  p = __fadd_rn(__fmul_rn(p, r), 1.0f / 720.0f);
  p = __fadd_rn(__fmul_rn(p, r), 1.0f / 120.0f);
  p = __fadd_rn(__fmul_rn(p, r), 1.0f / 24.0f);
  p = __fadd_rn(__fmul_rn(p, r), 1.0f / 6.0f);
  p = __fadd_rn(__fmul_rn(p, r), 0.5f);
  p = __fadd_rn(__fmul_rn(p, r), 1.0f);
  p = __fadd_rn(__fmul_rn(p, r), 1.0f);
  const int32_t exponent = static_cast<int32_t>(k);
  const int32_t half = exponent / 2;
  const float scale1 =
      __int_as_float(static_cast<int32_t>(static_cast<uint32_t>(half + 127) << 23));
  const float scale2 =
      __int_as_float(static_cast<int32_t>(static_cast<uint32_t>(exponent - half + 127) << 23));
  return __fmul_rn(__fmul_rn(p, scale1), scale2);
}

}  // namespace fp::kernels::internal
