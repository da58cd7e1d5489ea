// GPU tests of LaunchGemm (kernels/gemm/gemm_cuda.h): values against the CPU reference
// (kernels/gemm/gemm.h) within a justified bound, and the batch-invariance promises bit for bit:
// run twice, every tile configuration, a row alone versus inside batches of every size 1..257 and
// of prefill size at random positions among random rows; then odd shapes and the error paths.
//
// Without a CUDA device the shared GPU test main (tests/testutil/gpu_test_main.cc) exits 77, which
// CTest reports as skipped, never as passed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "kernels/base/thread_pool.h"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/gemm_cuda.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;

constexpr GemmTile kEveryTile[] = {GemmTile::k32x64, GemmTile::k64x64, GemmTile::k128x128,
                                   GemmTile::k128x256};
static_assert(std::size(kEveryTile) == kGemmTileCount);

// Uniform in [-1, 1), rounded to bf16.
std::vector<uint16_t> RandomBf16(size_t count, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<uint16_t> values(count);
  for (uint16_t& v : values) v = F32ToBf16(uniform(rng));
  return values;
}

struct Problem {
  int64_t m, n, k;
  std::vector<uint16_t> x;         // [m, k] bf16
  std::vector<uint16_t> w;         // [n, k] bf16
  std::vector<uint16_t> residual;  // [m, n] bf16
};

Problem RandomProblem(int64_t m, int64_t n, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return Problem{m, n, k, RandomBf16(m * k, rng), RandomBf16(n * k, rng), RandomBf16(m * n, rng)};
}

// What one launch wrote: raw output bytes, and the values widened to f32.
struct Output {
  std::vector<uint8_t> bytes;
  DType dtype;
  float At(int64_t index) const {
    if (dtype == DType::kF32) {
      float value;
      std::memcpy(&value, bytes.data() + 4 * index, 4);
      return value;
    }
    uint16_t bits;
    std::memcpy(&bits, bytes.data() + 2 * index, 2);
    return Bf16ToF32(bits);
  }
};

class GemmGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override { cudaStreamDestroy(stream_); }

  // Runs the problem on the GPU, the output poisoned with NaN first so unwritten elements fail.
  Output RunGpu(const Problem& p, DType y_dtype, bool with_residual,
                GemmTile tile = GemmTile::kAuto) {
    const size_t y_bytes = static_cast<size_t>(p.m * p.n) * DTypeSize(y_dtype);
    DeviceBuffer x(p.x.size() * 2), w(p.w.size() * 2), residual(p.residual.size() * 2), y(y_bytes);
    Upload(x.get<uint16_t>(), p.x);
    Upload(w.get<uint16_t>(), p.w);
    Upload(residual.get<uint16_t>(), p.residual);
    FP_CHECK(cudaMemset(y.get(), 0xff, y_bytes) == cudaSuccess);
    FP_CHECK(cudaDeviceSynchronize() == cudaSuccess);
    const Status status = LaunchGemm(x.get(), w.get(), with_residual ? residual.get() : nullptr,
                                     y.get(), y_dtype, p.m, p.n, p.k, stream_, tile);
    FP_CHECK(status.ok());
    FP_CHECK(cudaStreamSynchronize(stream_) == cudaSuccess);
    Output out{std::vector<uint8_t>(y_bytes), y_dtype};
    FP_CHECK(cudaMemcpy(out.bytes.data(), y.get(), y_bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    return out;
  }

  cudaStream_t stream_ = nullptr;
};

// The CPU reference's dot products (its own fixed order), and the sums of |x w| that bound the
// difference from any other summation order of the same exact products.
struct Reference {
  std::vector<float> dot;      // [m, n]
  std::vector<float> abs_sum;  // [m, n]
};

Reference CpuReference(const Problem& p) {
  std::vector<float> x(p.x.size()), abs_x(p.x.size());
  std::vector<uint16_t> abs_w(p.w.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = Bf16ToF32(p.x[i]);
    abs_x[i] = std::fabs(x[i]);
  }
  for (size_t i = 0; i < abs_w.size(); ++i) abs_w[i] = p.w[i] & 0x7fffu;
  auto pool = ThreadPool::Create(8);
  FP_CHECK(pool.ok());
  Reference ref{std::vector<float>(p.m * p.n), std::vector<float>(p.m * p.n)};
  FP_CHECK(Gemm(x.data(), p.w.data(), DType::kBf16, ref.dot.data(), p.m, p.n, p.k, **pool).ok());
  FP_CHECK(Gemm(abs_x.data(), abs_w.data(), DType::kBf16, ref.abs_sum.data(), p.m, p.n, p.k, **pool)
               .ok());
  return ref;
}

// Both sides add the same exact products (a bf16 x bf16 product is exact in f32) in different
// orders. Each rounding of a partial sum errs by at most 2 ulp-sized steps of 2^-23 * sum|x w|
// (the tensor core may truncate rather than round); the CPU does at most k / 8 + 3 additions on
// any path and the GPU ceil(k / 16) MMA steps, so (k + 16) * 2^-23 * sum|x w| bounds the
// difference of the f32 sums. A bf16 output adds at most 2^-8 relative rounding. A wrong index
// or a dropped k16 step errs by about the size of the result, orders of magnitude more.
::testing::AssertionResult NearReference(const Problem& p, const Output& gpu, bool with_residual) {
  const Reference ref = CpuReference(p);
  for (int64_t i = 0; i < p.m * p.n; ++i) {
    const float residual = with_residual ? Bf16ToF32(p.residual[i]) : 0.0f;
    const float expected = residual + ref.dot[i];
    const double sum_bound = static_cast<double>(p.k + 16) * 0x1p-23 * ref.abs_sum[i];
    const double bound = gpu.dtype == DType::kF32 ? sum_bound + 0x1p-23 * std::fabs(expected)
                                                  : 0x1p-8 * std::fabs(expected) + 2 * sum_bound;
    const float actual = gpu.At(i);
    if (!(std::fabs(static_cast<double>(actual) - expected) <= bound)) {
      return ::testing::AssertionFailure()
             << "element (" << i / p.n << ", " << i % p.n << "): " << actual << ", expected "
             << expected << " within " << bound;
    }
  }
  return ::testing::AssertionSuccess();
}

std::string Case(const Problem& p, DType dtype, bool residual) {
  return "m " + std::to_string(p.m) + " n " + std::to_string(p.n) + " k " + std::to_string(p.k) +
         " " + std::string(DTypeName(dtype)) + (residual ? " + residual" : "");
}

// ---------------------------------------------------------------------------------------------
// Values.

TEST_F(GemmGpuTest, MatchesCpuReferenceOnOddShapes) {
  struct Shape {
    int64_t m, n, k;
  };
  const Shape kShapes[] = {{1, 1, 8},         {3, 17, 24},      {7, 100, 72},   {33, 257, 520},
                           {257, 1000, 2056}, {64, 2560, 2048}, {5, 300, 5632}, {300, 130, 136}};
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    const Problem p = RandomProblem(s.m, s.n, s.k, seed++);
    for (DType dtype : {DType::kBf16, DType::kF32}) {
      for (bool residual : {false, true}) {
        ASSERT_TRUE(NearReference(p, RunGpu(p, dtype, residual), residual))
            << Case(p, dtype, residual);
      }
    }
  }
}

TEST_F(GemmGpuTest, EveryTileMatchesCpuReference) {
  const Problem p = RandomProblem(37, 201, 264, 99);
  for (GemmTile tile : kEveryTile) {
    ASSERT_TRUE(NearReference(p, RunGpu(p, DType::kF32, false, tile), false))
        << "tile " << static_cast<int>(tile);
  }
}

