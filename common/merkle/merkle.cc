// RFC 6962 / RFC 9162 Merkle trees; see merkle.h for the model and docs/formats.md for the spec.
//
// All index arithmetic stays inside uint64_t without overflow: shifts are by at most 63 (a shift
// by 64 would be undefined), a node's first leaf (index << level) is only formed for nodes that
// lie inside a tree of at most 2^64 - 1 leaves, and sizes are only decremented after checking
// that they are positive.
#include "common/merkle/merkle.h"

#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <string>

namespace fp::merkle {
namespace {

constexpr uint8_t kLeafPrefix = 0x00;
constexpr uint8_t kNodePrefix = 0x01;

// The shape of the path from a node to the root, in units of that node's level: `index` is the
// node's position and `last` the position of the tree's last node at that level (the one that
// holds the last leaf, possibly partial).
struct PathShape {
  // Siblings below the highest bit where index and last differ; all are perfect subtrees except
  // the topmost, which is the (possibly partial) subtree holding `last`.
  int inner;
  // Left siblings met on the tree's right border above that bit: one per set bit of
  // index >> inner.
  int border;
};

PathShape ShapeOf(uint64_t index, uint64_t last) {
  const int inner = std::bit_width(index ^ last);
  // inner can be 64, and a shift by 64 is undefined; no bits remain in that case.
  const int border = inner >= kMaxLevels ? 0 : std::popcount(index >> inner);
  return {inner, border};
}

std::string Address(uint32_t level, uint64_t index) {
  return "merkle node (" + std::to_string(level) + ", " + std::to_string(index) + ")";
}

StatusOr<Hash> ReadNode(const NodeReader& reader, uint32_t level, uint64_t index) {
  StatusOr<Hash> hash = reader.ReadNode(level, index);
  if (!hash.ok()) return hash.status().WithContext(Address(level, index));
  return hash;
}

// The RFC 6962 root of leaves [begin, begin + count), count >= 1, where begin is a multiple of
// the largest power of two not above count (true for every subtree of an RFC 6962 tree): the
// right fold of the perfect subtrees given by the binary digits of count.
StatusOr<Hash> RangeRoot(const NodeReader& reader, uint64_t begin, uint64_t count) {
  FP_CHECK(count > 0);
  std::array<Hash, kMaxLevels> peaks;
  int peak_count = 0;
  uint64_t position = begin;
  for (int level = kMaxLevels - 1; level >= 0; --level) {
    if (((count >> level) & 1) == 0) continue;
    FP_ASSIGN_OR_RETURN(peaks[peak_count], ReadNode(reader, level, position >> level));
    ++peak_count;
    // Cannot wrap: begin + count <= 2^64 - 1.
    position += uint64_t{1} << level;
  }
  Hash root = peaks[peak_count - 1];
  for (int i = peak_count - 2; i >= 0; --i) root = NodeHash(peaks[i], root);
  return root;
}

// Appends the path from node (base_level, index) to the root of the tree of `size` leaves:
// siblings from the lowest up, as RFC 9162 PATH and SUBPROOF order them.
Status AppendPath(const NodeReader& reader, uint32_t base_level, uint64_t index, uint64_t size,
                  std::vector<Hash>& out) {
  const PathShape shape = ShapeOf(index, (size - 1) >> base_level);
  for (int i = 0; i < shape.inner; ++i) {
    const uint32_t level = base_level + i;
    const uint64_t sibling = (index >> i) ^ 1;
    if (i + 1 < shape.inner) {
      FP_ASSIGN_OR_RETURN(Hash hash, ReadNode(reader, level, sibling));
      out.push_back(hash);
    } else {
      // The topmost inner sibling is the right subtree holding the last leaf; it is partial
      // unless size is a multiple of its width.
      const uint64_t begin = sibling << level;
      FP_ASSIGN_OR_RETURN(Hash hash, RangeRoot(reader, begin, size - begin));
      out.push_back(hash);
    }
  }
  for (int j = shape.inner; j < kMaxLevels && (index >> j) != 0; ++j) {
    if (((index >> j) & 1) == 0) continue;
    FP_ASSIGN_OR_RETURN(Hash hash, ReadNode(reader, base_level + j, (index >> j) ^ 1));
    out.push_back(hash);
  }
  return OkStatus();
}

// Folds inner siblings into `hash`: bit i of `index` set means sibling i is on the left.
Hash FoldInner(Hash hash, uint64_t index, std::span<const Hash> siblings) {
  for (size_t i = 0; i < siblings.size(); ++i) {
    hash = ((index >> i) & 1) != 0 ? NodeHash(siblings[i], hash) : NodeHash(hash, siblings[i]);
  }
  return hash;
}

// As FoldInner, but only the left siblings: the right ones lie beyond the smaller tree of a
// consistency proof.
Hash FoldInnerLeftOnly(Hash hash, uint64_t index, std::span<const Hash> siblings) {
  for (size_t i = 0; i < siblings.size(); ++i) {
    if (((index >> i) & 1) != 0) hash = NodeHash(siblings[i], hash);
  }
  return hash;
}

// Border siblings are all on the left.
Hash FoldBorder(Hash hash, std::span<const Hash> siblings) {
  for (const Hash& sibling : siblings) hash = NodeHash(sibling, hash);
  return hash;
}

Status CheckProofLength(std::span<const Hash> proof, size_t want, const std::string& what) {
  if (proof.size() == want) return OkStatus();
  return InvalidArgumentError(what + " proof has " + std::to_string(proof.size()) +
                              " hashes, want " + std::to_string(want));
}

}  // namespace

Hash LeafHash(ByteSpan data) {
  const uint8_t prefix = kLeafPrefix;
  return Sha256Parts({ByteSpan(&prefix, 1), data});
}

Hash NodeHash(const Hash& left, const Hash& right) {
  // Node hashing is the hot path of appends and verification; one contiguous 65-byte update
  // through EVP costs about 10% less than three small ones, and the copy is negligible.
  std::array<uint8_t, 1 + 2 * kHashSize> message;
  message[0] = kNodePrefix;
  std::memcpy(message.data() + 1, left.data(), kHashSize);
  std::memcpy(message.data() + 1 + kHashSize, right.data(), kHashSize);
  return Sha256(ByteSpan(message));
}

Hash EmptyRoot() {
  static const Hash root = Sha256(ByteSpan());
  return root;
}

StatusOr<Frontier> Frontier::FromPeaks(uint64_t size, std::vector<Hash> peaks) {
  const size_t want = static_cast<size_t>(std::popcount(size));
  if (peaks.size() != want) {
    return InvalidArgumentError("frontier of size " + std::to_string(size) + " needs " +
                                std::to_string(want) + " peaks, got " +
                                std::to_string(peaks.size()));
  }
  Frontier frontier;
  frontier.size_ = size;
  frontier.peaks_ = std::move(peaks);
  return frontier;
}

void Frontier::Append(const Hash& leaf_hash, std::vector<Node>* completed) {
  FP_CHECK(size_ < std::numeric_limits<uint64_t>::max());
  Hash hash = leaf_hash;
  uint32_t level = 0;
  uint64_t index = size_;  // index of the new node at `level`: size_ >> level
  if (completed != nullptr) completed->push_back({level, index, hash});
  // Each trailing one bit of the old size is a peak as tall as the new node: merge them.
  while ((index & 1) != 0) {
    FP_CHECK(!peaks_.empty());
    hash = NodeHash(peaks_.back(), hash);
    peaks_.pop_back();
    index >>= 1;
    ++level;
    if (completed != nullptr) completed->push_back({level, index, hash});
  }
  peaks_.push_back(hash);
  ++size_;
}

Hash Frontier::Root() const {
  if (peaks_.empty()) return EmptyRoot();
  Hash root = peaks_.back();
  for (size_t i = peaks_.size() - 1; i-- > 0;) root = NodeHash(peaks_[i], root);
  return root;
}

StatusOr<Hash> RootAt(const NodeReader& reader, uint64_t size) {
  if (size == 0) return EmptyRoot();
  return RangeRoot(reader, 0, size);
}

StatusOr<std::vector<Hash>> InclusionProof(const NodeReader& reader, uint64_t index,
                                           uint64_t size) {
  if (index >= size) {
    return InvalidArgumentError("inclusion proof for index " + std::to_string(index) +
                                " in a tree of size " + std::to_string(size));
  }
  std::vector<Hash> proof;
  FP_RETURN_IF_ERROR(AppendPath(reader, 0, index, size, proof));
  return proof;
}

StatusOr<std::vector<Hash>> ConsistencyProof(const NodeReader& reader, uint64_t size1,
                                             uint64_t size2) {
  if (size1 == 0 || size1 > size2) {
    return InvalidArgumentError("consistency proof needs 0 < size1 <= size2, got " +
                                std::to_string(size1) + " and " + std::to_string(size2));
  }
  std::vector<Hash> proof;
  if (size1 == size2) return proof;
  // The last perfect subtree of the smaller tree, (level, index), starts the proof unless it is
  // that whole tree (size1 a power of two), whose root the verifier already holds.
  const int level = std::countr_zero(size1);
  const uint64_t index = (size1 - 1) >> level;
  if (index != 0) {
    FP_ASSIGN_OR_RETURN(Hash seed, ReadNode(reader, level, index));
    proof.push_back(seed);
  }
  FP_RETURN_IF_ERROR(AppendPath(reader, level, index, size2, proof));
  return proof;
}

Status VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size,
                       std::span<const Hash> proof, const Hash& root) {
  if (index >= size) {
    return InvalidArgumentError("index " + std::to_string(index) + " is not below tree size " +
                                std::to_string(size));
  }
  if (proof.size() > kMaxProofHashes) return InvalidArgumentError("inclusion proof too long");
  const PathShape shape = ShapeOf(index, size - 1);
  FP_RETURN_IF_ERROR(CheckProofLength(proof, shape.inner + shape.border, "inclusion"));
  const Hash computed =
      FoldBorder(FoldInner(leaf_hash, index, proof.first(shape.inner)), proof.subspan(shape.inner));
  if (computed != root) return DataLossError("inclusion proof does not lead to the root");
  return OkStatus();
}

