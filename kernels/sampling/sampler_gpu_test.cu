// GPU tests of the sampler: the token equals the CPU sampler's (sampler.h) exactly over many
// random logit rows (continuous, heavily tied, bf16-rounded, with banned tokens and signed
// zeros), vocabulary sizes, seeds, steps and parameter sets (greedy, temperature, top-k, top-p);
// run-twice and single-versus-batched; rows the CPU rejects come back as -1 with the right error
// bit while their neighbours are unaffected; and the launcher's error paths.
//
// Without a CUDA device the shared GPU test main exits 77 (CTest: skipped).
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "kernels/sampling/sampler.h"
#include "kernels/sampling/sampler_cuda.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;

constexpr float kInfinity = std::numeric_limits<float>::infinity();

struct Batch {
  int32_t vocab;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<SamplingParams> params;
  std::vector<uint64_t> steps;
  int32_t rows() const { return static_cast<int32_t>(params.size()); }
};

class SamplerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  // Tokens and the error word from one launch over the whole batch.
  std::pair<std::vector<int32_t>, uint32_t> RunGpu(const Batch& b) {
    const int64_t workspace_bytes = SamplerWorkspaceBytes(b.rows(), b.vocab);
    DeviceBuffer logits(b.logits.size() * 4), params(b.params.size() * sizeof(SamplingParams)),
        steps(b.steps.size() * 8), tokens(b.params.size() * 4), workspace(workspace_bytes),
        flags(4);
    FP_CHECK(cudaMemset(flags.get<uint32_t>(), 0, 4) == cudaSuccess);
    Upload(logits.get<float>(), b.logits);
    Upload(params.get<SamplingParams>(), b.params);
    Upload(steps.get<uint64_t>(), b.steps);
    EXPECT_OK(LaunchSampleTokens(logits.get<float>(), b.rows(), b.vocab,
                                 params.get<SamplingParams>(), steps.get<uint64_t>(),
                                 tokens.get<int32_t>(), workspace.get<void>(), workspace_bytes,
                                 flags.get<uint32_t>(), stream_));
    return {Download(tokens.get<int32_t>(), b.params.size()),
            Download(flags.get<uint32_t>(), 1)[0]};
  }

  // Row r of the batch as the CPU sampler sees it.
  static StatusOr<int32_t> Cpu(const Batch& b, int32_t r) {
    return SampleToken(b.logits.data() + static_cast<size_t>(r) * b.vocab, b.vocab, b.params[r],
                       b.steps[r]);
  }

  // One logit row of a random kind.
  std::vector<float> RandomRow(int32_t vocab) {
    std::normal_distribution<float> normal(0.0f, 1.0f + static_cast<float>(rng_() % 6));
    std::vector<float> row(vocab);
    const int kind = static_cast<int>(rng_() % 6);
    for (float& logit : row) {
      logit = normal(rng_);
      if (kind == 1) logit = std::round(logit * 2.0f) / 2.0f;               // many exact ties
      if (kind == 2) logit = Bf16ToF32(F32ToBf16(logit));                   // bf16 logits: ties
      if (kind == 3 && rng_() % 4 == 0) logit = -kInfinity;                 // banned tokens
      if (kind == 4 && rng_() % 3 == 0) logit = rng_() % 2 ? 0.0f : -0.0f;  // signed zeros
      if (kind == 5) logit = static_cast<float>(rng_() % 3);                // three values only
    }
    if (rng_() % 4 == 0) row[rng_() % vocab] = 25.0f;  // a dominant token
    return row;
  }

  SamplingParams RandomParams() {
    const float temperatures[] = {0.0f, 0.25f, 0.7f, 1.0f, 1.3f, 3.0f};
    const int32_t top_ks[] = {0, 0, 0, 1, 2, 5, 40, 1000, 1 << 20};
    const float top_ps[] = {1.0f, 1.0f, 0.95f, 0.9f, 0.5f, 0.01f};
    return {temperatures[rng_() % 6], top_ks[rng_() % 9], top_ps[rng_() % 6],
            (static_cast<uint64_t>(rng_()) << 32) | rng_()};
  }

  Batch RandomBatch(int32_t rows, int32_t vocab) {
    Batch b{vocab, {}, {}, {}};
    for (int32_t r = 0; r < rows; ++r) {
      const std::vector<float> row = RandomRow(vocab);
      b.logits.insert(b.logits.end(), row.begin(), row.end());
      b.params.push_back(RandomParams());
      b.steps.push_back(rng_() % 3 == 0 ? rng_() % 16 : (static_cast<uint64_t>(rng_()) << 20));
    }
    return b;
  }

  // Rows the CPU rejects (a random row may come out all -inf) must give -1 and the logits bit.
  void ExpectSameTokensAsCpu(const Batch& b) {
    const auto [tokens, flags] = RunGpu(b);
    uint32_t expected_flags = 0;
    for (int32_t r = 0; r < b.rows(); ++r) {
      const StatusOr<int32_t> cpu = Cpu(b, r);
      const SamplingParams& p = b.params[r];
      if (!cpu.ok()) expected_flags |= kSamplerErrorLogits;
      ASSERT_EQ(tokens[r], cpu.ok() ? *cpu : -1)
          << "row " << r << " vocab " << b.vocab << " T " << p.temperature << " top_k " << p.top_k
          << " top_p " << p.top_p << " seed " << p.seed << " step " << b.steps[r];
    }
    EXPECT_EQ(flags, expected_flags);
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{31337};
};

