// Tests for Gemm: accuracy against a double-precision product written here, the documented
// summation order (re-implemented here lane by lane), and bitwise invariance to m, the row's
// position, the thread count and repetition.
#include "kernels/gemm/gemm.h"

#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "kernels/base/internal/cpu_dispatch.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

// A weight matrix in one dtype, with its exact values as doubles.
struct Weights {
  DType dtype;
  std::vector<uint16_t> half;  // bf16 or f16 bits
  std::vector<float> full;     // f32
  std::vector<double> exact;   // the value of each element

  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(full.data()) : half.data();
  }
};

// f16 value from the IEEE 754 definition (independent of half.h).
double F16Exact(uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const double magnitude = exponent == 0 ? std::ldexp(bits & 0x3ff, -24)
                                         : std::ldexp((bits & 0x3ff) + 1024, exponent - 25);
  return (bits & 0x8000) != 0 ? -magnitude : magnitude;
}

class GemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int threads : {1, 2, 3}) {
      StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(threads);
      ASSERT_OK(pool);
      pools_.push_back(std::move(pool).value());
    }
  }

  std::vector<float> RandomVector(int64_t count) {
    std::normal_distribution<float> normal;
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) value = normal(rng_);
    return values;
  }

  Weights RandomWeights(DType dtype, int64_t count) {
    Weights weights{dtype, {}, {}, {}};
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (int64_t i = 0; i < count; ++i) {
      const float value = normal(rng_);
      if (dtype == DType::kF32) {
        weights.full.push_back(value);
        weights.exact.push_back(value);
      } else if (dtype == DType::kBf16) {
        const auto bits = static_cast<uint16_t>(std::bit_cast<uint32_t>(value) >> 16);
        weights.half.push_back(bits);
        weights.exact.push_back(std::bit_cast<float>(static_cast<uint32_t>(bits) << 16));
      } else {
        // A random finite f16 of moderate size: sign, exponent 10..19, any mantissa.
        const auto bits = static_cast<uint16_t>(((rng_() & 1) << 15) | ((10 + rng_() % 10) << 10) |
                                                (rng_() & 0x3ff));
        weights.half.push_back(bits);
        weights.exact.push_back(F16Exact(bits));
      }
    }
    return weights;
  }

  ThreadPool& pool(size_t index) { return *pools_[index]; }

  std::mt19937 rng_{2024};
  std::vector<std::unique_ptr<ThreadPool>> pools_;
};

// The documented order, element by element: lane i % 8, then the fixed combine tree.
float DocumentedOrderDot(const float* x, const std::vector<double>& w_exact, int64_t row,
                         int64_t k) {
  float lanes[8] = {};
  for (int64_t i = 0; i < k; ++i) {
    const float product = x[i] * static_cast<float>(w_exact[static_cast<size_t>(row * k + i)]);
    lanes[i % 8] = lanes[i % 8] + product;
  }
  const float a = lanes[0] + lanes[4];
  const float b = lanes[1] + lanes[5];
  const float c = lanes[2] + lanes[6];
  const float d = lanes[3] + lanes[7];
  return (a + c) + (b + d);
}

TEST_F(GemmTest, MatchesDoubleProductAcrossShapesAndDtypes) {
  for (DType dtype : {DType::kF32, DType::kBf16, DType::kF16}) {
    for (int64_t m : {1, 3, 7, 37}) {
      for (int64_t n : {1, 3, 7, 37, 101}) {
        for (int64_t k : {1, 3, 7, 37, 733, 1030}) {
          const std::vector<float> x = RandomVector(m * k);
          const Weights w = RandomWeights(dtype, n * k);
          std::vector<float> y(static_cast<size_t>(m * n));
          ASSERT_OK(Gemm(x.data(), w.data(), dtype, y.data(), m, n, k, pool(1)));
          double worst = 0.0;
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double exact = 0.0;
              double magnitude = 0.0;
              for (int64_t l = 0; l < k; ++l) {
                const double product = double{x[static_cast<size_t>(i * k + l)]} *
                                       w.exact[static_cast<size_t>(j * k + l)];
                exact += product;
                magnitude += std::fabs(product);
              }
              const double error = std::fabs(y[static_cast<size_t>(i * n + j)] - exact);
              const double bound = (k / 8 + 4) * std::ldexp(1.0, -23) * magnitude;
              ASSERT_LE(error, bound) << DTypeName(dtype) << " m=" << m << " n=" << n << " k=" << k
                                      << " at " << i << "," << j;
              worst = std::max(worst, error / (magnitude + 1e-30));
              ASSERT_TRUE(std::isfinite(y[static_cast<size_t>(i * n + j)]));
            }
          }
          RecordProperty("worst_relative_error", std::to_string(worst));
        }
      }
    }
  }
}

