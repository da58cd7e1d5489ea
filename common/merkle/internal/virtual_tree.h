// A NodeReader over a virtual Merkle tree of up to 2^64 - 1 leaves, for tests and benchmarks that
// need trees far too large to store (sizes near 2^32 and 2^63).
//
// Every leaf has the same hash except a few "special" indices, each with its own hash. A node
// with no special leaf below it is one of 64 precomputed uniform hashes (the perfect subtree of
// 2^level uniform leaves); the nodes above special leaves, at most 64 per special leaf, are
// hashed once at construction. Construction costs O(levels x specials) hashes and ReadNode one
// map lookup, so the reader adds little to the cost of the proof code it feeds.
//
// Thread-safety: immutable after construction; safe to share between threads.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "common/merkle/merkle.h"

namespace fp::merkle::internal {

class VirtualTreeReader : public NodeReader {
 public:
  // A tree of `size` leaves whose special leaves are `special_indices` (any order, duplicates
  // allowed). FP_CHECKs that every special index is below size.
  VirtualTreeReader(uint64_t size, const std::vector<uint64_t>& special_indices);

  // LeafHash("fieldprint virtual leaf"): the hash of every leaf that is not special.
  static Hash UniformLeafHash();
  // LeafHash of the 8-byte big-endian index: distinct for every special leaf.
  static Hash SpecialLeafHash(uint64_t index);

  uint64_t size() const { return size_; }
  // The leaf hash at `index` (FP_CHECKs index < size).
  Hash LeafHashAt(uint64_t index) const;
  // NotFound unless the node lies wholly inside the tree's `size` leaves.
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;

 private:
  // The hash of a node inside the tree.
  Hash Lookup(uint32_t level, uint64_t index) const;

  uint64_t size_;
  std::array<Hash, kMaxLevels> uniform_;  // [level]: root of 2^level uniform leaves
  // Every node inside the tree with a special leaf below it, by (level, index).
  std::map<std::pair<uint32_t, uint64_t>, Hash> special_nodes_;
};

}  // namespace fp::merkle::internal
