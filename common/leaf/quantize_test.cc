// Tests the quantizer against an independent reference that works on real values in double
// arithmetic: decode, find the two representable neighbours in the narrower format, pick the
// nearer (ties to the even encoding), re-encode.
#include "common/leaf/quantize.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::leaf {
namespace {

using ::fp::testing::StatusIs;

// An IEEE binary format with `exponent_bits` exponent bits and `mantissa_bits` stored bits.
struct Format {
  int exponent_bits;
  int mantissa_bits;
  int Bias() const { return (1 << (exponent_bits - 1)) - 1; }
  int MinExponent() const { return 1 - Bias(); }
  int MaxExponent() const { return Bias(); }
  uint64_t ExponentAllOnes() const { return (uint64_t{1} << exponent_bits) - 1; }
};

constexpr Format kBf16{8, 7};
constexpr Format kF16{5, 10};
constexpr Format kF32{8, 23};

// The magnitude encoded by `magnitude_bits` in `format` (finite values only).
double Decode(const Format& format, uint64_t magnitude_bits) {
  const uint64_t mantissa = magnitude_bits & ((uint64_t{1} << format.mantissa_bits) - 1);
  const int exponent_field = static_cast<int>(magnitude_bits >> format.mantissa_bits);
  if (exponent_field == 0) {
    return std::ldexp(static_cast<double>(mantissa), format.MinExponent() - format.mantissa_bits);
  }
  const double significand = static_cast<double>((uint64_t{1} << format.mantissa_bits) | mantissa);
  return std::ldexp(significand, exponent_field - format.Bias() - format.mantissa_bits);
}

// The magnitude encoding of `value` >= 0, which must be representable in `format` or be at least
// 2^(max exponent + 1) (infinity).
uint64_t Encode(const Format& format, double value) {
  if (value == 0) return 0;
  int exponent;
  std::frexp(value, &exponent);
  exponent -= 1;  // value in [2^exponent, 2^(exponent + 1))
  if (exponent > format.MaxExponent()) return format.ExponentAllOnes() << format.mantissa_bits;
  if (exponent < format.MinExponent()) {
    const double mantissa = std::ldexp(value, format.mantissa_bits - format.MinExponent());
    EXPECT_EQ(mantissa, std::floor(mantissa)) << "not representable: " << value;
    return static_cast<uint64_t>(mantissa);
  }
  const double significand = std::ldexp(value, format.mantissa_bits - exponent);
  EXPECT_EQ(significand, std::floor(significand)) << "not representable: " << value;
  const uint64_t mantissa =
      static_cast<uint64_t>(significand) - (uint64_t{1} << format.mantissa_bits);
  return (static_cast<uint64_t>(exponent + format.Bias()) << format.mantissa_bits) | mantissa;
}

// Reference rounding of one element of `format` to `keep_bits` mantissa bits.
uint64_t ReferenceQuantize(const Format& format, uint64_t bits, int keep_bits) {
  const int total_bits = 1 + format.exponent_bits + format.mantissa_bits;
  const uint64_t sign = bits & (uint64_t{1} << (total_bits - 1));
  const uint64_t magnitude = bits & ((uint64_t{1} << (total_bits - 1)) - 1);
  const uint64_t infinity = format.ExponentAllOnes() << format.mantissa_bits;
  if (keep_bits == format.mantissa_bits) return bits;
  if (magnitude > infinity) return infinity | (uint64_t{1} << (format.mantissa_bits - 1));
  if (magnitude == infinity) return bits;

  const Format narrow{format.exponent_bits, keep_bits};
  const double value = Decode(format, magnitude);
  int exponent = format.MinExponent();
  if (value >= std::ldexp(1.0, format.MinExponent())) {
    std::frexp(value, &exponent);
    exponent -= 1;
  }
  const double spacing = std::ldexp(1.0, exponent - keep_bits);
  const double below = std::floor(value / spacing) * spacing;
  const double above = below + spacing;
  double chosen;
  if (value - below < above - value) {
    chosen = below;
  } else if (value - below > above - value) {
    chosen = above;
  } else {
    chosen = (Encode(narrow, below) % 2 == 0) ? below : above;
  }
  const uint64_t narrow_bits = Encode(narrow, chosen);
  if (narrow_bits >= (narrow.ExponentAllOnes() << keep_bits)) return sign | infinity;
  return sign | Encode(format, chosen);
}

class QuantizeTest : public ::testing::Test {};

TEST_F(QuantizeTest, ReferenceDecodesAndEncodesEveryFiniteBf16AndF16) {
  for (const Format& format : {kBf16, kF16}) {
    const uint64_t infinity = format.ExponentAllOnes() << format.mantissa_bits;
    for (uint64_t magnitude = 0; magnitude < infinity; ++magnitude) {
      ASSERT_EQ(Encode(format, Decode(format, magnitude)), magnitude);
    }
  }
}

TEST_F(QuantizeTest, ReferenceDecodeMatchesHardwareFloat) {
  std::mt19937 rng(7);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t bits = rng() & 0x7fffffffu;
    if (bits >= 0x7f800000u) continue;
    ASSERT_EQ(Decode(kF32, bits), static_cast<double>(std::bit_cast<float>(bits)));
  }
}

