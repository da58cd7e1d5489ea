// GPU tests of RMSNorm and the fused residual-add + RMSNorm: bit equality with a host emulation of
// the documented reduction tree, the stated bound against the CPU reference (rms_norm.h), fused
// versus unfused bitwise, vector versus scalar paths, run-twice and single-versus-batched
// bitwise, odd widths, and the launcher's error paths.
//
// Without a CUDA device the shared GPU test main exits 77 (CTest: skipped).
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/activation/activation_cuda.h"
#include "kernels/base/half.h"
#include "kernels/norm/rms_norm.h"
#include "kernels/norm/rms_norm_cuda.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;
using Bits = std::vector<uint16_t>;

constexpr float kEps = 1e-5f;
constexpr int64_t kWidths[] = {1, 3, 7, 8, 37, 733, 2048, 4096, 5000, 8192, 16384};

Bits RandomBf16(size_t count, float scale, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, scale);
  Bits bits(count);
  for (uint16_t& b : bits) b = F32ToBf16(normal(rng));
  return bits;
}

std::vector<float> Widen(const Bits& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToF32(bits[i]);
  return out;
}

// An independent host model of the GPU's documented order (rms_norm_cuda.h), element by element.
Bits EmulateGpuRmsNorm(const Bits& x, const Bits& weight, int64_t rows, int64_t width) {
  Bits out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> partial(kRmsNormThreads, 0.0f);
    for (int64_t j = 0; j < width; ++j) {
      const float value = Bf16ToF32(x[r * width + j]);
      float& p = partial[(j / 8) % kRmsNormThreads];
      p = std::fma(value, value, p);
    }
    float warp[8];
    for (int w = 0; w < 8; ++w) {
      std::vector<float> lanes(partial.begin() + 32 * w, partial.begin() + 32 * w + 32);
      for (int offset = 16; offset >= 1; offset /= 2) {
        std::vector<float> next(32);
        for (int l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ offset];
        lanes = next;
      }
      warp[w] = lanes[0];
    }
    const float sum =
        ((warp[0] + warp[1]) + (warp[2] + warp[3])) + ((warp[4] + warp[5]) + (warp[6] + warp[7]));
    const float inv_rms = 1.0f / std::sqrt(sum / static_cast<float>(width) + kEps);
    for (int64_t j = 0; j < width; ++j) {
      const float scaled = Bf16ToF32(x[r * width + j]) * inv_rms;
      out[r * width + j] = F32ToBf16(Bf16ToF32(weight[j]) * scaled);
    }
  }
  return out;
}

// A one-thread pool for the CPU references.
std::unique_ptr<ThreadPool> MakePool() {
  StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(1);
  FP_CHECK(pool.ok());
  return std::move(*pool);
}

class RmsNormGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  // Runs LaunchRmsNorm on host data (offset_elements shifts every buffer, to force the scalar
  // path) and returns the output.
  Bits Run(const Bits& x, const Bits& weight, int64_t rows, int64_t width,
           int offset_elements = 0) {
    DeviceBuffer dx((x.size() + 8) * 2), dw((weight.size() + 8) * 2), dout((x.size() + 8) * 2);
    Upload(dx.get<uint16_t>() + offset_elements, x);
    Upload(dw.get<uint16_t>() + offset_elements, weight);
    EXPECT_OK(LaunchRmsNorm(dx.get<uint16_t>() + offset_elements,
                            dw.get<uint16_t>() + offset_elements, kEps,
                            dout.get<uint16_t>() + offset_elements, rows, width, stream_));
    return Download(dout.get<uint16_t>() + offset_elements, x.size());
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{2024};
};

TEST_F(RmsNormGpuTest, MatchesTreeEmulationBitwiseAndCpuReferenceWithinBound) {
  const std::unique_ptr<ThreadPool> pool = MakePool();
  for (int64_t width : kWidths) {
    const int64_t rows = 3;
    const Bits x = RandomBf16(rows * width, 1.5f, rng_);
    const Bits weight = RandomBf16(width, 1.0f, rng_);
    const Bits gpu = Run(x, weight, rows, width);
    ASSERT_EQ(gpu, EmulateGpuRmsNorm(x, weight, rows, width)) << "width " << width;

    // CPU reference (DotF32 order) on the same bf16 inputs. Bound (rms_norm_cuda.h): before the
    // bf16 rounding the two differ by at most rel = (d/8 + 10) * 2^-24 relative; the rounding
    // adds at most 2^-8 relative.
    const std::vector<float> xf = Widen(x);
    std::vector<float> cpu(xf.size());
    ASSERT_OK(
        RmsNorm(xf.data(), weight.data(), DType::kBf16, kEps, cpu.data(), rows, width, *pool));
    const double rel = (static_cast<double>(width) / 8 + 10) * 0x1p-24;
    double max_error = 0;
    int64_t exact = 0;
    for (size_t i = 0; i < cpu.size(); ++i) {
      const double g = Bf16ToF32(gpu[i]);
      ASSERT_TRUE(std::isfinite(g));
      const double bound = std::fabs(cpu[i]) * (0x1p-8 * (1 + rel) + rel);
      ASSERT_LE(std::fabs(g - cpu[i]), bound) << "width " << width << " element " << i;
      max_error = std::max(max_error, std::fabs(g - cpu[i]) /
                                          std::max(1e-30, std::fabs(static_cast<double>(cpu[i]))));
      exact += gpu[i] == F32ToBf16(cpu[i]) ? 1 : 0;
    }
    // Differences need an f32 value within rel of a bf16 rounding boundary: rare.
    EXPECT_GE(exact, static_cast<int64_t>(0.99 * static_cast<double>(cpu.size())))
        << "width " << width;
    std::printf("width %lld: max relative error vs CPU %.3g, %lld/%zu equal to bf16(CPU)\n",
                static_cast<long long>(width), max_error, static_cast<long long>(exact),
                cpu.size());
  }
}

