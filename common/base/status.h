// Status and StatusOr<T>: the one error type of fieldprint.
//
// Codes follow Abseil's canonical codes and their retry meaning: kUnavailable is retryable,
// kDeadlineExceeded may be retried with care, kInvalidArgument and kFailedPrecondition are not,
// kDataLoss means a bad Merkle proof or corrupt storage. A Status carries the file and line where
// it was made. Errors from outside (network, disk) are Statuses; broken invariants are FP_CHECK
// failures, which abort in every build.
//
// Thread-safety: value types; distinct objects may be used from distinct threads.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <source_location>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace fp {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  // OK.
  Status() = default;
  Status(StatusCode code, std::string message,
         std::source_location location = std::source_location::current());

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return ok() ? StatusCode::kOk : rep_->code; }
  std::string_view message() const { return ok() ? std::string_view() : rep_->message; }
  // "file:line" where the error was made; empty for OK.
  std::string location() const;
  // "INVALID_ARGUMENT: message [file.cc:12]", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message" (same code and location).
  Status WithContext(std::string_view context) const;

  // Explicitly drops a Status the caller does not need (a best-effort close, for example).
  void IgnoreError() const {}

 private:
  struct Rep {
    StatusCode code;
    std::string message;
    const char* file;
    unsigned line;
  };
  std::shared_ptr<const Rep> rep_;  // null when OK; immutable once made, so sharing is safe
};

inline Status OkStatus() { return Status(); }

#define FP_DECLARE_STATUS_MAKER(Name, Code)                                             \
  inline Status Name(std::string message,                                               \
                     std::source_location location = std::source_location::current()) { \
    return Status(StatusCode::Code, std::move(message), location);                      \
  }
FP_DECLARE_STATUS_MAKER(CancelledError, kCancelled)
FP_DECLARE_STATUS_MAKER(UnknownError, kUnknown)
FP_DECLARE_STATUS_MAKER(InvalidArgumentError, kInvalidArgument)
FP_DECLARE_STATUS_MAKER(DeadlineExceededError, kDeadlineExceeded)
FP_DECLARE_STATUS_MAKER(NotFoundError, kNotFound)
FP_DECLARE_STATUS_MAKER(AlreadyExistsError, kAlreadyExists)
FP_DECLARE_STATUS_MAKER(PermissionDeniedError, kPermissionDenied)
FP_DECLARE_STATUS_MAKER(ResourceExhaustedError, kResourceExhausted)
FP_DECLARE_STATUS_MAKER(FailedPreconditionError, kFailedPrecondition)
FP_DECLARE_STATUS_MAKER(AbortedError, kAborted)
FP_DECLARE_STATUS_MAKER(OutOfRangeError, kOutOfRange)
FP_DECLARE_STATUS_MAKER(UnimplementedError, kUnimplemented)
FP_DECLARE_STATUS_MAKER(InternalError, kInternal)
FP_DECLARE_STATUS_MAKER(UnavailableError, kUnavailable)
FP_DECLARE_STATUS_MAKER(DataLossError, kDataLoss)
FP_DECLARE_STATUS_MAKER(UnauthenticatedError, kUnauthenticated)
#undef FP_DECLARE_STATUS_MAKER

[[noreturn]] void CheckFailed(const char* condition, const char* file, int line,
                              std::string_view detail);

// StatusOr<T>: a T or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : value_(status) {  // NOLINT: implicit by design
    if (status.ok()) CheckFailed("!status.ok()", __FILE__, __LINE__, "StatusOr from OK Status");
  }
  StatusOr(Status&& status) : value_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(value_).ok()) {
      CheckFailed("!status.ok()", __FILE__, __LINE__, "StatusOr from OK Status");
    }
  }
  StatusOr(const T& value) : value_(value) {}        // NOLINT: implicit by design
  StatusOr(T&& value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  template <typename U>
  requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::decay_t<U>, T> &&
           !std::is_same_v<std::decay_t<U>, Status> &&
           !std::is_same_v<std::decay_t<U>, StatusOr<T>>) StatusOr(U&& value)
      : value_(std::in_place_type<T>, std::forward<U>(value)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(value_); }
  Status status() const { return ok() ? Status() : std::get<Status>(value_); }

  // Precondition: ok(). Checked always.
  const T& value() const& { return std::get<T>(CheckedOk()); }
  T& value() & { return std::get<T>(CheckedOk()); }
  T&& value() && { return std::get<T>(std::move(CheckedOk())); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  const std::variant<Status, T>& CheckedOk() const {
    if (!ok()) CheckFailed("ok()", __FILE__, __LINE__, std::get<Status>(value_).ToString());
    return value_;
  }
  std::variant<Status, T>& CheckedOk() {
    if (!ok()) CheckFailed("ok()", __FILE__, __LINE__, std::get<Status>(value_).ToString());
    return value_;
  }

  std::variant<Status, T> value_;
};

namespace internal {
inline const Status& GetStatus(const Status& status) { return status; }
template <typename T>
Status GetStatus(const StatusOr<T>& status_or) {
  return status_or.status();
}
}  // namespace internal

}  // namespace fp

// Always-on invariant check: a failure is a programmer error and aborts with file and line.
#define FP_CHECK(condition)                                  \
  do {                                                       \
    if (!(condition)) [[unlikely]] {                         \
      ::fp::CheckFailed(#condition, __FILE__, __LINE__, {}); \
    }                                                        \
  } while (false)

#define FP_CHECK_MSG(condition, detail)                            \
  do {                                                             \
    if (!(condition)) [[unlikely]] {                               \
      ::fp::CheckFailed(#condition, __FILE__, __LINE__, (detail)); \
    }                                                              \
  } while (false)

// Checks that a Status (or StatusOr) is OK; aborts with its message otherwise.
#define FP_CHECK_OK(expr)                                                          \
  do {                                                                             \
    const ::fp::Status fp_check_ok_status = ::fp::internal::GetStatus(expr);       \
    if (!fp_check_ok_status.ok()) [[unlikely]] {                                   \
      ::fp::CheckFailed(#expr, __FILE__, __LINE__, fp_check_ok_status.ToString()); \
    }                                                                              \
  } while (false)

#define FP_STATUS_CONCAT_INNER(a, b) a##b
#define FP_STATUS_CONCAT(a, b) FP_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (a Status or StatusOr) is not OK.
#define FP_RETURN_IF_ERROR(expr)                                              \
  do {                                                                        \
    ::fp::Status fp_return_if_error_status = ::fp::internal::GetStatus(expr); \
    if (!fp_return_if_error_status.ok()) [[unlikely]]                         \
      return fp_return_if_error_status;                                       \
  } while (false)

// FP_ASSIGN_OR_RETURN(lhs, expr): evaluates a StatusOr expression; on error returns its Status,
// otherwise moves the value into `lhs` (which may be a declaration, e.g. `auto x`).
#define FP_ASSIGN_OR_RETURN(lhs, expr) \
  FP_ASSIGN_OR_RETURN_IMPL(FP_STATUS_CONCAT(fp_status_or_, __LINE__), lhs, expr)
#define FP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) [[unlikely]]                    \
    return tmp.status();                         \
  lhs = std::move(tmp).value()
