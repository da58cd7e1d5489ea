// The per-step metadata of the CUDA backend: everything the kernels read about a batch (token
// ids, positions, sequence rows, context lengths, block tables, emitting rows, sampling
// parameters) packed into one host buffer that goes to the device in ONE copy per step.
//
// The layout depends only on a StepShape (capacities), never on the batch's contents, so a CUDA
// graph captured for a shape finds every array at the same device address on every replay. A
// decode graph's shape is its batch-size bucket; the rows past the real batch are padding rows
// (PackStep fills them): each has its own KV slot in the backend's scratch blocks (block ids
// >= the engine's pool), attends only to scratch rows, and emits a greedy token nobody reads.
// Padding never touches a real sequence's cache, and batch invariance (docs/engine.md, rule 1)
// means it cannot change a real row's bits.
//
// Host code only (no CUDA): the packing is tested on every machine.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>

#include "common/base/status.h"
#include "kernels/sampling/sampler.h"
#include "node/backend/backend.h"

namespace fp::node::cuda {

// Decode graphs exist for these batch sizes; a decode batch runs in the smallest bucket that
// holds it.
inline constexpr int32_t kDecodeBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
static_assert(kDecodeBuckets[std::size(kDecodeBuckets) - 1] == kMaxBatchSequences);
// Block-table strides are rounded up to a power of two of at least this many entries, so
// sequences growing by one block do not each need a new graph.
inline constexpr int32_t kMinTableStride = 16;

// Capacities of one step's arrays.
struct StepShape {
  int32_t tokens = 0;        // token rows
  int32_t seqs = 0;          // sequences (block-table rows)
  int32_t emits = 0;         // emitting rows
  int32_t table_stride = 0;  // block-table entries per sequence
  bool operator==(const StepShape&) const = default;
};

// Byte offsets of each array in the staging buffer (host and device copies alike).
struct StepLayout {
  size_t tokens = 0;        // [shape.tokens] int32 token ids
  size_t positions = 0;     // [shape.tokens] int32 cache row = RoPE position
  size_t seq_ids = 0;       // [shape.tokens] int32 block-table row of each token
  size_t context_lens = 0;  // [shape.seqs] int32 rows cached after this step
  size_t query_starts = 0;  // [shape.seqs + 1] int32 first token row of each sequence
  size_t block_tables = 0;  // [shape.seqs, shape.table_stride] int32
  size_t emit_rows = 0;     // [shape.emits] int32 token row digested/sampled for each emit
  size_t sampling = 0;      // [shape.emits] kernels::SamplingParams
  size_t steps = 0;         // [shape.emits] uint64 Philox counters
  size_t bytes = 0;         // total

  static StepLayout For(const StepShape& shape);
};

// What a batch needs, measured on the host.
struct BatchExtent {
  int32_t tokens = 0;
  int32_t seqs = 0;
  int32_t emits = 0;
  int32_t max_table = 0;     // longest block table
  bool decode_only = false;  // every sequence has one token and emits
};
BatchExtent MeasureBatch(std::span<const ForwardSequence> batch);

// The smallest power-of-two table stride >= max(max_table, kMinTableStride).
int32_t TableStrideFor(int32_t max_table);
// The smallest decode bucket >= seqs; seqs must be in [1, kMaxBatchSequences] (FP_CHECKed).
int32_t DecodeBucketFor(int32_t seqs);

// Scratch KV rows padding rows use: one per possible padding row, so no two share a slot.
inline constexpr int32_t kMaxPaddingRows = kMaxBatchSequences;
// Scratch blocks the backend allocates after the engine's pool for `block_size`.
int32_t ScratchBlocksFor(int32_t block_size);

// Packs `batch` into `host` (at least StepLayout::For(shape).bytes, 8-byte aligned). `shape`
// must hold the batch (FP_CHECKed); rows beyond the batch become padding rows, which need
// shape.tokens == shape.seqs == shape.emits (a decode shape) and use scratch blocks starting at
// `first_scratch_block` with `block_size` rows each. Unused table entries hold block 0 (valid,
// never read: rows past a sequence's length are never attended to).
void PackStep(std::span<const ForwardSequence> batch, const StepShape& shape,
              int32_t first_scratch_block, int32_t block_size, uint8_t* host);

}  // namespace fp::node::cuda
