// The library's fixed-order arithmetic primitives: the dot product every kernel reduces with, and
// an exponential that gives the same bits on every machine (libm's expf may differ between C
// libraries and versions; this one uses only exactly-rounded IEEE operations).
//
// Fixed summation order of DotF32 (and of every kernel that reduces over a vector, so that a
// value does not depend on which kernel or batch computed it):
//   1. element i (0 <= i < n) is added into partial sum p[i % 8], in increasing i, each step
//      p = p + a[i] * b[i] (a rounded product, then a rounded sum: no fused multiply-add);
//   2. q[j] = p[j] + p[j + 4] for j < 4; r[j] = q[j] + q[j + 2] for j < 2; result = r[0] + r[1].
// fp_kernels and every target linking it compile with -ffp-contract=off (kernels/CMakeLists.txt)
// so no compiler fuses these operations, in the library or where these inline functions are
// used.
//
// Thread-safety: pure functions.
#pragma once

#include <bit>
#include <cstdint>

namespace fp::kernels {

inline constexpr int kDotLanes = 8;

// Combines the 8 partial sums of the fixed order (step 2 above).
inline float CombineLanes(const float* lanes) {
  const float q0 = lanes[0] + lanes[4];
  const float q1 = lanes[1] + lanes[5];
  const float q2 = lanes[2] + lanes[6];
  const float q3 = lanes[3] + lanes[7];
  return (q0 + q2) + (q1 + q3);
}

// sum_i a[i] * b[i] over [0, n) in the fixed order above. n may be 0 (result +0).
inline float DotF32(const float* a, const float* b, int64_t n) {
  float lanes[kDotLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    for (int j = 0; j < kDotLanes; ++j) lanes[j] = lanes[j] + a[i + j] * b[i + j];
  }
  for (int j = 0; i + j < n; ++j) lanes[j] = lanes[j] + a[i + j] * b[i + j];
  return CombineLanes(lanes);
}

// e^x with a maximum error of about 1 ulp for normal results; +inf above ~88.72, +0 far below
// -87.3 (results in the subnormal range are computed, not flushed), NaN for NaN.
// Method: x = k ln2 + r with |r| <= ln2 / 2 (k = round(x / ln2), ln2 split in two parts so k ln2
// is exact), e^r by its degree-7 Taylor polynomial (truncation error < 6e-9 relative), then
// scaling by 2^k through the exponent bits, in two steps so subnormal results are exact.
inline float ExpF32(float x) {
  if (x != x) return x;
  if (x > 88.7228394f) return std::bit_cast<float>(0x7f800000u);
  if (x < -104.0f) return 0.0f;
  const float k = __builtin_floorf(x * 1.44269502f + 0.5f);
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t exponent = static_cast<int32_t>(k);
  const int32_t half = exponent / 2;
  const float scale1 = std::bit_cast<float>(static_cast<uint32_t>(half + 127) << 23);
  const float scale2 = std::bit_cast<float>(static_cast<uint32_t>(exponent - half + 127) << 23);
  return (p * scale1) * scale2;
}

}  // namespace fp::kernels
