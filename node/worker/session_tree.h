// SessionTree: one replica's session tree (DESIGN.md section 2): the RFC 6962 tree over its step
// leaf hashes, which a rollback can cut back to any size and whose root at any earlier size can
// be recomputed (to check a Commit's verified_root against the worker's own leaves).
//
// Design: a merkle::Frontier gives the current root in O(log n); every perfect subtree the
// frontier completes is also kept, by level, so that Truncate(n) keeps exactly the nodes that
// lie inside the first n leaves and rebuilds the frontier from its peaks without rehashing, and
// RootAt(n) reads one stored node per set bit of n (merkle::RootAt). Memory is about two hashes
// per leaf; a replica holds at most wire::kMaxSessionTokens leaves.
//
// Thread-safety: a value type without synchronisation; the streaming thread owns each tree.
#pragma once

#include <cstdint>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/merkle/merkle.h"

namespace fp::node::worker {

class SessionTree : public merkle::NodeReader {
 public:
  SessionTree() = default;

  uint64_t size() const { return frontier_.size(); }
  // Appends the leaf hash of step size().
  void Append(const Hash& leaf_hash);
  // Keeps the first `size` leaves. FP_CHECKs size <= size().
  void Truncate(uint64_t size);
  // The root of the whole tree (the session root once the replica has finished).
  Hash Root() const { return frontier_.Root(); }
  // The root over the first `size` leaves. OutOfRange if size > size().
  StatusOr<Hash> RootAt(uint64_t size) const;
  // The leaf hash of `step`. FP_CHECKs step < size().
  const Hash& LeafAt(uint64_t step) const;

  // merkle::NodeReader: NotFound unless node (level, index) lies inside the tree.
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;

 private:
  merkle::Frontier frontier_;
  // levels_[l][i] is node (l, i): the root of leaves [i << l, (i + 1) << l).
  std::vector<std::vector<Hash>> levels_;
};

}  // namespace fp::node::worker
