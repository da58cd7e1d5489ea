// GPU tests of the state digest: the device SHA-256 against OpenSSL and FIPS 180-4 known answers,
// the digest kernel against the CPU reference (fp::leaf::RowStateDigests) bit for bit over
// dtypes, odd widths, row counts and every quantize_bits, and the side-stream pipeline's promise
// that the producer stream never waits.
//
// Without a CUDA device the shared GPU test main (tests/testutil/gpu_test_main.cc) exits 77, which
// CTest reports as skipped, never as passed.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "common/crypto/sha256.h"
#include "common/leaf/state_digest.h"
#include "common/merkle/merkle.h"
#include "kernels/digest/digest_pipeline.h"
#include "kernels/digest/sha256_device.cuh"
#include "kernels/digest/state_digest.cuh"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;
using Clock = std::chrono::steady_clock;

#define ASSERT_CUDA(expr)                                           \
  do {                                                              \
    const cudaError_t fp_test_cuda_error = (expr);                  \
    ASSERT_EQ(fp_test_cuda_error, cudaSuccess)                      \
        << #expr << ": " << cudaGetErrorString(fp_test_cuda_error); \
  } while (false)

// ---------------------------------------------------------------------------------------------
// Helpers.

// A copy from pageable memory may return before its DMA lands, and the tests' streams are not
// ordered after the legacy stream, so every upload waits for the whole device.
void CopyToDevice(void* device, const void* host, size_t bytes) {
  FP_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
  FP_CHECK(cudaDeviceSynchronize() == cudaSuccess);
}

// Spins the stream for `duration_ns` of GPU wall time (sleeping between timer reads).
__global__ void SpinKernel(uint64_t duration_ns) {
  uint64_t start = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    uint64_t now = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start >= duration_ns) break;
    __nanosleep(100000);
  }
}

// One IEEE encoding that rounding treats specially, for a format with `total_bits` bits of which
// `mantissa_bits` are stored mantissa.
uint32_t SpecialEncoding(int total_bits, int mantissa_bits, std::mt19937_64& rng) {
  const uint32_t sign = 1u << (total_bits - 1);
  const uint32_t infinity = (sign - 1) & ~((1u << mantissa_bits) - 1);
  const uint32_t mantissa_mask = (1u << mantissa_bits) - 1;
  const uint32_t random_exponent = (static_cast<uint32_t>(rng()) << mantissa_bits) & infinity;
  switch (rng() % 15) {
    case 0:
      return 0;  // +0
    case 1:
      return sign;  // -0
    case 2:
      return infinity;  // +infinity
    case 3:
      return sign | infinity;  // -infinity
    case 4:
      return infinity | (1u << (mantissa_bits - 1));  // quiet NaN
    case 5:
      return infinity | 1;  // signalling NaN
    case 6:
      return sign | infinity | mantissa_mask;  // negative NaN, full payload
    case 7:
      return 1;  // smallest subnormal
    case 8:
      return sign | 1;  // its negative
    case 9:
      return mantissa_mask;  // largest subnormal
    case 10:
      return mantissa_mask + 1;  // smallest normal
    case 11:
      return infinity - 1;  // largest finite
    case 12:
      return sign | (infinity - 1);  // its negative
    case 13:
      return random_exponent | (1u << (rng() % mantissa_bits));  // a tie for some width
    default:
      return random_exponent | mantissa_mask;  // rounds up into the exponent
  }
}

// Random elements of `dtype`, little-endian, with about a quarter from SpecialEncoding.
Bytes RandomTensor(DType dtype, size_t elements, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int element_bytes = static_cast<int>(DTypeSize(dtype));
  const int mantissa_bits = DTypeMantissaBits(dtype);
  Bytes bytes(elements * element_bytes);
  for (size_t i = 0; i < elements; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng());
    if (rng() % 4 == 0) bits = SpecialEncoding(8 * element_bytes, mantissa_bits, rng);
    for (int b = 0; b < element_bytes; ++b) {
      bytes[i * element_bytes + b] = static_cast<uint8_t>(bits >> (8 * b));
    }
  }
  return bytes;
}

