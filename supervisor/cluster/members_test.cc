// Tests of the member table against a real 1-member etcd with mutual TLS: entries are written and
// read back by the documented key schema, reservations only ever lower an entry, removal deletes,
// and names or values outside the schema are refused.
#include "supervisor/cluster/members.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "supervisor/log/testing/etcd_suite.h"
#include "tests/testutil/status_matchers.h"

namespace fp::supervisor::cluster {
namespace {

using ::fp::testing::StatusIs;
using Table = std::map<std::string, uint64_t>;

class ClusterMembersTest : public supervisor::testing::SharedEtcdTest<1> {
 protected:
  void SetUp() override {
    SharedEtcdTest::SetUp();
    if (HasFatalFailure()) return;
    prefix_ =
        fmt::format("/test/{}", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    auto members = ClusterMembers::Create(cluster_->ClientOptionsFor(), prefix_);
    FP_CHECK_OK(members);
    members_ = std::move(members).value();
    auto client = etcd::Client::Create(cluster_->ClientOptionsFor());
    FP_CHECK_OK(client);
    client_ = std::move(client).value();
  }
  // The raw value etcd holds under `key`, or nullopt.
  std::optional<std::string> Raw(const std::string& key) {
    etcd::RangeRequest get;
    get.key = key;
    auto found = client_->Range(get);
    FP_CHECK_OK(found);
    if (found->kvs.empty()) return std::nullopt;
    return found->kvs[0].value;
  }

  std::string prefix_;
  std::unique_ptr<ClusterMembers> members_;
  std::unique_ptr<etcd::Client> client_;
};

TEST_F(ClusterMembersTest, PublishedPositionsAreDecimalEntriesUnderThePrefix) {
  ASSERT_OK(members_->Publish("supervisor-0", 1200));
  ASSERT_OK(members_->Publish("supervisor-1", 7));
  ASSERT_OK(members_->Publish("supervisor-0", 1300));  // a later publish replaces the entry
  EXPECT_EQ(Raw(prefix_ + "/members/supervisor-0"), "1300");
  EXPECT_EQ(Raw(prefix_ + "/members/supervisor-1"), "7");
  ASSERT_OK_AND_ASSIGN(Table table, members_->List());
  EXPECT_EQ(table, (Table{{"supervisor-0", 1300}, {"supervisor-1", 7}}));
}

TEST_F(ClusterMembersTest, ReservationCreatesOrLowersButNeverRaises) {
  ASSERT_OK(members_->Reserve("new", 500));  // absent: created
  ASSERT_OK(members_->Reserve("new", 800));  // higher: kept at 500
  ASSERT_OK_AND_ASSIGN(Table table, members_->List());
  EXPECT_EQ(table["new"], 500u);
  ASSERT_OK(members_->Reserve("new", 300));  // lower: lowered
  ASSERT_OK_AND_ASSIGN(table, members_->List());
  EXPECT_EQ(table["new"], 300u);
}

TEST_F(ClusterMembersTest, RemovedMemberIsGoneUntilItPublishesAgain) {
  ASSERT_OK(members_->Publish("a", 1));
  ASSERT_OK(members_->Publish("b", 2));
  ASSERT_OK_AND_ASSIGN(bool removed, members_->Remove("a"));
  EXPECT_TRUE(removed);
  ASSERT_OK_AND_ASSIGN(removed, members_->Remove("a"));
  EXPECT_FALSE(removed);
  ASSERT_OK_AND_ASSIGN(Table table, members_->List());
  EXPECT_EQ(table, (Table{{"b", 2}}));
  ASSERT_OK(members_->Publish("a", 5));
  ASSERT_OK_AND_ASSIGN(table, members_->List());
  EXPECT_EQ(table, (Table{{"a", 5}, {"b", 2}}));
}

// ---- Error paths ----

TEST_F(ClusterMembersTest, NamesOutsideTheSchemaAreInvalidArgument) {
  for (const std::string& bad :
       {std::string(), std::string("a/b"), std::string(".."), std::string("sp ace"),
        std::string(kMaxMemberNameBytes + 1, 'x')}) {
    EXPECT_THAT(members_->Publish(bad, 1), StatusIs(StatusCode::kInvalidArgument)) << bad;
    EXPECT_THAT(members_->Remove(bad), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_THAT(ClusterMembers::Create(cluster_->ClientOptionsFor(), "/p/"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ClusterMembersTest, ValueThatIsNotAPositionIsDataLoss) {
  etcd::TxnRequest put;
  put.success.push_back({etcd::TxnOp::Kind::kPut, prefix_ + "/members/x", "12a", 0, {}, ""});
  ASSERT_OK(client_->Txn(put, std::nullopt).status());
  EXPECT_THAT(members_->List(), StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(members_->Reserve("x", 1), StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(ParseMemberPosition(""), StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(ParseMemberPosition("-1"), StatusIs(StatusCode::kDataLoss));
  ASSERT_OK_AND_ASSIGN(uint64_t position, ParseMemberPosition("18446744073709551615"));
  EXPECT_EQ(position, UINT64_MAX);
}

}  // namespace
}  // namespace fp::supervisor::cluster
