// Conversions between IEEE binary32 and the 16-bit formats that model weights come in: bfloat16
// and IEEE binary16 ("f16"). Every kernel loads weights through these functions, so there is one
// definition of the rounding in the whole library.
//
// Narrowing (f32 -> 16 bit) rounds to nearest, ties to even; overflow becomes infinity; NaN stays
// NaN (quiet, sign kept). Widening (16 bit -> f32) is exact. The functions use only integer and
// exactly-rounded float operations, so they give the same bits on every IEEE machine.
//
// Thread-safety: pure functions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/base/dtype.h"

namespace fp::kernels {

// Exact: bf16 is the top half of an f32.
inline float Bf16ToF32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// Round to nearest even; overflow gives infinity; NaN stays NaN.
inline uint16_t F32ToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // NaN: truncating could clear every mantissa bit left and turn it into infinity.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7fffu + lsb) >> 16);
}

// Exact. Branch-free so loops over it vectorise: the f16 bits moved into f32 position read as
// the value times 2^-112 (an f32 subnormal when the f16 is subnormal), and one exact
// multiplication by 2^112 restores it. Needs the default floating-point environment (no
// denormals-are-zero mode).
inline float F16ToF32(uint16_t bits) {
  const uint32_t sign = (static_cast<uint32_t>(bits) & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(bits) & 0x7fffu;
  const float rebased = std::bit_cast<float>(magnitude << 13) * 0x1p112f;
  const uint32_t finite = std::bit_cast<uint32_t>(rebased);
  const uint32_t special = (magnitude << 13) | 0x7f800000u;  // infinity and NaN payloads
  const uint32_t special_mask = 0u - static_cast<uint32_t>(magnitude >= 0x7c00u);  // no branch
  return std::bit_cast<float>(sign | (special & special_mask) | (finite & ~special_mask));
}

// Round to nearest even (subnormal results included); >= 65520 in magnitude gives infinity; NaN
// stays NaN.
uint16_t F32ToF16(float value);

// Reads element `index` of a weight array of `dtype` as f32. `base` must be aligned to the
// element size.
inline float LoadAsF32(const void* base, DType dtype, size_t index) {
  switch (dtype) {
    case DType::kBf16:
      return Bf16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF32:
      return static_cast<const float*>(base)[index];
  }
  return 0.0f;
}

// Widens `count` elements of `src` (`dtype`, aligned to its element size) into `dst` [count] f32.
// The ranges must not overlap.
void ConvertToF32(const void* src, DType dtype, size_t count, float* dst);

// Narrows `count` f32 values of `src` into `dst` [count] bf16 bits, round to nearest even.
void ConvertF32ToBf16(const float* src, size_t count, uint16_t* dst);

// Narrows `count` f32 values of `src` into `dst` [count] f16 bits, round to nearest even.
void ConvertF32ToF16(const float* src, size_t count, uint16_t* dst);

// True for the three dtypes of common/base/dtype.h (guards against a bad cast from a file).
inline bool IsKnownDType(DType dtype) {
  return dtype == DType::kBf16 || dtype == DType::kF16 || dtype == DType::kF32;
}

// True when `pointer` is aligned for elements of `dtype`.
inline bool IsAlignedFor(const void* pointer, DType dtype) {
  return reinterpret_cast<uintptr_t>(pointer) % DTypeSize(dtype) == 0;
}

}  // namespace fp::kernels
