// CheckLog over hand-built histories: a clean one passes, and each broken promise of the log is
// reported. (CheckNodes is exercised by supervisor_sim_test, on real stores.)
#include "supervisor/sim/checker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fp::supervisor::sim {
namespace {

using ::testing::HasSubstr;

class CheckLogTest : public ::testing::Test {
 protected:
  // Appends a tick with `key` (and `term`) to the history; returns its bytes.
  std::string Add(uint64_t unix_ms, std::string key, uint64_t term = kNoTerm) {
    ModelEntry entry;
    entry.record.mutable_tick()->set_unix_ms(unix_ms);
    FP_CHECK(entry.record.SerializeToString(&entry.bytes));
    entry.dedup_key = std::move(key);
    entry.term = term;
    history_.push_back(entry);
    return entry.bytes;
  }
  AppendAnswer Acked(uint64_t position) {
    const ModelEntry& entry = history_[position];
    return AppendAnswer{entry.dedup_key, entry.bytes,           true,
                        position,        entry.term != kNoTerm, entry.term};
  }

  std::vector<ModelEntry> history_;
};

TEST_F(CheckLogTest, CleanHistoryPasses) {
  Add(1, "a", 1);
  Add(2, "b");
  Add(3, "c", 2);
  Add(4, "d", 2);
  const std::vector<AppendAnswer> answers = {Acked(0), Acked(1), Acked(1), Acked(3)};
  EXPECT_THAT(CheckLog(history_, answers), ::testing::IsEmpty());
}

TEST_F(CheckLogTest, RefusedRecordThatIsAbsentPasses) {
  Add(1, "a");
  ModelEntry other;
  other.record.mutable_tick()->set_unix_ms(9);
  FP_CHECK(other.record.SerializeToString(&other.bytes));
  // The same key with other content was refused: the log holds the first content only.
  const std::vector<AppendAnswer> answers = {AppendAnswer{"a", other.bytes, false, 0, false}};
  EXPECT_THAT(CheckLog(history_, answers), ::testing::IsEmpty());
}

// ---- Violations -------------------------------------------------------------------------------

TEST_F(CheckLogTest, KeyTwiceInTheLogIsReported) {
  Add(1, "a");
  Add(2, "b");
  Add(1, "a");
  const std::vector<std::string> violations = CheckLog(history_, {});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("more than once: positions 0 and 2"));
}

TEST_F(CheckLogTest, AckAtAnotherRecordsPositionIsReported) {
  Add(1, "a");
  Add(2, "b");
  AppendAnswer wrong = Acked(0);
  wrong.position = 1;
  const std::vector<std::string> violations = CheckLog(history_, std::vector{wrong});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("acknowledged at position 1"));
}

TEST_F(CheckLogTest, AckPastTheEndIsReported) {
  Add(1, "a");
  AppendAnswer wrong = Acked(0);
  wrong.position = 5;
  const std::vector<std::string> violations = CheckLog(history_, std::vector{wrong});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("past the log's end"));
}

TEST_F(CheckLogTest, RefusedRecordInTheLogIsReported) {
  Add(1, "a");
  AppendAnswer refused = Acked(0);
  refused.acked = false;
  const std::vector<std::string> violations = CheckLog(history_, std::vector{refused});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("refused but is in the log at position 0"));
}

TEST_F(CheckLogTest, LeaderRecordRefusedInOneTermMayBeWrittenByTheNext) {
  Add(1, "a", 2);  // the new leader's own decision, the same record
  AppendAnswer refused = Acked(0);
  refused.acked = false;
  refused.term = 1;  // refused by the fence: term 1 was over
  EXPECT_THAT(CheckLog(history_, std::vector{refused}), ::testing::IsEmpty());
  refused.term = 2;  // refused, yet its own term wrote it
  const std::vector<std::string> violations = CheckLog(history_, std::vector{refused});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("refused but is in the log at position 0"));
}

TEST_F(CheckLogTest, StaleTermAfterANewerTermIsReported) {
  Add(1, "a", 1);
  Add(2, "b", 2);
  Add(3, "c");  // not a leader record: no term
  Add(4, "d", 1);
  const std::vector<std::string> violations = CheckLog(history_, {});
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_THAT(violations[0], HasSubstr("of term 1 at position 3, after term 2 wrote position 1"));
}

TEST_F(CheckLogTest, ReportsAreBounded) {
  for (int i = 0; i < 40; ++i) Add(1, "same");
  EXPECT_EQ(CheckLog(history_, {}).size(), kMaxReportedViolations);
}

}  // namespace
}  // namespace fp::supervisor::sim
