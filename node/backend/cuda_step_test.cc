// Tests for the CUDA backend's per-step metadata packing (host code, runs everywhere): the
// arrays of a mixed batch, the padding rows of a decode bucket (own scratch slots, never a real
// block), the layout's alignment and disjointness, and the bucket and stride rules.
#include "node/backend/cuda_step.h"

#include <cstring>
#include <set>
#include <vector>

#include <gtest/gtest.h>

namespace fp::node::cuda {
namespace {

class CudaStepTest : public ::testing::Test {
 protected:
  // 8-byte aligned storage for a packed step.
  static std::vector<uint64_t> Storage(const StepShape& shape) {
    return std::vector<uint64_t>(StepLayout::For(shape).bytes / 8 + 1, 0xdeadbeefdeadbeefu);
  }
  template <typename T>
  static const T* Field(const std::vector<uint64_t>& storage, size_t offset) {
    return reinterpret_cast<const T*>(reinterpret_cast<const uint8_t*>(storage.data()) + offset);
  }
};

TEST_F(CudaStepTest, MixedBatchArraysFollowTheSequences) {
  std::vector<int32_t> a = {5, 6, 7}, b = {9}, table_a = {4, 2}, table_b = {7};
  std::vector<ForwardSequence> batch(2);
  batch[0] = {a, 14, table_a, true, {0.5f, 3, 0.9f, 11}, 2};
  batch[1] = {b, 0, table_b, false, {0, 0, 1, 0}, 0};
  const StepShape shape{4, 2, 1, 16};
  std::vector<uint64_t> storage = Storage(shape);
  PackStep(batch, shape, 100, 16, reinterpret_cast<uint8_t*>(storage.data()));
  const StepLayout l = StepLayout::For(shape);
  const int32_t* tokens = Field<int32_t>(storage, l.tokens);
  const int32_t* positions = Field<int32_t>(storage, l.positions);
  const int32_t* seq_ids = Field<int32_t>(storage, l.seq_ids);
  EXPECT_EQ(std::vector<int32_t>(tokens, tokens + 4), (std::vector<int32_t>{5, 6, 7, 9}));
  EXPECT_EQ(std::vector<int32_t>(positions, positions + 4), (std::vector<int32_t>{14, 15, 16, 0}));
  EXPECT_EQ(std::vector<int32_t>(seq_ids, seq_ids + 4), (std::vector<int32_t>{0, 0, 0, 1}));
  const int32_t* lens = Field<int32_t>(storage, l.context_lens);
  EXPECT_EQ(lens[0], 17);
  EXPECT_EQ(lens[1], 1);
  const int32_t* starts = Field<int32_t>(storage, l.query_starts);
  EXPECT_EQ(std::vector<int32_t>(starts, starts + 3), (std::vector<int32_t>{0, 3, 4}));
  const int32_t* tables = Field<int32_t>(storage, l.block_tables);
  EXPECT_EQ(tables[0], 4);
  EXPECT_EQ(tables[1], 2);
  EXPECT_EQ(tables[2], 0);  // unused entries: block 0
  EXPECT_EQ(tables[16], 7);
  EXPECT_EQ(Field<int32_t>(storage, l.emit_rows)[0], 2);  // a's last token
  const auto* sampling = Field<kernels::SamplingParams>(storage, l.sampling);
  EXPECT_EQ(sampling[0].temperature, 0.5f);
  EXPECT_EQ(sampling[0].top_k, 3);
  EXPECT_EQ(sampling[0].seed, 11u);
  EXPECT_EQ(Field<uint64_t>(storage, l.steps)[0], 2u);
}

TEST_F(CudaStepTest, PaddingRowsUseDistinctScratchSlots) {
  std::vector<int32_t> t0 = {1}, t1 = {2}, t2 = {3}, table = {0, 1};
  std::vector<ForwardSequence> batch(3);
  for (size_t i = 0; i < 3; ++i) {
    batch[i] = {i == 0 ? t0 : (i == 1 ? t1 : t2), 20, table, true, {0, 0, 1, 0}, 1};
  }
  const int32_t bucket = DecodeBucketFor(3);
  ASSERT_EQ(bucket, 4);
  const StepShape big{32, 32, 32, 16};
  std::vector<uint64_t> storage = Storage(big);
  const int32_t block_size = 4, first_scratch = 50;
  PackStep(batch, big, first_scratch, block_size, reinterpret_cast<uint8_t*>(storage.data()));
  const StepLayout l = StepLayout::For(big);
  const int32_t* tables = Field<int32_t>(storage, l.block_tables);
  const int32_t* positions = Field<int32_t>(storage, l.positions);
  const int32_t* lens = Field<int32_t>(storage, l.context_lens);
  const int32_t* emit_rows = Field<int32_t>(storage, l.emit_rows);
  std::set<std::pair<int32_t, int32_t>> slots;
  for (int32_t row = 3; row < 32; ++row) {
    const int32_t block = tables[row * 16];
    EXPECT_GE(block, first_scratch);
    EXPECT_LT(block, first_scratch + ScratchBlocksFor(block_size));
    EXPECT_LT(positions[row], block_size);
    EXPECT_EQ(lens[row], positions[row] + 1);
    EXPECT_EQ(emit_rows[row], row);
    EXPECT_TRUE(slots.insert({block, positions[row]}).second) << "row " << row;
  }
  // Every scratch row a padding row attends to was written by a padding row of the same step.
  for (int32_t row = 3; row < 32; ++row) {
    for (int32_t p = 0; p <= positions[row]; ++p) {
      EXPECT_TRUE(slots.count({tables[row * 16], p})) << row << " " << p;
    }
  }
  EXPECT_EQ(Field<int32_t>(storage, l.query_starts)[32], 32);
}

TEST_F(CudaStepTest, LayoutArraysAreAlignedAndDisjoint) {
  const StepShape shape{37, 5, 3, 17};
  const StepLayout l = StepLayout::For(shape);
  const std::vector<std::pair<size_t, size_t>> arrays = {
      {l.tokens, 37 * 4},      {l.positions, 37 * 4},
      {l.seq_ids, 37 * 4},     {l.context_lens, 5 * 4},
      {l.query_starts, 6 * 4}, {l.block_tables, 5 * 17 * 4},
      {l.emit_rows, 3 * 4},    {l.sampling, 3 * sizeof(kernels::SamplingParams)},
      {l.steps, 3 * 8}};
  for (size_t i = 0; i < arrays.size(); ++i) {
    EXPECT_EQ(arrays[i].first % 16, 0u) << i;
    EXPECT_LE(arrays[i].first + arrays[i].second, l.bytes) << i;
    if (i > 0) {
      EXPECT_GE(arrays[i].first, arrays[i - 1].first + arrays[i - 1].second) << i;
    }
  }
}

TEST_F(CudaStepTest, BucketsAndStrides) {
  EXPECT_EQ(DecodeBucketFor(1), 1);
  EXPECT_EQ(DecodeBucketFor(2), 2);
  EXPECT_EQ(DecodeBucketFor(33), 64);
  EXPECT_EQ(DecodeBucketFor(256), 256);
  EXPECT_EQ(TableStrideFor(0), kMinTableStride);
  EXPECT_EQ(TableStrideFor(16), 16);
  EXPECT_EQ(TableStrideFor(17), 32);
  EXPECT_EQ(TableStrideFor(129), 256);
  EXPECT_EQ(ScratchBlocksFor(16), 16);
  EXPECT_EQ(ScratchBlocksFor(1), kMaxPaddingRows);
}

TEST_F(CudaStepTest, MeasureBatchTellsDecodeFromPrefill) {
  std::vector<int32_t> one = {1}, two = {1, 2}, table = {0, 1, 2};
  ForwardSequence decode{one, 5, table, true, {0, 0, 1, 0}, 1};
  ForwardSequence silent{one, 5, table, false, {0, 0, 1, 0}, 1};
  ForwardSequence chunk{two, 0, table, true, {0, 0, 1, 0}, 0};
  std::vector<ForwardSequence> decodes = {decode, decode};
  EXPECT_TRUE(MeasureBatch(decodes).decode_only);
  std::vector<ForwardSequence> with_silent = {decode, silent};
  EXPECT_FALSE(MeasureBatch(with_silent).decode_only);
  std::vector<ForwardSequence> mixed = {decode, chunk};
  const BatchExtent x = MeasureBatch(mixed);
  EXPECT_FALSE(x.decode_only);
  EXPECT_EQ(x.tokens, 3);
  EXPECT_EQ(x.seqs, 2);
  EXPECT_EQ(x.emits, 2);
  EXPECT_EQ(x.max_table, 3);
}

}  // namespace
}  // namespace fp::node::cuda
