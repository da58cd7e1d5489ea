// std::source_location for clang 14 on libstdc++ 12, for the fuzz tree only.
//
// libstdc++ 12 declares std::source_location only when the compiler provides
// __builtin_source_location, which arrived in clang 15; Debian 12's clang is 14. Status
// (common/base/status.h) records where an error was made with std::source_location, so the fuzz
// tree force-includes this header (-include), which supplies the type from the older
// __builtin_FILE / __builtin_LINE builtins. The main build (g++ 12) never sees this file, and with
// a newer clang the real type is used and this header adds nothing.
//
// Thread-safety: a value type.
#pragma once

#include <source_location>

#if !defined(__cpp_lib_source_location)
#include <cstdint>

namespace std {  // NOLINT: supplies a standard type the toolchain lacks

struct source_location {
  // Default arguments are evaluated at the call site, which is what makes this the caller's
  // location.
  static constexpr source_location current(const char* file = __builtin_FILE(),
                                           const char* function = __builtin_FUNCTION(),
                                           uint_least32_t line = __builtin_LINE(),
                                           uint_least32_t column = __builtin_COLUMN()) noexcept {
    source_location location;
    location.file_ = file;
    location.function_ = function;
    location.line_ = line;
    location.column_ = column;
    return location;
  }

  constexpr source_location() noexcept = default;
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr const char* function_name() const noexcept { return function_; }
  constexpr uint_least32_t line() const noexcept { return line_; }
  constexpr uint_least32_t column() const noexcept { return column_; }

 private:
  const char* file_ = "";
  const char* function_ = "";
  uint_least32_t line_ = 0;
  uint_least32_t column_ = 0;
};

}  // namespace std

#endif
