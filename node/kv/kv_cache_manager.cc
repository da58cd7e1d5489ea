// Block bookkeeping of the paged KV cache; see kv_cache_manager.h.
#include "node/kv/kv_cache_manager.h"

#include <algorithm>

namespace fp::node {

StatusOr<KvCacheManager> KvCacheManager::Create(int64_t budget_bytes, int64_t bytes_per_block,
                                                int32_t block_size) {
  if (bytes_per_block < 1 || block_size < 1) {
    return InvalidArgumentError("KV cache: block size and bytes per block must be positive");
  }
  int64_t blocks = std::min(std::max<int64_t>(budget_bytes, 0) / bytes_per_block, kMaxKvBlocks);
  if (blocks == 0) {
    return InvalidArgumentError("KV cache budget of " + std::to_string(budget_bytes) +
                                " bytes holds no block (one block of " +
                                std::to_string(block_size) + " tokens needs " +
                                std::to_string(bytes_per_block) + " bytes)");
  }
  return KvCacheManager(static_cast<int32_t>(blocks), block_size);
}

KvCacheManager::KvCacheManager(int32_t num_blocks, int32_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  for (int32_t b = 0; b < num_blocks; ++b) free_.push(b);
}

int32_t KvCacheManager::BlocksFor(int64_t rows) const {
  FP_CHECK(rows >= 0);
  return static_cast<int32_t>((rows + block_size_ - 1) / block_size_);
}

bool KvCacheManager::TryReserve(uint64_t seq, int64_t max_rows) {
  FP_CHECK(!seqs_.contains(seq));
  if (max_rows > int64_t{num_blocks_} * block_size_) return false;
  int32_t blocks = BlocksFor(max_rows);
  if (blocks > unreserved_blocks()) return false;
  reserved_blocks_ += blocks;
  seqs_[seq].reserved_blocks = blocks;
  return true;
}

void KvCacheManager::EnsureRows(uint64_t seq, int64_t rows) {
  auto it = seqs_.find(seq);
  FP_CHECK(it != seqs_.end());
  Sequence& s = it->second;
  int32_t needed = BlocksFor(rows);
  FP_CHECK_MSG(needed <= s.reserved_blocks, "KV rows beyond the sequence's reservation");
  while (static_cast<int32_t>(s.blocks.size()) < needed) {
    // Reservations never exceed the pool, so a reserved block is always free.
    FP_CHECK(!free_.empty());
    s.blocks.push_back(free_.top());
    free_.pop();
  }
}

void KvCacheManager::Truncate(uint64_t seq, int64_t rows) {
  auto it = seqs_.find(seq);
  FP_CHECK(it != seqs_.end());
  Sequence& s = it->second;
  size_t keep = static_cast<size_t>(BlocksFor(rows));
  while (s.blocks.size() > keep) {
    free_.push(s.blocks.back());
    s.blocks.pop_back();
  }
}

void KvCacheManager::Release(uint64_t seq) {
  auto it = seqs_.find(seq);
  FP_CHECK(it != seqs_.end());
  for (int32_t b : it->second.blocks) free_.push(b);
  reserved_blocks_ -= it->second.reserved_blocks;
  seqs_.erase(it);
}

std::span<const int32_t> KvCacheManager::BlockTable(uint64_t seq) const {
  auto it = seqs_.find(seq);
  FP_CHECK(it != seqs_.end());
  return it->second.blocks;
}

}  // namespace fp::node
