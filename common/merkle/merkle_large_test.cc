// 64-bit tests of common/merkle: trees of sizes near 2^31, 2^32, 2^63 and 2^64 - 1, backed by
// VirtualTreeReader (identical leaves except a few special indices), with proofs compared against
// the naive RFC 9162 reference and verified, tampering rejected, and the index arithmetic at the
// edges of uint64_t exercised.
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/merkle/internal/virtual_tree.h"
#include "common/merkle/merkle.h"
#include "common/merkle/testing/naive_tree.h"
#include "tests/testutil/status_matchers.h"

namespace fp::merkle {
namespace {

using ::fp::merkle::internal::VirtualTreeReader;
using ::fp::merkle::testing::NaiveTree;
using ::fp::testing::StatusIs;
using ::testing::AnyOf;

constexpr uint64_t k31 = uint64_t{1} << 31;
constexpr uint64_t k32 = uint64_t{1} << 32;
constexpr uint64_t k63 = uint64_t{1} << 63;
constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

const std::vector<uint64_t> kSizes = {k31 - 1,       k31,     k31 + 1, k32 - 1, k32,      k32 + 1,
                                      k32 + k31 + 5, k63 - 1, k63,     k63 + 1, kMax - 1, kMax};
const std::vector<uint64_t> kIndices = {0,       1,       2,       k31 - 2,  k31 - 1, k31,
                                        k31 + 1, k32 - 2, k32 - 1, k32,      k32 + 1, k63 - 2,
                                        k63 - 1, k63,     k63 + 1, kMax - 3, kMax - 2};
const std::vector<uint64_t> kSpecials = {1, k31 - 1, k31, k32 - 1, k32 + 1, k63 - 1, k63, kMax - 2};

auto IsRejected() {
  return AnyOf(StatusIs(StatusCode::kInvalidArgument), StatusIs(StatusCode::kDataLoss));
}

Hash FlipBit(Hash hash, size_t bit) {
  hash[(bit / 8) % kHashSize] ^= static_cast<uint8_t>(1u << (bit % 8));
  return hash;
}

// A virtual tree and its naive twin: same leaves, hashes derived independently.
struct Tree {
  explicit Tree(uint64_t size) : reader(size, SpecialsBelow(size)), naive(MakeNaive(size)) {}

  static std::vector<uint64_t> SpecialsBelow(uint64_t size) {
    std::vector<uint64_t> below;
    for (uint64_t index : kSpecials) {
      if (index < size) below.push_back(index);
    }
    return below;
  }
  static NaiveTree MakeNaive(uint64_t size) {
    std::map<uint64_t, Hash> special;
    for (uint64_t index : SpecialsBelow(size)) {
      Bytes data;
      for (int shift = 56; shift >= 0; shift -= 8) data.push_back(uint8_t(index >> shift));
      special[index] = NaiveTree::Leaf(data);
    }
    return NaiveTree(size, NaiveTree::Leaf(AsBytes("fieldprint virtual leaf")), special);
  }

