// Narrowing conversions and the array helpers of half.h.
//
// Thread-safety: pure functions.
#include "kernels/base/half.h"

namespace fp::kernels {

uint16_t F32ToF16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= 0x477ff000u) {  // >= 65520 rounds past 65504, the largest f16
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (magnitude >= 0x38800000u) {  // normal in f16: rebase the exponent, round 13 bits away
    const uint32_t rebased = magnitude - 0x38000000u;
    const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
    return static_cast<uint16_t>(sign | (rounded >> 13));
  }
  // Subnormal in f16 (units of 2^-24); the result may round up to the smallest normal, which the
  // bit pattern handles by itself.
  const uint32_t exponent = magnitude >> 23;
  const int shift = 126 - static_cast<int>(exponent);
  if (exponent == 0 || shift > 24) return sign;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  uint32_t quotient = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (quotient & 1u) != 0)) ++quotient;
  return static_cast<uint16_t>(sign | quotient);
}

void ConvertToF32(const void* src, DType dtype, size_t count, float* dst) {
  switch (dtype) {
    case DType::kBf16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = Bf16ToF32(in[i]);
      return;
    }
    case DType::kF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = F16ToF32(in[i]);
      return;
    }
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
  }
}

void ConvertF32ToBf16(const float* src, size_t count, uint16_t* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = F32ToBf16(src[i]);
}

void ConvertF32ToF16(const float* src, size_t count, uint16_t* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = F32ToF16(src[i]);
}

}  // namespace fp::kernels
