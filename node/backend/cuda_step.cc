// Per-step metadata packing; see cuda_step.h.
#include "node/backend/cuda_step.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace fp::node::cuda {
namespace {

// Every array starts 16-byte aligned, so kernels may load them with vector loads.
size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

template <typename T>
T* At(uint8_t* host, size_t offset) {
  return reinterpret_cast<T*>(host + offset);
}

}  // namespace

StepLayout StepLayout::For(const StepShape& shape) {
  FP_CHECK(shape.tokens >= 0 && shape.seqs >= 0 && shape.emits >= 0 && shape.table_stride >= 0);
  const size_t t = static_cast<size_t>(shape.tokens);
  const size_t s = static_cast<size_t>(shape.seqs);
  const size_t e = static_cast<size_t>(shape.emits);
  StepLayout l;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += Align16(bytes);
    return offset;
  };
  l.tokens = take(t * 4);
  l.positions = take(t * 4);
  l.seq_ids = take(t * 4);
  l.context_lens = take(s * 4);
  l.query_starts = take((s + 1) * 4);
  l.block_tables = take(s * static_cast<size_t>(shape.table_stride) * 4);
  l.emit_rows = take(e * 4);
  l.sampling = take(e * sizeof(kernels::SamplingParams));
  l.steps = take(e * 8);
  l.bytes = at;
  return l;
}

BatchExtent MeasureBatch(std::span<const ForwardSequence> batch) {
  BatchExtent x;
  x.decode_only = !batch.empty();
  for (const ForwardSequence& s : batch) {
    x.tokens += static_cast<int32_t>(s.tokens.size());
    x.seqs += 1;
    x.emits += s.emit ? 1 : 0;
    x.max_table = std::max(x.max_table, static_cast<int32_t>(s.block_table.size()));
    x.decode_only = x.decode_only && s.tokens.size() == 1 && s.emit;
  }
  return x;
}

int32_t TableStrideFor(int32_t max_table) {
  FP_CHECK(max_table >= 0);
  return static_cast<int32_t>(
      std::bit_ceil(static_cast<uint32_t>(std::max(max_table, kMinTableStride))));
}

int32_t DecodeBucketFor(int32_t seqs) {
  FP_CHECK(seqs >= 1 && seqs <= kMaxBatchSequences);
  for (int32_t bucket : kDecodeBuckets) {
    if (bucket >= seqs) return bucket;
  }
  FP_CHECK(false);
  return 0;
}

int32_t ScratchBlocksFor(int32_t block_size) {
  FP_CHECK(block_size >= 1);
  return (kMaxPaddingRows + block_size - 1) / block_size;
}

void PackStep(std::span<const ForwardSequence> batch, const StepShape& shape,
              int32_t first_scratch_block, int32_t block_size, uint8_t* host) {
  const BatchExtent x = MeasureBatch(batch);
  FP_CHECK(x.tokens <= shape.tokens && x.seqs <= shape.seqs && x.emits <= shape.emits);
  FP_CHECK(x.max_table <= shape.table_stride);
  const int32_t padding = shape.seqs - x.seqs;
  FP_CHECK(padding == 0 ||
           (shape.tokens - x.tokens == padding && shape.emits - x.emits == padding));
  FP_CHECK(padding <= kMaxPaddingRows);
  const StepLayout l = StepLayout::For(shape);
  std::memset(host, 0, l.bytes);
  auto* tokens = At<int32_t>(host, l.tokens);
  auto* positions = At<int32_t>(host, l.positions);
  auto* seq_ids = At<int32_t>(host, l.seq_ids);
  auto* context_lens = At<int32_t>(host, l.context_lens);
  auto* query_starts = At<int32_t>(host, l.query_starts);
  auto* tables = At<int32_t>(host, l.block_tables);
  auto* emit_rows = At<int32_t>(host, l.emit_rows);
  auto* sampling = At<kernels::SamplingParams>(host, l.sampling);
  auto* steps = At<uint64_t>(host, l.steps);
  const size_t stride = static_cast<size_t>(shape.table_stride);
  int32_t row = 0, emit = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardSequence& s = batch[i];
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    query_starts[i] = row;
    context_lens[i] = s.start_row + n;
    std::copy(s.block_table.begin(), s.block_table.end(), tables + i * stride);
    for (int32_t j = 0; j < n; ++j, ++row) {
      tokens[row] = s.tokens[static_cast<size_t>(j)];
      positions[row] = s.start_row + j;
      seq_ids[row] = static_cast<int32_t>(i);
    }
    if (s.emit) {
      emit_rows[emit] = row - 1;
      sampling[emit] = s.sampling;
      steps[emit] = s.step;
      ++emit;
    }
  }
  // Padding row p: token 0 at position p % block_size of scratch block p / block_size, greedy.
  for (int32_t p = 0; p < padding; ++p, ++row, ++emit) {
    const int32_t seq = x.seqs + p;
    const int32_t slot = p % block_size;
    query_starts[seq] = row;
    context_lens[seq] = slot + 1;
    std::fill(tables + static_cast<size_t>(seq) * stride,
              tables + static_cast<size_t>(seq + 1) * stride, first_scratch_block + p / block_size);
    tokens[row] = 0;
    positions[row] = slot;
    seq_ids[row] = seq;
    emit_rows[emit] = row;
    sampling[emit] = kernels::SamplingParams{0.0f, 0, 1.0f, 0};
    steps[emit] = 0;
  }
  query_starts[shape.seqs] = row;
}

}  // namespace fp::node::cuda
