// Tests for Silu and SwiGlu against double-precision formulas and at the edges of exp's range.
#include "kernels/activation/swiglu.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

class SwiGluTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK_AND_ASSIGN(pool_, ThreadPool::Create(2)); }

  std::unique_ptr<ThreadPool> pool_;
};

TEST_F(SwiGluTest, SiluMatchesDouble) {
  for (int i = -200000; i <= 200000; ++i) {
    const float x = static_cast<float>(i) * 1e-4f;
    const double expected = x / (1.0 + std::exp(-static_cast<double>(x)));
    ASSERT_NEAR(Silu(x), expected, 4 * std::ldexp(1.0, -24) * std::fabs(expected) + 1e-38) << x;
  }
}

TEST_F(SwiGluTest, SiluEdges) {
  const float infinity = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Silu(0.0f), 0.0f);
  EXPECT_EQ(Silu(200.0f), 200.0f);
  EXPECT_EQ(Silu(-200.0f), 0.0f);  // x / inf
  EXPECT_EQ(Silu(infinity), infinity);
  EXPECT_TRUE(std::isnan(Silu(std::numeric_limits<float>::quiet_NaN())));
}

TEST_F(SwiGluTest, SwiGluMatchesDoubleAndWorksInPlace) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const int64_t count = 1037;
  std::vector<float> gate(count);
  std::vector<float> up(count);
  for (int64_t i = 0; i < count; ++i) {
    gate[static_cast<size_t>(i)] = normal(rng);
    up[static_cast<size_t>(i)] = normal(rng);
  }
  std::vector<float> out(count);
  ASSERT_OK(SwiGlu(gate.data(), up.data(), out.data(), count, *pool_));
  for (int64_t i = 0; i < count; ++i) {
    const double g = gate[static_cast<size_t>(i)];
    const double expected = g / (1.0 + std::exp(-g)) * up[static_cast<size_t>(i)];
    ASSERT_NEAR(out[static_cast<size_t>(i)], expected,
                6 * std::ldexp(1.0, -24) * std::fabs(expected) + 1e-38);
  }
  std::vector<float> in_place = gate;
  ASSERT_OK(SwiGlu(in_place.data(), up.data(), in_place.data(), count, *pool_));
  EXPECT_EQ(in_place, out);
}

// Error paths.

TEST_F(SwiGluTest, BadArgumentsAreRejected) {
  std::vector<float> a(4);
  EXPECT_THAT(SwiGlu(a.data(), nullptr, a.data(), 4, *pool_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SwiGlu(a.data(), a.data(), a.data(), -1, *pool_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(SwiGlu(nullptr, nullptr, nullptr, 0, *pool_));
}

}  // namespace
}  // namespace fp::kernels
