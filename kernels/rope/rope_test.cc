// Tests for RopeTable (default and llama3 inverse frequencies against formulas written here) and
// ApplyRope (against a double-precision rotation, identity at position 0, the relative-position
// property and batch independence).
#include "kernels/rope/rope.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

constexpr RopeScaling kNoScaling = {RopeScalingType::kNone, 0.0, 0.0, 0.0, 0};
// Llama 3.1's config.json values.
constexpr RopeScaling kLlama31Scaling = {RopeScalingType::kLlama3, 8.0, 1.0, 4.0, 8192};

// HF _compute_llama3_parameters written as masks over the whole vector, the way HF does.
std::vector<double> Llama3Reference(int head_dim, double theta, const RopeScaling& s) {
  std::vector<double> result;
  for (int i = 0; i < head_dim; i += 2) {
    const double base = std::exp(-std::log(theta) * i / head_dim);
    const double wavelen = 2 * std::numbers::pi / base;
    const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    double scaled = wavelen > low_wavelen ? base / s.factor : base;
    const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                          (s.high_freq_factor - s.low_freq_factor);
    const double smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    result.push_back(medium ? smoothed : scaled);
  }
  return result;
}

class RopeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK_AND_ASSIGN(pool_, ThreadPool::Create(2)); }

  std::vector<float> RandomVector(int64_t count) {
    std::normal_distribution<float> normal;
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) value = normal(rng_);
    return values;
  }

  std::mt19937 rng_{5};
  std::unique_ptr<ThreadPool> pool_;
};

TEST_F(RopeTest, DefaultInverseFrequencies) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create({64, 10000.0, 4, kNoScaling}));
  for (int i = 0; i < 32; ++i) {
    const double expected = std::exp(-std::log(10000.0) * 2 * i / 64);
    EXPECT_NEAR(table.inv_freq()[i], expected, expected * std::ldexp(1.0, -23)) << i;
  }
  EXPECT_EQ(table.inv_freq()[0], 1.0f);
}

TEST_F(RopeTest, Llama3InverseFrequenciesFollowHf) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create({128, 500000.0, 4, kLlama31Scaling}));
  const std::vector<double> expected = Llama3Reference(128, 500000.0, kLlama31Scaling);
  int low = 0;
  int medium = 0;
  int high = 0;
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(table.inv_freq()[i], expected[static_cast<size_t>(i)],
                expected[static_cast<size_t>(i)] * std::ldexp(1.0, -23))
        << i;
    const double unscaled = std::exp(-std::log(500000.0) * 2 * i / 128);
    const double ratio = table.inv_freq()[i] / unscaled;
    if (std::fabs(ratio - 1.0) < 1e-6) {
      ++high;
    } else if (std::fabs(ratio - 0.125) < 1e-6) {
      ++low;
    } else {
      EXPECT_GT(ratio, 0.125);
      EXPECT_LT(ratio, 1.0);
      ++medium;
    }
  }
  // All three regimes occur for Llama 3.1's parameters.
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
  EXPECT_GT(high, 0);
}

TEST_F(RopeTest, RotationMatchesDoubleReference) {
  const int32_t head_dim = 64;
  const int32_t q_heads = 5;
  const int32_t kv_heads = 1;
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create({head_dim, 10000.0, 5000, kNoScaling}));
  const std::vector<int32_t> positions = {0, 1, 7, 37, 733, 4999};
  const auto tokens = static_cast<int64_t>(positions.size());
  const std::vector<float> q_in = RandomVector(tokens * q_heads * head_dim);
  const std::vector<float> k_in = RandomVector(tokens * kv_heads * head_dim);
  std::vector<float> q = q_in;
  std::vector<float> k = k_in;
  ASSERT_OK(ApplyRope(table, q.data(), k.data(), positions.data(), tokens, q_heads, kv_heads,
                      head_dim, *pool_));
  const int half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < half; ++i) {
      // HF's f32 angle: f32 inverse frequency times f32 position, rounded to f32.
      const auto inv_freq = static_cast<float>(std::exp(-std::log(10000.0) * 2 * i / head_dim));
      const double angle = static_cast<float>(static_cast<float>(positions[t]) * inv_freq);
      for (int64_t h = 0; h < q_heads + kv_heads; ++h) {
        const bool is_q = h < q_heads;
        const float* in = is_q ? q_in.data() + (t * q_heads + h) * head_dim
                               : k_in.data() + (t * kv_heads + h - q_heads) * head_dim;
        const float* out = is_q ? q.data() + (t * q_heads + h) * head_dim
                                : k.data() + (t * kv_heads + h - q_heads) * head_dim;
        const double first = in[i] * std::cos(angle) - in[i + half] * std::sin(angle);
        const double second = in[i + half] * std::cos(angle) + in[i] * std::sin(angle);
        const double tolerance =
            4 * std::ldexp(1.0, -24) * (std::fabs(in[i]) + std::fabs(in[i + half]));
        ASSERT_NEAR(out[i], first, tolerance) << t << " " << h << " " << i;
        ASSERT_NEAR(out[i + half], second, tolerance) << t << " " << h << " " << i;
      }
    }
  }
  // Position 0 is the identity, bit for bit (cos 1, sin 0).
  EXPECT_EQ(std::memcmp(q.data(), q_in.data(), static_cast<size_t>(q_heads * head_dim) * 4), 0);
}