TEST_F(GemmTest, FollowsTheDocumentedOrderBitForBit) {
  for (DType dtype : {DType::kF32, DType::kBf16, DType::kF16}) {
    for (int64_t k : {1, 9, 515, 1027, 2048}) {
      for (int64_t m : {1, 2, 5}) {  // m <= 2 widens weights in registers, m = 5 via a panel
        const int64_t n = 53;
        const std::vector<float> x = RandomVector(m * k);
        const Weights w = RandomWeights(dtype, n * k);
        std::vector<float> y(static_cast<size_t>(m * n));
        ASSERT_OK(Gemm(x.data(), w.data(), dtype, y.data(), m, n, k, pool(2)));
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            const float expected = DocumentedOrderDot(x.data() + i * k, w.exact, j, k);
            ASSERT_EQ(std::bit_cast<uint32_t>(y[static_cast<size_t>(i * n + j)]),
                      std::bit_cast<uint32_t>(expected))
                << DTypeName(dtype) << " k=" << k << " at " << i << "," << j;
          }
        }
      }
    }
  }
}

// x = e_0 over k = 16 makes y[j] = w[j, 0] exactly (the other lanes add +0), so y shows the
// widened weight: every finite non-zero f16 and bf16 pattern, through both weight paths.
TEST_F(GemmTest, HalfWeightsWidenExactlyOnEveryPath) {
  const int64_t k = 16;
  for (DType dtype : {DType::kF16, DType::kBf16}) {
    std::vector<uint16_t> patterns;
    std::vector<double> values;
    for (uint32_t bits = 1; bits <= 0xffff; ++bits) {
      const bool f16 = dtype == DType::kF16;
      const uint32_t exponent_mask = f16 ? 0x7c00u : 0x7f80u;
      if ((bits & exponent_mask) == exponent_mask || bits == 0x8000u) continue;  // inf, NaN, -0
      patterns.push_back(static_cast<uint16_t>(bits));
      values.push_back(f16 ? F16Exact(static_cast<uint16_t>(bits))
                           : std::bit_cast<float>(bits << 16));
    }
    const auto n = static_cast<int64_t>(patterns.size());
    std::vector<uint16_t> w(static_cast<size_t>(n * k));
    for (int64_t j = 0; j < n; ++j) {
      std::fill_n(w.begin() + j * k, k, patterns[static_cast<size_t>(j)]);
    }
    for (int64_t m : {1, 3}) {
      std::vector<float> x(static_cast<size_t>(m * k), 0.0f);
      for (int64_t i = 0; i < m; ++i) x[static_cast<size_t>(i * k)] = 1.0f;
      std::vector<float> y(static_cast<size_t>(m * n));
      ASSERT_OK(Gemm(x.data(), w.data(), dtype, y.data(), m, n, k, pool(1)));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_EQ(double{y[static_cast<size_t>(i * n + j)]}, values[static_cast<size_t>(j)])
              << DTypeName(dtype) << " pattern " << patterns[static_cast<size_t>(j)] << " m=" << m;
        }
      }
    }
  }
}

