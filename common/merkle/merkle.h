// RFC 6962 / RFC 9162 Merkle trees: hashing, a compact append-only frontier, and inclusion and
// consistency proofs (generation from a node reader, and verification).
//
// Spec: RFC 9162 section 2.1 (https://www.rfc-editor.org/rfc/rfc9162#section-2.1) and
// docs/formats.md. leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right), the empty
// tree's root is SHA-256(""). Sizes and indices are 64-bit.
//
// Node addressing: node (level, index) is the root of the perfect subtree over leaves
// [index << level, (index + 1) << level). Level 0 nodes are leaf hashes. Only perfect subtrees
// are ever stored; roots of other sizes are computed from them.
//
// Thread-safety: free functions are pure; a Frontier is a value type, not shared between threads.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::merkle {

inline constexpr int kMaxLevels = 64;
// Proofs longer than this cannot exist for 64-bit sizes; longer input is rejected unread.
inline constexpr size_t kMaxProofHashes = 2 * kMaxLevels;

Hash LeafHash(ByteSpan data);
Hash NodeHash(const Hash& left, const Hash& right);
Hash EmptyRoot();

// A node of the tree that has become complete (a perfect subtree), to be stored for proofs.
struct Node {
  uint32_t level;
  uint64_t index;
  Hash hash;
};

// Compact append-only tree state: one hash per set bit of size (the roots of the perfect
// subtrees that cover [0, size), largest first). O(log n) memory; appends amortise to about two
// hashes.
class Frontier {
 public:
  Frontier() = default;
  // Rebuilds a frontier from stored state. InvalidArgument unless peaks.size() equals the
  // number of set bits in `size`.
  static StatusOr<Frontier> FromPeaks(uint64_t size, std::vector<Hash> peaks);

  uint64_t size() const { return size_; }
  const std::vector<Hash>& peaks() const { return peaks_; }

  // Appends one leaf hash. If `completed` is non-null, every node that this append completes
  // (the leaf itself at level 0, then each merged parent) is appended to it, lowest first.
  // FP_CHECKs that the tree is not full (size < 2^64 - 1).
  void Append(const Hash& leaf_hash, std::vector<Node>* completed);
  // The RFC 6962 root of the current tree (EmptyRoot() when empty).
  Hash Root() const;

 private:
  uint64_t size_ = 0;
  std::vector<Hash> peaks_;  // largest subtree first
};

// Source of stored perfect-subtree hashes (RocksDB in the supervisor, memory in tests).
class NodeReader {
 public:
  virtual ~NodeReader() = default;
  // The hash of node (level, index). NotFound if it is not stored; DataLoss if storage is corrupt.
  virtual StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const = 0;
};

// The root of the tree over the first `size` leaves (size may be smaller than what is stored).
StatusOr<Hash> RootAt(const NodeReader& reader, uint64_t size);

// RFC 9162 section 2.1.3.1. InvalidArgument unless index < size.
StatusOr<std::vector<Hash>> InclusionProof(const NodeReader& reader, uint64_t index, uint64_t size);
// RFC 9162 section 2.1.4.1. InvalidArgument unless 0 < size1 <= size2 (size1 == size2 gives an
// empty proof).
StatusOr<std::vector<Hash>> ConsistencyProof(const NodeReader& reader, uint64_t size1,
                                             uint64_t size2);

// RFC 9162 section 2.1.3.2. OK when `proof` proves `leaf_hash` at `index` in the tree of `size`
// with `root`; InvalidArgument for an impossible index/size or proof length; DataLoss when the
// proof does not lead to `root`.
Status VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size,
                       std::span<const Hash> proof, const Hash& root);
// RFC 9162 section 2.1.4.2, with the same error convention.
Status VerifyConsistency(uint64_t size1, uint64_t size2, std::span<const Hash> proof,
                         const Hash& root1, const Hash& root2);

// A NodeReader over an in-memory list of leaf hashes, computing interior nodes on demand. For
// tests, tools and small trees; cost O(2^level) per node.
class MemoryNodeReader : public NodeReader {
 public:
  explicit MemoryNodeReader(std::vector<Hash> leaf_hashes);
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;
  uint64_t size() const { return leaves_.size(); }

 private:
  std::vector<Hash> leaves_;
};

}  // namespace fp::merkle
