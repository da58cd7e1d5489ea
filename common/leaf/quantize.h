// The quantizer: rounds floating-point tensor elements to fewer mantissa bits before digesting.
//
// Spec: docs/formats.md, "Step leaf and state digest". Rounding keeps the format's exponent field
// and its first m stored mantissa bits, rounding the dropped bits to nearest, ties to even on the
// kept encoding. Working on the raw encoding gives IEEE 754 behaviour for free:
//   - subnormals round on the same absolute grid as the smallest normal binade (clearing low
//     mantissa bits of a subnormal is exact rounding to the narrower format's subnormals);
//   - a carry out of the mantissa increments the exponent, so the largest finite values round up
//     to infinity exactly when IEEE round-to-nearest-even does;
//   - the sign is kept, so -0 stays -0 and small negatives round to -0;
//   - infinities are unchanged (their mantissa is zero, which no rounding moves).
// NaN: when m is below the native width every NaN becomes the dtype's canonical quiet NaN
// (positive, quiet bit only: bf16 0x7fc0, f16 0x7e00, f32 0x7fc00000). Dropping payload bits
// could otherwise turn a NaN into an infinity, and replicas that both produced a NaN through
// different instructions should agree once the caller asked for tolerance. When m equals the
// native width the function is the identity on every bit pattern, NaN payloads included.
// Ties with m = 0: the kept low bit is the exponent's lowest bit, so a value halfway between
// two powers of two goes to the one with the even exponent field (this includes the tie between
// the largest finite value and infinity).
//
// The per-element functions are constexpr, branch-light and callable from CUDA device code: the
// digest kernel applies the same function so GPU and CPU results agree bit for bit.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>

#include "common/base/dtype.h"
#include "common/base/status.h"

// Lets the element functions compile for both host and device under nvcc.
#ifndef FP_HOST_DEVICE
#if defined(__CUDACC__)
#define FP_HOST_DEVICE __host__ __device__
#else
#define FP_HOST_DEVICE
#endif
#endif

namespace fp::leaf {

namespace internal {

// Rounds one element encoded in an unsigned integer of `kTotalBits` bits with `kMantissaBits`
// stored mantissa bits to `keep_bits` mantissa bits. Precondition: 0 <= keep_bits <=
// kMantissaBits (checked by the callers that take outside input).
template <typename Bits, int kTotalBits, int kMantissaBits>
FP_HOST_DEVICE constexpr Bits QuantizeEncoding(Bits bits, int keep_bits) {
  constexpr Bits kSignMask = Bits{1} << (kTotalBits - 1);
  constexpr Bits kMagnitudeMask = kSignMask - 1;
  // All exponent bits set, mantissa zero: the encoding of infinity's magnitude.
  constexpr Bits kInfinity = kMagnitudeMask & ~((Bits{1} << kMantissaBits) - 1);
  constexpr Bits kCanonicalNan = kInfinity | (Bits{1} << (kMantissaBits - 1));
  const int drop_bits = kMantissaBits - keep_bits;
  if (drop_bits == 0) return bits;
  const Bits magnitude = bits & kMagnitudeMask;
  const Bits dropped_mask = (Bits{1} << drop_bits) - 1;
  const Bits half = Bits{1} << (drop_bits - 1);
  const Bits kept_low_bit = (magnitude >> drop_bits) & 1;
  // Adding half - 1 rounds above-half up; the kept low bit breaks exact ties toward even. For
  // finite and infinite inputs the sum stays below kInfinity + 2^drop_bits, so it never reaches
  // the sign bit and never forms a NaN; NaN inputs are replaced below.
  const Bits rounded = static_cast<Bits>((magnitude + (half - 1) + kept_low_bit) & ~dropped_mask);
  const Bits result = static_cast<Bits>((bits & kSignMask) | rounded);
  return magnitude > kInfinity ? kCanonicalNan : result;
}

}  // namespace internal

// Rounds one element's raw bits to `keep_bits` mantissa bits (see the file comment).
// Preconditions: 0 <= keep_bits <= 7 (bf16), 10 (f16), 23 (f32); not checked here because this
// is the per-element hot path; QuantizeInPlace validates.
FP_HOST_DEVICE constexpr uint16_t QuantizeBf16Bits(uint16_t bits, int keep_bits) {
  return internal::QuantizeEncoding<uint16_t, 16, 7>(bits, keep_bits);
}
FP_HOST_DEVICE constexpr uint16_t QuantizeF16Bits(uint16_t bits, int keep_bits) {
  return internal::QuantizeEncoding<uint16_t, 16, 10>(bits, keep_bits);
}
FP_HOST_DEVICE constexpr uint32_t QuantizeF32Bits(uint32_t bits, int keep_bits) {
  return internal::QuantizeEncoding<uint32_t, 32, 23>(bits, keep_bits);
}

// OK when 0 <= keep_bits <= DTypeMantissaBits(dtype); InvalidArgument otherwise.
Status ValidateQuantizeBits(DType dtype, int keep_bits);

// Rounds every element of `data` (the tensor's bytes in `dtype`, little-endian as laid out in
// memory) to `keep_bits` mantissa bits, in place. keep_bits == DTypeMantissaBits(dtype) leaves
// the bytes untouched. InvalidArgument if keep_bits is out of range or data.size() is not a
// multiple of the element size; `data` is unchanged on error. `data` is borrowed for the call.
Status QuantizeInPlace(DType dtype, int keep_bits, std::span<uint8_t> data);

}  // namespace fp::leaf