TEST_F(RmsNormGpuTest, ScalarPathEqualsVectorPath) {
  for (int64_t width : {8, 2048, 5632}) {
    const Bits x = RandomBf16(4 * width, 2.0f, rng_);
    const Bits weight = RandomBf16(width, 1.0f, rng_);
    EXPECT_EQ(Run(x, weight, 4, width, 1), Run(x, weight, 4, width, 0)) << width;
  }
}

TEST_F(RmsNormGpuTest, InPlaceEqualsOutOfPlace) {
  const int64_t rows = 5, width = 2048;
  const Bits x = RandomBf16(rows * width, 1.0f, rng_);
  const Bits weight = RandomBf16(width, 1.0f, rng_);
  DeviceBuffer dx(x.size() * 2), dw(weight.size() * 2);
  Upload(dx.get<uint16_t>(), x);
  Upload(dw.get<uint16_t>(), weight);
  ASSERT_OK(LaunchRmsNorm(dx.get<uint16_t>(), dw.get<uint16_t>(), kEps, dx.get<uint16_t>(), rows,
                          width, stream_));
  EXPECT_EQ(Download(dx.get<uint16_t>(), x.size()), Run(x, weight, rows, width));
}

TEST_F(RmsNormGpuTest, FusedEqualsResidualAddThenNorm) {
  for (int64_t width : {7, 2048, 4096}) {
    const int64_t rows = 9;
    const Bits residual = RandomBf16(rows * width, 4.0f, rng_);
    const Bits delta = RandomBf16(rows * width, 1.0f, rng_);
    const Bits weight = RandomBf16(width, 1.0f, rng_);
    const size_t n = residual.size();
    DeviceBuffer r1(n * 2), r2(n * 2), dd(n * 2), dw(width * 2), o1(n * 2), o2(n * 2);
    Upload(r1.get<uint16_t>(), residual);
    Upload(r2.get<uint16_t>(), residual);
    Upload(dd.get<uint16_t>(), delta);
    Upload(dw.get<uint16_t>(), weight);
    ASSERT_OK(LaunchFusedAddRmsNorm(r1.get<uint16_t>(), dd.get<uint16_t>(), dw.get<uint16_t>(),
                                    kEps, o1.get<uint16_t>(), rows, width, stream_));
    ASSERT_OK(LaunchResidualAdd(r2.get<uint16_t>(), dd.get<uint16_t>(), rows * width, stream_));
    ASSERT_OK(LaunchRmsNorm(r2.get<uint16_t>(), dw.get<uint16_t>(), kEps, o2.get<uint16_t>(), rows,
                            width, stream_));
    const Bits fused_residual = Download(r1.get<uint16_t>(), n);
    EXPECT_EQ(fused_residual, Download(r2.get<uint16_t>(), n));
    EXPECT_EQ(Download(o1.get<uint16_t>(), n), Download(o2.get<uint16_t>(), n));
    // The new residual is the CPU's f32 sum rounded once.
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(fused_residual[i], F32ToBf16(Bf16ToF32(residual[i]) + Bf16ToF32(delta[i])));
    }
    EXPECT_EQ(Download(o1.get<uint16_t>(), n),
              EmulateGpuRmsNorm(fused_residual, weight, rows, width));
  }
}

TEST_F(RmsNormGpuTest, RunTwiceAndSingleVersusBatchedBitwise) {
  const int64_t width = 2048;
  const Bits weight = RandomBf16(width, 1.0f, rng_);
  const Bits row = RandomBf16(width, 3.0f, rng_);
  const Bits alone = Run(row, weight, 1, width);
  EXPECT_EQ(alone, Run(row, weight, 1, width));
  for (int64_t batch : {1, 2, 31, 64, 255, 256}) {
    Bits x = RandomBf16(batch * width, 3.0f, rng_);
    const int64_t at = static_cast<int64_t>(rng_() % static_cast<uint32_t>(batch));
    std::copy(row.begin(), row.end(), x.begin() + at * width);
    const Bits out = Run(x, weight, batch, width);
    EXPECT_TRUE(std::equal(alone.begin(), alone.end(), out.begin() + at * width))
        << "batch " << batch << " position " << at;
  }
}

// ---------------------------------------------------------------------------------------------
// Error paths: rejected on the host, nothing launched.

TEST_F(RmsNormGpuTest, InvalidArgumentsAreRejected) {
  DeviceBuffer buffer(4096);
  uint16_t* p = buffer.get<uint16_t>();
  EXPECT_THAT(LaunchRmsNorm(p, p, kEps, p, 1, 0, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(p, p, kEps, p, 1, kRmsNormMaxWidth + 1, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(p, p, kEps, p, -1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(p, p, -1.0f, p, 1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(p, p, NAN, p, 1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(nullptr, p, kEps, p, 1, 8, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRmsNorm(p, nullptr, kEps, p, 1, 8, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchFusedAddRmsNorm(p, nullptr, p, kEps, p, 1, 8, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  const auto* odd = reinterpret_cast<uint8_t*>(p) + 1;
  EXPECT_THAT(LaunchRmsNorm(odd, p, kEps, p, 1, 8, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(LaunchRmsNorm(nullptr, nullptr, kEps, nullptr, 0, 8, stream_));  // empty: no-op
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace fp::kernels
