// Tests of the streaming side's pure parts: SessionTree (roots at every size and after
// truncation, against RFC 9162's recursive definition in merkle/testing/naive_tree.h) and
// ReplicaStream (the W/T batching policy, the unverified window, send_from, rollback, the last
// batch's session root, Commit checks, and batch keys and bytes that stay the same through the
// outbox, which is what a resend sends).
#include "node/worker/replica_stream.h"

#include <gtest/gtest.h>

#include "common/leaf/step_leaf.h"
#include "common/merkle/testing/naive_tree.h"
#include "node/worker/outbox.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

using ::fp::merkle::testing::NaiveTree;
using ::fp::testing::StatusIs;
using std::chrono::milliseconds;

Hash TestLeaf(uint64_t i, uint8_t salt = 0) {
  return Sha256("leaf " + std::to_string(i) + "/" + std::to_string(salt));
}

// ---- SessionTree ----------------------------------------------------------------------------

class SessionTreeTest : public ::testing::Test {
 protected:
  static std::vector<Hash> Leaves(uint64_t n, uint8_t salt = 0) {
    std::vector<Hash> leaves;
    for (uint64_t i = 0; i < n; ++i) leaves.push_back(TestLeaf(i, salt));
    return leaves;
  }
  static Hash NaiveRoot(const std::vector<Hash>& leaves) {
    NaiveTree tree = NaiveTree::FromLeaves(leaves);
    return tree.Root(leaves.size());
  }
};

TEST_F(SessionTreeTest, RootAtEverySizeMatchesTheDefinition) {
  SessionTree tree;
  const std::vector<Hash> leaves = Leaves(70);
  EXPECT_EQ(tree.Root(), NaiveRoot({}));
  for (const Hash& leaf : leaves) tree.Append(leaf);
  for (uint64_t n = 0; n <= leaves.size(); ++n) {
    ASSERT_OK_AND_ASSIGN(Hash root, tree.RootAt(n));
    EXPECT_EQ(root, NaiveRoot({leaves.begin(), leaves.begin() + static_cast<ptrdiff_t>(n)}))
        << "size " << n;
  }
  EXPECT_EQ(tree.LeafAt(69), leaves[69]);
}

TEST_F(SessionTreeTest, TruncateToEverySizeThenRegrowMatchesTheDefinition) {
  const std::vector<Hash> original = Leaves(37);
  const std::vector<Hash> replacement = Leaves(37, 1);
  for (uint64_t keep = 0; keep <= original.size(); ++keep) {
    SessionTree tree;
    for (const Hash& leaf : original) tree.Append(leaf);
    tree.Truncate(keep);
    ASSERT_EQ(tree.size(), keep);
    std::vector<Hash> expected(original.begin(), original.begin() + static_cast<ptrdiff_t>(keep));
    EXPECT_EQ(tree.Root(), NaiveRoot(expected)) << "keep " << keep;
    for (uint64_t i = keep; i < keep + 9; ++i) {
      tree.Append(replacement[i % replacement.size()]);
      expected.push_back(replacement[i % replacement.size()]);
    }
    EXPECT_EQ(tree.Root(), NaiveRoot(expected)) << "keep " << keep;
    ASSERT_OK_AND_ASSIGN(Hash prefix, tree.RootAt(keep));
    EXPECT_EQ(prefix,
              NaiveRoot({expected.begin(), expected.begin() + static_cast<ptrdiff_t>(keep)}));
  }
}

