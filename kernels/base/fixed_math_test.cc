// Tests for DotF32's documented summation order and ExpF32's accuracy and special values.
#include "kernels/base/fixed_math.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace fp::kernels {
namespace {

class FixedMathTest : public ::testing::Test {
 protected:
  std::mt19937 rng_{7};
};

// The order in fixed_math.h decides this sum: elements 0 and 8 share lane 0 (1 + 1 = 2), lane 4
// holds 2^24, and 2 + 2^24 is exact. Summing left to right would lose both ones to rounding.
TEST_F(FixedMathTest, DotUsesTheDocumentedLanes) {
  std::vector<float> a(9, 0.0f);
  a[0] = 1.0f;
  a[4] = 16777216.0f;
  a[8] = 1.0f;
  const std::vector<float> ones(9, 1.0f);
  EXPECT_EQ(DotF32(a.data(), ones.data(), 9), 16777218.0f);
  float sequential = 0.0f;
  for (float value : a) sequential += value;
  EXPECT_EQ(sequential, 16777216.0f);
}

// The combine tree adds (p0 + p4) + (p2 + p6) before the odd lanes: with p0 = p2 = 1 and
// p1 = 2^24 the two ones meet first and survive (2 + 2^24 is exact); left to right they would
// each round away against 2^24.
TEST_F(FixedMathTest, DotCombinesLanesInTheDocumentedTree) {
  std::vector<float> a = {1.0f, 16777216.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<float> ones(8, 1.0f);
  EXPECT_EQ(DotF32(a.data(), ones.data(), 8), 16777218.0f);
}

TEST_F(FixedMathTest, DotMatchesDoubleWithinBound) {
  std::normal_distribution<float> normal;
  for (int n : {0, 1, 3, 7, 8, 9, 37, 733, 4096}) {
    std::vector<float> a(static_cast<size_t>(n));
    std::vector<float> b(static_cast<size_t>(n));
    double exact = 0.0;
    double magnitude = 0.0;
    for (int i = 0; i < n; ++i) {
      a[static_cast<size_t>(i)] = normal(rng_);
      b[static_cast<size_t>(i)] = normal(rng_);
      exact += double{a[static_cast<size_t>(i)]} * b[static_cast<size_t>(i)];
      magnitude += std::fabs(double{a[static_cast<size_t>(i)]} * b[static_cast<size_t>(i)]);
    }
    const double bound = (n / 8 + 4) * std::ldexp(1.0, -23) * magnitude;
    EXPECT_NEAR(DotF32(a.data(), b.data(), n), exact, bound) << "n = " << n;
  }
}

TEST_F(FixedMathTest, ExpIsWithinTwoUlpsOfDoubleExp) {
  double worst_ulps = 0.0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -103.0f + 191.7f * static_cast<float>(i) / 2000000.0f;
    const double exact = std::exp(static_cast<double>(x));
    if (exact > std::numeric_limits<float>::max()) continue;
    const float got = ExpF32(x);
    const double ulp = exact < std::numeric_limits<float>::min()
                           ? std::ldexp(1.0, -149)
                           : std::ldexp(1.0, std::ilogb(exact) - 23);
    worst_ulps = std::max(worst_ulps, std::fabs(got - exact) / ulp);
  }
  EXPECT_LE(worst_ulps, 2.0);
}

TEST_F(FixedMathTest, ExpSpecialValues) {
  const float infinity = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ExpF32(0.0f), 1.0f);
  EXPECT_EQ(ExpF32(-0.0f), 1.0f);
  EXPECT_EQ(ExpF32(-infinity), 0.0f);
  EXPECT_EQ(ExpF32(infinity), infinity);
  EXPECT_EQ(ExpF32(89.0f), infinity);
  EXPECT_EQ(ExpF32(-200.0f), 0.0f);
  EXPECT_TRUE(std::isnan(ExpF32(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(ExpF32(-100.0f), 0.0f);  // subnormal results are not flushed
}

}  // namespace
}  // namespace fp::kernels
