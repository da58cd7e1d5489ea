// Structured logging over spdlog: one event per line on stderr, as text or as JSON lines.
//
// Text:  2026-11-27T20:00:00.123Z I supervisor leader elected term=5 peer="s1 (10.0.0.1)"
// JSON:  {"ts":"2026-11-27T20:00:00.123Z","level":"info","component":"supervisor",
//         "msg":"leader elected","term":5,"peer":"s1 (10.0.0.1)"}   (one line)
// Timestamps are UTC with milliseconds. The level letter in text is D, I, W or E. Text values
// that are empty or contain a space, '"', '=', '\' or a control character are double-quoted with
// C-style escapes, so every event stays on one line and splits unambiguously into key=value.
//
// Log through LogEvent (or the Log{Debug,Info,Warn,Error} shorthands). Direct spdlog calls
// still come out in the configured format, with the logger name "fieldprint" as component and
// the formatted text as message.
//
// Thread-safety: InitLogging is called once at startup, before other threads log (it replaces
// spdlog's default logger). LogEvent is safe from any thread; lines from different threads never
// interleave.
#pragma once

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

#include <spdlog/common.h>

#include "common/base/status.h"

namespace fp {

enum class LogLevel : int {
  kDebug = 0,
  kInfo = 1,
  kWarn = 2,
  kError = 3,
};

enum class LogFormat : int {
  kText = 0,
  kJson = 1,
};

// "debug", "info", "warn", "error" (lower case only); InvalidArgument otherwise.
StatusOr<LogLevel> ParseLogLevel(std::string_view name);
// "text" or "json"; InvalidArgument otherwise.
StatusOr<LogFormat> ParseLogFormat(std::string_view name);

// Installs the process's logger: events at `level` and above, in `format`, on stderr.
void InitLogging(LogLevel level, LogFormat format);
// Same, writing to `sink` instead of stderr (a file sink, or a capturing sink in tests). The
// logger shares ownership of `sink`.
void InitLogging(LogLevel level, LogFormat format, spdlog::sink_ptr sink);

// One key=value field of an event. Keys are identifiers ([a-z][a-z0-9_]*) chosen by the
// programmer, typically literals; the key is borrowed and must outlive the LogEvent call.
// "ts", "level", "component" and "msg" are reserved. Values are copied.
class LogField {
 public:
  using Value = std::variant<std::string, int64_t, uint64_t, double, bool>;

  LogField(std::string_view key, std::string_view value) : key_(key), value_(std::string(value)) {}
  LogField(std::string_view key, const char* value) : key_(key), value_(std::string(value)) {}
  LogField(std::string_view key, const std::string& value) : key_(key), value_(value) {}
  LogField(std::string_view key, bool value) : key_(key), value_(value) {}
  LogField(std::string_view key, double value) : key_(key), value_(value) {}
  template <std::signed_integral T>
  LogField(std::string_view key, T value) : key_(key), value_(static_cast<int64_t>(value)) {}
  template <std::unsigned_integral T>
  requires(!std::same_as<T, bool>) LogField(std::string_view key, T value)
      : key_(key), value_(static_cast<uint64_t>(value)) {}
  // A Status field renders as its ToString() ("OK" or "CODE: message [file:line]").
  LogField(std::string_view key, const Status& status) : key_(key), value_(status.ToString()) {}

  std::string_view key() const { return key_; }
  const Value& value() const { return value_; }

 private:
  std::string_view key_;  // borrowed
  Value value_;
};

// Logs one event if `level` is enabled. `component` names the subsystem ("supervisor",
// "worker.engine"); `message` is free text. FP_CHECKs that component is non-empty and that field
// keys are well formed and not reserved.
void LogEvent(LogLevel level, std::string_view component, std::string_view message,
              std::initializer_list<LogField> fields = {});

inline void LogDebug(std::string_view component, std::string_view message,
                     std::initializer_list<LogField> fields = {}) {
  LogEvent(LogLevel::kDebug, component, message, fields);
}
inline void LogInfo(std::string_view component, std::string_view message,
                    std::initializer_list<LogField> fields = {}) {
  LogEvent(LogLevel::kInfo, component, message, fields);
}
inline void LogWarn(std::string_view component, std::string_view message,
                    std::initializer_list<LogField> fields = {}) {
  LogEvent(LogLevel::kWarn, component, message, fields);
}
inline void LogError(std::string_view component, std::string_view message,
                     std::initializer_list<LogField> fields = {}) {
  LogEvent(LogLevel::kError, component, message, fields);
}

}  // namespace fp