TEST_F(SessionTreeTest, RootBeyondTheTreeIsOutOfRange) {
  SessionTree tree;
  tree.Append(TestLeaf(0));
  EXPECT_THAT(tree.RootAt(2), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(tree.ReadNode(0, 1), StatusIs(StatusCode::kNotFound));
}

// ---- ReplicaStream --------------------------------------------------------------------------

class ReplicaStreamTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kReplica = 2;

  ReplicaStreamTest() { session_[0] = 0xab; }

  ReplicaStream Make(uint64_t epoch = 0, uint64_t send_from = 0, uint32_t max_unverified = 1000,
                     uint64_t verified = 0) {
    return ReplicaStream(session_, kReplica, epoch, send_from, max_unverified, verified);
  }
  // Step s has token s % 250 + 1 and digest Sha256("digest s/salt").
  static uint32_t Token(uint64_t step) { return static_cast<uint32_t>(step % 250 + 1); }
  static Hash Digest(uint64_t step, uint8_t salt = 0) {
    return Sha256("digest " + std::to_string(step) + "/" + std::to_string(salt));
  }
  void AddSteps(ReplicaStream& stream, uint64_t from, uint64_t to, StreamClock::time_point at,
                bool last_at_end = false, uint8_t salt = 0) {
    for (uint64_t s = from; s < to; ++s) {
      stream.AddStep(s, Token(s), Digest(s, salt), last_at_end && s + 1 == to, at);
    }
  }
  // The leaf hash, computed from the canonical leaf bytes with the naive tree's leaf function.
  Hash LeafHash(uint64_t step, uint8_t salt = 0) const {
    const leaf::StepLeafBytes bytes =
        leaf::EncodeStepLeaf({session_, step, Token(step), Digest(step, salt)});
    return NaiveTree::Leaf(bytes);
  }
  // Checks that `batch` carries steps [first, first + count) of this session.
  void ExpectBatch(const wire::pb::LeafBatch& batch, uint64_t epoch, uint64_t first, uint64_t count,
                   uint8_t salt = 0) {
    EXPECT_EQ(batch.session_id(), std::string(session_.begin(), session_.end()));
    EXPECT_EQ(batch.replica(), kReplica);
    EXPECT_EQ(batch.epoch(), epoch);
    EXPECT_EQ(batch.first_step(), first);
    ASSERT_EQ(static_cast<uint64_t>(batch.token_ids_size()), count);
    ASSERT_EQ(batch.state_digests().size(), count * kHashSize);
    for (uint64_t i = 0; i < count; ++i) {
      EXPECT_EQ(batch.token_ids(static_cast<int>(i)), Token(first + i));
      const Hash digest = Digest(first + i, salt);
      EXPECT_EQ(batch.state_digests().substr(i * kHashSize, kHashSize),
                std::string(digest.begin(), digest.end()));
    }
  }

  SessionId session_{};
  const StreamClock::time_point t0_ = StreamClock::time_point() + std::chrono::hours(1);
  const StreamPolicy policy_{4, milliseconds(50)};
};

TEST_F(ReplicaStreamTest, FullWindowOfStepsIsABatchAtOnce) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 9, t0_);
  const std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_, policy_);
  ASSERT_EQ(batches.size(), 2u);
  ExpectBatch(batches[0], 0, 0, 4);
  ExpectBatch(batches[1], 0, 4, 4);
  EXPECT_FALSE(batches[1].last());
  EXPECT_TRUE(batches[1].session_root().empty());
  EXPECT_EQ(stream.unbatched(), 1u);
  EXPECT_EQ(stream.NextDue(policy_), t0_ + milliseconds(50));
}

TEST_F(ReplicaStreamTest, PartialWindowWaitsForTheOldestLeafToAgeT) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 2, t0_);
  AddSteps(stream, 2, 3, t0_ + milliseconds(30));
  EXPECT_TRUE(stream.TakeDue(t0_ + milliseconds(49), policy_).empty());
  EXPECT_EQ(stream.NextDue(policy_), t0_ + milliseconds(50));
  const std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_ + milliseconds(50), policy_);
  ASSERT_EQ(batches.size(), 1u);
  ExpectBatch(batches[0], 0, 0, 3);
  EXPECT_FALSE(stream.NextDue(policy_).has_value());
}

TEST_F(ReplicaStreamTest, ZeroWindowTimeSendsEveryReadyLeaf) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 3, t0_);
  const std::vector<wire::pb::LeafBatch> batches =
      stream.TakeDue(t0_, StreamPolicy{4, milliseconds(0)});
  ASSERT_EQ(batches.size(), 1u);
  ExpectBatch(batches[0], 0, 0, 3);
}

TEST_F(ReplicaStreamTest, LastStepGoesAtOnceWithTheSessionRoot) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 6, t0_, /*last_at_end=*/true);
  EXPECT_TRUE(stream.finished());
  EXPECT_EQ(stream.NextDue(policy_), t0_);
  const std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_, policy_);
  ASSERT_EQ(batches.size(), 2u);
  ExpectBatch(batches[1], 0, 4, 2);
  EXPECT_FALSE(batches[0].last());
  EXPECT_TRUE(batches[1].last());
  std::vector<Hash> leaves;
  for (uint64_t s = 0; s < 6; ++s) leaves.push_back(LeafHash(s));
  NaiveTree naive = NaiveTree::FromLeaves(leaves);
  const Hash root = naive.Root(6);
  EXPECT_EQ(batches[1].session_root(), std::string(root.begin(), root.end()));
}

