// Virtual Merkle tree reader; see virtual_tree.h.
#include "common/merkle/internal/virtual_tree.h"

#include <string>

namespace fp::merkle::internal {

VirtualTreeReader::VirtualTreeReader(uint64_t size, const std::vector<uint64_t>& special_indices)
    : size_(size) {
  uniform_[0] = UniformLeafHash();
  for (int level = 1; level < kMaxLevels; ++level) {
    uniform_[level] = NodeHash(uniform_[level - 1], uniform_[level - 1]);
  }
  for (uint64_t index : special_indices) {
    FP_CHECK(index < size_);
    special_nodes_[{0, index}] = SpecialLeafHash(index);
  }
  // Level by level, so both children of a node are final before the node is hashed.
  for (uint32_t level = 1; level < static_cast<uint32_t>(kMaxLevels); ++level) {
    for (uint64_t leaf : special_indices) {
      const uint64_t index = leaf >> level;
      if (index >= (size_ >> level) || special_nodes_.contains({level, index})) continue;
      special_nodes_[{level, index}] =
          NodeHash(Lookup(level - 1, 2 * index), Lookup(level - 1, 2 * index + 1));
    }
  }
}

Hash VirtualTreeReader::UniformLeafHash() { return LeafHash(AsBytes("fieldprint virtual leaf")); }

Hash VirtualTreeReader::SpecialLeafHash(uint64_t index) {
  Bytes data;
  AppendU64(data, index);
  return LeafHash(data);
}

Hash VirtualTreeReader::LeafHashAt(uint64_t index) const {
  FP_CHECK(index < size_);
  return Lookup(0, index);
}

StatusOr<Hash> VirtualTreeReader::ReadNode(uint32_t level, uint64_t index) const {
  if (level >= static_cast<uint32_t>(kMaxLevels) || index >= (size_ >> level)) {
    return NotFoundError("node (" + std::to_string(level) + ", " + std::to_string(index) +
                         ") is not inside a virtual tree of " + std::to_string(size_) + " leaves");
  }
  return Lookup(level, index);
}

Hash VirtualTreeReader::Lookup(uint32_t level, uint64_t index) const {
  auto it = special_nodes_.find({level, index});
  return it == special_nodes_.end() ? uniform_[level] : it->second;
}

}  // namespace fp::merkle::internal
