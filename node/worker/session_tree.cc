// SessionTree; see session_tree.h.
#include "node/worker/session_tree.h"

#include <string>

namespace fp::node::worker {

void SessionTree::Append(const Hash& leaf_hash) {
  std::vector<merkle::Node> completed;
  frontier_.Append(leaf_hash, &completed);
  for (const merkle::Node& node : completed) {
    if (levels_.size() <= node.level) levels_.resize(node.level + 1);
    // Nodes complete left to right on each level, so the next one always goes at the end.
    FP_CHECK(levels_[node.level].size() == node.index);
    levels_[node.level].push_back(node.hash);
  }
}

void SessionTree::Truncate(uint64_t size) {
  FP_CHECK(size <= frontier_.size());
  if (size == frontier_.size()) return;
  for (size_t level = 0; level < levels_.size(); ++level) {
    // Node (level, i) lies inside the first `size` leaves iff (i + 1) << level <= size.
    levels_[level].resize(level < 64 ? size >> level : 0);
  }
  std::vector<Hash> peaks;
  for (int level = 63; level >= 0; --level) {
    if ((size >> level & 1) == 0) continue;
    peaks.push_back(levels_[static_cast<size_t>(level)][(size >> level) - 1]);
  }
  StatusOr<merkle::Frontier> frontier = merkle::Frontier::FromPeaks(size, std::move(peaks));
  FP_CHECK(frontier.ok());
  frontier_ = std::move(frontier).value();
}

StatusOr<Hash> SessionTree::RootAt(uint64_t size) const {
  if (size > frontier_.size()) {
    return OutOfRangeError("the tree has " + std::to_string(frontier_.size()) + " leaves, not " +
                           std::to_string(size));
  }
  if (size == frontier_.size()) return frontier_.Root();
  return merkle::RootAt(*this, size);
}

const Hash& SessionTree::LeafAt(uint64_t step) const {
  FP_CHECK(step < frontier_.size());
  return levels_[0][step];
}

StatusOr<Hash> SessionTree::ReadNode(uint32_t level, uint64_t index) const {
  if (level >= levels_.size() || index >= levels_[level].size()) {
    return NotFoundError("node (" + std::to_string(level) + ", " + std::to_string(index) +
                         ") is not in the session tree");
  }
  return levels_[level][index];
}

}  // namespace fp::node::worker
