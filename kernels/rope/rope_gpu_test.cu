// GPU tests of RoPE: bit equality with ApplyRope (rope.h) fed the same bf16 inputs, for the
// default and the llama3 frequency tables, odd head sizes and head counts (scalar path), the
// vector versus scalar paths, strided rows (q and k inside one fused q|k|v buffer, padded and odd
// strides) versus packed rows bitwise, run-twice and single-versus-batched bitwise,
// clamp-and-flag of bad positions, and the launcher's error paths.
//
// Without a CUDA device the shared GPU test main exits 77 (CTest: skipped).
#include <memory>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "kernels/rope/rope.h"
#include "kernels/rope/rope_cuda.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;
using Bits = std::vector<uint16_t>;

Bits RandomBf16(size_t count, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Bits bits(count);
  for (uint16_t& b : bits) b = F32ToBf16(normal(rng));
  return bits;
}

RopeConfig DefaultConfig(int32_t head_dim) {
  return {head_dim, 10000.0, 4096, {RopeScalingType::kNone, 1.0, 1.0, 4.0, 1}};
}

RopeConfig Llama3Config() {
  return {128, 500000.0, 16384, {RopeScalingType::kLlama3, 8.0, 1.0, 4.0, 8192}};
}

// A one-thread pool for the CPU references.
std::unique_ptr<ThreadPool> MakePool() {
  StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(1);
  FP_CHECK(pool.ok());
  return std::move(*pool);
}

class RopeGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  struct Output {
    Bits q, k;
    uint32_t flags;
  };

  // Uploads the table, rotates q and k (each shifted by offset_elements) and returns them.
  Output Run(const RopeTable& table, const Bits& q, const Bits& k,
             const std::vector<int32_t>& positions, int32_t q_heads, int32_t kv_heads,
             int offset_elements = 0) {
    const auto table_bytes = static_cast<size_t>(RopeDeviceTableBytes(table));
    DeviceBuffer cos(table_bytes), sin(table_bytes), dq((q.size() + 8) * 2), dk((k.size() + 8) * 2),
        dpos(positions.size() * 4), flags(4);
    StatusOr<RopeDeviceTable> device =
        CopyRopeTableToDevice(table, cos.get<float>(), sin.get<float>(), stream_);
    EXPECT_OK(device);
    Upload(dq.get<uint16_t>() + offset_elements, q);
    if (!k.empty()) Upload(dk.get<uint16_t>() + offset_elements, k);
    Upload(dpos.get<int32_t>(), positions);
    EXPECT_OK(LaunchRope(*device, dq.get<uint16_t>() + offset_elements,
                         kv_heads > 0 ? dk.get<uint16_t>() + offset_elements : nullptr,
                         dpos.get<int32_t>(), static_cast<int64_t>(positions.size()), q_heads,
                         kv_heads, table.head_dim(), flags.get<uint32_t>(), stream_));
    return {Download(dq.get<uint16_t>() + offset_elements, q.size()),
            Download(dk.get<uint16_t>() + offset_elements, k.size()),
            Download(flags.get<uint32_t>(), 1)[0]};
  }

  // Where q and k rows sit inside one device buffer: row t of q at element q_offset + t * q_stride,
  // row t of k at k_offset + t * k_stride.
  struct Layout {
    int64_t q_offset, q_stride, k_offset, k_stride, total;
  };

  // Rotates q and k laid out as `layout` says inside a buffer whose other elements hold random
  // bits; returns the rotated rows and expects every other element unchanged.
  Output RunStrided(const RopeTable& table, const Bits& q, const Bits& k,
                    const std::vector<int32_t>& positions, int32_t q_heads, int32_t kv_heads,
                    const Layout& layout) {
    const auto tokens = static_cast<int64_t>(positions.size());
    const int64_t q_width = int64_t{q_heads} * table.head_dim();
    const int64_t k_width = int64_t{kv_heads} * table.head_dim();
    const Bits background = RandomBf16(static_cast<size_t>(layout.total), rng_);
    Bits image = background;
    std::vector<bool> owned(image.size(), false);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < q_width; ++i) {
        const auto at = static_cast<size_t>(layout.q_offset + t * layout.q_stride + i);
        EXPECT_FALSE(owned[at]);
        image[at] = q[static_cast<size_t>(t * q_width + i)];
        owned[at] = true;
      }
      for (int64_t i = 0; i < k_width; ++i) {
        const auto at = static_cast<size_t>(layout.k_offset + t * layout.k_stride + i);
        EXPECT_FALSE(owned[at]) << "q and k rows overlap";
        image[at] = k[static_cast<size_t>(t * k_width + i)];
        owned[at] = true;
      }
    }
    const auto table_bytes = static_cast<size_t>(RopeDeviceTableBytes(table));
    DeviceBuffer cos(table_bytes), sin(table_bytes), data(image.size() * 2),
        dpos(positions.size() * 4), flags(4);
    StatusOr<RopeDeviceTable> device =
        CopyRopeTableToDevice(table, cos.get<float>(), sin.get<float>(), stream_);
    EXPECT_OK(device);
    Upload(data.get<uint16_t>(), image);
    Upload(dpos.get<int32_t>(), positions);
    uint16_t* base = data.get<uint16_t>();
    EXPECT_OK(LaunchRope(*device, base + layout.q_offset, layout.q_stride,
                         kv_heads > 0 ? base + layout.k_offset : nullptr, layout.k_stride,
                         dpos.get<int32_t>(), tokens, q_heads, kv_heads, table.head_dim(),
                         flags.get<uint32_t>(), stream_));
    const Bits after = Download(base, image.size());
    Output out{Bits(q.size()), Bits(k.size()), Download(flags.get<uint32_t>(), 1)[0]};
    int64_t changed_elsewhere = 0;
    for (size_t i = 0; i < after.size(); ++i)
      changed_elsewhere += !owned[i] && after[i] != image[i];
    EXPECT_EQ(changed_elsewhere, 0) << "elements outside the q and k rows were written";
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(after.begin() + layout.q_offset + t * layout.q_stride, q_width,
                  out.q.begin() + t * q_width);
      std::copy_n(after.begin() + layout.k_offset + t * layout.k_stride, k_width,
                  out.k.begin() + t * k_width);
    }
    return out;
  }

  // ApplyRope on the widened inputs, rounded to bf16.
  static Output Reference(const RopeTable& table, const Bits& q, const Bits& k,
                          const std::vector<int32_t>& positions, int32_t q_heads,
                          int32_t kv_heads) {
    std::vector<float> qf(q.size()), kf(k.size());
    for (size_t i = 0; i < q.size(); ++i) qf[i] = Bf16ToF32(q[i]);
    for (size_t i = 0; i < k.size(); ++i) kf[i] = Bf16ToF32(k[i]);
    const std::unique_ptr<ThreadPool> pool = MakePool();
    FP_CHECK(ApplyRope(table, qf.data(), kv_heads > 0 ? kf.data() : nullptr, positions.data(),
                       static_cast<int64_t>(positions.size()), q_heads, kv_heads, table.head_dim(),
                       *pool)
                 .ok());
    Output out{Bits(q.size()), Bits(k.size()), 0};
    ConvertF32ToBf16(qf.data(), qf.size(), out.q.data());
    ConvertF32ToBf16(kf.data(), kf.size(), out.k.data());
    return out;
  }

  std::vector<int32_t> RandomPositions(size_t count, int32_t max_positions) {
    std::vector<int32_t> positions(count);
    for (int32_t& p : positions) p = static_cast<int32_t>(rng_() % max_positions);
    return positions;
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{99};
};

