// Tests of common/merkle on small trees: hashing known answers, Frontier against the naive RFC
// 9162 reference, proof generation against PATH/PROOF for every size 0..70 and every index/size
// pair, and rejection of tampered proofs.
#include "common/merkle/merkle.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/merkle/testing/naive_tree.h"
#include "tests/testutil/status_matchers.h"

namespace fp::merkle {
namespace {

using ::fp::merkle::testing::NaiveTree;
using ::fp::testing::StatusIs;
using ::testing::AnyOf;

constexpr uint64_t kMaxSize = 70;

// Rejected the way merkle.h promises: a malformed claim or a proof that does not add up.
auto IsRejected() {
  return AnyOf(StatusIs(StatusCode::kInvalidArgument), StatusIs(StatusCode::kDataLoss));
}

// Distinct leaf data per index, so that no two leaves share a hash.
Bytes LeafData(uint64_t i) {
  const std::string text = "leaf " + std::to_string(i);
  return Bytes(text.begin(), text.end());
}

std::vector<Hash> NaiveLeaves(uint64_t n) {
  std::vector<Hash> leaves;
  for (uint64_t i = 0; i < n; ++i) leaves.push_back(NaiveTree::Leaf(LeafData(i)));
  return leaves;
}

Hash FlipBit(Hash hash, size_t bit) {
  hash[(bit / 8) % kHashSize] ^= static_cast<uint8_t>(1u << (bit % 8));
  return hash;
}

// ---------------------------------------------------------------------------------------------
// Hashing

class MerkleHashTest : public ::testing::Test {};

TEST_F(MerkleHashTest, EmptyRootIsSha256OfNothing) {
  EXPECT_EQ(HexEncode(EmptyRoot()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_F(MerkleHashTest, LeafHashOfEmptyDataMatchesRfc6962ReferenceValue) {
  EXPECT_EQ(HexEncode(LeafHash(ByteSpan())),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
}

TEST_F(MerkleHashTest, LeafAndNodeHashesFollowTheDefinition) {
  for (uint64_t i = 0; i < 8; ++i) EXPECT_EQ(LeafHash(LeafData(i)), NaiveTree::Leaf(LeafData(i)));
  const Hash left = LeafHash(AsBytes("left"));
  const Hash right = LeafHash(AsBytes("right"));
  EXPECT_EQ(NodeHash(left, right), NaiveTree::Node(left, right));
  EXPECT_NE(NodeHash(left, right), NodeHash(right, left));
}

TEST_F(MerkleHashTest, LeafAndNodeDomainsAreSeparated) {
  const Hash left = LeafHash(AsBytes("a"));
  const Hash right = LeafHash(AsBytes("b"));
  Bytes concatenated(left.begin(), left.end());
  concatenated.insert(concatenated.end(), right.begin(), right.end());
  EXPECT_NE(LeafHash(concatenated), NodeHash(left, right));
}

// The eight inputs and roots of the RFC 6962 reference implementation's test data
// (certificate-transparency merkle_tree_test), also found in the known-answer vectors.
TEST_F(MerkleHashTest, RootsOfRfc6962ReferenceInputs) {
  const std::vector<std::string> inputs = {"",
                                           "00",
                                           "10",
                                           "2021",
                                           "3031",
                                           "40414243",
                                           "5051525354555657",
                                           "606162636465666768696a6b6c6d6e6f"};
  const std::vector<std::string> roots = {
      "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
      "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
      "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
      "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
      "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
      "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
      "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"};
  Frontier frontier;
  std::vector<Hash> leaves;
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(Bytes data, HexDecode(inputs[i]));
    leaves.push_back(LeafHash(data));
    frontier.Append(leaves.back(), nullptr);
    EXPECT_EQ(HexEncode(frontier.Root()), roots[i]) << "size " << i + 1;
    MemoryNodeReader reader(leaves);
    ASSERT_OK_AND_ASSIGN(Hash root, RootAt(reader, i + 1));
    EXPECT_EQ(HexEncode(root), roots[i]) << "size " << i + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Frontier

class FrontierTest : public ::testing::Test {
 protected:
  FrontierTest() : leaves_(NaiveLeaves(kMaxSize)), naive_(NaiveTree::FromLeaves(leaves_)) {}

  std::vector<Hash> leaves_;
  NaiveTree naive_;
};

TEST_F(FrontierTest, EmptyFrontierHasEmptyRoot) {
  Frontier frontier;
  EXPECT_EQ(frontier.size(), 0u);
  EXPECT_TRUE(frontier.peaks().empty());
  EXPECT_EQ(frontier.Root(), EmptyRoot());
}

TEST_F(FrontierTest, RootMatchesNaiveAtEverySize) {
  Frontier frontier;
  EXPECT_EQ(frontier.Root(), naive_.Root(0));
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    frontier.Append(leaves_[n - 1], nullptr);
    ASSERT_EQ(frontier.size(), n);
    EXPECT_EQ(frontier.Root(), naive_.Root(n)) << "size " << n;
  }
}

TEST_F(FrontierTest, PeaksArePerfectSubtreesOfTheBinaryDigitsOfSize) {
  Frontier frontier;
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    frontier.Append(leaves_[n - 1], nullptr);
    std::vector<Hash> want;
    uint64_t begin = 0;
    for (int level = 63; level >= 0; --level) {
      const uint64_t width = uint64_t{1} << level;
      if ((n & width) == 0) continue;
      want.push_back(naive_.Mth(begin, width));
      begin += width;
    }
    EXPECT_EQ(frontier.peaks(), want) << "size " << n;
  }
}

// Each append reports exactly the perfect subtrees whose last leaf is the new one, lowest first,
// so storing the reports stores every perfect subtree exactly once.
TEST_F(FrontierTest, AppendReportsEachCompletedNodeOnceLowestFirst) {
  Frontier frontier;
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    std::vector<Node> completed;
    frontier.Append(leaves_[n - 1], &completed);
    std::vector<Node> want;
    for (uint32_t level = 0; (uint64_t{1} << level) <= n; ++level) {
      const uint64_t width = uint64_t{1} << level;
      if (n % width != 0) continue;
      want.push_back({level, n / width - 1, naive_.Mth(n - width, width)});
    }
    EXPECT_EQ(completed, want) << "append of leaf " << n - 1;
  }
}

TEST_F(FrontierTest, CompletedNodesMatchTheStoredTree) {
  Frontier frontier;
  std::vector<Node> completed;
  for (uint64_t n = 1; n <= kMaxSize; ++n) frontier.Append(leaves_[n - 1], &completed);
  MemoryNodeReader reader(leaves_);
  for (const Node& node : completed) {
    ASSERT_OK_AND_ASSIGN(Hash stored, reader.ReadNode(node.level, node.index));
    EXPECT_EQ(node.hash, stored) << "node (" << node.level << ", " << node.index << ")";
  }
  // 70 leaves hold 70 + 35 + 17 + 8 + 4 + 2 + 1 perfect subtrees.
  EXPECT_EQ(completed.size(), 137u);
}

TEST_F(FrontierTest, FromPeaksRoundTripsAtEverySize) {
  Frontier original;
  for (uint64_t n = 0; n <= kMaxSize; ++n) {
    if (n > 0) original.Append(leaves_[n - 1], nullptr);
    ASSERT_OK_AND_ASSIGN(Frontier restored, Frontier::FromPeaks(n, original.peaks()));
    EXPECT_EQ(restored.size(), n);
    EXPECT_EQ(restored.peaks(), original.peaks());
    EXPECT_EQ(restored.Root(), naive_.Root(n));
    // The restored frontier keeps growing like the original.
    for (uint64_t m = n; m < kMaxSize; ++m) restored.Append(leaves_[m], nullptr);
    EXPECT_EQ(restored.Root(), naive_.Root(kMaxSize)) << "restored at size " << n;
  }
}

TEST_F(FrontierTest, FullTreeHasSixtyFourPeaks) {
  const uint64_t full = std::numeric_limits<uint64_t>::max();
  std::vector<Hash> peaks(64, leaves_[0]);
  ASSERT_OK_AND_ASSIGN(Frontier frontier, Frontier::FromPeaks(full, peaks));
  Hash want = peaks[63];
  for (int i = 62; i >= 0; --i) want = NaiveTree::Node(peaks[i], want);
  EXPECT_EQ(frontier.Root(), want);
}

// Error paths.

TEST_F(FrontierTest, FromPeaksRejectsWrongPeakCount) {
  EXPECT_THAT(Frontier::FromPeaks(0, {leaves_[0]}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Frontier::FromPeaks(5, {leaves_[0]}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Frontier::FromPeaks(5, {leaves_[0], leaves_[1], leaves_[2]}),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Frontier::FromPeaks(std::numeric_limits<uint64_t>::max(), {leaves_[0]}),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(FrontierTest, AppendToFullTreeAborts) {
  std::vector<Hash> peaks(64, leaves_[0]);
  ASSERT_OK_AND_ASSIGN(Frontier frontier,
                       Frontier::FromPeaks(std::numeric_limits<uint64_t>::max(), peaks));
  EXPECT_DEATH(frontier.Append(leaves_[1], nullptr), "size_ <");
}

// ---------------------------------------------------------------------------------------------
// Proof generation and verification

class ProofTest : public ::testing::Test {
 protected:
  ProofTest()
      : leaves_(NaiveLeaves(kMaxSize)), naive_(NaiveTree::FromLeaves(leaves_)), reader_(leaves_) {
    for (uint64_t n = 0; n <= kMaxSize; ++n) roots_.push_back(naive_.Root(n));
  }

  std::vector<Hash> leaves_;
  NaiveTree naive_;
  MemoryNodeReader reader_;  // all kMaxSize leaves; smaller trees are its prefixes
  std::vector<Hash> roots_;  // [n]: naive root of the first n leaves
};

TEST_F(ProofTest, RootAtMatchesNaiveAtEverySize) {
  for (uint64_t n = 0; n <= kMaxSize; ++n) {
    ASSERT_OK_AND_ASSIGN(Hash root, RootAt(reader_, n));
    EXPECT_EQ(root, roots_[n]) << "size " << n;
  }
}

TEST_F(ProofTest, InclusionProofMatchesNaivePathAndVerifiesForEveryPair) {
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    for (uint64_t m = 0; m < n; ++m) {
      ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, InclusionProof(reader_, m, n));
      ASSERT_EQ(proof, naive_.Path(m, n)) << "index " << m << " size " << n;
      EXPECT_OK(VerifyInclusion(leaves_[m], m, n, proof, roots_[n]));
    }
  }
}

TEST_F(ProofTest, ConsistencyProofMatchesNaiveProofAndVerifiesForEveryPair) {
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    for (uint64_t m = 1; m <= n; ++m) {
      ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, ConsistencyProof(reader_, m, n));
      ASSERT_EQ(proof, naive_.Proof(m, n)) << "sizes " << m << " and " << n;
      EXPECT_OK(VerifyConsistency(m, n, proof, roots_[m], roots_[n]));
    }
  }
}

TEST_F(ProofTest, EqualSizesNeedNoProof) {
  ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, ConsistencyProof(reader_, 5, 5));
  EXPECT_TRUE(proof.empty());
  EXPECT_OK(VerifyConsistency(5, 5, {}, roots_[5], roots_[5]));
}

// Error paths: generation.

TEST_F(ProofTest, InclusionProofRejectsIndexOutsideTree) {
  EXPECT_THAT(InclusionProof(reader_, 0, 0), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(InclusionProof(reader_, 5, 5), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(InclusionProof(reader_, std::numeric_limits<uint64_t>::max(), 3),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofTest, ConsistencyProofRejectsImpossibleSizes) {
  EXPECT_THAT(ConsistencyProof(reader_, 0, 5), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ConsistencyProof(reader_, 0, 0), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ConsistencyProof(reader_, 6, 5), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofTest, SizesBeyondStoredLeavesAreNotFound) {
  EXPECT_THAT(reader_.ReadNode(0, kMaxSize), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(reader_.ReadNode(7, 0), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(reader_.ReadNode(64, 0), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(RootAt(reader_, kMaxSize + 1), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(InclusionProof(reader_, 3, kMaxSize + 1), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(ConsistencyProof(reader_, 3, kMaxSize + 1), StatusIs(StatusCode::kNotFound));
}

// Error paths: verification of malformed claims.

TEST_F(ProofTest, VerifyInclusionRejectsImpossibleIndexAndSize) {
  const std::vector<Hash> proof = naive_.Path(0, 1);
  EXPECT_THAT(VerifyInclusion(leaves_[0], 0, 0, proof, roots_[0]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyInclusion(leaves_[0], 1, 1, proof, roots_[1]),
              StatusIs(StatusCode::kInvalidArgument));
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_THAT(VerifyInclusion(leaves_[0], max, max, proof, roots_[1]),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofTest, VerifyRejectsOverlongProofsUnread) {
  const std::vector<Hash> huge(kMaxProofHashes + 1, leaves_[0]);
  EXPECT_THAT(VerifyInclusion(leaves_[0], 0, 2, huge, roots_[2]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(1, 2, huge, roots_[1], roots_[2]),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofTest, VerifyConsistencyRejectsImpossibleSizes) {
  const std::vector<Hash> proof = naive_.Proof(3, 5);
  EXPECT_THAT(VerifyConsistency(0, 5, proof, roots_[0], roots_[5]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(0, 5, {}, roots_[0], roots_[5]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(0, 0, {}, roots_[0], roots_[0]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(5, 3, proof, roots_[5], roots_[3]),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(VerifyConsistency(3, 5, {}, roots_[3], roots_[5]),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofTest, VerifyConsistencyOfEqualSizesNeedsEqualRootsAndNoProof) {
  EXPECT_THAT(VerifyConsistency(5, 5, {}, roots_[5], roots_[4]), StatusIs(StatusCode::kDataLoss));
  const std::vector<Hash> one_hash = {leaves_[0]};
  EXPECT_THAT(VerifyConsistency(5, 5, one_hash, roots_[5], roots_[5]),
              StatusIs(StatusCode::kInvalidArgument));
}

// Error paths: tampering, for every index/size pair.

TEST_F(ProofTest, TamperedInclusionProofsAreRejected) {
  for (uint64_t n = 1; n <= kMaxSize; ++n) {
    for (uint64_t m = 0; m < n; ++m) {
      const std::vector<Hash> proof = naive_.Path(m, n);
      SCOPED_TRACE("index " + std::to_string(m) + " size " + std::to_string(n));
      for (size_t j = 0; j < proof.size(); ++j) {
        std::vector<Hash> flipped = proof;
        flipped[j] = FlipBit(flipped[j], j * 37 + m);
        EXPECT_THAT(VerifyInclusion(leaves_[m], m, n, flipped, roots_[n]), IsRejected());
        std::vector<Hash> missing = proof;
        missing.erase(missing.begin() + j);
        EXPECT_THAT(VerifyInclusion(leaves_[m], m, n, missing, roots_[n]), IsRejected());
      }
      std::vector<Hash> extra = proof;
      extra.push_back(leaves_[m]);
      EXPECT_THAT(VerifyInclusion(leaves_[m], m, n, extra, roots_[n]), IsRejected());
      extra = proof;
      extra.insert(extra.begin(), leaves_[m]);
      EXPECT_THAT(VerifyInclusion(leaves_[m], m, n, extra, roots_[n]), IsRejected());
      EXPECT_THAT(VerifyInclusion(NaiveTree::Leaf(AsBytes("not a leaf")), m, n, proof, roots_[n]),
                  IsRejected());
      EXPECT_THAT(VerifyInclusion(leaves_[m], m, n, proof, FlipBit(roots_[n], m)), IsRejected());
      for (uint64_t wrong_index = 0; wrong_index < n; ++wrong_index) {
        if (wrong_index == m) continue;
        EXPECT_THAT(VerifyInclusion(leaves_[m], wrong_index, n, proof, roots_[n]), IsRejected());
      }
      for (uint64_t wrong_size = m + 1; wrong_size <= kMaxSize; ++wrong_size) {
        if (wrong_size == n) continue;
        EXPECT_THAT(VerifyInclusion(leaves_[m], m, wrong_size, proof, roots_[wrong_size]),
                    IsRejected());
      }
    }
  }
}

TEST_F(ProofTest, TamperedConsistencyProofsAreRejected) {
  for (uint64_t n = 2; n <= kMaxSize; ++n) {
    for (uint64_t m = 1; m < n; ++m) {
      const std::vector<Hash> proof = naive_.Proof(m, n);
      SCOPED_TRACE("sizes " + std::to_string(m) + " and " + std::to_string(n));
      for (size_t j = 0; j < proof.size(); ++j) {
        std::vector<Hash> flipped = proof;
        flipped[j] = FlipBit(flipped[j], j * 41 + n);
        EXPECT_THAT(VerifyConsistency(m, n, flipped, roots_[m], roots_[n]), IsRejected());
        std::vector<Hash> missing = proof;
        missing.erase(missing.begin() + j);
        EXPECT_THAT(VerifyConsistency(m, n, missing, roots_[m], roots_[n]), IsRejected());
      }
      std::vector<Hash> extra = proof;
      extra.push_back(roots_[m]);
      EXPECT_THAT(VerifyConsistency(m, n, extra, roots_[m], roots_[n]), IsRejected());
      extra = proof;
      extra.insert(extra.begin(), roots_[m]);
      EXPECT_THAT(VerifyConsistency(m, n, extra, roots_[m], roots_[n]), IsRejected());
      EXPECT_THAT(VerifyConsistency(m, n, proof, roots_[n], roots_[m]), IsRejected());
      EXPECT_THAT(VerifyConsistency(m, n, proof, FlipBit(roots_[m], n), roots_[n]), IsRejected());
      EXPECT_THAT(VerifyConsistency(m, n, proof, roots_[m], FlipBit(roots_[n], m)), IsRejected());
      for (uint64_t wrong = 1; wrong <= kMaxSize; ++wrong) {
        if (wrong != m && wrong <= n) {
          EXPECT_THAT(VerifyConsistency(wrong, n, proof, roots_[wrong], roots_[n]), IsRejected());
        }
        if (wrong != n && wrong >= m) {
          EXPECT_THAT(VerifyConsistency(m, wrong, proof, roots_[m], roots_[wrong]), IsRejected());
        }
      }
    }
  }
}

}  // namespace
}  // namespace fp::merkle
