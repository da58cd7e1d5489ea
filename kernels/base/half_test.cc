// Tests for the f32 <-> bf16/f16 conversions against independent definitions: the formats'
// value formulas (ldexp of sign, exponent and mantissa) and a nearest-value search with the
// ties-to-even rule.
#include "kernels/base/half.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace fp::kernels {
namespace {

// The value of an f16 bit pattern from IEEE 754's definition.
double F16Value(uint16_t bits) {
  const int sign = (bits >> 15) != 0 ? -1 : 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0x1f) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(mantissa + 1024, exponent - 25);
}

// Nearest f16 to a finite double by search over the ordered positive patterns; ties go to the
// even pattern; beyond the largest finite value by half an ulp or more, infinity.
uint16_t NearestF16(double value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double magnitude = std::fabs(value);
  if (magnitude >= 65520.0) return sign | 0x7c00;
  uint16_t low = 0;
  uint16_t high = 0x7bff;
  while (low < high) {  // largest pattern with value <= magnitude
    const uint16_t middle = static_cast<uint16_t>((low + high + 1) / 2);
    if (F16Value(middle) <= magnitude) {
      low = middle;
    } else {
      high = static_cast<uint16_t>(middle - 1);
    }
  }
  if (low == 0x7bff) return sign | low;
  const double below = magnitude - F16Value(low);
  const double above = F16Value(static_cast<uint16_t>(low + 1)) - magnitude;
  if (below < above || (below == above && (low & 1) == 0)) return sign | low;
  return sign | static_cast<uint16_t>(low + 1);
}

// Nearest bf16 of a finite float: the two candidates are the truncation and the next pattern.
uint16_t NearestBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto truncated = static_cast<uint16_t>(bits >> 16);
  const double exact = value;
  const double low = std::bit_cast<float>(static_cast<uint32_t>(truncated) << 16);
  // Past the largest finite value IEEE rounds as if the exponent were unbounded: the pattern
  // after 0x7f7f stands for 2^128 and means infinity.
  const uint16_t next_magnitude = static_cast<uint16_t>((truncated + 1) & 0x7fff);
  const double high = next_magnitude == 0x7f80
                          ? std::copysign(std::ldexp(1.0, 128), exact)
                          : std::bit_cast<float>(static_cast<uint32_t>(truncated + 1) << 16);
  const double below = std::fabs(exact - low);
  const double above = std::fabs(high - exact);
  if (below < above || (below == above && (truncated & 1) == 0)) return truncated;
  return static_cast<uint16_t>(truncated + 1);
}

class HalfTest : public ::testing::Test {
 protected:
  std::mt19937 rng_{12345};

  float RandomFiniteFloat() {
    while (true) {
      const float value = std::bit_cast<float>(static_cast<uint32_t>(rng_()));
      if (std::isfinite(value)) return value;
    }
  }
};

TEST_F(HalfTest, Bf16WidensByDefinition) {
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bf16ToF32(0x0001), std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7fc0)));
}

TEST_F(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie, even is below
  EXPECT_EQ(F32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie, even is above
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to infinity
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
}

TEST_F(HalfTest, Bf16MatchesNearestSearchOnRandomFloats) {
  for (int i = 0; i < 200000; ++i) {
    const float value = RandomFiniteFloat();
    const uint16_t expected = NearestBf16(value);
    ASSERT_EQ(F32ToBf16(value), expected) << std::hexfloat << value;
  }
}

TEST_F(HalfTest, Bf16KeepsNaN) {
  for (uint32_t bits : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu}) {
    const uint16_t narrowed = F32ToBf16(std::bit_cast<float>(bits));
    EXPECT_TRUE(std::isnan(Bf16ToF32(narrowed))) << std::hex << bits;
    EXPECT_EQ(narrowed & 0x8000, (bits >> 16) & 0x8000);
  }
}

TEST_F(HalfTest, F16WidensEveryPatternByDefinition) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const double expected = F16Value(static_cast<uint16_t>(bits));
    const float widened = F16ToF32(static_cast<uint16_t>(bits));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(widened)) << bits;
    } else {
      ASSERT_EQ(static_cast<double>(widened), expected) << bits;
      ASSERT_EQ(std::signbit(widened), (bits & 0x8000) != 0) << bits;
    }
  }
}

TEST_F(HalfTest, F16RoundTripsEveryPattern) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto pattern = static_cast<uint16_t>(bits);
    const uint16_t back = F32ToF16(F16ToF32(pattern));
    if (std::isnan(F16Value(pattern))) {
      EXPECT_TRUE(std::isnan(F16Value(back))) << bits;
    } else {
      ASSERT_EQ(back, pattern) << bits;
    }
  }
}

TEST_F(HalfTest, F16MatchesNearestSearch) {
  std::vector<float> values = {65504.0f,
                               65519.99f,
                               65520.0f,
                               1e9f,
                               std::ldexp(1.0f, -25),
                               std::ldexp(1.5f, -25),
                               std::ldexp(1.0f, -26),
                               1e-30f};
  // Every tie between neighbouring f16 values in [1, 2) and among subnormals.
  for (int m = 0; m < 1023; ++m) {
    values.push_back(1.0f + (m + 0.5f) / 1024.0f);
    values.push_back(std::ldexp(m + 0.5f, -24));
  }
  std::uniform_real_distribution<float> exponent(-27.0f, 16.5f);
  for (int i = 0; i < 100000; ++i) {
    values.push_back((i % 2 ? -1.0f : 1.0f) * std::exp2(exponent(rng_)));
  }
  for (float value : values) {
    ASSERT_EQ(F32ToF16(value), NearestF16(value)) << std::hexfloat << value;
  }
}

TEST_F(HalfTest, F16SpecialValues) {
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(std::bit_cast<float>(0x7f800001u)))));
}

TEST_F(HalfTest, ArrayConversionsMatchScalar) {
  std::vector<float> values(1001);
  for (float& value : values) value = RandomFiniteFloat();
  std::vector<uint16_t> bf16(values.size());
  std::vector<uint16_t> f16(values.size());
  ConvertF32ToBf16(values.data(), values.size(), bf16.data());
  ConvertF32ToF16(values.data(), values.size(), f16.data());
  std::vector<float> from_bf16(values.size());
  std::vector<float> from_f16(values.size());
  std::vector<float> from_f32(values.size());
  ConvertToF32(bf16.data(), DType::kBf16, values.size(), from_bf16.data());
  ConvertToF32(f16.data(), DType::kF16, values.size(), from_f16.data());
  ConvertToF32(values.data(), DType::kF32, values.size(), from_f32.data());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(bf16[i], NearestBf16(values[i]));
    EXPECT_EQ(std::bit_cast<uint32_t>(from_bf16[i]), static_cast<uint32_t>(bf16[i]) << 16);
    EXPECT_EQ(from_f16[i], static_cast<float>(F16Value(f16[i])));
    EXPECT_EQ(std::bit_cast<uint32_t>(from_f32[i]), std::bit_cast<uint32_t>(values[i]));
    EXPECT_EQ(LoadAsF32(bf16.data(), DType::kBf16, i), from_bf16[i]);
    EXPECT_EQ(LoadAsF32(f16.data(), DType::kF16, i), from_f16[i]);
  }
}

}  // namespace
}  // namespace fp::kernels
