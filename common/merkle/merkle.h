// RFC 6962 / RFC 9162 Merkle trees: hashing, a compact append-only frontier, and inclusion and
// consistency proofs (generation from a node reader, and verification).
//
// Spec: RFC 9162 section 2.1 (https://www.rfc-editor.org/rfc/rfc9162#section-2.1) and
// docs/formats.md ("Merkle trees"). leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left ||
// right), the empty tree's root is SHA-256(""). Sizes and indices are 64-bit; a tree holds at most
// 2^64 - 1 leaves.
//
// Node addressing: node (level, index) is the root of the perfect subtree over leaves
// [index << level, (index + 1) << level). Level 0 nodes are leaf hashes. Only perfect subtrees
// are ever stored; roots of other sizes are computed from them.
//
// Design: the tree of n leaves is the right fold of the perfect subtrees given by the binary
// digits of n ("peaks", largest first): root = H(p0, H(p1, ... H(pk-1, pk))). The frontier keeps
// exactly those peaks. A proof for leaf m splits into an "inner" part (levels below the highest
// bit where m and n - 1 differ, where m's siblings are perfect subtrees except possibly the
// topmost, which may be a partial right edge) and a "border" part (one left sibling per set bit
// of m above that), so proof lengths follow from (m, n) alone and are checked before any hashing.
//
// Thread-safety: free functions are pure and safe from any thread; a Frontier is a value type,
// not shared between threads; NodeReader implementations state their own contract
// (MemoryNodeReader is immutable after construction and safe to share).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::merkle {

// Levels 0..63 exist; a level-64 node would cover 2^64 leaves, more than a 64-bit size allows.
inline constexpr int kMaxLevels = 64;
// Proofs longer than this cannot exist for 64-bit sizes (inclusion proofs have at most 64
// hashes, consistency proofs at most 65); longer input is rejected unread.
inline constexpr size_t kMaxProofHashes = 2 * kMaxLevels;

// SHA-256(0x00 || data). Never fails.
Hash LeafHash(ByteSpan data);
// SHA-256(0x01 || left || right). Never fails.
Hash NodeHash(const Hash& left, const Hash& right);
// SHA-256 of the empty string: the root of the tree with no leaves.
Hash EmptyRoot();

// A node of the tree that has become complete (a perfect subtree), to be stored for proofs.
struct Node {
  uint32_t level;
  uint64_t index;
  Hash hash;

  friend bool operator==(const Node&, const Node&) = default;
};

// Compact append-only tree state: one hash per set bit of size (the roots of the perfect
// subtrees that cover [0, size), largest first). O(log n) memory; an append costs one hash per
// trailing one bit of the old size, two on average (amortised).
class Frontier {
 public:
  Frontier() = default;
  // Rebuilds a frontier from stored state (size() and peaks() of an earlier frontier).
  // InvalidArgument unless peaks.size() equals the number of set bits in `size` and size is at
  // most 2^64 - 1. The hashes themselves cannot be checked here; callers that read them from
  // storage compare Root() with a stored root.
  static StatusOr<Frontier> FromPeaks(uint64_t size, std::vector<Hash> peaks);

  uint64_t size() const { return size_; }
  // Largest subtree first: peaks()[i] is the node at the i-th highest set bit of size().
  const std::vector<Hash>& peaks() const { return peaks_; }

  // Appends one leaf hash. If `completed` is non-null (borrowed), every node that this append
  // completes (the leaf itself at level 0, then each merged parent) is appended to it, lowest
  // first. FP_CHECKs that the tree is not full (size < 2^64 - 1).
  void Append(const Hash& leaf_hash, std::vector<Node>* completed);
  // The RFC 6962 root of the current tree (EmptyRoot() when empty). O(log size) hashes.
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
// Reads one node per set bit of size. Errors from the reader (NotFound when size exceeds what is
// stored, DataLoss) are returned with the node's address added.
StatusOr<Hash> RootAt(const NodeReader& reader, uint64_t size);

// RFC 9162 section 2.1.3.1, hashes ordered from the leaf's sibling upwards. InvalidArgument
// unless index < size; reader errors as for RootAt. Reads at most 64 + 63 nodes.
StatusOr<std::vector<Hash>> InclusionProof(const NodeReader& reader, uint64_t index, uint64_t size);
// RFC 9162 section 2.1.4.1. InvalidArgument unless 0 < size1 <= size2 (size1 == size2 gives an
// empty proof); reader errors as for RootAt.
StatusOr<std::vector<Hash>> ConsistencyProof(const NodeReader& reader, uint64_t size1,
                                             uint64_t size2);

// RFC 9162 section 2.1.3.2. OK when `proof` proves `leaf_hash` at `index` in the tree of `size`
// with `root`; InvalidArgument for an impossible index/size (index >= size) or a proof whose
// length is not the one (index, size) implies; DataLoss when the proof does not lead to `root`.
Status VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size,
                       std::span<const Hash> proof, const Hash& root);
// RFC 9162 section 2.1.4.2, with the same error convention: InvalidArgument unless
// 0 < size1 <= size2 and the proof has the length (size1, size2) implies (empty when
// size1 == size2); DataLoss when the proof does not lead to both roots (or, for equal sizes,
// when root1 != root2).
Status VerifyConsistency(uint64_t size1, uint64_t size2, std::span<const Hash> proof,
                         const Hash& root1, const Hash& root2);

// A NodeReader over an in-memory list of leaf hashes, computing interior nodes on demand. For
// tests, tools and small trees; cost O(2^level) per node. Immutable, so safe to share.
class MemoryNodeReader : public NodeReader {
 public:
  explicit MemoryNodeReader(std::vector<Hash> leaf_hashes);
  // NotFound unless the node lies wholly inside the stored leaves.
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;
  uint64_t size() const { return leaves_.size(); }

 private:
  Hash Compute(uint32_t level, uint64_t index) const;

  std::vector<Hash> leaves_;
};

}  // namespace fp::merkle
