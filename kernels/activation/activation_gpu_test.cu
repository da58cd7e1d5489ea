// GPU tests of SwiGLU, the residual add and the embedding lookup: the device ExpF32 against the
// CPU one on every bf16 value and random f32 bit patterns, each kernel bit for bit against its CPU
// reference (swiglu.h, rms_norm.h's ResidualAdd, embedding.h) fed the same bf16 inputs, separate
// versus fused gate/up layouts, vector versus scalar paths, run-twice bitwise, clamp-and-flag of
// bad token ids, and the launchers' error paths.
//
// Without a CUDA device the shared GPU test main exits 77 (CTest: skipped).
#include <bit>
#include <memory>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/activation/activation_cuda.h"
#include "kernels/activation/embedding.h"
#include "kernels/activation/internal/exp_f32_device.cuh"
#include "kernels/activation/swiglu.h"
#include "kernels/base/fixed_math.h"
#include "kernels/base/half.h"
#include "kernels/norm/rms_norm.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;
using Bits = std::vector<uint16_t>;

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

Bits Narrow(const std::vector<float>& values) {
  Bits out(values.size());
  ConvertF32ToBf16(values.data(), values.size(), out.data());
  return out;
}

__global__ void ExpKernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = internal::DeviceExpF32(in[i]);
}

// A one-thread pool for the CPU references.
std::unique_ptr<ThreadPool> MakePool() {
  StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(1);
  FP_CHECK(pool.ok());
  return std::move(*pool);
}

class ActivationGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  Bits RunSwiGlu(const Bits& gate, const Bits& up, int64_t rows, int64_t width, int offset = 0) {
    DeviceBuffer g((gate.size() + 8) * 2), u((up.size() + 8) * 2), o((gate.size() + 8) * 2);
    Upload(g.get<uint16_t>() + offset, gate);
    Upload(u.get<uint16_t>() + offset, up);
    EXPECT_OK(LaunchSwiGlu(g.get<uint16_t>() + offset, u.get<uint16_t>() + offset,
                           o.get<uint16_t>() + offset, rows, width, stream_));
    return Download(o.get<uint16_t>() + offset, gate.size());
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{5};
  std::unique_ptr<ThreadPool> pool_ = MakePool();
};

TEST_F(ActivationGpuTest, DeviceExpMatchesCpuExpBitwise) {
  std::vector<float> inputs;
  for (uint32_t b = 0; b < 65536; ++b) inputs.push_back(Bf16ToF32(static_cast<uint16_t>(b)));
  std::uniform_real_distribution<float> range(-110.0f, 90.0f);
  for (int i = 0; i < (1 << 20); ++i) inputs.push_back(range(rng_));
  for (int i = 0; i < (1 << 18); ++i)
    inputs.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng_())));
  for (float edge : {0.0f, -0.0f, 88.7228394f, 88.72284f, -104.0f, -103.99999f, -87.3f, -100.0f,
                     1e-30f, -1e-30f, 0.5f, -0.5f}) {
    inputs.push_back(edge);
  }
  const int n = static_cast<int>(inputs.size());
  DeviceBuffer in(n * 4), out(n * 4);
  Upload(in.get<float>(), inputs);
  ExpKernel<<<(n + 255) / 256, 256, 0, stream_>>>(in.get<float>(), out.get<float>(), n);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> gpu = Download(out.get<float>(), n);
  for (int i = 0; i < n; ++i) {
    const float cpu = ExpF32(inputs[i]);
    if (std::isnan(cpu)) {
      ASSERT_TRUE(std::isnan(gpu[i])) << inputs[i];
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(gpu[i]), std::bit_cast<uint32_t>(cpu))
          << "x = " << inputs[i];
    }
  }
}

