// GoogleTest helpers for Status and StatusOr: ASSERT_OK, EXPECT_OK, ASSERT_OK_AND_ASSIGN and the
// StatusIs(code) matcher.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/status.h"

namespace fp::testing {

inline const Status& ToStatus(const Status& status) { return status; }
template <typename T>
Status ToStatus(const StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER_P(StatusIs, code,
          std::string(negation ? "is not " : "is ") + std::string(StatusCodeName(code))) {
  Status status = ToStatus(arg);
  *result_listener << "status " << status.ToString();
  return status.code() == code;
}

}  // namespace fp::testing

#define ASSERT_OK(expr) ASSERT_EQ(::fp::testing::ToStatus(expr).ToString(), "OK")
#define EXPECT_OK(expr) EXPECT_EQ(::fp::testing::ToStatus(expr).ToString(), "OK")

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(FP_STATUS_CONCAT(fp_test_status_or_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  ASSERT_OK(tmp);                                 \
  lhs = std::move(tmp).value()