TEST_F(GemmTest, RowIsBitwiseIndependentOfBatchPositionThreadsAndRuns) {
  const int64_t m = 37;
  const int64_t n = 150;
  const int64_t k = 1100;
  const std::vector<float> x = RandomVector(m * k);
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Weights w = RandomWeights(dtype, n * k);
    std::vector<float> batch(static_cast<size_t>(m * n));
    ASSERT_OK(Gemm(x.data(), w.data(), w.dtype, batch.data(), m, n, k, pool(0)));
    for (size_t p = 0; p < pools_.size(); ++p) {
      std::vector<float> again(batch.size());
      ASSERT_OK(Gemm(x.data(), w.data(), w.dtype, again.data(), m, n, k, pool(p)));
      EXPECT_EQ(std::memcmp(again.data(), batch.data(), batch.size() * 4), 0) << "pool " << p;
    }
    for (int64_t i : {int64_t{0}, int64_t{17}, m - 1}) {
      std::vector<float> single(static_cast<size_t>(n));
      ASSERT_OK(Gemm(x.data() + i * k, w.data(), w.dtype, single.data(), 1, n, k, pool(2)));
      EXPECT_EQ(std::memcmp(single.data(), batch.data() + i * n, static_cast<size_t>(n) * 4), 0)
          << "row " << i;
    }
    // The same row inside a different batch (row 3 of [x17, x0, x5, x17, ...]).
    std::vector<float> shuffled;
    for (int64_t i : {17, 0, 5, 17, 36, 2}) {
      shuffled.insert(shuffled.end(), x.begin() + i * k, x.begin() + (i + 1) * k);
    }
    std::vector<float> shuffled_y(static_cast<size_t>(6 * n));
    ASSERT_OK(Gemm(shuffled.data(), w.data(), w.dtype, shuffled_y.data(), 6, n, k, pool(1)));
    EXPECT_EQ(std::memcmp(shuffled_y.data() + 3 * n, batch.data() + 17 * n, n * 4), 0);
    EXPECT_EQ(std::memcmp(shuffled_y.data() + 4 * n, batch.data() + 36 * n, n * 4), 0);
  }
}

// The AVX2 and baseline (SSE2) copies of the kernel give the same bits (on a CPU without AVX2
// both runs take the baseline copy and the test is trivially true).
TEST_F(GemmTest, InstructionSetCopiesAgreeBitwise) {
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    for (int64_t m : {1, 2, 19}) {
      const int64_t n = 67;
      const int64_t k = 1029;
      const std::vector<float> x = RandomVector(m * k);
      const Weights w = RandomWeights(dtype, n * k);
      std::vector<float> fast(static_cast<size_t>(m * n));
      std::vector<float> baseline(fast.size());
      ASSERT_OK(Gemm(x.data(), w.data(), dtype, fast.data(), m, n, k, pool(1)));
      internal::TEST_ForceBaseline(true);
      const Status status = Gemm(x.data(), w.data(), dtype, baseline.data(), m, n, k, pool(1));
      internal::TEST_ForceBaseline(false);
      ASSERT_OK(status);
      EXPECT_EQ(std::memcmp(fast.data(), baseline.data(), fast.size() * 4), 0)
          << DTypeName(dtype) << " m=" << m;
    }
  }
}

TEST_F(GemmTest, ZeroKWritesZerosAndEmptyShapesAreNoOps) {
  std::vector<float> y(6, 5.0f);
  ASSERT_OK(Gemm(nullptr, nullptr, DType::kF32, y.data(), 2, 3, 0, pool(1)));
  for (float value : y) EXPECT_EQ(value, 0.0f);
  EXPECT_OK(Gemm(nullptr, nullptr, DType::kBf16, nullptr, 0, 3, 4, pool(1)));
  EXPECT_OK(Gemm(nullptr, nullptr, DType::kBf16, nullptr, 3, 0, 4, pool(1)));
}

TEST_F(GemmTest, NonFiniteInputsPropagate) {
  std::vector<float> x = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  std::vector<float> w = {1.0f, 1.0f, 1.0f, 1.0f, 0.5f, 1.0f};
  std::vector<float> y(2);
  ASSERT_OK(Gemm(x.data(), w.data(), DType::kF32, y.data(), 1, 2, 3, pool(0)));
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_TRUE(std::isnan(y[1]));
}

// Error paths.

TEST_F(GemmTest, BadArgumentsAreRejected) {
  std::vector<float> x(16, 1.0f);
  std::vector<uint16_t> w(32, 0x3f80);
  std::vector<float> y(16);
  EXPECT_THAT(Gemm(x.data(), w.data(), DType::kBf16, y.data(), -1, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Gemm(x.data(), w.data(), DType::kBf16, y.data(), 2, 2, kGemmMaxDim + 1, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Gemm(nullptr, w.data(), DType::kBf16, y.data(), 2, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Gemm(x.data(), nullptr, DType::kBf16, y.data(), 2, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Gemm(x.data(), w.data(), DType::kBf16, nullptr, 2, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  const void* misaligned = reinterpret_cast<const char*>(w.data()) + 1;
  EXPECT_THAT(Gemm(x.data(), misaligned, DType::kBf16, y.data(), 2, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Gemm(x.data(), w.data(), static_cast<DType>(0), y.data(), 2, 2, 2, pool(0)),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::kernels