TEST_F(ActivationGpuTest, SwiGluMatchesCpuBitwiseOnEveryGateValue) {
  // Every finite bf16 gate value against three up values (|up| = 1 exposes silu's own rounding).
  Bits gate, up;
  for (uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    if (!std::isfinite(Bf16ToF32(bits))) continue;
    for (float u : {1.0f, -3.25f, 0.0078125f}) {
      gate.push_back(bits);
      up.push_back(F32ToBf16(u));
    }
  }
  const auto count = static_cast<int64_t>(gate.size());
  const std::vector<float> gf = Widen(gate), uf = Widen(up);
  std::vector<float> cpu(gf.size());
  ASSERT_OK(SwiGlu(gf.data(), uf.data(), cpu.data(), count, *pool_));
  EXPECT_EQ(RunSwiGlu(gate, up, 1, count - count % 8),
            Narrow(std::vector<float>(cpu.begin(), cpu.end() - count % 8)));
  EXPECT_EQ(RunSwiGlu(gate, up, 1, count, 1), Narrow(cpu));  // scalar path, whole range
}

TEST_F(ActivationGpuTest, SwiGluLayoutsAndShapesAgree) {
  for (int64_t width : {1, 7, 733, 5632}) {
    const int64_t rows = 5;
    const Bits gate = RandomBf16(rows * width, 3.0f, rng_),
               up = RandomBf16(rows * width, 1.0f, rng_);
    const std::vector<float> gf = Widen(gate), uf = Widen(up);
    std::vector<float> cpu(gf.size());
    ASSERT_OK(SwiGlu(gf.data(), uf.data(), cpu.data(), rows * width, *pool_));
    const Bits separate = RunSwiGlu(gate, up, rows, width);
    EXPECT_EQ(separate, Narrow(cpu)) << width;
    EXPECT_EQ(separate, RunSwiGlu(gate, up, rows, width));  // run twice
    // Fused [rows, 2 * width] gate|up buffer.
    Bits fused(2 * rows * width);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(gate.begin() + r * width, width, fused.begin() + 2 * r * width);
      std::copy_n(up.begin() + r * width, width, fused.begin() + (2 * r + 1) * width);
    }
    DeviceBuffer dfused(fused.size() * 2), dout(gate.size() * 2);
    Upload(dfused.get<uint16_t>(), fused);
    ASSERT_OK(
        LaunchSwiGluFused(dfused.get<uint16_t>(), dout.get<uint16_t>(), rows, width, stream_));
    EXPECT_EQ(Download(dout.get<uint16_t>(), gate.size()), separate) << width;
    // In place into gate, as the CPU backend does.
    DeviceBuffer g(gate.size() * 2), u(up.size() * 2);
    Upload(g.get<uint16_t>(), gate);
    Upload(u.get<uint16_t>(), up);
    ASSERT_OK(LaunchSwiGlu(g.get<uint16_t>(), u.get<uint16_t>(), g.get<uint16_t>(), rows, width,
                           stream_));
    EXPECT_EQ(Download(g.get<uint16_t>(), gate.size()), separate) << width;
  }
}

TEST_F(ActivationGpuTest, ResidualAddMatchesCpuBitwise) {
  for (int64_t count : {1, 9, 2048 * 3, 2048 * 256 + 5}) {
    const Bits residual = RandomBf16(count, 8.0f, rng_), delta = RandomBf16(count, 1.0f, rng_);
    std::vector<float> rf = Widen(residual);
    const std::vector<float> df = Widen(delta);
    ASSERT_OK(ResidualAdd(rf.data(), df.data(), count, *pool_));
    DeviceBuffer r(count * 2), d(count * 2);
    Upload(r.get<uint16_t>(), residual);
    Upload(d.get<uint16_t>(), delta);
    ASSERT_OK(LaunchResidualAdd(r.get<uint16_t>(), d.get<uint16_t>(), count, stream_));
    EXPECT_EQ(Download(r.get<uint16_t>(), count), Narrow(rf)) << count;
  }
}