TEST_F(ReplicaStreamTest, NothingPastTheUnverifiedWindowIsSent) {
  ReplicaStream stream = Make(0, 0, /*max_unverified=*/6, /*verified=*/0);
  AddSteps(stream, 0, 10, t0_);
  std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_ + milliseconds(100), policy_);
  ASSERT_EQ(batches.size(), 2u);
  ExpectBatch(batches[0], 0, 0, 4);
  ExpectBatch(batches[1], 0, 4, 2);  // steps 4 and 5: the window ends at 0 + 6
  EXPECT_FALSE(stream.NextDue(policy_).has_value());
  stream.SetVerified(3);  // the window now ends at 9
  stream.SetVerified(1);  // a stale Commit never lowers it
  EXPECT_EQ(stream.verified_steps(), 3u);
  batches = stream.TakeDue(t0_ + milliseconds(100), policy_);
  ASSERT_EQ(batches.size(), 1u);
  ExpectBatch(batches[0], 0, 6, 3);
  EXPECT_EQ(stream.unbatched(), 1u);
}

TEST_F(ReplicaStreamTest, StepsBeforeSendFromOnlyGrowTheTree) {
  ReplicaStream stream = Make(3, /*send_from=*/6);
  AddSteps(stream, 0, 10, t0_);
  EXPECT_EQ(stream.size(), 10u);
  const std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_, policy_);
  ASSERT_EQ(batches.size(), 1u);
  ExpectBatch(batches[0], 3, 6, 4);
}

TEST_F(ReplicaStreamTest, RollbackCutsTheTreeAndStartsTheNewEpochAtSendFrom) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 8, t0_);
  ASSERT_EQ(stream.TakeDue(t0_, policy_).size(), 2u);
  AddSteps(stream, 8, 10, t0_);  // unbatched when the order arrives: dropped
  stream.Rollback(1, 5, 5);
  EXPECT_EQ(stream.epoch(), 1u);
  EXPECT_EQ(stream.size(), 5u);
  EXPECT_EQ(stream.unbatched(), 0u);
  AddSteps(stream, 5, 9, t0_ + milliseconds(1), false, /*salt=*/7);
  const std::vector<wire::pb::LeafBatch> batches = stream.TakeDue(t0_ + milliseconds(1), policy_);
  ASSERT_EQ(batches.size(), 1u);
  ExpectBatch(batches[0], 1, 5, 4, /*salt=*/7);
  std::vector<Hash> leaves;
  for (uint64_t s = 0; s < 5; ++s) leaves.push_back(LeafHash(s));
  for (uint64_t s = 5; s < 9; ++s) leaves.push_back(LeafHash(s, 7));
  NaiveTree naive = NaiveTree::FromLeaves(leaves);
  EXPECT_EQ(stream.tree().Root(), naive.Root(9));
}

TEST_F(ReplicaStreamTest, CommitRootsAreCheckedAgainstTheTree) {
  ReplicaStream stream = Make();
  AddSteps(stream, 0, 5, t0_);
  std::vector<Hash> leaves;
  for (uint64_t s = 0; s < 5; ++s) leaves.push_back(LeafHash(s));
  NaiveTree naive = NaiveTree::FromLeaves(leaves);
  EXPECT_EQ(stream.CheckCommit(3, naive.Root(3)), CommitCheck::kMatch);
  EXPECT_EQ(stream.CheckCommit(3, naive.Root(4)), CommitCheck::kMismatch);
  EXPECT_EQ(stream.CheckCommit(6, naive.Root(5)), CommitCheck::kPending);
}

TEST_F(ReplicaStreamTest, BatchKeysAndBytesSurviveTheOutboxUnchanged) {
  ReplicaStream stream = Make(2);
  AddSteps(stream, 0, 11, t0_, /*last_at_end=*/true);
  const std::vector<wire::pb::LeafBatch> made = stream.TakeDue(t0_, policy_);
  ASSERT_EQ(made.size(), 3u);
  ::fp::testing::TempDir dir;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Outbox> outbox, Outbox::Open(dir.path().string(), {}));
    ASSERT_OK(outbox->Put(made));
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Outbox> reopened, Outbox::Open(dir.path().string(), {}));
  const std::vector<const wire::pb::LeafBatch*> resent = reopened->Pending();
  ASSERT_EQ(resent.size(), made.size());
  for (size_t i = 0; i < made.size(); ++i) {
    EXPECT_EQ(KeyOf(*resent[i]), (BatchKey{session_, kReplica, 2, 4 * i}));
    EXPECT_EQ(resent[i]->SerializeAsString(), made[i].SerializeAsString());
  }
}

}  // namespace
}  // namespace fp::node::worker