Status VerifyConsistency(uint64_t size1, uint64_t size2, std::span<const Hash> proof,
                         const Hash& root1, const Hash& root2) {
  if (size1 == 0 || size1 > size2) {
    // Every tree extends the empty tree, so RFC 9162 defines no proof for size1 == 0.
    return InvalidArgumentError("consistency needs 0 < size1 <= size2, got " +
                                std::to_string(size1) + " and " + std::to_string(size2));
  }
  if (proof.size() > kMaxProofHashes) return InvalidArgumentError("consistency proof too long");
  if (size1 == size2) {
    FP_RETURN_IF_ERROR(CheckProofLength(proof, 0, "consistency"));
    if (root1 != root2) return DataLossError("equal tree sizes with different roots");
    return OkStatus();
  }
  const int level = std::countr_zero(size1);
  const uint64_t index = (size1 - 1) >> level;
  const PathShape shape = ShapeOf(index, (size2 - 1) >> level);
  const size_t seeded = index != 0 ? 1 : 0;  // see ConsistencyProof
  FP_RETURN_IF_ERROR(CheckProofLength(proof, seeded + shape.inner + shape.border, "consistency"));
  const Hash seed = seeded != 0 ? proof[0] : root1;
  const std::span<const Hash> path = proof.subspan(seeded);
  const std::span<const Hash> inner = path.first(shape.inner);
  const std::span<const Hash> border = path.subspan(shape.inner);
  if (FoldBorder(FoldInnerLeftOnly(seed, index, inner), border) != root1) {
    return DataLossError("consistency proof does not lead to the first root");
  }
  if (FoldBorder(FoldInner(seed, index, inner), border) != root2) {
    return DataLossError("consistency proof does not lead to the second root");
  }
  return OkStatus();
}

MemoryNodeReader::MemoryNodeReader(std::vector<Hash> leaf_hashes)
    : leaves_(std::move(leaf_hashes)) {}

StatusOr<Hash> MemoryNodeReader::ReadNode(uint32_t level, uint64_t index) const {
  if (level >= static_cast<uint32_t>(kMaxLevels) || index >= (size() >> level)) {
    return NotFoundError(Address(level, index) + " is not inside " + std::to_string(size()) +
                         " leaves");
  }
  return Compute(level, index);
}

Hash MemoryNodeReader::Compute(uint32_t level, uint64_t index) const {
  if (level == 0) return leaves_[index];
  return NodeHash(Compute(level - 1, 2 * index), Compute(level - 1, 2 * index + 1));
}

}  // namespace fp::merkle