  VirtualTreeReader reader;
  NaiveTree naive;
};

class VirtualTreeTest : public ::testing::Test {};

TEST_F(VirtualTreeTest, ReaderNodesMatchNaiveSubtrees) {
  for (uint64_t size : {k32 + k31 + 5, kMax}) {
    Tree tree(size);
    for (uint64_t special : Tree::SpecialsBelow(size)) {
      EXPECT_EQ(tree.reader.LeafHashAt(special), tree.naive.LeafAt(special));
      EXPECT_EQ(tree.reader.LeafHashAt(special ^ 1), tree.naive.LeafAt(special ^ 1));
      for (uint32_t level = 0; level < 64; ++level) {
        const uint64_t index = special >> level;
        const uint64_t width = uint64_t{1} << level;
        if (index >= (size >> level)) {
          EXPECT_THAT(tree.reader.ReadNode(level, index), StatusIs(StatusCode::kNotFound));
          continue;
        }
        ASSERT_OK_AND_ASSIGN(Hash hash, tree.reader.ReadNode(level, index));
        EXPECT_EQ(hash, tree.naive.Mth(index * width, width)) << "level " << level;
      }
    }
  }
}

TEST_F(VirtualTreeTest, RootAtMatchesNaive) {
  for (uint64_t size : kSizes) {
    Tree tree(size);
    ASSERT_OK_AND_ASSIGN(Hash root, RootAt(tree.reader, size));
    EXPECT_EQ(root, tree.naive.Root(size)) << "size " << size;
  }
}

TEST_F(VirtualTreeTest, InclusionProofsMatchNaiveAndVerify) {
  for (uint64_t size : kSizes) {
    Tree tree(size);
    const Hash root = tree.naive.Root(size);
    for (uint64_t index : kIndices) {
      if (index >= size) continue;
      SCOPED_TRACE("index " + std::to_string(index) + " size " + std::to_string(size));
      ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, InclusionProof(tree.reader, index, size));
      ASSERT_EQ(proof, tree.naive.Path(index, size));
      const Hash leaf = tree.naive.LeafAt(index);
      EXPECT_OK(VerifyInclusion(leaf, index, size, proof, root));
      for (size_t j = 0; j < proof.size(); ++j) {
        std::vector<Hash> flipped = proof;
        flipped[j] = FlipBit(flipped[j], j * 13 + 5);
        EXPECT_THAT(VerifyInclusion(leaf, index, size, flipped, root), IsRejected());
      }
      std::vector<Hash> changed = proof;
      changed.push_back(root);
      EXPECT_THAT(VerifyInclusion(leaf, index, size, changed, root), IsRejected());
      if (!proof.empty()) {
        changed = proof;
        changed.pop_back();
        EXPECT_THAT(VerifyInclusion(leaf, index, size, changed, root), IsRejected());
      }
    }
  }
}

// Only a special leaf is unique, so only its claimed position is wrong anywhere else (a uniform
// leaf really is at every uniform position).
TEST_F(VirtualTreeTest, SpecialLeafAtAnyOtherIndexIsRejected) {
  for (uint64_t size : kSizes) {
    Tree tree(size);
    const Hash root = tree.naive.Root(size);
    for (uint64_t special : Tree::SpecialsBelow(size)) {
      const std::vector<Hash> proof = tree.naive.Path(special, size);
      const Hash leaf = tree.naive.LeafAt(special);
      for (uint64_t wrong : {special - 1, special + 1, special ^ k31, special ^ (k63 >> 1),
                             special ^ k63, size - 1}) {
        if (wrong == special || wrong >= size) continue;
        EXPECT_THAT(VerifyInclusion(leaf, wrong, size, proof, root), IsRejected())
            << "special " << special << " claimed at " << wrong << " in size " << size;
      }
    }
  }
}

TEST_F(VirtualTreeTest, ConsistencyProofsMatchNaiveAndVerify) {
  std::vector<uint64_t> first_sizes = kSizes;
  for (uint64_t index : kIndices) first_sizes.push_back(index + 1);
  for (uint64_t size2 : kSizes) {
    Tree tree(size2);
    const Hash root2 = tree.naive.Root(size2);
    for (uint64_t size1 : first_sizes) {
      if (size1 > size2) continue;
      SCOPED_TRACE("sizes " + std::to_string(size1) + " and " + std::to_string(size2));
      ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, ConsistencyProof(tree.reader, size1, size2));
      ASSERT_EQ(proof, tree.naive.Proof(size1, size2));
      const Hash root1 = tree.naive.Root(size1);
      EXPECT_OK(VerifyConsistency(size1, size2, proof, root1, root2));
      for (size_t j = 0; j < proof.size(); ++j) {
        std::vector<Hash> flipped = proof;
        flipped[j] = FlipBit(flipped[j], j * 11 + 3);
        EXPECT_THAT(VerifyConsistency(size1, size2, flipped, root1, root2), IsRejected());
      }
      if (size1 < size2) {
        const uint64_t other = size1 + 1;
        EXPECT_THAT(VerifyConsistency(other, size2, proof, tree.naive.Root(other), root2),
                    IsRejected());
        EXPECT_THAT(VerifyConsistency(size1, size2, proof, root2, root1), IsRejected());
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Index arithmetic at the edges of uint64_t.

TEST_F(VirtualTreeTest, LongestProofsOfTheLargestTree) {
  Tree tree(kMax);
  const Hash root = tree.naive.Root(kMax);
  // Leaf 0: a sibling at every level 0..63, the topmost one partial.
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> first, InclusionProof(tree.reader, 0, kMax));
  EXPECT_EQ(first.size(), 64u);
  EXPECT_OK(VerifyInclusion(tree.naive.LeafAt(0), 0, kMax, first, root));
  // The last leaf: one left sibling per set bit of its index, 2^64 - 2.
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> last, InclusionProof(tree.reader, kMax - 1, kMax));
  EXPECT_EQ(last.size(), 63u);
  EXPECT_OK(VerifyInclusion(tree.naive.LeafAt(kMax - 1), kMax - 1, kMax, last, root));
  // From size 1 to the largest size: 64 hashes, no seed.
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> grow, ConsistencyProof(tree.reader, 1, kMax));
  EXPECT_EQ(grow.size(), 64u);
  EXPECT_OK(VerifyConsistency(1, kMax, grow, tree.naive.Root(1), root));
}

TEST_F(VirtualTreeTest, IndexAndSizeAtTheTopOfTheRangeAreRejected) {
  const Hash leaf = NaiveTree::Leaf(AsBytes("x"));
  const std::vector<Hash> proof(63, leaf);
  EXPECT_THAT(VerifyInclusion(leaf, kMax, kMax, proof, leaf),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyInclusion(leaf, kMax - 1, kMax - 1, proof, leaf),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(kMax, kMax - 1, proof, leaf, leaf),
              StatusIs(StatusCode::kInvalidArgument));
  // Right length (63) for the last leaf of the largest tree but wrong hashes; one short for leaf 0.
  EXPECT_THAT(VerifyInclusion(leaf, kMax - 1, kMax, proof, leaf), StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(VerifyInclusion(leaf, 0, kMax, proof, leaf), StatusIs(StatusCode::kInvalidArgument));
  Tree tree(kMax);
  EXPECT_THAT(InclusionProof(tree.reader, kMax, kMax), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(tree.reader.ReadNode(63, 1), StatusIs(StatusCode::kNotFound));
}

// A frontier restored just below a power of two merges all the way up on the next append.
TEST_F(VirtualTreeTest, FrontierMergesSixtyThreeLevelsBelowTwoToThe63) {
  Tree tree(k63);
  std::vector<Hash> peaks;
  for (uint32_t level = 63; level-- > 0;) {
    peaks.push_back(tree.naive.Mth(k63 - 2 * (uint64_t{1} << level), uint64_t{1} << level));
  }
  ASSERT_OK_AND_ASSIGN(Frontier frontier, Frontier::FromPeaks(k63 - 1, peaks));
  EXPECT_EQ(frontier.Root(), tree.naive.Root(k63 - 1));
  std::vector<Node> completed;
  frontier.Append(tree.naive.LeafAt(k63 - 1), &completed);
  EXPECT_EQ(frontier.Root(), tree.naive.Root(k63));
  ASSERT_EQ(completed.size(), 64u);
  for (uint32_t level = 0; level < 64; ++level) {
    const uint64_t width = uint64_t{1} << level;
    EXPECT_EQ(completed[level],
              (Node{level, (k63 - 1) >> level, tree.naive.Mth(k63 - width, width)}));
  }
}

TEST_F(VirtualTreeTest, FrontierReachesTheLargestSizeAndStops) {
  Tree tree(kMax);
  std::vector<Hash> peaks;
  uint64_t begin = 0;
  for (int level = 63; level >= 1; --level) {
    peaks.push_back(tree.naive.Mth(begin, uint64_t{1} << level));
    begin += uint64_t{1} << level;
  }
  ASSERT_OK_AND_ASSIGN(Frontier frontier, Frontier::FromPeaks(kMax - 1, peaks));
  frontier.Append(tree.naive.LeafAt(kMax - 1), nullptr);
  EXPECT_EQ(frontier.size(), kMax);
  EXPECT_EQ(frontier.Root(), tree.naive.Root(kMax));
  EXPECT_DEATH(frontier.Append(tree.naive.LeafAt(0), nullptr), "size_ <");
}

}  // namespace
}  // namespace fp::merkle
