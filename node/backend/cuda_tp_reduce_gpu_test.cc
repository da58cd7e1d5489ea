// GPU tests of the tensor-parallel residual reduction (cuda_tp_reduce.h), on one GPU:
//   - bitwise equal to a naive host re-implementation (left fold over the ranks in f32, then one
//     round to nearest even to bf16) for every rank count and odd sizes, run twice;
//   - the rank order is the one documented: partials chosen so that another association lands on
//     the other side of a bf16 rounding tie;
//   - with one rank it equals the GEMM's fused residual epilogue over the same f32 accumulator,
//     which is what makes a tensor-parallel degree of 1 the single-GPU numerics;
//   - error paths.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "kernels/gemm/gemm_cuda.h"
#include "node/backend/cuda_tp_reduce.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::node::cuda {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::StatusIs;

std::vector<uint16_t> RandomBf16(std::mt19937& rng, size_t count, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<uint16_t> out(count);
  for (uint16_t& v : out) v = kernels::F32ToBf16(u(rng));
  return out;
}

// The documented arithmetic, written independently on the host.
std::vector<uint16_t> NaiveReduce(const std::vector<float>& partials, int ranks,
                                  const std::vector<uint16_t>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    float sum = partials[i];
    for (int r = 1; r < ranks; ++r) sum = sum + partials[r * x.size() + i];
    out[i] = kernels::F32ToBf16(kernels::Bf16ToF32(x[i]) + sum);
  }
  return out;
}

std::vector<uint16_t> RunReduce(const std::vector<float>& partials, int ranks,
                                const std::vector<uint16_t>& x) {
  DeviceBuffer p(partials), y(x);
  EXPECT_OK(
      LaunchTpResidualSum(p.get<float>(), ranks, static_cast<int64_t>(x.size()), y.get(), nullptr));
  return y.Download<uint16_t>();
}

class CudaTpReduceGpuTest : public ::testing::Test {};

TEST_F(CudaTpReduceGpuTest, EqualsNaiveFixedOrderSumForEveryRankCount) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (int ranks = 1; ranks <= kMaxTpReduceRanks; ++ranks) {
    for (size_t count : {size_t{8}, size_t{24}, size_t{4104}, size_t{1 << 21} + 8}) {
      std::vector<float> partials(count * ranks);
      for (float& v : partials) v = u(rng);
      const std::vector<uint16_t> x = RandomBf16(rng, count, 8.0f);
      const std::vector<uint16_t> want = NaiveReduce(partials, ranks, x);
      EXPECT_EQ(RunReduce(partials, ranks, x), want) << ranks << " ranks, " << count;
      EXPECT_EQ(RunReduce(partials, ranks, x), want) << "second run";
    }
  }
}

TEST_F(CudaTpReduceGpuTest, SumsInRankOrder) {
  // p = (1 + 2^-8, 2^-24, 2^-24), x = 0. In rank order each 2^-24 is half an f32 ulp of 1 + 2^-8
  // and ties to even (drops), leaving 1 + 2^-8, a bf16 tie that rounds to even: 1.0. Summing the
  // small ones first gives 1 + 2^-8 + 2^-23, which rounds up to 1 + 2^-7.
  const float big = 1.0f + std::ldexp(1.0f, -8), small = std::ldexp(1.0f, -24);
  std::vector<float> partials;
  for (float v : {big, small, small}) partials.insert(partials.end(), 8, v);
  const std::vector<uint16_t> x(8, kernels::F32ToBf16(0.0f));
  const std::vector<uint16_t> got = RunReduce(partials, 3, x);
  for (uint16_t v : got) EXPECT_EQ(v, kernels::F32ToBf16(1.0f));
  EXPECT_NE(kernels::F32ToBf16(big + (small + small)), kernels::F32ToBf16(1.0f));
}

TEST_F(CudaTpReduceGpuTest, OneRankEqualsTheGemmsFusedResidualEpilogue) {
  std::mt19937 rng(9);
  const int64_t n = 256, k = 384;
  for (int64_t m : {1, 7, 130}) {
    const std::vector<uint16_t> a = RandomBf16(rng, size_t(m * k), 1.0f);
    const std::vector<uint16_t> w = RandomBf16(rng, size_t(n * k), 0.1f);
    const std::vector<uint16_t> residual = RandomBf16(rng, size_t(m * n), 2.0f);
    DeviceBuffer da(a), dw(w), fused(residual), split(residual), acc(size_t(m * n) * 4);
    ASSERT_OK(kernels::LaunchGemm(da.get(), dw.get(), fused.get(), fused.get(), DType::kBf16, m, n,
                                  k, nullptr));
    ASSERT_OK(
        kernels::LaunchGemm(da.get(), dw.get(), nullptr, acc.get(), DType::kF32, m, n, k, nullptr));
    ASSERT_OK(LaunchTpResidualSum(acc.get<float>(), 1, m * n, split.get(), nullptr));
    EXPECT_EQ(split.Download<uint16_t>(), fused.Download<uint16_t>()) << "m " << m;
  }
}

// Error paths.

TEST_F(CudaTpReduceGpuTest, BadArgumentsAreRejectedWithoutLaunching) {
  DeviceBuffer p(size_t{4} * 64 * 4), x(size_t{64} * 2);
  auto* partials = p.get<float>();
  EXPECT_THAT(LaunchTpResidualSum(nullptr, 2, 64, x.get(), nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchTpResidualSum(partials, 2, 64, nullptr, nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  for (int ranks : {0, kMaxTpReduceRanks + 1}) {
    EXPECT_THAT(LaunchTpResidualSum(partials, ranks, 64, x.get(), nullptr),
                StatusIs(StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(LaunchTpResidualSum(partials, 2, 60, x.get(), nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchTpResidualSum(partials, 2, -8, x.get(), nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchTpResidualSum(partials + 1, 2, 32, x.get(), nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  // x inside the partials.
  EXPECT_THAT(LaunchTpResidualSum(partials, 2, 64, partials + 64, nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(LaunchTpResidualSum(partials, 2, 0, x.get(), nullptr));
}

}  // namespace
}  // namespace fp::node::cuda