std::vector<Hash> DigestsFromBytes(const Bytes& bytes) {
  std::vector<Hash> digests(bytes.size() / kHashSize);
  for (size_t r = 0; r < digests.size(); ++r) {
    std::memcpy(digests[r].data(), bytes.data() + r * kHashSize, kHashSize);
  }
  return digests;
}

::testing::AssertionResult SameDigests(const std::vector<Hash>& actual,
                                       const std::vector<Hash>& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << actual.size() << " digests, expected " << expected.size();
  }
  for (size_t r = 0; r < actual.size(); ++r) {
    if (actual[r] != expected[r]) {
      return ::testing::AssertionFailure() << "row " << r << ": " << HexEncode(actual[r])
                                           << ", expected " << HexEncode(expected[r]);
    }
  }
  return ::testing::AssertionSuccess();
}

std::string Case(DType dtype, int64_t width, int bits, int64_t rows) {
  return std::string(DTypeName(dtype)) + " width " + std::to_string(width) + " quantize_bits " +
         std::to_string(bits) + " rows " + std::to_string(rows);
}

// ---------------------------------------------------------------------------------------------
// Device SHA-256.

// Payload bytes straight from memory, one byte load at a time: the simplest possible source.
struct ByteSource {
  const uint8_t* bytes;
  uint32_t length;

  __device__ void Fetch(uint32_t block, uint32_t raw[16]) const {
    for (int i = 0; i < 16; ++i) {
      uint32_t group = 0;
      for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t offset = block * 64 + 4 * i + j;
        if (offset < length) group |= static_cast<uint32_t>(bytes[offset]) << (24 - 8 * j);
      }
      raw[i] = group;
    }
  }
  __device__ void Decode(uint32_t*) const {}
};