TEST_F(SamplerGpuTest, TokensEqualCpuSamplerAtTinyLlamaVocab) {
  for (int round = 0; round < 3; ++round) ExpectSameTokensAsCpu(RandomBatch(96, 32000));
}

TEST_F(SamplerGpuTest, TokensEqualCpuSamplerAtOddVocabs) {
  for (int32_t vocab : {1, 2, 3, 7, 100, 1023, 1024, 1025, 4099}) {
    ExpectSameTokensAsCpu(RandomBatch(64, vocab));
  }
}

TEST_F(SamplerGpuTest, ManyStepsOfOneRowEqualCpu) {
  // One row and one parameter set over consecutive steps: the Philox stream itself.
  Batch b{32000, {}, {}, {}};
  const std::vector<float> row = RandomRow(32000);
  for (int step = 0; step < 200; ++step) {
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.params.push_back({1.0f, 0, step % 2 == 0 ? 1.0f : 0.9f, 42});
    b.steps.push_back(static_cast<uint64_t>(step));
  }
  ExpectSameTokensAsCpu(b);
}

TEST_F(SamplerGpuTest, RunTwiceAndSingleVersusBatched) {
  const Batch batch = RandomBatch(48, 32000);
  const auto first = RunGpu(batch);
  EXPECT_EQ(first, RunGpu(batch));
  for (int32_t r : {0, 17, 47}) {
    Batch single{
        batch.vocab,
        std::vector<float>(batch.logits.begin() + static_cast<size_t>(r) * batch.vocab,
                           batch.logits.begin() + static_cast<size_t>(r + 1) * batch.vocab),
        {batch.params[r]},
        {batch.steps[r]}};
    EXPECT_EQ(RunGpu(single).first[0], first.first[r]) << r;
  }
}

// ---------------------------------------------------------------------------------------------
// Error paths.

TEST_F(SamplerGpuTest, RejectedRowsGiveMinusOneAndFlagOthersUnaffected) {
  Batch b = RandomBatch(8, 100);
  for (SamplingParams& p : b.params) p.temperature = 1.0f;
  b.logits[1 * 100 + 5] = std::nanf("");
  b.logits[2 * 100 + 9] = kInfinity;
  for (int i = 0; i < 100; ++i) b.logits[3 * 100 + i] = -kInfinity;
  b.params[4].top_p = 0.0f;
  b.params[5].temperature = -1.0f;
  b.params[6] = {1e-38f, 0, 1.0f, 7};  // z_0 overflows
  b.logits[6 * 100] = 30.0f;
  const auto [tokens, flags] = RunGpu(b);
  EXPECT_EQ(flags, kSamplerErrorLogits | kSamplerErrorParams | kSamplerErrorTemperature);
  for (int32_t r = 1; r <= 6; ++r) {
    EXPECT_EQ(tokens[r], -1) << r;
    EXPECT_THAT(Cpu(b, r).status(), StatusIs(StatusCode::kInvalidArgument)) << r;
  }
  for (int32_t r : {0, 7}) {
    ASSERT_OK_AND_ASSIGN(int32_t cpu, Cpu(b, r));
    EXPECT_EQ(tokens[r], cpu);
  }
}

TEST_F(SamplerGpuTest, InvalidArgumentsAreRejected) {
  const int64_t bytes = SamplerWorkspaceBytes(2, 100);
  ASSERT_GT(bytes, 0);
  EXPECT_EQ(SamplerWorkspaceBytes(2, 0), -1);
  EXPECT_EQ(SamplerWorkspaceBytes(kSamplerMaxRows + 1, 100), -1);
  DeviceBuffer buffer(bytes + 4096), workspace(bytes);
  auto* logits = buffer.get<float>();
  auto* params = reinterpret_cast<SamplingParams*>(buffer.get<uint8_t>() + 1024);
  auto* steps = reinterpret_cast<uint64_t*>(buffer.get<uint8_t>() + 2048);
  auto* tokens = reinterpret_cast<int32_t*>(buffer.get<uint8_t>() + 3072);
  auto* flags = reinterpret_cast<uint32_t*>(buffer.get<uint8_t>() + 3584);
  void* ws = workspace.get<void>();
  EXPECT_THAT(
      LaunchSampleTokens(logits, 2, 100, params, steps, tokens, ws, bytes - 1, flags, stream_),
      StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSampleTokens(logits, -1, 100, params, steps, tokens, ws, bytes, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSampleTokens(logits, 2, 0, params, steps, tokens, ws, bytes, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSampleTokens(nullptr, 2, 100, params, steps, tokens, ws, bytes, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(
      LaunchSampleTokens(logits, 2, 100, params, steps, tokens, ws, bytes, nullptr, stream_),
      StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSampleTokens(logits, 2, 100, params, steps, tokens,
                                 static_cast<uint8_t*>(ws) + 8, bytes, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));  // misaligned workspace
  EXPECT_OK(
      LaunchSampleTokens(nullptr, 0, 100, nullptr, nullptr, nullptr, nullptr, 0, nullptr, stream_));
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace fp::kernels
