// Tests for Philox4x32-10 against the Random123 known-answer vectors, and for the documented
// mapping of (seed, step) to a uniform double.
#include "kernels/sampling/philox.h"

#include <cmath>

#include <gtest/gtest.h>

namespace fp::kernels {
namespace {

class PhiloxTest : public ::testing::Test {};

// Random123 kat_vectors, "philox4x32 10" lines.
TEST_F(PhiloxTest, KnownAnswerAllZeros) {
  const PhiloxCounter expected = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  EXPECT_EQ(Philox4x32({0u, 0u, 0u, 0u}, {0u, 0u}), expected);
}

TEST_F(PhiloxTest, KnownAnswerAllOnes) {
  const PhiloxCounter expected = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  EXPECT_EQ(
      Philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}),
      expected);
}

TEST_F(PhiloxTest, KnownAnswerPiDigits) {
  const PhiloxCounter expected = {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u};
  EXPECT_EQ(
      Philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}),
      expected);
}

TEST_F(PhiloxTest, UniformUsesTheDocumentedKeyCounterAndBits) {
  const uint64_t seed = 0x0123456789abcdefull;
  const uint64_t step = 0xfedcba9876543210ull;
  const PhiloxCounter out =
      Philox4x32({0x76543210u, 0xfedcba98u, 0u, 0u}, {0x89abcdefu, 0x01234567u});
  const uint64_t bits = (uint64_t{out[0]} << 32 | out[1]) >> 11;
  EXPECT_EQ(PhiloxUniform(seed, step), std::ldexp(static_cast<double>(bits), -53));
}

TEST_F(PhiloxTest, UniformIsInRangeAndRoughlyUniform) {
  double sum = 0.0;
  int buckets[10] = {};
  const int draws = 100000;
  for (int step = 0; step < draws; ++step) {
    const double u = PhiloxUniform(42, static_cast<uint64_t>(step));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    ++buckets[static_cast<int>(u * 10)];
  }
  EXPECT_NEAR(sum / draws, 0.5, 0.005);
  for (int count : buckets) EXPECT_NEAR(count, draws / 10, 500);  // ~5 standard deviations
  EXPECT_NE(PhiloxUniform(1, 0), PhiloxUniform(2, 0));
}

}  // namespace
}  // namespace fp::kernels