TEST_F(RopeGpuTest, MatchesCpuReferenceBitwise) {
  struct Case {
    RopeConfig config;
    int32_t tokens, q_heads, kv_heads;
  };
  const Case cases[] = {{DefaultConfig(64), 37, 32, 4},  // TinyLlama
                        {Llama3Config(), 19, 8, 2},      // llama3 scaling
                        {DefaultConfig(6), 7, 3, 1},     // odd half: scalar path
                        {DefaultConfig(2), 3, 1, 1},
                        {DefaultConfig(64), 5, 7, 0}};  // no k
  for (const Case& c : cases) {
    ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(c.config));
    const int32_t d = c.config.head_dim;
    const Bits q = RandomBf16(static_cast<size_t>(c.tokens) * c.q_heads * d, rng_);
    const Bits k = RandomBf16(static_cast<size_t>(c.tokens) * c.kv_heads * d, rng_);
    std::vector<int32_t> positions = RandomPositions(c.tokens, c.config.max_positions);
    positions[0] = c.config.max_positions - 1;  // the table's last row
    const Output gpu = Run(table, q, k, positions, c.q_heads, c.kv_heads);
    const Output cpu = Reference(table, q, k, positions, c.q_heads, c.kv_heads);
    EXPECT_EQ(gpu.q, cpu.q) << "head_dim " << d;
    EXPECT_EQ(gpu.k, cpu.k) << "head_dim " << d;
    EXPECT_EQ(gpu.flags, 0u);
  }
}

TEST_F(RopeGpuTest, ScalarPathEqualsVectorPathAndRunsRepeatBitwise) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(DefaultConfig(64)));
  const Bits q = RandomBf16(11 * 32 * 64, rng_);
  const Bits k = RandomBf16(11 * 4 * 64, rng_);
  const std::vector<int32_t> positions = RandomPositions(11, 4096);
  const Output vector = Run(table, q, k, positions, 32, 4);
  const Output scalar = Run(table, q, k, positions, 32, 4, 1);
  const Output again = Run(table, q, k, positions, 32, 4);
  EXPECT_EQ(vector.q, scalar.q);
  EXPECT_EQ(vector.k, scalar.k);
  EXPECT_EQ(vector.q, again.q);
  EXPECT_EQ(vector.k, again.k);
}

// q and k as column ranges of wider rows give the packed layout's bits and write nothing else:
// the fused [tokens, q | k | v] projection output (vector path), padded strides of whole 16-byte
// units (vector path), odd strides and offsets (2-byte path against the packed vector path), an
// odd head size, and q alone.
TEST_F(RopeGpuTest, StridedRowsEqualPackedRowsBitwise) {
  struct Case {
    const char* name;
    RopeConfig config;
    int32_t tokens, q_heads, kv_heads;
    int64_t q_pad, k_pad;  // stride - width (ignored when fused)
    int64_t q_offset;      // elements before the first q row
    bool fused;            // one [tokens, q | k | v] buffer, v left alone
  };
  const Case cases[] = {
      {"fused d64", DefaultConfig(64), 37, 32, 4, 0, 0, 0, true},
      {"fused llama3 d128", Llama3Config(), 19, 8, 2, 0, 0, 0, true},
      {"fused odd half", DefaultConfig(6), 9, 3, 1, 0, 0, 0, true},
      {"padded aligned", DefaultConfig(64), 13, 4, 1, 8, 24, 8, false},
      {"odd strides", DefaultConfig(64), 11, 7, 3, 3, 5, 1, false},
      {"q only", DefaultConfig(64), 5, 5, 0, 16, 0, 0, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(c.config));
    const int64_t d = c.config.head_dim;
    const int64_t q_width = c.q_heads * d, k_width = c.kv_heads * d;
    const Bits q = RandomBf16(static_cast<size_t>(c.tokens * q_width), rng_);
    const Bits k = RandomBf16(static_cast<size_t>(c.tokens * k_width), rng_);
    const std::vector<int32_t> positions = RandomPositions(c.tokens, c.config.max_positions);
    Layout layout{};
    if (c.fused) {
      const int64_t n = q_width + 2 * k_width;
      layout = {0, n, q_width, n, c.tokens * n};
    } else {
      layout.q_offset = c.q_offset;
      layout.q_stride = q_width + c.q_pad;
      // k after the q rows, offset from them like q is from the start (same alignment).
      layout.k_offset = 2 * c.q_offset + c.tokens * layout.q_stride;
      layout.k_stride = k_width + c.k_pad;
      layout.total = layout.k_offset + c.tokens * layout.k_stride + 7;
    }
    const Output strided = RunStrided(table, q, k, positions, c.q_heads, c.kv_heads, layout);
    const Output packed = Run(table, q, k, positions, c.q_heads, c.kv_heads);
    EXPECT_EQ(strided.q, packed.q);
    EXPECT_EQ(strided.k, packed.k);
    EXPECT_EQ(strided.flags, 0u);
    // And both are ApplyRope's bits (the strided rows really were rotated).
    const Output cpu = Reference(table, q, k, positions, c.q_heads, c.kv_heads);
    EXPECT_EQ(strided.q, cpu.q);
    EXPECT_EQ(strided.k, cpu.k);
  }
}

