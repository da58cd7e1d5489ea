// LogModel against the Log contract (supervisor/log/log.h) and the etcd backend's leadership
// rules, with expectations written out by hand.
#include "supervisor/sim/log_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::supervisor::sim {
namespace {

using ::fp::testing::StatusIs;

constexpr uint64_t kTtl = 100;

ModelAppend Tick(uint64_t unix_ms, std::string key, uint64_t term = kNoTerm) {
  ModelAppend append;
  append.record.mutable_tick()->set_unix_ms(unix_ms);
  FP_CHECK(append.record.SerializeToString(&append.bytes));
  append.dedup_key = std::move(key);
  append.term = term;
  return append;
}

class LogModelTest : public ::testing::Test {
 protected:
  LogModel model_{kTtl, ModelBug::kNone};
};

TEST_F(LogModelTest, AppendsAtContiguousPositions) {
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(uint64_t position, model_.Append(Tick(i, "k" + std::to_string(i)), 0));
    EXPECT_EQ(position, i);
  }
  EXPECT_EQ(model_.Begin(), 0u);
  EXPECT_EQ(model_.End(), 5u);
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, model_.Read(1, 3));
  ASSERT_EQ(entries.size(), 3u);
  for (uint64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(entries[i].position, i + 1);
    EXPECT_EQ(entries[i].record.tick().unix_ms(), i + 1);
  }
}

TEST_F(LogModelTest, ReadAtOrPastEndIsEmpty) {
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> at_end, model_.Read(1, 10));
  EXPECT_TRUE(at_end.empty());
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> past_end, model_.Read(7, 10));
  EXPECT_TRUE(past_end.empty());
}

TEST_F(LogModelTest, SameKeySameContentAnswersTheStoredPosition) {
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  ASSERT_OK(model_.Append(Tick(2, "b"), 0).status());
  ASSERT_OK_AND_ASSIGN(uint64_t again, model_.Append(Tick(1, "a"), 5));
  EXPECT_EQ(again, 0u);
  EXPECT_EQ(model_.End(), 2u);
  EXPECT_EQ(model_.history().size(), 2u);
}

TEST_F(LogModelTest, KeysOutliveTrim) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  ASSERT_OK(model_.Append(Tick(2, "b"), 0).status());
  ASSERT_OK_AND_ASSIGN(uint64_t begin, model_.Trim(2, term, 1));
  EXPECT_EQ(begin, 2u);
  ASSERT_OK_AND_ASSIGN(uint64_t again, model_.Append(Tick(1, "a"), 2));
  EXPECT_EQ(again, 0u);
  EXPECT_EQ(model_.End(), 2u);
}

TEST_F(LogModelTest, TrimStopsAtEndAndNeverMovesBack) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  ASSERT_OK_AND_ASSIGN(uint64_t begin, model_.Trim(10, term, 1));
  EXPECT_EQ(begin, 1u);
  ASSERT_OK_AND_ASSIGN(begin, model_.Trim(0, term, 1));
  EXPECT_EQ(begin, 1u);
  // Trimmed entries stay in the history for the checker.
  EXPECT_EQ(model_.history().size(), 1u);
}

TEST_F(LogModelTest, CampaignWinsOnlyWithoutALiveLease) {
  ASSERT_OK_AND_ASSIGN(uint64_t first, model_.Campaign(0, 0));
  EXPECT_EQ(first, 1u);
  EXPECT_THAT(model_.Campaign(1, kTtl - 1).status(), StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(uint64_t second, model_.Campaign(1, kTtl));
  EXPECT_EQ(second, 2u);
  EXPECT_FALSE(model_.Fenced(first, kTtl));
  EXPECT_TRUE(model_.Fenced(second, kTtl));
}

TEST_F(LogModelTest, KeepAliveExtendsTheLease) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.KeepAlive(term, 60));
  EXPECT_TRUE(model_.Fenced(term, 60 + kTtl - 1));
  EXPECT_FALSE(model_.Fenced(term, 60 + kTtl));
}

