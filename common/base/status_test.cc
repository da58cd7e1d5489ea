#include "common/base/status.h"

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp {
namespace {

using ::fp::testing::StatusIs;

StatusOr<int> ParsePositive(int v) {
  if (v <= 0) return InvalidArgumentError("not positive");
  return v;
}

Status AddOne(int v, int* out) {
  FP_ASSIGN_OR_RETURN(int parsed, ParsePositive(v));
  *out = parsed + 1;
  return OkStatus();
}

Status Forward(int v) {
  int ignored = 0;
  FP_RETURN_IF_ERROR(AddOne(v, &ignored));
  return OkStatus();
}

TEST(StatusTest, OkByDefault) {
  Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kOk);
  EXPECT_EQ(status.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesCodeMessageAndLocation) {
  Status status = DataLossError("bad proof");
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_EQ(status.message(), "bad proof");
  EXPECT_EQ(status.location().rfind("status_test.cc:", 0), 0u);
  EXPECT_NE(status.ToString().find("DATA_LOSS: bad proof"), std::string::npos);
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  Status status = NotFoundError("no such file").WithContext("model.safetensors");
  EXPECT_THAT(status, StatusIs(StatusCode::kNotFound));
  EXPECT_EQ(status.message(), "model.safetensors: no such file");
}

TEST(StatusTest, AssignOrReturnPropagates) {
  int out = 0;
  EXPECT_OK(AddOne(4, &out));
  EXPECT_EQ(out, 5);
  EXPECT_THAT(AddOne(-1, &out), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Forward(0), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(Forward(3));
}

TEST(StatusTest, StatusOrHoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> value = std::make_unique<int>(7);
  ASSERT_OK(value);
  std::unique_ptr<int> taken = std::move(value).value();
  EXPECT_EQ(*taken, 7);
}

TEST(StatusDeathTest, CheckAbortsWithConditionText) {
  EXPECT_DEATH(FP_CHECK(1 + 1 == 3), "FP_CHECK failed: 1 \\+ 1 == 3");
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> error = UnavailableError("down");
  EXPECT_DEATH((void)error.value(), "UNAVAILABLE: down");
}

}  // namespace
}  // namespace fp
