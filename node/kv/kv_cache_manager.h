// KvCacheManager: the paged KV cache's bookkeeping. The cache is a pool of fixed-size blocks of
// kKvBlockSize token rows (vLLM's layout); the backend owns the storage, this class decides
// which block holds which rows of which sequence.
//
// Memory policy: the pool's size comes from a byte budget. A sequence is admitted only once the
// blocks it can ever need (prompt plus maximum output) are reserved for it, so a running sequence
// never runs out of cache and nothing is ever evicted or killed for memory; a sequence that does
// not fit waits (TryReserve returns false). Blocks themselves are handed out lazily as rows are
// written and returned when a sequence is truncated (rollback) or released. The free list hands
// out the lowest free block id first, so the placement is a pure function of the call sequence
// (placement never changes results: the kernels read rows by position, not by address).
//
// Thread-safety: not thread-safe; the engine's scheduler thread owns it.
#pragma once

#include <cstdint>
#include <map>
#include <queue>
#include <span>
#include <vector>

#include "common/base/status.h"

namespace fp::node {

inline constexpr int32_t kKvBlockSize = 16;
// Bounds the pool so block ids fit the kernels' int32 tables with room to spare.
inline constexpr int64_t kMaxKvBlocks = int64_t{1} << 24;

class KvCacheManager {
 public:
  // A pool of min(budget_bytes / bytes_per_block, kMaxKvBlocks) blocks. InvalidArgument when
  // that is zero (a zero budget), or bytes_per_block < 1, or block_size < 1.
  static StatusOr<KvCacheManager> Create(int64_t budget_bytes, int64_t bytes_per_block,
                                         int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  // Blocks neither handed out nor promised to an admitted sequence.
  int32_t unreserved_blocks() const { return num_blocks_ - reserved_blocks_; }
  // Blocks not currently holding rows.
  int32_t free_blocks() const { return static_cast<int32_t>(free_.size()); }
  // Blocks that `rows` token rows occupy.
  int32_t BlocksFor(int64_t rows) const;

  // Reserves room for `max_rows` rows for sequence `seq` (which must not hold a reservation).
  // Returns false, changing nothing, when the unreserved blocks do not suffice.
  bool TryReserve(uint64_t seq, int64_t max_rows);
  bool HasReservation(uint64_t seq) const { return seqs_.contains(seq); }
  // Grows `seq`'s block table to cover `rows` rows. FP_CHECKs that `rows` is within the
  // reservation (the scheduler never asks for more).
  void EnsureRows(uint64_t seq, int64_t rows);
  // Shrinks `seq`'s block table to the blocks that `rows` rows occupy, freeing the rest. The
  // reservation is kept, so the sequence can grow back.
  void Truncate(uint64_t seq, int64_t rows);
  // Frees every block of `seq` and its reservation. FP_CHECKs that it holds one.
  void Release(uint64_t seq);
  // `seq`'s block ids, position p in block table[p / block_size]. Borrowed until the next call
  // that changes `seq`.
  std::span<const int32_t> BlockTable(uint64_t seq) const;

 private:
  KvCacheManager(int32_t num_blocks, int32_t block_size);

  struct Sequence {
    int32_t reserved_blocks = 0;
    std::vector<int32_t> blocks;
  };

  int32_t num_blocks_;
  int32_t block_size_;
  int32_t reserved_blocks_ = 0;  // sum of the sequences' reservations
  std::priority_queue<int32_t, std::vector<int32_t>, std::greater<>> free_;  // lowest id on top
  std::map<uint64_t, Sequence> seqs_;
};

}  // namespace fp::node