TEST_F(LogModelTest, LeaderRecordOfTheLiveTermIsWritten) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK_AND_ASSIGN(uint64_t position, model_.Append(Tick(1, "a", term), 10));
  EXPECT_EQ(position, 0u);
  EXPECT_EQ(model_.history()[0].term, term);
}

TEST_F(LogModelTest, RetryOfAWrittenLeaderRecordAnswersItsPositionAfterTheTermEnded) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Append(Tick(1, "a", term), 10).status());
  ASSERT_OK(model_.Campaign(1, kTtl).status());
  ASSERT_OK_AND_ASSIGN(uint64_t again, model_.Append(Tick(1, "a", term), kTtl + 1));
  EXPECT_EQ(again, 0u);
}

TEST_F(LogModelTest, PublishedPositionsOnlyGrow) {
  EXPECT_EQ(model_.MinPublishedApplied(2), 0u);
  model_.PublishApplied(0, 7);
  model_.PublishApplied(1, 5);
  EXPECT_EQ(model_.MinPublishedApplied(2), 5u);
  model_.PublishApplied(1, 3);  // a late, older report
  EXPECT_EQ(model_.MinPublishedApplied(2), 5u);
  EXPECT_EQ(model_.MinPublishedApplied(3), 0u);  // supervisor 2 never published
}

// ---- Error paths ------------------------------------------------------------------------------

TEST_F(LogModelTest, SameKeyDifferentContentIsFailedPrecondition) {
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  EXPECT_THAT(model_.Append(Tick(2, "a"), 0).status(), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(model_.End(), 1u);
}

TEST_F(LogModelTest, ReadBelowBeginIsOutOfRange) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  ASSERT_OK(model_.Append(Tick(2, "b"), 0).status());
  ASSERT_OK(model_.Trim(1, term, 0).status());
  EXPECT_THAT(model_.Read(0, 1).status(), StatusIs(StatusCode::kOutOfRange));
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> rest, model_.Read(1, 5));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].record.tick().unix_ms(), 2u);
}

TEST_F(LogModelTest, LeaderRecordOfAnEndedTermIsRefused) {
  ASSERT_OK_AND_ASSIGN(uint64_t old_term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Campaign(1, kTtl).status());
  EXPECT_THAT(model_.Append(Tick(1, "a", old_term), kTtl + 1).status(),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(model_.End(), 0u);
}

TEST_F(LogModelTest, LeaderRecordAfterItsLeaseLapsedIsRefused) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  EXPECT_THAT(model_.Append(Tick(1, "a", term), kTtl).status(),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(LogModelTest, TrimAndKeepAliveOfAnEndedTermAreRefused) {
  ASSERT_OK_AND_ASSIGN(uint64_t term, model_.Campaign(0, 0));
  ASSERT_OK(model_.Append(Tick(1, "a"), 0).status());
  EXPECT_THAT(model_.Trim(1, term, kTtl).status(), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(model_.KeepAlive(term, kTtl), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(model_.Begin(), 0u);
}

// ---- Planted bugs -----------------------------------------------------------------------------

TEST_F(LogModelTest, IgnoringIdempotencyWritesARetryTwice) {
  LogModel buggy(kTtl, ModelBug::kIgnoreIdempotency);
  ASSERT_OK(buggy.Append(Tick(1, "a"), 0).status());
  ASSERT_OK_AND_ASSIGN(uint64_t again, buggy.Append(Tick(1, "a"), 0));
  EXPECT_EQ(again, 1u);
}

TEST_F(LogModelTest, IgnoringFencingWritesAStaleTerm) {
  LogModel buggy(kTtl, ModelBug::kIgnoreFencing);
  ASSERT_OK_AND_ASSIGN(uint64_t old_term, buggy.Campaign(0, 0));
  ASSERT_OK(buggy.Campaign(1, kTtl).status());
  ASSERT_OK(buggy.Append(Tick(1, "a", old_term), kTtl + 1).status());
}

}  // namespace
}  // namespace fp::supervisor::sim
