// Tests for the sampler: greedy ties, top-k = 1, the inverse-CDF rule on equal logits, banned
// tokens, frequencies against the intended distributions (temperature, top-k, top-p),
// repeatability, the batch form, and the error paths.
#include "kernels/sampling/sampler.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/sampling/philox.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

constexpr float kInfinity = std::numeric_limits<float>::infinity();

class SamplerTest : public ::testing::Test {
 protected:
  // Counts tokens over `steps` steps.
  std::vector<int> Histogram(const std::vector<float>& logits, const SamplingParams& params,
                             int steps) {
    std::vector<int> counts(logits.size(), 0);
    for (int step = 0; step < steps; ++step) {
      StatusOr<int32_t> token = SampleToken(logits.data(), static_cast<int32_t>(logits.size()),
                                            params, static_cast<uint64_t>(step));
      EXPECT_OK(token);
      if (token.ok()) ++counts[static_cast<size_t>(*token)];
    }
    return counts;
  }

  // Each count within 5 binomial standard deviations of steps * p.
  static void ExpectFrequencies(const std::vector<int>& counts, const std::vector<double>& p,
                                int steps) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double mean = steps * p[i];
      const double deviation = std::sqrt(steps * p[i] * (1 - p[i]));
      EXPECT_NEAR(counts[i], mean, 5 * deviation + 1e-9) << "token " << i;
    }
  }

  std::mt19937 rng_{77};
};

TEST_F(SamplerTest, GreedyPicksLowestIndexAmongTies) {
  const std::vector<float> logits = {1.0f, 3.0f, -kInfinity, 3.0f, 2.0f};
  ASSERT_OK_AND_ASSIGN(int32_t token, SampleToken(logits.data(), 5, {0.0f, 0, 1.0f, 9}, 0));
  EXPECT_EQ(token, 1);
  const std::vector<float> all_equal(7, -2.5f);
  ASSERT_OK_AND_ASSIGN(token, SampleToken(all_equal.data(), 7, {0.0f, 0, 1.0f, 9}, 3));
  EXPECT_EQ(token, 0);
}

TEST_F(SamplerTest, TopKOneEqualsGreedy) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits(97);
    for (float& logit : logits) logit = normal(rng_);
    logits[static_cast<size_t>(trial % 97)] = logits[static_cast<size_t>((trial * 7) % 97)];
    ASSERT_OK_AND_ASSIGN(int32_t greedy, SampleToken(logits.data(), 97, {0.0f, 0, 1.0f, 1}, 0));
    ASSERT_OK_AND_ASSIGN(int32_t top1,
                         SampleToken(logits.data(), 97, {1.3f, 1, 0.9f, uint64_t(trial)}, 5));
    EXPECT_EQ(top1, greedy);
  }
}

// With equal logits every weight is exactly 1, so the rule "first candidate whose running sum
// exceeds u * S" picks floor(u * n), candidates in index order.
TEST_F(SamplerTest, EqualLogitsPickFloorOfUniformTimesCount) {
  const std::vector<float> logits(10, 0.75f);
  for (uint64_t step = 0; step < 500; ++step) {
    const double u = PhiloxUniform(1234, step);
    ASSERT_OK_AND_ASSIGN(int32_t token,
                         SampleToken(logits.data(), 10, {0.8f, 0, 1.0f, 1234}, step));
    EXPECT_EQ(token, static_cast<int32_t>(std::floor(u * 10))) << step;
  }
}

TEST_F(SamplerTest, FrequenciesFollowSoftmax) {
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4};
  std::vector<float> logits;
  for (double probability : p) logits.push_back(static_cast<float>(std::log(probability)));
  const int steps = 20000;
  ExpectFrequencies(Histogram(logits, {1.0f, 0, 1.0f, 7}, steps), p, steps);
}

TEST_F(SamplerTest, TemperatureSharpensAndFlattens) {
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4};
  std::vector<float> logits;
  for (double probability : p) logits.push_back(static_cast<float>(std::log(probability)));
  const int steps = 20000;
  // Temperature 2: p^(1/2) renormalised.
  std::vector<double> flat;
  double total = 0.0;
  for (double probability : p) total += std::sqrt(probability);
  for (double probability : p) flat.push_back(std::sqrt(probability) / total);
  ExpectFrequencies(Histogram(logits, {2.0f, 0, 1.0f, 8}, steps), flat, steps);
  // Temperature 0.5: p^2 renormalised.
  std::vector<double> sharp;
  total = 0.0;
  for (double probability : p) total += probability * probability;
  for (double probability : p) sharp.push_back(probability * probability / total);
  ExpectFrequencies(Histogram(logits, {0.5f, 0, 1.0f, 8}, steps), sharp, steps);
}

TEST_F(SamplerTest, TopKAndTopPCutTheTail) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.2f),
                                     std::log(0.3f)};
  const int steps = 20000;
  // top_k = 2 keeps tokens 1 and 3 (0.4, 0.3).
  ExpectFrequencies(Histogram(logits, {1.0f, 2, 1.0f, 3}, steps), {0.0, 4.0 / 7, 0.0, 3.0 / 7},
                    steps);
  // top_p = 0.65: 0.4 is below it, 0.4 + 0.3 reaches it; tokens 1 and 3.
  ExpectFrequencies(Histogram(logits, {1.0f, 0, 0.65f, 3}, steps), {0.0, 4.0 / 7, 0.0, 3.0 / 7},
                    steps);
  // top_p = 0.3 keeps only the most likely token.
  EXPECT_EQ(Histogram(logits, {1.0f, 0, 0.3f, 3}, 200), (std::vector<int>{0, 200, 0, 0}));
  // top_k = 3 then top_p = 0.8 of the kept mass 0.9: 0.4, 0.3 (0.7 < 0.72), 0.2.
  ExpectFrequencies(Histogram(logits, {1.0f, 3, 0.8f, 3}, steps), {0.0, 4.0 / 9, 2.0 / 9, 3.0 / 9},
                    steps);
}