TEST_F(ActivationGpuTest, EmbeddingMatchesCpuBitwise) {
  for (int64_t dim : {1, 7, 2048}) {
    const int64_t vocab = 1000, tokens = 67;
    const Bits table = RandomBf16(vocab * dim, 1.0f, rng_);
    std::vector<int32_t> ids(tokens);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng_() % vocab);
    ids[0] = 0;
    ids[1] = vocab - 1;
    std::vector<float> cpu(tokens * dim);
    ASSERT_OK(EmbeddingLookup(ids.data(), table.data(), DType::kBf16, cpu.data(), tokens, vocab,
                              dim, *pool_));
    DeviceBuffer dt(table.size() * 2), di(ids.size() * 4), dout(cpu.size() * 2), flags(4);
    Upload(dt.get<uint16_t>(), table);
    Upload(di.get<int32_t>(), ids);
    ASSERT_OK(LaunchEmbedding(di.get<int32_t>(), dt.get<uint16_t>(), dout.get<uint16_t>(), tokens,
                              vocab, dim, flags.get<uint32_t>(), stream_));
    EXPECT_EQ(Download(dout.get<uint16_t>(), cpu.size()), Narrow(cpu)) << dim;
    EXPECT_EQ(Download(flags.get<uint32_t>(), 1)[0], 0u);
  }
}

// ---------------------------------------------------------------------------------------------
// Error paths.

TEST_F(ActivationGpuTest, BadTokenIdsAreClampedAndFlagged) {
  const int64_t vocab = 10, dim = 16;
  const Bits table = RandomBf16(vocab * dim, 1.0f, rng_);
  const std::vector<int32_t> ids = {3, -1, 10, 2147483647};
  DeviceBuffer dt(table.size() * 2), di(ids.size() * 4), dout(ids.size() * dim * 2), flags(4);
  Upload(dt.get<uint16_t>(), table);
  Upload(di.get<int32_t>(), ids);
  ASSERT_OK(LaunchEmbedding(di.get<int32_t>(), dt.get<uint16_t>(), dout.get<uint16_t>(), 4, vocab,
                            dim, flags.get<uint32_t>(), stream_));
  EXPECT_EQ(Download(flags.get<uint32_t>(), 1)[0], kEmbeddingErrorTokenId);
  const Bits out = Download(dout.get<uint16_t>(), ids.size() * dim);
  const int64_t clamped[] = {3, 0, 9, 9};
  for (int t = 0; t < 4; ++t) {
    EXPECT_TRUE(std::equal(out.begin() + t * dim, out.begin() + (t + 1) * dim,
                           table.begin() + clamped[t] * dim))
        << t;
  }
}

TEST_F(ActivationGpuTest, InvalidArgumentsAreRejected) {
  DeviceBuffer buffer(4096);
  auto* p = buffer.get<uint16_t>();
  auto* ids = buffer.get<int32_t>() + 512;
  auto* flags = buffer.get<uint32_t>() + 1000;
  const auto* odd = reinterpret_cast<uint8_t*>(p) + 1;
  EXPECT_THAT(LaunchSwiGlu(p, p, p, -1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSwiGlu(nullptr, p, p, 1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSwiGlu(odd, p, p, 1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSwiGluFused(nullptr, p, 1, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchSwiGlu(p, p, p, kMaxElementwiseCount, 2, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchResidualAdd(p, nullptr, 8, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchResidualAdd(p, p, -1, stream_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchEmbedding(ids, p, p, 1, 0, 8, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchEmbedding(ids, p, p, 1, 10, 0, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchEmbedding(ids, p, p, -1, 10, 8, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchEmbedding(ids, p, p, 1, 10, 8, nullptr, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchEmbedding(nullptr, p, p, 1, 10, 8, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(LaunchSwiGlu(nullptr, nullptr, nullptr, 0, 8, stream_));
  EXPECT_OK(LaunchEmbedding(nullptr, nullptr, nullptr, 0, 10, 8, nullptr, stream_));
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace fp::kernels