TEST_F(RopeGpuTest, SingleTokenEqualsSameTokenInsideBatches) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(DefaultConfig(64)));
  const size_t q_row = 32 * 64, k_row = 4 * 64;
  const Bits q = RandomBf16(q_row, rng_), k = RandomBf16(k_row, rng_);
  const Output alone = Run(table, q, k, {1234}, 32, 4);
  for (int32_t batch : {1, 2, 33, 256}) {
    Bits bq = RandomBf16(batch * q_row, rng_), bk = RandomBf16(batch * k_row, rng_);
    std::vector<int32_t> positions = RandomPositions(batch, 4096);
    const size_t at = rng_() % batch;
    std::copy(q.begin(), q.end(), bq.begin() + at * q_row);
    std::copy(k.begin(), k.end(), bk.begin() + at * k_row);
    positions[at] = 1234;
    const Output out = Run(table, bq, bk, positions, 32, 4);
    EXPECT_TRUE(std::equal(alone.q.begin(), alone.q.end(), out.q.begin() + at * q_row)) << batch;
    EXPECT_TRUE(std::equal(alone.k.begin(), alone.k.end(), out.k.begin() + at * k_row)) << batch;
  }
}

// ---------------------------------------------------------------------------------------------
// Error paths.

TEST_F(RopeGpuTest, BadPositionsAreClampedAndFlagged) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(DefaultConfig(64)));
  const Bits q = RandomBf16(3 * 2 * 64, rng_), k = RandomBf16(3 * 64, rng_);
  const Output bad = Run(table, q, k, {-5, 7, 4096}, 2, 1);
  EXPECT_EQ(bad.flags, kRopeErrorPosition);
  const Output clamped = Reference(table, q, k, {0, 7, 4095}, 2, 1);
  EXPECT_EQ(bad.q, clamped.q);
  EXPECT_EQ(bad.k, clamped.k);
}

TEST_F(RopeGpuTest, InvalidArgumentsAreRejected) {
  ASSERT_OK_AND_ASSIGN(RopeTable table, RopeTable::Create(DefaultConfig(64)));
  DeviceBuffer cos(RopeDeviceTableBytes(table)), sin(RopeDeviceTableBytes(table)), data(4096);
  ASSERT_OK_AND_ASSIGN(RopeDeviceTable device,
                       CopyRopeTableToDevice(table, cos.get<float>(), sin.get<float>(), stream_));
  EXPECT_THAT(CopyRopeTableToDevice(table, nullptr, sin.get<float>(), stream_).status(),
              StatusIs(StatusCode::kInvalidArgument));
  auto* q = data.get<uint16_t>();
  auto* positions = data.get<int32_t>() + 512;
  auto* flags = data.get<uint32_t>() + 1000;
  EXPECT_THAT(LaunchRope(device, q, q, positions, 1, 1, 1, 32, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));  // head_dim mismatch
  EXPECT_THAT(LaunchRope(device, q, q, positions, -1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, q, positions, 1, -1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, nullptr, positions, 1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, q, nullptr, 1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, q, positions, 1, 1, 1, 64, nullptr, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  // Row strides: below the width (q, then k), past the bound, negative for an absent k.
  EXPECT_THAT(LaunchRope(device, q, 63, q + 64, 64, positions, 1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, 128, q + 64, 63, positions, 1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, kRopeMaxRowStride + 1, nullptr, 0, positions, 1, 1, 0, 64,
                         flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LaunchRope(device, q, 64, nullptr, -1, positions, 1, 1, 0, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  RopeDeviceTable empty = device;
  empty.cos = nullptr;
  EXPECT_THAT(LaunchRope(empty, q, q, positions, 1, 1, 1, 64, flags, stream_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(LaunchRope(device, nullptr, nullptr, nullptr, 0, 1, 1, 64, nullptr, stream_));
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace fp::kernels
