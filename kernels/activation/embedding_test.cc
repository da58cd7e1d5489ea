// Tests for EmbeddingLookup: rows widened by the formats' definitions, repeated ids, and the
// error paths.
#include "kernels/activation/embedding.h"

#include <bit>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

class EmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK_AND_ASSIGN(pool_, ThreadPool::Create(2)); }

  std::unique_ptr<ThreadPool> pool_;
};

TEST_F(EmbeddingTest, Bf16RowsAreWidenedExactly) {
  const int64_t vocab = 5;
  const int64_t dim = 3;
  std::vector<uint16_t> table(static_cast<size_t>(vocab * dim));
  for (size_t i = 0; i < table.size(); ++i) {
    table[i] = static_cast<uint16_t>(0x3f80 + i);  // 1 + i / 128
  }
  const std::vector<int32_t> ids = {4, 0, 4, 2};
  std::vector<float> out(ids.size() * dim);
  ASSERT_OK(
      EmbeddingLookup(ids.data(), table.data(), DType::kBf16, out.data(), 4, vocab, dim, *pool_));
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t j = 0; j < dim; ++j) {
      const double expected = 1.0 + static_cast<double>(ids[t] * dim + j) / 128.0;
      EXPECT_EQ(out[t * dim + static_cast<size_t>(j)], expected) << t << " " << j;
    }
  }
}

TEST_F(EmbeddingTest, F16AndF32Rows) {
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff};  // 1, -2, 2^-24, 65504
  const std::vector<float> f32 = {0.25f, -7.0f, 3.5f, 1e-3f};
  const int32_t id = 1;
  std::vector<float> out(2);
  ASSERT_OK(EmbeddingLookup(&id, f16.data(), DType::kF16, out.data(), 1, 2, 2, *pool_));
  EXPECT_EQ(out, (std::vector<float>{std::ldexp(1.0f, -24), 65504.0f}));
  ASSERT_OK(EmbeddingLookup(&id, f32.data(), DType::kF32, out.data(), 1, 2, 2, *pool_));
  EXPECT_EQ(out, (std::vector<float>{3.5f, 1e-3f}));
}

// Error paths.

TEST_F(EmbeddingTest, BadArgumentsAreRejectedWithoutWriting) {
  const std::vector<uint16_t> table(8, 0x3f80);
  std::vector<float> out(4, -1.0f);
  const std::vector<int32_t> ids = {1, 4};
  const auto code = StatusCode::kInvalidArgument;
  EXPECT_THAT(EmbeddingLookup(ids.data(), table.data(), DType::kBf16, out.data(), 2, 4, 2, *pool_),
              StatusIs(code));
  EXPECT_EQ(out, std::vector<float>(4, -1.0f));
  const int32_t negative = -1;
  EXPECT_THAT(EmbeddingLookup(&negative, table.data(), DType::kBf16, out.data(), 1, 4, 2, *pool_),
              StatusIs(code));
  EXPECT_THAT(EmbeddingLookup(ids.data(), nullptr, DType::kBf16, out.data(), 1, 4, 2, *pool_),
              StatusIs(code));
  EXPECT_THAT(EmbeddingLookup(ids.data(), reinterpret_cast<const char*>(table.data()) + 1,
                              DType::kBf16, out.data(), 1, 4, 2, *pool_),
              StatusIs(code));
  EXPECT_THAT(EmbeddingLookup(ids.data(), table.data(), DType::kBf16, out.data(), 1, 0, 2, *pool_),
              StatusIs(code));
  EXPECT_THAT(
      EmbeddingLookup(ids.data(), table.data(), static_cast<DType>(9), out.data(), 1, 4, 2, *pool_),
      StatusIs(code));
  EXPECT_OK(EmbeddingLookup(nullptr, nullptr, DType::kBf16, nullptr, 0, 4, 2, *pool_));
}

}  // namespace
}  // namespace fp::kernels
