// Tests for RmsNorm (against a double-precision normalisation written here, row independence,
// in-place use) and ResidualAdd.
#include "kernels/norm/rms_norm.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

class RmsNormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(pool_, ThreadPool::Create(3));
    ASSERT_OK_AND_ASSIGN(inline_pool_, ThreadPool::Create(1));
  }

  std::vector<float> RandomVector(int64_t count, float scale) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) value = normal(rng_);
    return values;
  }

  std::mt19937 rng_{99};
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<ThreadPool> inline_pool_;
};

TEST_F(RmsNormTest, MatchesDoubleReference) {
  for (int64_t d : {1, 3, 7, 37, 733, 2048}) {
    const int64_t m = 5;
    const std::vector<float> x = RandomVector(m * d, 3.0f);
    std::vector<uint16_t> weight_bf16(static_cast<size_t>(d));
    std::vector<double> weight(static_cast<size_t>(d));
    for (int64_t j = 0; j < d; ++j) {
      const float value = 1.0f + 0.1f * static_cast<float>(j % 7);
      weight_bf16[static_cast<size_t>(j)] =
          static_cast<uint16_t>(std::bit_cast<uint32_t>(value) >> 16);
      weight[static_cast<size_t>(j)] =
          std::bit_cast<float>(static_cast<uint32_t>(weight_bf16[static_cast<size_t>(j)]) << 16);
    }
    const float eps = 1e-5f;
    std::vector<float> out(x.size());
    ASSERT_OK(RmsNorm(x.data(), weight_bf16.data(), DType::kBf16, eps, out.data(), m, d, *pool_));
    for (int64_t i = 0; i < m; ++i) {
      double sum_squares = 0.0;
      for (int64_t j = 0; j < d; ++j) sum_squares += std::pow(x[static_cast<size_t>(i * d + j)], 2);
      const double inv_rms = 1.0 / std::sqrt(sum_squares / static_cast<double>(d) + eps);
      for (int64_t j = 0; j < d; ++j) {
        const double expected =
            weight[static_cast<size_t>(j)] * x[static_cast<size_t>(i * d + j)] * inv_rms;
        // Relative error: the fixed-order sum of squares (d / 8 sequential adds per lane), the
        // division, sqrt, reciprocal and three products, each within 2^-24.
        const double tolerance = (static_cast<double>(d) / 8 + 8) * std::ldexp(1.0, -24);
        ASSERT_NEAR(out[static_cast<size_t>(i * d + j)], expected,
                    tolerance * std::fabs(expected) + 1e-30)
            << "d=" << d << " at " << i << "," << j;
      }
    }
  }
}

TEST_F(RmsNormTest, RowsAreIndependentOfBatchAndThreadsBitwise) {
  const int64_t m = 19;
  const int64_t d = 300;
  const std::vector<float> x = RandomVector(m * d, 1.0f);
  const std::vector<float> weight = RandomVector(d, 1.0f);
  std::vector<float> batch(x.size());
  ASSERT_OK(RmsNorm(x.data(), weight.data(), DType::kF32, 1e-6f, batch.data(), m, d, *pool_));
  std::vector<float> inline_batch(x.size());
  ASSERT_OK(RmsNorm(x.data(), weight.data(), DType::kF32, 1e-6f, inline_batch.data(), m, d,
                    *inline_pool_));
  EXPECT_EQ(std::memcmp(batch.data(), inline_batch.data(), x.size() * 4), 0);
  std::vector<float> single(static_cast<size_t>(d));
  ASSERT_OK(
      RmsNorm(x.data() + 11 * d, weight.data(), DType::kF32, 1e-6f, single.data(), 1, d, *pool_));
  EXPECT_EQ(std::memcmp(single.data(), batch.data() + 11 * d, static_cast<size_t>(d) * 4), 0);
  std::vector<float> in_place = x;
  ASSERT_OK(
      RmsNorm(in_place.data(), weight.data(), DType::kF32, 1e-6f, in_place.data(), m, d, *pool_));
  EXPECT_EQ(std::memcmp(in_place.data(), batch.data(), x.size() * 4), 0);
}

TEST_F(RmsNormTest, ZeroRowGivesZerosWithPositiveEps) {
  const std::vector<float> x(8, 0.0f);
  const std::vector<float> weight(8, 2.0f);
  std::vector<float> out(8, 1.0f);
  ASSERT_OK(RmsNorm(x.data(), weight.data(), DType::kF32, 1e-5f, out.data(), 1, 8, *pool_));
  for (float value : out) EXPECT_EQ(value, 0.0f);
}

TEST_F(RmsNormTest, ResidualAddIsElementwise) {
  std::vector<float> residual = {1.0f, 2.0f, -3.0f, 1e30f};
  const std::vector<float> delta = {0.5f, -2.0f, 3.0f, 1e30f};
  ASSERT_OK(ResidualAdd(residual.data(), delta.data(), 4, *pool_));
  EXPECT_EQ(residual, (std::vector<float>{1.5f, 0.0f, 0.0f, 2e30f}));
  EXPECT_OK(ResidualAdd(nullptr, nullptr, 0, *pool_));
}

// Error paths.

TEST_F(RmsNormTest, BadArgumentsAreRejected) {
  std::vector<float> x(8, 1.0f);
  std::vector<uint16_t> weight(9, 0x3f80);
  std::vector<float> out(8);
  const auto code = StatusCode::kInvalidArgument;
  EXPECT_THAT(RmsNorm(x.data(), weight.data(), DType::kBf16, 1e-5f, out.data(), -1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(RmsNorm(x.data(), weight.data(), DType::kBf16, 1e-5f, out.data(), 1, 0, *pool_),
              StatusIs(code));
  EXPECT_THAT(RmsNorm(x.data(), weight.data(), DType::kBf16, -1.0f, out.data(), 1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(RmsNorm(x.data(), weight.data(), DType::kBf16, NAN, out.data(), 1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(RmsNorm(nullptr, weight.data(), DType::kBf16, 1e-5f, out.data(), 1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(RmsNorm(x.data(), reinterpret_cast<const char*>(weight.data()) + 1, DType::kBf16,
                      1e-5f, out.data(), 1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(ResidualAdd(x.data(), nullptr, 8, *pool_), StatusIs(code));
  EXPECT_THAT(ResidualAdd(x.data(), out.data(), -1, *pool_), StatusIs(code));
}

}  // namespace
}  // namespace fp::kernels