TEST_F(GemmGpuTest, ZeroKWritesZerosOrTheResidual) {
  const Problem p = RandomProblem(5, 9, 0, 3);
  const Output plain = RunGpu(p, DType::kF32, false);
  const Output added = RunGpu(p, DType::kBf16, true);
  for (int64_t i = 0; i < p.m * p.n; ++i) {
    ASSERT_EQ(plain.At(i), 0.0f) << i;
    ASSERT_EQ(added.At(i), Bf16ToF32(p.residual[i])) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Batch invariance, bit for bit.

TEST_F(GemmGpuTest, RunTwiceGivesTheSameBits) {
  const Problem p = RandomProblem(300, 2560, 2048, 5);
  for (DType dtype : {DType::kBf16, DType::kF32}) {
    EXPECT_EQ(RunGpu(p, dtype, true).bytes, RunGpu(p, dtype, true).bytes) << DTypeName(dtype);
  }
}

TEST_F(GemmGpuTest, EveryTileGivesTheSameBits) {
  const Problem problems[] = {RandomProblem(257, 1000, 2056, 6), RandomProblem(3, 300, 72, 7),
                              RandomProblem(700, 2560, 2048, 8)};
  for (const Problem& p : problems) {
    for (DType dtype : {DType::kBf16, DType::kF32}) {
      const Output first = RunGpu(p, dtype, true, kEveryTile[0]);
      for (GemmTile tile : kEveryTile) {
        ASSERT_EQ(RunGpu(p, dtype, true, tile).bytes, first.bytes)
            << Case(p, dtype, true) << " tile " << static_cast<int>(tile);
      }
    }
  }
}

class BatchInvarianceTest : public GemmGpuTest {
 protected:
  static constexpr int kProbes = 4;

  void SetUp() override {
    GemmGpuTest::SetUp();
    std::mt19937_64 rng(11);
    probes_ = RandomProblem(kProbes, kN, kK, 12);
    for (int r = 0; r < kProbes; ++r) {
      Problem alone{
          1,
          kN,
          kK,
          std::vector<uint16_t>(probes_.x.begin() + r * kK, probes_.x.begin() + (r + 1) * kK),
          probes_.w,
          std::vector<uint16_t>(probes_.residual.begin() + r * kN,
                                probes_.residual.begin() + (r + 1) * kN)};
      alone_bf16_.push_back(RunGpu(alone, DType::kBf16, true));
      alone_f32_.push_back(RunGpu(alone, DType::kF32, true));
    }
  }

  // A batch of m random rows with probe rows at random distinct positions; returns the batch
  // and, per position used, the probe placed there.
  Problem BatchWithProbes(int64_t m, int probes, std::mt19937_64& rng,
                          std::vector<std::pair<int64_t, int>>& placed) {
    Problem batch = RandomProblem(m, kN, kK, rng());
    batch.w = probes_.w;
    placed.clear();
    std::vector<int64_t> positions(m);
    for (int64_t i = 0; i < m; ++i) positions[i] = i;
    std::shuffle(positions.begin(), positions.end(), rng);
    for (int i = 0; i < probes && i < m; ++i) {
      const int probe = static_cast<int>(rng() % kProbes);
      const int64_t row = positions[i];
      std::copy_n(probes_.x.begin() + probe * kK, kK, batch.x.begin() + row * kK);
      std::copy_n(probes_.residual.begin() + probe * kN, kN, batch.residual.begin() + row * kN);
      placed.push_back({row, probe});
    }
    return batch;
  }

  ::testing::AssertionResult SameRows(const Output& batch, const std::vector<Output>& alone,
                                      const std::vector<std::pair<int64_t, int>>& placed) {
    const size_t row_bytes = kN * DTypeSize(batch.dtype);
    for (const auto& [row, probe] : placed) {
      if (std::memcmp(batch.bytes.data() + row * row_bytes, alone[probe].bytes.data(), row_bytes) !=
          0) {
        return ::testing::AssertionFailure() << "probe " << probe << " at row " << row;
      }
    }
    return ::testing::AssertionSuccess();
  }

  // The qkv projection of the target model: not a multiple of the 128- or 256-row tiles.
  static constexpr int64_t kN = 2560 + 8;
  static constexpr int64_t kK = 2048;
  Problem probes_;
  std::vector<Output> alone_bf16_, alone_f32_;
};

TEST_F(BatchInvarianceTest, RowAloneEqualsRowInEveryDecodeBatch) {
  std::mt19937_64 rng(21);
  std::vector<std::pair<int64_t, int>> placed;
  for (int64_t m = 1; m <= 257; ++m) {
    const Problem batch = BatchWithProbes(m, 2, rng, placed);
    ASSERT_TRUE(SameRows(RunGpu(batch, DType::kBf16, true), alone_bf16_, placed))
        << "m " << m << " tile " << static_cast<int>(ChooseGemmTile(m, kN));
    if (m % 16 == 1) {
      ASSERT_TRUE(SameRows(RunGpu(batch, DType::kF32, true), alone_f32_, placed)) << "m " << m;
    }
  }
}

TEST_F(BatchInvarianceTest, RowAloneEqualsRowInPrefillBatches) {
  std::mt19937_64 rng(22);
  std::vector<std::pair<int64_t, int>> placed;
  for (int64_t m : {2048 + 5, 4096}) {
    const Problem batch = BatchWithProbes(m, 16, rng, placed);
    ASSERT_TRUE(SameRows(RunGpu(batch, DType::kBf16, true), alone_bf16_, placed)) << "m " << m;
    ASSERT_TRUE(SameRows(RunGpu(batch, DType::kF32, true), alone_f32_, placed)) << "m " << m;
  }
}

TEST(GemmTileChoiceTest, DecodeAndPrefillUseDifferentTiles) {
  // The invariance tests above compare a row alone (mma.sync, 32x64) with big batches (wgmma,
  // 128x256); that means something only if the dispatcher really picks these tiles there.
  EXPECT_EQ(ChooseGemmTile(1, 2560), GemmTile::k32x64);
  EXPECT_EQ(ChooseGemmTile(4096, 2560), GemmTile::k128x256);
}

// ---------------------------------------------------------------------------------------------
// Error paths.

TEST_F(GemmGpuTest, RejectsInvalidArguments) {
  DeviceBuffer x(4096), w(4096), y(4096), r(4096);
  const auto launch = [&](const void* xp, const void* wp, const void* rp, void* yp, DType dtype,
                          int64_t m, int64_t n, int64_t k, GemmTile tile = GemmTile::kAuto) {
    return LaunchGemm(xp, wp, rp, yp, dtype, m, n, k, stream_, tile);
  };
  const auto kInvalid = StatusIs(StatusCode::kInvalidArgument);
  EXPECT_OK(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, 2, 2, 16));
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, 2, 2, 12), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kF16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, -1, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, kGemmCudaMaxM + 1, 2, 16),
              kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, 2, 2, kGemmCudaMaxK + 8),
              kInvalid);
  EXPECT_THAT(launch(nullptr, w.get(), nullptr, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), nullptr, nullptr, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, nullptr, DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get() + 2, w.get(), nullptr, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get() + 8, nullptr, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get() + 2, DType::kF32, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), r.get() + 1, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), y.get(), y.get(), DType::kF32, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), y.get() + 2, y.get(), DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, x.get() + 32, DType::kBf16, 2, 2, 16), kInvalid);
  EXPECT_THAT(launch(x.get(), w.get(), nullptr, y.get(), DType::kBf16, 2, 2, 16,
                     static_cast<GemmTile>(kGemmTileCount)),
              kInvalid);
  // Nothing to do: no pointer is looked at.
  EXPECT_OK(launch(nullptr, nullptr, nullptr, nullptr, DType::kBf16, 0, 2, 16));
  EXPECT_OK(launch(nullptr, nullptr, nullptr, nullptr, DType::kBf16, 2, 0, 16));
  // In-place residual add with bf16 output is allowed.
  EXPECT_OK(launch(x.get(), w.get(), y.get(), y.get(), DType::kBf16, 2, 2, 16));
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

TEST_F(GemmGpuTest, InPlaceResidualAddMatchesSeparateBuffers) {
  const Problem p = RandomProblem(9, 130, 264, 31);
  const Output separate = RunGpu(p, DType::kBf16, true);
  DeviceBuffer x(p.x.size() * 2), w(p.w.size() * 2), y(p.residual.size() * 2);
  Upload(x.get<uint16_t>(), p.x);
  Upload(w.get<uint16_t>(), p.w);
  Upload(y.get<uint16_t>(), p.residual);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_OK(LaunchGemm(x.get(), w.get(), y.get(), y.get(), DType::kBf16, p.m, p.n, p.k, stream_));
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  std::vector<uint8_t> in_place(separate.bytes.size());
  ASSERT_EQ(cudaMemcpy(in_place.data(), y.get(), in_place.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(in_place, separate.bytes);
}

}  // namespace
}  // namespace fp::kernels