__device__ void StoreDigest(const uint32_t digest[8], uint8_t* out) {
  for (int i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(digest[i / 4] >> (24 - 8 * (i % 4)));
}

__device__ void LoadDigest(const uint8_t* bytes, uint32_t digest[8]) {
  for (int w = 0; w < 8; ++w) {
    digest[w] = (uint32_t{bytes[4 * w]} << 24) | (uint32_t{bytes[4 * w + 1]} << 16) |
                (uint32_t{bytes[4 * w + 2]} << 8) | bytes[4 * w + 3];
  }
}

// Message i = prefixes[i] || messages[offsets[i], offsets[i] + lengths[i]); one thread each.
__global__ void HashPrefixedKernel(const uint8_t* messages, const uint32_t* offsets,
                                   const uint32_t* lengths, const uint8_t* prefixes, int count,
                                   uint8_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  uint32_t digest[8];
  sha256::HashPrefixed(prefixes[i], lengths[i], ByteSource{messages + offsets[i], lengths[i]},
                       digest);
  StoreDigest(digest, out + 32 * i);
}

// pairs: [count, 64] bytes (left || right); one thread each.
__global__ void HashNodeKernel(const uint8_t* pairs, int count, uint8_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  uint32_t left[8], right[8], digest[8];
  LoadDigest(pairs + 64 * i, left);
  LoadDigest(pairs + 64 * i + 32, right);
  sha256::HashNode(left, right, digest);
  StoreDigest(digest, out + 32 * i);
}

__global__ void HashEmptyKernel(uint8_t* out) {
  uint32_t digest[8];
  sha256::HashEmpty(digest);
  StoreDigest(digest, out);
}

class Sha256DeviceTest : public ::testing::Test {
 protected:
  struct Message {
    uint8_t prefix;
    Bytes payload;
  };

  // Hashes every message on the device and returns the digests.
  std::vector<Hash> HashOnDevice(const std::vector<Message>& messages) {
    Bytes all;
    std::vector<uint32_t> offsets, lengths;
    Bytes prefixes;
    for (const Message& message : messages) {
      offsets.push_back(static_cast<uint32_t>(all.size()));
      lengths.push_back(static_cast<uint32_t>(message.payload.size()));
      prefixes.push_back(message.prefix);
      all.insert(all.end(), message.payload.begin(), message.payload.end());
    }
    const size_t count = messages.size();
    DeviceBuffer bytes(all.size()), offset_buffer(4 * count), length_buffer(4 * count),
        prefix_buffer(count), out(32 * count);
    CopyToDevice(bytes.get(), all.data(), all.size());
    CopyToDevice(offset_buffer.get(), offsets.data(), 4 * count);
    CopyToDevice(length_buffer.get(), lengths.data(), 4 * count);
    CopyToDevice(prefix_buffer.get(), prefixes.data(), count);
    HashPrefixedKernel<<<static_cast<unsigned>((count + 127) / 128), 128>>>(
        bytes.get(), reinterpret_cast<const uint32_t*>(offset_buffer.get()),
        reinterpret_cast<const uint32_t*>(length_buffer.get()), prefix_buffer.get(),
        static_cast<int>(count), out.get());
    FP_CHECK(cudaDeviceSynchronize() == cudaSuccess);
    Bytes host(32 * count);
    FP_CHECK(cudaMemcpy(host.data(), out.get(), host.size(), cudaMemcpyDeviceToHost) ==
             cudaSuccess);
    return DigestsFromBytes(host);
  }
};

TEST_F(Sha256DeviceTest, FipsKnownAnswers) {
  // FIPS 180-4 examples (NIST CSRC "SHA256.pdf"): "abc" and the 448-bit two-block message, each
  // split as a one-byte prefix plus payload.
  const std::string two_block = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  const std::vector<Hash> digests =
      HashOnDevice({{'a', Bytes{'b', 'c'}}, {'a', Bytes(two_block.begin() + 1, two_block.end())}});
  EXPECT_EQ(HexEncode(digests[0]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexEncode(digests[1]),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

  DeviceBuffer out(32);
  HashEmptyKernel<<<1, 1>>>(out.get());
  Hash empty;
  ASSERT_CUDA(cudaMemcpy(empty.data(), out.get(), 32, cudaMemcpyDeviceToHost));
  EXPECT_EQ(HexEncode(empty), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_F(Sha256DeviceTest, PrefixedMessagesOfEveryLengthMatchOpenSsl) {
  // Lengths 0..1100 cross every padding boundary of the leaf (1 + 1024 bytes) and beyond.
  std::mt19937 rng(7);
  std::vector<Message> messages;
  const uint8_t prefixes[] = {0x00, 0x01, 0xa5};
  for (uint32_t length = 0; length <= 1100; ++length) {
    Bytes payload(length);
    for (uint8_t& b : payload) b = static_cast<uint8_t>(rng());
    messages.push_back({prefixes[length % 3], std::move(payload)});
  }
  const std::vector<Hash> digests = HashOnDevice(messages);
  for (size_t i = 0; i < messages.size(); ++i) {
    const Hash expected =
        Sha256Parts({ByteSpan(&messages[i].prefix, 1), ByteSpan(messages[i].payload)});
    ASSERT_EQ(HexEncode(digests[i]), HexEncode(expected)) << "payload length " << i;
  }
}

TEST_F(Sha256DeviceTest, NodeHashMatchesMerkleNodeHash) {
  constexpr int kPairs = 300;
  std::mt19937 rng(11);
  Bytes pairs(64 * kPairs);
  for (uint8_t& b : pairs) b = static_cast<uint8_t>(rng());
  DeviceBuffer input(pairs.size()), out(32 * kPairs);
  ASSERT_CUDA(cudaMemcpy(input.get(), pairs.data(), pairs.size(), cudaMemcpyHostToDevice));
  HashNodeKernel<<<(kPairs + 127) / 128, 128>>>(input.get(), kPairs, out.get());
  Bytes host(32 * kPairs);
  ASSERT_CUDA(cudaMemcpy(host.data(), out.get(), host.size(), cudaMemcpyDeviceToHost));
  const std::vector<Hash> digests = DigestsFromBytes(host);
  for (int i = 0; i < kPairs; ++i) {
    Hash left, right;
    std::memcpy(left.data(), pairs.data() + 64 * i, 32);
    std::memcpy(right.data(), pairs.data() + 64 * i + 32, 32);
    ASSERT_EQ(HexEncode(digests[i]), HexEncode(merkle::NodeHash(left, right))) << "pair " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// The digest kernel.

class StateDigestKernelTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  // Uploads `tensor` at `offset` bytes past a 256-byte-aligned allocation, digests it on the
  // device and returns the digests.
  StatusOr<std::vector<Hash>> GpuDigests(const Bytes& tensor, DType dtype, int bits, int64_t rows,
                                         int64_t width, size_t offset = 0) {
    DeviceBuffer input(tensor.size() + offset), out(32 * static_cast<size_t>(rows));
    CopyToDevice(input.get() + offset, tensor.data(), tensor.size());
    FP_RETURN_IF_ERROR(
        LaunchRowStateDigests(input.get() + offset, dtype, bits, rows, width, out.get(), stream_));
    FP_CHECK(cudaStreamSynchronize(stream_) == cudaSuccess);
    Bytes host(32 * static_cast<size_t>(rows));
    FP_CHECK(cudaMemcpy(host.data(), out.get(), host.size(), cudaMemcpyDeviceToHost) ==
             cudaSuccess);
    return DigestsFromBytes(host);
  }

  cudaStream_t stream_ = nullptr;
};

TEST_F(StateDigestKernelTest, MatchesCpuReferenceForEveryDtypeWidthAndQuantizeBits) {
  const int64_t kWidths[] = {1, 3, 511, 512, 513, 2048, 4096, 8192 + 7};
  const int64_t kRowCycle[] = {1, 2, 3, 7, 37, 64, 129, 257};
  int cases = 0;
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    for (int64_t width : kWidths) {
      for (int bits = 0; bits <= DTypeMantissaBits(dtype); ++bits) {
        const int64_t rows = kRowCycle[cases % std::size(kRowCycle)];
        const Bytes tensor = RandomTensor(dtype, rows * width, 1000 + cases);
        ++cases;
        ASSERT_OK_AND_ASSIGN(const std::vector<Hash> expected,
                             leaf::RowStateDigests(dtype, bits, tensor, rows, width));
        ASSERT_OK_AND_ASSIGN(const std::vector<Hash> actual,
                             GpuDigests(tensor, dtype, bits, rows, width));
        ASSERT_TRUE(SameDigests(actual, expected)) << Case(dtype, width, bits, rows);
      }
    }
  }
  EXPECT_EQ(cases, 8 * (8 + 11 + 24));
}

TEST_F(StateDigestKernelTest, EveryRowCountFrom1To257) {
  constexpr int64_t kRows = 257;
  struct Shape {
    DType dtype;
    int64_t width;
    int bits;
  };
  for (const Shape& shape : {Shape{DType::kBf16, 2048, 7}, Shape{DType::kF16, 513, 4}}) {
    const Bytes tensor = RandomTensor(shape.dtype, kRows * shape.width, 42);
    ASSERT_OK_AND_ASSIGN(
        const std::vector<Hash> expected,
        leaf::RowStateDigests(shape.dtype, shape.bits, tensor, kRows, shape.width));
    const size_t row_bytes = static_cast<size_t>(shape.width) * DTypeSize(shape.dtype);
    for (int64_t rows = 1; rows <= kRows; ++rows) {
      const Bytes prefix(tensor.begin(), tensor.begin() + rows * row_bytes);
      ASSERT_OK_AND_ASSIGN(const std::vector<Hash> actual,
                           GpuDigests(prefix, shape.dtype, shape.bits, rows, shape.width));
      ASSERT_TRUE(SameDigests(actual, std::vector<Hash>(expected.begin(), expected.begin() + rows)))
          << Case(shape.dtype, shape.width, shape.bits, rows);
    }
  }
}

TEST_F(StateDigestKernelTest, MisalignedTensorTakesTheElementPath) {
  // Offsets that rule out 16-byte loads for widths that would otherwise allow them.
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    for (size_t offset : {DTypeSize(dtype), size_t{8}}) {
      const int64_t rows = 5, width = 4096;
      const Bytes tensor = RandomTensor(dtype, rows * width, 77 + offset);
      const int bits = DTypeMantissaBits(dtype) / 2;
      ASSERT_OK_AND_ASSIGN(const std::vector<Hash> expected,
                           leaf::RowStateDigests(dtype, bits, tensor, rows, width));
      ASSERT_OK_AND_ASSIGN(const std::vector<Hash> actual,
                           GpuDigests(tensor, dtype, bits, rows, width, offset));
      EXPECT_TRUE(SameDigests(actual, expected)) << Case(dtype, width, bits, rows);
    }
  }
}

TEST_F(StateDigestKernelTest, RunTwiceIsBitwiseIdentical) {
  const int64_t rows = 129, width = 8192 + 7;
  const Bytes tensor = RandomTensor(DType::kBf16, rows * width, 5);
  ASSERT_OK_AND_ASSIGN(const std::vector<Hash> first,
                       GpuDigests(tensor, DType::kBf16, 3, rows, width));
  ASSERT_OK_AND_ASSIGN(const std::vector<Hash> second,
                       GpuDigests(tensor, DType::kBf16, 3, rows, width));
  EXPECT_TRUE(SameDigests(second, first));
}

TEST_F(StateDigestKernelTest, SingleRowEqualsTheSameRowInsideABatch) {
  std::mt19937 rng(19);
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    const int64_t rows = 37, width = 4096 + 3;
    const int bits = static_cast<int>(rng() % (DTypeMantissaBits(dtype) + 1));
    const Bytes batch = RandomTensor(dtype, rows * width, rng());
    const int64_t position = static_cast<int64_t>(rng() % rows);
    const size_t row_bytes = static_cast<size_t>(width) * DTypeSize(dtype);
    const Bytes alone(batch.begin() + position * row_bytes,
                      batch.begin() + (position + 1) * row_bytes);
    ASSERT_OK_AND_ASSIGN(const std::vector<Hash> in_batch,
                         GpuDigests(batch, dtype, bits, rows, width));
    // Alone, at a 16-byte-aligned address, so it may take a different load path than in the batch.
    ASSERT_OK_AND_ASSIGN(const std::vector<Hash> single, GpuDigests(alone, dtype, bits, 1, width));
    ASSERT_EQ(single.size(), 1u);
    EXPECT_EQ(HexEncode(single[0]), HexEncode(in_batch[position]))
        << Case(dtype, width, bits, rows) << " position " << position;
  }
}

TEST_F(StateDigestKernelTest, WidestRowsLoopEveryThreadOverSeveralLeaves) {
  // Up to 1024 leaves per row against 256 threads per block: each thread hashes several leaves
  // and several pairs per tree level.
  struct Shape {
    DType dtype;
    int64_t rows, width;
  };
  const int64_t max_bf16 = kMaxStateDigestRowBytes / 2;
  for (const Shape& shape : {Shape{DType::kBf16, 2, max_bf16}, Shape{DType::kBf16, 3, max_bf16 - 1},
                             Shape{DType::kF32, 2, 200'000 + 3}}) {
    const int bits = DTypeMantissaBits(shape.dtype) - 1;
    const Bytes tensor = RandomTensor(shape.dtype, shape.rows * shape.width, 9);
    ASSERT_OK_AND_ASSIGN(const std::vector<Hash> expected,
                         leaf::RowStateDigests(shape.dtype, bits, tensor, shape.rows, shape.width));
    ASSERT_OK_AND_ASSIGN(const std::vector<Hash> actual,
                         GpuDigests(tensor, shape.dtype, bits, shape.rows, shape.width));
    EXPECT_TRUE(SameDigests(actual, expected)) << Case(shape.dtype, shape.width, bits, shape.rows);
  }
}

TEST_F(StateDigestKernelTest, EmptyRowsDigestToTheEmptyTreeRoot) {
  ASSERT_OK_AND_ASSIGN(const std::vector<Hash> actual,
                       GpuDigests(Bytes(), DType::kBf16, 7, /*rows=*/3, /*width=*/0));
  for (const Hash& digest : actual) {
    EXPECT_EQ(HexEncode(digest),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  }
}

// Error paths.

TEST_F(StateDigestKernelTest, InvalidArgumentsAreRejectedBeforeLaunch) {
  DeviceBuffer input(4096), out(64);
  const auto launch = [&](const void* tensor, DType dtype, int bits, int64_t rows, int64_t width,
                          uint8_t* digests) {
    return LaunchRowStateDigests(tensor, dtype, bits, rows, width, digests, stream_);
  };
  EXPECT_THAT(launch(input.get(), DType::kBf16, 7, 1, 16, nullptr),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(nullptr, DType::kBf16, 7, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kBf16, 8, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kF16, -1, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), static_cast<DType>(9), 0, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kBf16, 7, -1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kBf16, 7, 1, -16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kBf16, 7, kMaxStateDigestRows + 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kF32, 23, 1, kMaxStateDigestRowBytes / 4 + 1, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get() + 1, DType::kBf16, 7, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get() + 2, DType::kF32, 23, 1, 16, out.get()),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(launch(input.get(), DType::kBf16, 7, 1, 16, out.get() + 2),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(StateDigestKernelTest, ZeroRowsWriteNothing) {
  DeviceBuffer input(64), out(32);
  ASSERT_CUDA(cudaMemset(out.get(), 0xab, 32));
  ASSERT_OK(LaunchRowStateDigests(input.get(), DType::kBf16, 7, 0, 16, out.get(), stream_));
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  Bytes host(32);
  ASSERT_CUDA(cudaMemcpy(host.data(), out.get(), 32, cudaMemcpyDeviceToHost));
  EXPECT_EQ(host, Bytes(32, 0xab));
}

// ---------------------------------------------------------------------------------------------
// The pipeline.

class DigestPipelineTest : public ::testing::Test {
 protected:
  static constexpr int64_t kRows = 32;
  static constexpr int64_t kWidth = 2048;

  void SetUp() override {
    ASSERT_CUDA(cudaStreamCreateWithFlags(&producer_, cudaStreamNonBlocking));
  }
  void TearDown() override { cudaStreamDestroy(producer_); }

  static DigestPipelineOptions Options(int depth) {
    return DigestPipelineOptions{.dtype = DType::kBf16,
                                 .quantize_bits = 7,
                                 .max_rows = kRows,
                                 .max_width = kWidth,
                                 .depth = depth};
  }

  // A random [rows, kWidth] bf16 tensor, on the host and uploaded into `device`.
  static Bytes Upload(const DeviceBuffer& device, int64_t rows, uint64_t seed) {
    Bytes tensor = RandomTensor(DType::kBf16, rows * kWidth, seed);
    CopyToDevice(device.get(), tensor.data(), tensor.size());
    return tensor;
  }

  static std::vector<Hash> Expected(const Bytes& tensor, int64_t rows) {
    return leaf::RowStateDigests(DType::kBf16, 7, tensor, rows, kWidth).value();
  }

  cudaStream_t producer_ = nullptr;
};

TEST_F(DigestPipelineTest, DeliversCorrectDigestsInEnqueueOrder) {
  ASSERT_OK_AND_ASSIGN(auto pipeline, DigestPipeline::Create(Options(3)));
  DeviceBuffer hidden(kRows * kWidth * 2);
  std::vector<Bytes> tensors;
  const int64_t batch_rows[] = {kRows, 1, 17};
  for (int i = 0; i < 3; ++i) {
    tensors.push_back(Upload(hidden, batch_rows[i], 100 + i));
    ASSERT_OK_AND_ASSIGN(const uint64_t ticket,
                         pipeline->Enqueue(hidden.get(), batch_rows[i], kWidth, producer_));
    EXPECT_EQ(ticket, static_cast<uint64_t>(i));
    // The synchronous upload of the next tensor must not race the snapshot of this one.
    ASSERT_CUDA(cudaStreamSynchronize(producer_));
  }
  EXPECT_EQ(pipeline->in_flight(), 3);
  ASSERT_OK_AND_ASSIGN(const DigestBatch first, pipeline->Wait());
  EXPECT_EQ(first.ticket, 0u);
  EXPECT_TRUE(SameDigests(first.digests, Expected(tensors[0], batch_rows[0])));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_OK_AND_ASSIGN(const std::vector<DigestBatch> rest, pipeline->Poll());
  ASSERT_EQ(rest.size(), 2u);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(rest[i - 1].ticket, static_cast<uint64_t>(i));
    EXPECT_TRUE(SameDigests(rest[i - 1].digests, Expected(tensors[i], batch_rows[i])));
  }
  EXPECT_EQ(pipeline->in_flight(), 0);
}

TEST_F(DigestPipelineTest, EnqueueReturnsWhileTheProducerIsBusy) {
  ASSERT_OK_AND_ASSIGN(auto pipeline, DigestPipeline::Create(Options(2)));
  DeviceBuffer hidden(kRows * kWidth * 2), final_state(kRows * kWidth * 2);
  const Bytes tensor = Upload(final_state, kRows, 200);
  // The producer computes for 500 ms, then writes the hidden state the digest must see.
  SpinKernel<<<1, 1, 0, producer_>>>(500'000'000);
  ASSERT_CUDA(cudaMemcpyAsync(hidden.get(), final_state.get(), tensor.size(),
                              cudaMemcpyDeviceToDevice, producer_));
  const auto start = Clock::now();
  ASSERT_OK_AND_ASSIGN(const uint64_t ticket,
                       pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_));
  const auto enqueue_time = Clock::now() - start;
  EXPECT_LT(enqueue_time, std::chrono::milliseconds(100));
  ASSERT_OK_AND_ASSIGN(const std::vector<DigestBatch> early, pipeline->Poll());
  EXPECT_TRUE(early.empty()) << "the digest ran before the producer's hidden state was written";
  ASSERT_OK_AND_ASSIGN(const DigestBatch batch, pipeline->Wait());
  EXPECT_EQ(batch.ticket, ticket);
  EXPECT_TRUE(SameDigests(batch.digests, Expected(tensor, kRows)));
}

TEST_F(DigestPipelineTest, ProducerStreamNeverWaitsForTheSideStream) {
  ASSERT_OK_AND_ASSIGN(auto pipeline, DigestPipeline::Create(Options(2)));
  DeviceBuffer hidden(kRows * kWidth * 2), next_state(kRows * kWidth * 2);
  const Bytes tensor = Upload(hidden, kRows, 300);
  Upload(next_state, kRows, 301);
  // The side stream is busy for 800 ms, so the digest queues behind that work.
  SpinKernel<<<1, 1, 0, pipeline->TEST_side_stream()>>>(800'000'000);
  // Poll while the side stream is busy, on this (producer) thread: a not-ready query must not
  // leak into the next launch's error check.
  ASSERT_OK_AND_ASSIGN(const std::vector<DigestBatch> none, pipeline->Poll());
  EXPECT_TRUE(none.empty());
  ASSERT_OK(pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_).status());
  // The producer goes on to the next step, overwriting its hidden state at once.
  cudaEvent_t step_done;
  ASSERT_CUDA(cudaEventCreateWithFlags(&step_done, cudaEventDisableTiming));
  ASSERT_CUDA(cudaMemcpyAsync(hidden.get(), next_state.get(), tensor.size(),
                              cudaMemcpyDeviceToDevice, producer_));
  ASSERT_CUDA(cudaEventRecord(step_done, producer_));
  const auto start = Clock::now();
  ASSERT_CUDA(cudaEventSynchronize(step_done));
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(300));
  cudaEventDestroy(step_done);
  ASSERT_OK_AND_ASSIGN(const std::vector<DigestBatch> pending, pipeline->Poll());
  EXPECT_TRUE(pending.empty()) << "the side stream was expected to be still busy";
  // The digest is of the state at Enqueue, not of what the producer wrote afterwards.
  ASSERT_OK_AND_ASSIGN(const DigestBatch batch, pipeline->Wait());
  EXPECT_TRUE(SameDigests(batch.digests, Expected(tensor, kRows)));
}

TEST_F(DigestPipelineTest, FullRingIsRefusedNotWaitedOn) {
  ASSERT_OK_AND_ASSIGN(auto pipeline, DigestPipeline::Create(Options(2)));
  DeviceBuffer hidden(kRows * kWidth * 2);
  const Bytes tensor = Upload(hidden, kRows, 400);
  SpinKernel<<<1, 1, 0, pipeline->TEST_side_stream()>>>(300'000'000);
  ASSERT_OK(pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_).status());
  ASSERT_OK(pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_).status());
  const auto start = Clock::now();
  EXPECT_THAT(pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_),
              StatusIs(StatusCode::kResourceExhausted));
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(100));
  for (uint64_t ticket = 0; ticket < 2; ++ticket) {
    ASSERT_OK_AND_ASSIGN(const DigestBatch batch, pipeline->Wait());
    EXPECT_EQ(batch.ticket, ticket);
    EXPECT_TRUE(SameDigests(batch.digests, Expected(tensor, kRows)));
  }
  // The freed slots take new batches, and tickets keep counting.
  ASSERT_OK_AND_ASSIGN(const uint64_t ticket,
                       pipeline->Enqueue(hidden.get(), kRows, kWidth, producer_));
  EXPECT_EQ(ticket, 2u);
  ASSERT_OK(pipeline->Wait().status());
}

// Error paths.

TEST_F(DigestPipelineTest, InvalidOptionsAreRejected) {
  const auto with = [](auto change) {
    DigestPipelineOptions options = Options(2);
    change(options);
    return DigestPipeline::Create(options).status();
  };
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.quantize_bits = 8; }),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.max_rows = 0; }),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.max_width = 0; }),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.max_width = kMaxStateDigestRowBytes; }),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.depth = 0; }),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](DigestPipelineOptions& o) { o.depth = kMaxDigestPipelineDepth + 1; }),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(DigestPipelineTest, BadBatchesAndEmptyWaitAreRejected) {
  ASSERT_OK_AND_ASSIGN(auto pipeline, DigestPipeline::Create(Options(2)));
  DeviceBuffer hidden(kRows * kWidth * 2);
  EXPECT_THAT(pipeline->Enqueue(nullptr, kRows, kWidth, producer_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(pipeline->Enqueue(hidden.get(), kRows + 1, kWidth, producer_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(pipeline->Enqueue(hidden.get(), 0, kWidth, producer_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(pipeline->Enqueue(hidden.get(), kRows, kWidth + 1, producer_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(pipeline->Wait(), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(pipeline->in_flight(), 0);
}

}  // namespace
}  // namespace fp::kernels