TEST_F(SamplerTest, TiesAtTheTopKCutGoToLowerIndices) {
  const std::vector<float> logits(6, 1.0f);
  const std::vector<int> counts = Histogram(logits, {1.0f, 2, 1.0f, 11}, 1000);
  EXPECT_GT(counts[0], 0);
  EXPECT_GT(counts[1], 0);
  EXPECT_EQ(counts[0] + counts[1], 1000);
}

TEST_F(SamplerTest, BannedTokensAreNeverSampled) {
  std::vector<float> logits = {0.0f, -kInfinity, 0.0f, -kInfinity};
  const std::vector<int> counts = Histogram(logits, {1.0f, 0, 1.0f, 5}, 2000);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(counts[3], 0);
  EXPECT_EQ(counts[0] + counts[2], 2000);
}

TEST_F(SamplerTest, SameInputsGiveTheSameTokenAndStepsVary) {
  std::normal_distribution<float> normal;
  std::vector<float> logits(5000);
  for (float& logit : logits) logit = normal(rng_);
  const SamplingParams params = {0.9f, 50, 0.95f, 0xabcdef};
  std::vector<int32_t> first;
  for (uint64_t step = 0; step < 50; ++step) {
    ASSERT_OK_AND_ASSIGN(int32_t token, SampleToken(logits.data(), 5000, params, step));
    first.push_back(token);
  }
  for (uint64_t step = 0; step < 50; ++step) {
    ASSERT_OK_AND_ASSIGN(int32_t token, SampleToken(logits.data(), 5000, params, step));
    EXPECT_EQ(token, first[step]);
  }
  std::sort(first.begin(), first.end());
  EXPECT_GT(std::unique(first.begin(), first.end()) - first.begin(), 5);
}

TEST_F(SamplerTest, BatchMatchesSingleRows) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ThreadPool> pool, ThreadPool::Create(3));
  const int32_t rows = 7;
  const int32_t vocab = 300;
  std::normal_distribution<float> normal;
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (float& logit : logits) logit = normal(rng_);
  std::vector<SamplingParams> params;
  std::vector<uint64_t> steps;
  for (int32_t r = 0; r < rows; ++r) {
    params.push_back(
        {r == 0 ? 0.0f : 1.0f, r % 3 == 0 ? 0 : 20, r % 2 ? 0.9f : 1.0f, static_cast<uint64_t>(r)});
    steps.push_back(static_cast<uint64_t>(100 + r));
  }
  std::vector<int32_t> tokens(rows, -1);
  ASSERT_OK(
      SampleTokens(logits.data(), rows, vocab, params.data(), steps.data(), tokens.data(), *pool));
  for (int32_t r = 0; r < rows; ++r) {
    ASSERT_OK_AND_ASSIGN(int32_t token,
                         SampleToken(logits.data() + r * vocab, vocab, params[r], steps[r]));
    EXPECT_EQ(tokens[static_cast<size_t>(r)], token);
  }
}

// Error paths.

TEST_F(SamplerTest, BadInputsAreRejected) {
  const auto code = StatusCode::kInvalidArgument;
  const SamplingParams ok = {1.0f, 0, 1.0f, 1};
  std::vector<float> logits = {0.0f, 1.0f};
  EXPECT_THAT(SampleToken(nullptr, 2, ok, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 0, ok, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 2, {-1.0f, 0, 1.0f, 1}, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 2, {kInfinity, 0, 1.0f, 1}, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 2, {1.0f, -1, 1.0f, 1}, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 2, {1.0f, 0, 0.0f, 1}, 0).status(), StatusIs(code));
  EXPECT_THAT(SampleToken(logits.data(), 2, {1.0f, 0, 1.5f, 1}, 0).status(), StatusIs(code));
  logits[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(SampleToken(logits.data(), 2, ok, 0).status(), StatusIs(code));
  logits[1] = kInfinity;
  EXPECT_THAT(SampleToken(logits.data(), 2, ok, 0).status(), StatusIs(code));
  logits = {-kInfinity, -kInfinity};
  EXPECT_THAT(SampleToken(logits.data(), 2, ok, 0).status(), StatusIs(code));
  logits = {1e30f, 2.0f};  // 1e30 / 1e-10 overflows f32
  EXPECT_THAT(SampleToken(logits.data(), 2, {1e-10f, 0, 1.0f, 1}, 0).status(), StatusIs(code));

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ThreadPool> pool, ThreadPool::Create(2));
  std::vector<float> rows = {0.0f, 1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
  const std::vector<SamplingParams> params = {ok, ok};
  const std::vector<uint64_t> steps = {0, 0};
  std::vector<int32_t> tokens(2);
  const Status status =
      SampleTokens(rows.data(), 2, 2, params.data(), steps.data(), tokens.data(), *pool);
  EXPECT_THAT(status, StatusIs(code));
  EXPECT_THAT(std::string(status.message()), ::testing::StartsWith("row 1: "));
  EXPECT_THAT(SampleTokens(rows.data(), 2, 2, nullptr, steps.data(), tokens.data(), *pool),
              StatusIs(code));
}

}  // namespace
}  // namespace fp::kernels
