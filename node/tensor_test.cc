// Tests for Tensor: shapes, ownership and copies.
#include "node/tensor.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

namespace fp::node {
namespace {

class TensorTest : public ::testing::Test {};

TEST_F(TensorTest, ZerosOwnsAlignedZeroedStorage) {
  Tensor t = Tensor::Zeros(DType::kBf16, {3, 5});
  EXPECT_TRUE(t.owning());
  EXPECT_EQ(t.elements(), 15);
  EXPECT_EQ(t.bytes_size(), 30u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(t.data_as<uint16_t>()[i], 0);
  EXPECT_EQ(t.dim(1), 5);
}

TEST_F(TensorTest, ViewBorrowsAndCloneCopies) {
  float values[4] = {1, 2, 3, 4};
  Tensor view = Tensor::View(DType::kF32, {2, 2}, values);
  EXPECT_FALSE(view.owning());
  EXPECT_EQ(view.data(), values);
  Tensor copy = view.Clone();
  EXPECT_TRUE(copy.owning());
  values[0] = 9;
  EXPECT_EQ(copy.data_as<float>()[0], 1.0f);
  EXPECT_EQ(view.data_as<float>()[0], 9.0f);
}

TEST_F(TensorTest, ShapeHelpers) {
  EXPECT_EQ(ShapeElements({2, 3, 4}), 24);
  EXPECT_EQ(ShapeElements({}), 1);
  EXPECT_EQ(ShapeElements({5, 0}), 0);
  EXPECT_EQ(ShapeElements({-1}), -1);
  EXPECT_EQ(ShapeElements({std::numeric_limits<int64_t>::max(), 2}), -1);
  EXPECT_EQ(ShapeElements(Shape(9, 1)), -1);  // rank above kMaxTensorRank
  EXPECT_EQ(ShapeString({2, 3}), "[2, 3]");
}

TEST_F(TensorTest, MoveTransfersStorage) {
  Tensor a = Tensor::Zeros(DType::kF32, {4});
  const void* p = a.data();
  Tensor b = std::move(a);
  EXPECT_EQ(b.data(), p);
}

// Error paths.

TEST_F(TensorTest, WritingThroughAViewAborts) {
  float values[1] = {0};
  Tensor view = Tensor::View(DType::kF32, {1}, values);
  EXPECT_DEATH(view.mutable_data(), "read-only");
}

TEST_F(TensorTest, WrongElementTypeAborts) {
  Tensor t = Tensor::Zeros(DType::kBf16, {1});
  EXPECT_DEATH(t.data_as<float>(), "sizeof");
}

}  // namespace
}  // namespace fp::node