TEST_F(RopeTest, ScoresDependOnRelativePosition) {
  const int32_t head_dim = 128;
  ASSERT_OK_AND_ASSIGN(RopeTable table,
                       RopeTable::Create({head_dim, 500000.0, 2048, kLlama31Scaling}));
  const std::vector<float> q_in = RandomVector(head_dim);
  const std::vector<float> k_in = RandomVector(head_dim);
  auto score = [&](int32_t q_position, int32_t k_position) {
    std::vector<float> q = q_in;
    std::vector<float> k = k_in;
    EXPECT_OK(ApplyRope(table, q.data(), nullptr, &q_position, 1, 1, 0, head_dim, *pool_));
    EXPECT_OK(ApplyRope(table, nullptr, k.data(), &k_position, 1, 0, 1, head_dim, *pool_));
    double dot = 0.0;
    for (int i = 0; i < head_dim; ++i)
      dot += double{q[static_cast<size_t>(i)]} * k[static_cast<size_t>(i)];
    return dot;
  };
  for (int32_t offset : {0, 3, 100}) {
    const double reference = score(offset, 0);
    for (int32_t base : {1, 50, 1000}) {
      EXPECT_NEAR(score(base + offset, base), reference, 5e-3) << base << " " << offset;
    }
  }
}

TEST_F(RopeTest, TokensAreIndependentBitwise) {
  const int32_t head_dim = 32;
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create({head_dim, 10000.0, 100, kNoScaling}));
  const std::vector<int32_t> positions = {5, 99, 0, 42};
  std::vector<float> batch = RandomVector(4 * 3 * head_dim);
  const std::vector<float> original = batch;
  ASSERT_OK(ApplyRope(table, batch.data(), nullptr, positions.data(), 4, 3, 0, head_dim, *pool_));
  std::vector<float> single(original.begin() + 3 * 3 * head_dim, original.end());
  ASSERT_OK(ApplyRope(table, single.data(), nullptr, &positions[3], 1, 3, 0, head_dim, *pool_));
  EXPECT_EQ(std::memcmp(single.data(), batch.data() + 3 * 3 * head_dim, single.size() * 4), 0);
}

// Error paths.

TEST_F(RopeTest, BadConfigsAreRejected) {
  const auto code = StatusCode::kInvalidArgument;
  EXPECT_THAT(RopeTable::Create({63, 10000.0, 8, kNoScaling}).status(), StatusIs(code));
  EXPECT_THAT(RopeTable::Create({0, 10000.0, 8, kNoScaling}).status(), StatusIs(code));
  EXPECT_THAT(RopeTable::Create({64, 0.0, 8, kNoScaling}).status(), StatusIs(code));
  EXPECT_THAT(RopeTable::Create({64, 10000.0, 0, kNoScaling}).status(), StatusIs(code));
  EXPECT_THAT(RopeTable::Create({64, 10000.0, kRopeMaxPositions + 1, kNoScaling}).status(),
              StatusIs(code));
  RopeScaling bad = kLlama31Scaling;
  bad.high_freq_factor = 0.5;
  EXPECT_THAT(RopeTable::Create({64, 10000.0, 8, bad}).status(), StatusIs(code));
  bad = kLlama31Scaling;
  bad.factor = 0.0;
  EXPECT_THAT(RopeTable::Create({64, 10000.0, 8, bad}).status(), StatusIs(code));
  bad = kLlama31Scaling;
  bad.original_max_position_embeddings = 0;
  EXPECT_THAT(RopeTable::Create({64, 10000.0, 8, bad}).status(), StatusIs(code));
}

TEST_F(RopeTest, BadApplyArgumentsAreRejectedWithoutWriting) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create({8, 10000.0, 10, kNoScaling}));
  std::vector<float> q(16, 1.0f);
  const std::vector<int32_t> positions = {3, 10};
  const auto code = StatusCode::kInvalidArgument;
  EXPECT_THAT(ApplyRope(table, q.data(), nullptr, positions.data(), 2, 1, 0, 8, *pool_),
              StatusIs(code));
  EXPECT_EQ(q, std::vector<float>(16, 1.0f));
  EXPECT_THAT(ApplyRope(table, q.data(), nullptr, positions.data(), 1, 1, 0, 16, *pool_),
              StatusIs(code));
  EXPECT_THAT(ApplyRope(table, q.data(), nullptr, positions.data(), 1, 1, 1, 8, *pool_),
              StatusIs(code));
  EXPECT_THAT(ApplyRope(table, q.data(), nullptr, nullptr, 1, 1, 0, 8, *pool_), StatusIs(code));
  EXPECT_THAT(ApplyRope(table, q.data(), nullptr, positions.data(), -1, 1, 0, 8, *pool_),
              StatusIs(code));
}

}  // namespace
}  // namespace fp::kernels
