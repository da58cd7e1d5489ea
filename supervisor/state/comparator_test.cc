// Tests of the comparator's pure decisions: agreement, majority and no-majority divergence,
// waiting, end markers, and escalation.
#include "supervisor/state/comparator.h"

#include <algorithm>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fp::supervisor {
namespace {

using ::testing::ElementsAre;

Hash H(uint8_t byte) {
  Hash hash{};
  hash.fill(byte);
  return hash;
}

class ComparatorTest : public ::testing::Test {};

TEST_F(ComparatorTest, AllEqualLeavesAgree) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(1)), Vote::Leaf(H(1))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kAgree);
  EXPECT_TRUE(decision.minority.empty());
}

TEST_F(ComparatorTest, MissingReplicaMakesEqualLeavesWait) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Missing(), Vote::Leaf(H(1))};
  EXPECT_EQ(DecideStep(votes).kind, StepDecision::Kind::kWait);
}

TEST_F(ComparatorTest, MajorityRollsBackTheMinorityOnly) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(2)), Vote::Leaf(H(1))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  ASSERT_TRUE(decision.majority.has_value());
  EXPECT_EQ(votes[*decision.majority].leaf_hash, H(1));
  EXPECT_THAT(decision.minority, ElementsAre(1));
}

TEST_F(ComparatorTest, MajorityDecidesBeforeTheLastReplicaArrives) {
  // R = 5: three agree, one differs, one has not reported.
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(1)), Vote::Missing(), Vote::Leaf(H(9)),
                             Vote::Leaf(H(1))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  EXPECT_THAT(decision.minority, ElementsAre(3));
}

TEST_F(ComparatorTest, DisagreementWithoutMajorityWaitsForMissingVote) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(2)), Vote::Missing()};
  EXPECT_EQ(DecideStep(votes).kind, StepDecision::Kind::kWait);
}

TEST_F(ComparatorTest, TwoReplicasThatDifferBothRollBack) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(2))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  EXPECT_FALSE(decision.majority.has_value());
  EXPECT_THAT(decision.minority, ElementsAre(0, 1));
}

TEST_F(ComparatorTest, ThreeDistinctLeavesRollEveryoneBack) {
  std::vector<Vote> votes = {Vote::Leaf(H(1)), Vote::Leaf(H(2)), Vote::Leaf(H(3))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  EXPECT_THAT(decision.minority, ElementsAre(0, 1, 2));
}

TEST_F(ComparatorTest, AllEndedAgreeOnTheEnd) {
  std::vector<Vote> votes = {Vote::End(), Vote::End(), Vote::End()};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kAgree);
  EXPECT_EQ(votes[*decision.majority].kind, Vote::Kind::kEnd);
}

TEST_F(ComparatorTest, ReplicaThatEndsEarlyIsTheMinority) {
  std::vector<Vote> votes = {Vote::Leaf(H(4)), Vote::End(), Vote::Leaf(H(4))};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  EXPECT_THAT(decision.minority, ElementsAre(1));
}

TEST_F(ComparatorTest, BadRootNeverFormsAMajority) {
  std::vector<Vote> votes = {Vote::BadEnd(), Vote::BadEnd(), Vote::End()};
  StepDecision decision = DecideStep(votes);
  EXPECT_EQ(decision.kind, StepDecision::Kind::kDiverge);
  EXPECT_THAT(decision.minority, ElementsAre(0, 1, 2));
  std::vector<Vote> one = {Vote::BadEnd()};
  EXPECT_EQ(DecideStep(one).kind, StepDecision::Kind::kDiverge);
}

TEST_F(ComparatorTest, SingleReplicaAgreesWithItself) {
  std::vector<Vote> votes = {Vote::Leaf(H(7))};
  EXPECT_EQ(DecideStep(votes).kind, StepDecision::Kind::kAgree);
}

TEST_F(ComparatorTest, EscalationGoesTruncateRebuildReplaceAtTheSameStep) {
  pb::ReplicaState replica;
  Escalation first = Escalate(replica, 10);
  EXPECT_EQ(first.order, pb::ORDER_KIND_TRUNCATE);
  EXPECT_EQ(first.count, 1u);
  replica.set_diverged_step(10);
  replica.set_diverged_count(first.count);
  Escalation second = Escalate(replica, 10);
  EXPECT_EQ(second.order, pb::ORDER_KIND_REBUILD);
  replica.set_diverged_count(second.count);
  EXPECT_EQ(Escalate(replica, 10).order, pb::ORDER_KIND_REPLACE);
  // A divergence at another step starts over.
  EXPECT_EQ(Escalate(replica, 11).order, pb::ORDER_KIND_TRUNCATE);
}

// Property: on random votes, every decision agrees with a direct reading of the rules.
TEST_F(ComparatorTest, RandomVotesFollowTheRules) {
  std::mt19937 random(7);
  for (int trial = 0; trial < 20000; ++trial) {
    const size_t replicas = 1 + random() % 6;
    std::vector<Vote> votes;
    for (size_t i = 0; i < replicas; ++i) {
      switch (random() % 6) {
        case 0:
          votes.push_back(Vote::Missing());
          break;
        case 1:
          votes.push_back(Vote::End());
          break;
        case 2:
          votes.push_back(Vote::BadEnd());
          break;
        default:
          votes.push_back(Vote::Leaf(H(static_cast<uint8_t>(random() % 2))));
      }
    }
    auto count = [&](const Vote& vote) {
      return std::count_if(votes.begin(), votes.end(),
                           [&](const Vote& other) { return SameVote(vote, other); });
    };
    const bool all_present = std::none_of(
        votes.begin(), votes.end(), [](const Vote& v) { return v.kind == Vote::Kind::kMissing; });
    StepDecision decision = DecideStep(votes);
    SCOPED_TRACE(trial);
    switch (decision.kind) {
      case StepDecision::Kind::kAgree:
        ASSERT_TRUE(all_present);
        ASSERT_EQ(count(votes[0]), static_cast<long>(replicas));
        break;
      case StepDecision::Kind::kDiverge:
        if (decision.majority.has_value()) {
          const Vote& majority = votes[*decision.majority];
          ASSERT_GT(2 * count(majority), static_cast<long>(replicas));
          for (uint32_t i = 0; i < replicas; ++i) {
            const bool dissent =
                votes[i].kind != Vote::Kind::kMissing && !SameVote(votes[i], majority);
            ASSERT_EQ(dissent,
                      std::count(decision.minority.begin(), decision.minority.end(), i) == 1);
          }
          ASSERT_FALSE(decision.minority.empty());
        } else {
          ASSERT_TRUE(all_present);
          ASSERT_EQ(decision.minority.size(), replicas);
          for (const Vote& vote : votes) ASSERT_LE(2 * count(vote), static_cast<long>(replicas));
        }
        break;
      case StepDecision::Kind::kWait: {
        ASSERT_FALSE(all_present);
        // No present vote may already hold a majority with a dissenter beside it.
        for (const Vote& vote : votes) {
          if (vote.kind != Vote::Kind::kMissing && 2 * count(vote) > static_cast<long>(replicas)) {
            for (const Vote& other : votes) {
              ASSERT_TRUE(other.kind == Vote::Kind::kMissing || SameVote(other, vote));
            }
          }
        }
        break;
      }
    }
  }
}

}  // namespace
}  // namespace fp::supervisor