TEST_F(QuantizeTest, Bf16ExhaustiveAgainstReference) {
  for (int keep = 0; keep <= 7; ++keep) {
    for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
      const auto expected = static_cast<uint16_t>(ReferenceQuantize(kBf16, bits, keep));
      ASSERT_EQ(QuantizeBf16Bits(static_cast<uint16_t>(bits), keep), expected)
          << "bits 0x" << std::hex << bits << std::dec << " keep " << keep;
    }
  }
}

TEST_F(QuantizeTest, F16ExhaustiveAgainstReference) {
  for (int keep = 0; keep <= 10; ++keep) {
    for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
      const auto expected = static_cast<uint16_t>(ReferenceQuantize(kF16, bits, keep));
      ASSERT_EQ(QuantizeF16Bits(static_cast<uint16_t>(bits), keep), expected)
          << "bits 0x" << std::hex << bits << std::dec << " keep " << keep;
    }
  }
}

std::vector<uint32_t> F32EdgeValues() {
  return {0x00000000u, 0x80000000u,  // +-0
          0x00000001u, 0x80000001u,  // smallest subnormals
          0x007fffffu, 0x00400000u,  // largest subnormal, a subnormal power of two
          0x00800000u, 0x00ffffffu,  // smallest normal, top of its binade
          0x3f800000u, 0x3f800001u, 0x3fffffffu, 0x3fc00000u, 0x7f7fffffu,
          0xff7fffffu, 0x7f7f0000u,  // near the largest finite
          0x7f800000u, 0xff800000u,  // infinities
          0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0xffffffffu};  // NaNs
}

TEST_F(QuantizeTest, F32EdgeAndRandomValuesAgainstReference) {
  std::vector<uint32_t> values = F32EdgeValues();
  std::mt19937 rng(20261127);
  for (int i = 0; i < 20000; ++i) values.push_back(rng());
  for (uint32_t bits : values) {
    for (int keep = 0; keep <= 23; ++keep) {
      ASSERT_EQ(QuantizeF32Bits(bits, keep), ReferenceQuantize(kF32, bits, keep))
          << "bits 0x" << std::hex << bits << std::dec << " keep " << keep;
    }
  }
}

// Random values rarely sit exactly on a tie, so build values whose dropped bits are exactly half,
// just below and just above it.
TEST_F(QuantizeTest, F32TiesAndNearTiesAgainstReference) {
  std::mt19937 rng(99);
  for (int keep = 0; keep < 23; ++keep) {
    const int drop = 23 - keep;
    const uint32_t half = uint32_t{1} << (drop - 1);
    const uint32_t dropped_mask = (uint32_t{1} << drop) - 1;
    for (int i = 0; i < 2000; ++i) {
      const uint32_t base = rng() & ~dropped_mask;
      for (uint32_t low : {half, half - 1, half + 1}) {
        const uint32_t bits = base | (low & dropped_mask);
        ASSERT_EQ(QuantizeF32Bits(bits, keep), ReferenceQuantize(kF32, bits, keep))
            << "bits 0x" << std::hex << bits << std::dec << " keep " << keep;
      }
    }
  }
}

