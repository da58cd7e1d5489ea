// Tests the state digest against a naive recursive RFC 6962 implementation written here over
// plain SHA-256, independent of common/merkle.
#include "common/leaf/state_digest.h"

#include <bit>
#include <random>

#include <gtest/gtest.h>

#include "common/leaf/quantize.h"
#include "tests/testutil/status_matchers.h"

namespace fp::leaf {
namespace {

using ::fp::testing::StatusIs;

Hash NaiveLeafHash(ByteSpan data) {
  const uint8_t prefix = 0x00;
  return Sha256Parts({ByteSpan(&prefix, 1), data});
}

// RFC 6962 section 2.1: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])) with k the
// largest power of two smaller than n.
Hash NaiveRoot(const std::vector<Bytes>& chunks, size_t begin, size_t end) {
  if (end - begin == 1) return NaiveLeafHash(chunks[begin]);
  size_t split = 1;
  while (split * 2 < end - begin) split *= 2;
  const Hash left = NaiveRoot(chunks, begin, begin + split);
  const Hash right = NaiveRoot(chunks, begin + split, end);
  const uint8_t prefix = 0x01;
  return Sha256Parts({ByteSpan(&prefix, 1), left, right});
}

Hash NaiveStateDigest(ByteSpan bytes) {
  if (bytes.empty()) return Sha256(ByteSpan());
  std::vector<Bytes> chunks;
  for (size_t offset = 0; offset < bytes.size(); offset += 1024) {
    const size_t end = std::min(bytes.size(), offset + 1024);
    chunks.emplace_back(bytes.begin() + offset, bytes.begin() + end);
  }
  return NaiveRoot(chunks, 0, chunks.size());
}

Bytes RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes bytes(size);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

class StateDigestTest : public ::testing::Test {};

TEST_F(StateDigestTest, EmptyInputIsTheEmptyTreeRoot) {
  // SHA-256 of the empty string (FIPS 180-4 example value).
  EXPECT_EQ(HexEncode(StateDigest(ByteSpan())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_F(StateDigestTest, OneChunkIsTheLeafHash) {
  const Bytes bytes = RandomBytes(1024, 1);
  EXPECT_EQ(StateDigest(bytes), NaiveLeafHash(bytes));
  EXPECT_NE(StateDigest(bytes), Sha256(bytes));
}

TEST_F(StateDigestTest, TwoChunksAreOneNode) {
  const Bytes bytes = RandomBytes(1500, 2);
  const Hash left = NaiveLeafHash(ByteSpan(bytes).first(1024));
  const Hash right = NaiveLeafHash(ByteSpan(bytes).subspan(1024));
  const uint8_t prefix = 0x01;
  EXPECT_EQ(StateDigest(bytes), Sha256Parts({ByteSpan(&prefix, 1), left, right}));
}

TEST_F(StateDigestTest, MatchesNaiveRootAtChunkBoundaries) {
  for (size_t size : {1, 2, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 4096, 5127, 7168, 8192, 9217,
                      16 * 1024 + 1, 33 * 1024 - 1}) {
    const Bytes bytes = RandomBytes(size, static_cast<uint32_t>(size));
    EXPECT_EQ(StateDigest(bytes), NaiveStateDigest(bytes)) << "size " << size;
  }
}

TEST_F(StateDigestTest, EveryChunkCountUpTo40MatchesNaiveRoot) {
  const Bytes bytes = RandomBytes(40 * 1024, 40);
  for (size_t chunks = 1; chunks <= 40; ++chunks) {
    const ByteSpan prefix = ByteSpan(bytes).first(chunks * 1024 - 17);
    EXPECT_EQ(StateDigest(prefix), NaiveStateDigest(prefix)) << chunks << " chunks";
  }
}

TEST_F(StateDigestTest, OneFlippedBitChangesTheDigest) {
  Bytes bytes = RandomBytes(4096, 5);
  const Hash original = StateDigest(bytes);
  for (size_t position : {size_t{0}, size_t{1023}, size_t{1024}, size_t{4095}}) {
    bytes[position] ^= 0x01;
    EXPECT_NE(StateDigest(bytes), original) << "byte " << position;
    bytes[position] ^= 0x01;
  }
}

TEST_F(StateDigestTest, TensorDigestRoundsBeforeHashing) {
  const Bytes bytes = RandomBytes(2 * 777, 6);
  Bytes rounded = bytes;
  for (size_t i = 0; i < rounded.size(); i += 2) {
    const auto bits = static_cast<uint16_t>(rounded[i] | rounded[i + 1] << 8);
    const uint16_t q = QuantizeBf16Bits(bits, 4);
    rounded[i] = static_cast<uint8_t>(q);
    rounded[i + 1] = static_cast<uint8_t>(q >> 8);
  }
  ASSERT_OK_AND_ASSIGN(Hash digest, TensorStateDigest(DType::kBf16, 4, bytes));
  EXPECT_EQ(digest, NaiveStateDigest(rounded));
  ASSERT_OK_AND_ASSIGN(Hash native, TensorStateDigest(DType::kBf16, 7, bytes));
  EXPECT_EQ(native, NaiveStateDigest(bytes));
}

// Values that differ only below the kept bits digest equally once rounded, and differently
// without rounding.
TEST_F(StateDigestTest, RoundingAbsorbsLowBitDifferences) {
  const float a[] = {1.0f, -2.5f, 3.14159f, 1e-3f};
  float b[4];
  for (int i = 0; i < 4; ++i) {
    b[i] = std::bit_cast<float>(std::bit_cast<uint32_t>(a[i]) ^ 0x1u);  // last mantissa bit
  }
  const ByteSpan a_bytes(reinterpret_cast<const uint8_t*>(a), sizeof(a));
  const ByteSpan b_bytes(reinterpret_cast<const uint8_t*>(b), sizeof(b));
  ASSERT_OK_AND_ASSIGN(Hash a_rounded, TensorStateDigest(DType::kF32, 10, a_bytes));
  ASSERT_OK_AND_ASSIGN(Hash b_rounded, TensorStateDigest(DType::kF32, 10, b_bytes));
  EXPECT_EQ(a_rounded, b_rounded);
  ASSERT_OK_AND_ASSIGN(Hash a_exact, TensorStateDigest(DType::kF32, 23, a_bytes));
  ASSERT_OK_AND_ASSIGN(Hash b_exact, TensorStateDigest(DType::kF32, 23, b_bytes));
  EXPECT_NE(a_exact, b_exact);
}

TEST_F(StateDigestTest, RowDigestsEqualEachRowAlone) {
  constexpr size_t kRows = 5;
  constexpr size_t kWidth = 733;  // 1466 bytes: rows straddle chunk boundaries
  const Bytes tensor = RandomBytes(kRows * kWidth * 2, 7);
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> digests,
                       RowStateDigests(DType::kF16, 6, tensor, kRows, kWidth));
  ASSERT_EQ(digests.size(), kRows);
  for (size_t row = 0; row < kRows; ++row) {
    const ByteSpan row_bytes = ByteSpan(tensor).subspan(row * kWidth * 2, kWidth * 2);
    ASSERT_OK_AND_ASSIGN(Hash alone, TensorStateDigest(DType::kF16, 6, row_bytes));
    EXPECT_EQ(digests[row], alone) << "row " << row;
  }
}

TEST_F(StateDigestTest, RowTamperingChangesOnlyThatRow) {
  Bytes tensor = RandomBytes(3 * 1000 * 2, 8);
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> before, RowStateDigests(DType::kBf16, 7, tensor, 3, 1000));
  tensor[1000 * 2 + 1234] ^= 0x80;  // row 1
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> after, RowStateDigests(DType::kBf16, 7, tensor, 3, 1000));
  EXPECT_EQ(after[0], before[0]);
  EXPECT_NE(after[1], before[1]);
  EXPECT_EQ(after[2], before[2]);
}

TEST_F(StateDigestTest, ZeroRowsAndZeroWidth) {
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> none, RowStateDigests(DType::kBf16, 7, {}, 0, 512));
  EXPECT_TRUE(none.empty());
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> empty_rows, RowStateDigests(DType::kBf16, 7, {}, 2, 0));
  ASSERT_EQ(empty_rows.size(), 2u);
  EXPECT_EQ(empty_rows[0], Sha256(ByteSpan()));
}

// Error paths.

TEST_F(StateDigestTest, RejectsShapeMismatch) {
  const Bytes tensor(2 * 10 * 2 + 2);
  EXPECT_THAT(RowStateDigests(DType::kBf16, 7, tensor, 2, 10),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(RowStateDigests(DType::kF32, 23, tensor, 2, 10),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(StateDigestTest, RejectsOverflowingShape) {
  EXPECT_THAT(RowStateDigests(DType::kF32, 23, {}, 2, SIZE_MAX / 2),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(RowStateDigests(DType::kF32, 23, {}, SIZE_MAX / 4, 2),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(StateDigestTest, RejectsBadQuantizeBitsAndPartialElements) {
  const Bytes three(3);
  EXPECT_THAT(TensorStateDigest(DType::kBf16, 7, three), StatusIs(StatusCode::kInvalidArgument));
  const Bytes four(4);
  EXPECT_THAT(TensorStateDigest(DType::kBf16, 8, four), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(RowStateDigests(DType::kF16, -1, four, 1, 2), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::leaf