// Known answers worked out by hand, one per documented rule.
TEST_F(QuantizeTest, DocumentedCases) {
  // 1 + 2^-7 is halfway between 1 and 1 + 2^-6; the even neighbour is 1.
  static_assert(QuantizeBf16Bits(0x3f81, 6) == 0x3f80);
  // 1 + 3 * 2^-7 is halfway between 1 + 2^-6 and 1 + 2^-5; the even neighbour is 1 + 2^-5.
  EXPECT_EQ(QuantizeBf16Bits(0x3f83, 6), 0x3f84);
  // The largest finite bf16 rounds up to infinity, keeping its sign.
  EXPECT_EQ(QuantizeBf16Bits(0x7f7f, 6), 0x7f80);
  EXPECT_EQ(QuantizeBf16Bits(0xff7f, 0), 0xff80);
  // -0 stays -0; the smallest negative subnormal rounds to -0.
  EXPECT_EQ(QuantizeBf16Bits(0x8000, 0), 0x8000);
  EXPECT_EQ(QuantizeBf16Bits(0x8001, 0), 0x8000);
  // Infinities are unchanged.
  EXPECT_EQ(QuantizeF16Bits(0xfc00, 3), 0xfc00);
  // A NaN whose payload sits only in dropped bits must not become infinity.
  EXPECT_EQ(QuantizeF32Bits(0xff800001u, 10), 0x7fc00000u);
  EXPECT_EQ(QuantizeF16Bits(0xfd01, 0), 0x7e00);
  // At the native width NaN payloads survive.
  EXPECT_EQ(QuantizeF32Bits(0xff800001u, 23), 0xff800001u);
  // m = 0 tie between the largest finite value (exponent field 254, even) and infinity.
  EXPECT_EQ(QuantizeBf16Bits(0x7f40, 0), 0x7f00);
}

TEST_F(QuantizeTest, NativeWidthIsIdentityOnEveryPattern) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    ASSERT_EQ(QuantizeBf16Bits(static_cast<uint16_t>(bits), 7), bits);
    ASSERT_EQ(QuantizeF16Bits(static_cast<uint16_t>(bits), 10), bits);
  }
}

TEST_F(QuantizeTest, InPlaceMatchesElementFunctionOnLittleEndianBytes) {
  std::mt19937 rng(3);
  std::vector<uint8_t> bf16(2 * 301);
  std::vector<uint8_t> f32(4 * 301);
  for (uint8_t& b : bf16) b = static_cast<uint8_t>(rng());
  for (uint8_t& b : f32) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> bf16_in = bf16;
  std::vector<uint8_t> f32_in = f32;
  ASSERT_OK(QuantizeInPlace(DType::kBf16, 3, bf16));
  ASSERT_OK(QuantizeInPlace(DType::kF32, 11, f32));
  for (size_t i = 0; i < 301; ++i) {
    const uint16_t in16 = static_cast<uint16_t>(bf16_in[2 * i] | bf16_in[2 * i + 1] << 8);
    const uint16_t out16 = static_cast<uint16_t>(bf16[2 * i] | bf16[2 * i + 1] << 8);
    ASSERT_EQ(out16, QuantizeBf16Bits(in16, 3));
    uint32_t in32 = 0;
    uint32_t out32 = 0;
    for (int byte = 3; byte >= 0; --byte) {
      in32 = (in32 << 8) | f32_in[4 * i + byte];
      out32 = (out32 << 8) | f32[4 * i + byte];
    }
    ASSERT_EQ(out32, QuantizeF32Bits(in32, 11));
  }
}

TEST_F(QuantizeTest, InPlaceAtNativeWidthLeavesBytesUntouched) {
  std::vector<uint8_t> data = {0x01, 0xff, 0xc1, 0x7f, 0x00, 0x80};
  const std::vector<uint8_t> original = data;
  ASSERT_OK(QuantizeInPlace(DType::kF16, 10, data));
  EXPECT_EQ(data, original);
}

// Error paths.

TEST_F(QuantizeTest, InPlaceRejectsBitsOutOfRange) {
  std::vector<uint8_t> data = {0x81, 0x3f};
  EXPECT_THAT(QuantizeInPlace(DType::kBf16, 8, data), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeInPlace(DType::kBf16, -1, data), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeInPlace(DType::kF16, 11, data), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeInPlace(DType::kF32, 24, data), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(data, (std::vector<uint8_t>{0x81, 0x3f}));
}

TEST_F(QuantizeTest, InPlaceRejectsPartialElements) {
  std::vector<uint8_t> data = {0x81, 0x3f, 0x00};
  EXPECT_THAT(QuantizeInPlace(DType::kBf16, 0, data), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(data, (std::vector<uint8_t>{0x81, 0x3f, 0x00}));
  std::vector<uint8_t> six(6);
  EXPECT_THAT(QuantizeInPlace(DType::kF32, 0, six), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::leaf
