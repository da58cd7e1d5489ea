// Structured logging; see log.h.
//
// Design: one spdlog logger with a custom formatter. LogEvent parks the structured event in a
// thread-local pointer while it calls the (synchronous) logger, and the formatter, which runs on
// the same thread inside that call, renders it as text or JSON. A record without a parked event
// came from a direct spdlog call and is rendered from its payload alone.
#include "common/base/log.h"

#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <spdlog/formatter.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace fp {
namespace {

struct Event {
  std::string_view component;
  std::string_view message;
  std::initializer_list<LogField> fields;
};

// The event being logged by this thread, or null outside LogEvent.
thread_local const Event* current_event = nullptr;

class CurrentEventScope {
 public:
  explicit CurrentEventScope(const Event* event) { current_event = event; }
  ~CurrentEventScope() { current_event = nullptr; }
  CurrentEventScope(const CurrentEventScope&) = delete;
  CurrentEventScope& operator=(const CurrentEventScope&) = delete;
};

// Lets LogEvent skip rendering a text body that the JSON formatter would ignore.
std::atomic<LogFormat> active_format{LogFormat::kText};
std::atomic<bool> logging_initialized{false};
std::once_flag default_logging_once;

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

std::string_view LevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

char LevelLetter(spdlog::level::level_enum level) {
  return static_cast<char>(std::toupper(static_cast<unsigned char>(LevelName(level)[0])));
}

void AppendTimestamp(spdlog::log_clock::time_point time, std::string& out) {
  const auto since_epoch = time.time_since_epoch();
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds);
  const std::time_t whole = static_cast<std::time_t>(seconds.count());
  std::tm utc;
  gmtime_r(&whole, &utc);
  char buffer[40];
  const int length = std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                                   utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour,
                                   utc.tm_min, utc.tm_sec, static_cast<int>(millis.count()));
  out.append(buffer, static_cast<size_t>(length));
}

bool IsControl(char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }

// C-style escapes for control characters; `quote` also escapes '"' and '\'.
void AppendEscaped(std::string_view text, bool quote, std::string& out) {
  for (char c : text) {
    if (quote && (c == '"' || c == '\\')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (IsControl(c)) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    } else {
      out += c;
    }
  }
}

bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || IsControl(c)) return true;
  }
  return false;
}

void AppendTextValue(const LogField::Value& value, std::string& out) {
  if (const auto* text = std::get_if<std::string>(&value)) {
    if (NeedsQuotes(*text)) {
      out += '"';
      AppendEscaped(*text, /*quote=*/true, out);
      out += '"';
    } else {
      out += *text;
    }
  } else if (const auto* signed_value = std::get_if<int64_t>(&value)) {
    out += std::to_string(*signed_value);
  } else if (const auto* unsigned_value = std::get_if<uint64_t>(&value)) {
    out += std::to_string(*unsigned_value);
  } else if (const auto* real = std::get_if<double>(&value)) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.17g", *real);
    out += buffer;
  } else {
    out += std::get<bool>(value) ? "true" : "false";
  }
}

// "component message key=value ...": the text form's body, also the payload that a non-fieldprint
// formatter would print.
std::string RenderTextBody(const Event& event) {
  std::string body(event.component);
  body += ' ';
  AppendEscaped(event.message, /*quote=*/false, body);
  for (const LogField& field : event.fields) {
    body += ' ';
    body += field.key();
    body += '=';
    AppendTextValue(field.value(), body);
  }
  return body;
}

boost::json::value JsonValue(const LogField::Value& value) {
  if (const auto* text = std::get_if<std::string>(&value)) return boost::json::string(*text);
  if (const auto* signed_value = std::get_if<int64_t>(&value)) return *signed_value;
  if (const auto* unsigned_value = std::get_if<uint64_t>(&value)) return *unsigned_value;
  if (const auto* real = std::get_if<double>(&value)) {
    // JSON has no NaN or infinity; spell them as strings rather than emit invalid JSON.
    if (std::isnan(*real)) return boost::json::string("nan");
    if (std::isinf(*real)) return boost::json::string(*real > 0 ? "inf" : "-inf");
    return *real;
  }
  return std::get<bool>(value);
}

class EventFormatter : public spdlog::formatter {
 public:
  explicit EventFormatter(LogFormat format) : format_(format) {}

  void format(const spdlog::details::log_msg& record, spdlog::memory_buf_t& dest) override {
    std::string line;
    line.reserve(128);
    if (format_ == LogFormat::kJson) {
      line = RenderJson(record);
    } else {
      AppendTimestamp(record.time, line);
      line += ' ';
      line += LevelLetter(record.level);
      line += ' ';
      const std::string_view payload(record.payload.data(), record.payload.size());
      if (current_event != nullptr) {
        line += payload;  // already the rendered body
      } else {
        line.append(record.logger_name.data(), record.logger_name.size());
        line += ' ';
        AppendEscaped(payload, /*quote=*/false, line);
      }
    }
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<EventFormatter>(format_);
  }

 private:
  static std::string RenderJson(const spdlog::details::log_msg& record) {
    boost::json::object object;
    std::string timestamp;
    AppendTimestamp(record.time, timestamp);
    object["ts"] = timestamp;
    object["level"] = LevelName(record.level);
    if (current_event != nullptr) {
      object["component"] = current_event->component;
      object["msg"] = current_event->message;
      for (const LogField& field : current_event->fields) {
        object[field.key()] = JsonValue(field.value());
      }
    } else {
      object["component"] = std::string_view(record.logger_name.data(), record.logger_name.size());
      object["msg"] = std::string_view(record.payload.data(), record.payload.size());
    }
    return boost::json::serialize(object);
  }

  const LogFormat format_;
};

bool IsReservedKey(std::string_view key) {
  return key == "ts" || key == "level" || key == "component" || key == "msg";
}

bool IsWellFormedKey(std::string_view key) {
  if (key.empty() || key[0] < 'a' || key[0] > 'z') return false;
  for (char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

}  // namespace

StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    if (name == LevelName(ToSpdlog(level))) return level;
  }
  return InvalidArgumentError("unknown log level '" + std::string(name) +
                              "' (expected debug, info, warn or error)");
}

StatusOr<LogFormat> ParseLogFormat(std::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return InvalidArgumentError("unknown log format '" + std::string(name) +
                              "' (expected text or json)");
}

void InitLogging(LogLevel level, LogFormat format) {
  InitLogging(level, format, std::make_shared<spdlog::sinks::stderr_sink_mt>());
}

void InitLogging(LogLevel level, LogFormat format, spdlog::sink_ptr sink) {
  FP_CHECK(sink != nullptr);
  sink->set_formatter(std::make_unique<EventFormatter>(format));
  auto logger = std::make_shared<spdlog::logger>("fieldprint", std::move(sink));
  logger->set_level(ToSpdlog(level));
  // Warnings and errors reach the sink before the process can die after them.
  logger->flush_on(spdlog::level::warn);
  active_format.store(format, std::memory_order_relaxed);
  spdlog::set_default_logger(std::move(logger));
  logging_initialized.store(true, std::memory_order_release);
}

void LogEvent(LogLevel level, std::string_view component, std::string_view message,
              std::initializer_list<LogField> fields) {
  FP_CHECK_MSG(!component.empty(), "log events need a component");
  for (const LogField& field : fields) {
    FP_CHECK_MSG(IsWellFormedKey(field.key()), std::string(field.key()));
    FP_CHECK_MSG(!IsReservedKey(field.key()), std::string(field.key()));
  }
  // spdlog's own default logger writes to stdout, which belongs to command output; an event
  // logged before InitLogging gets the stderr text logger instead.
  if (!logging_initialized.load(std::memory_order_acquire)) {
    std::call_once(default_logging_once, [] {
      if (!logging_initialized.load(std::memory_order_acquire)) {
        InitLogging(LogLevel::kInfo, LogFormat::kText);
      }
    });
  }
  spdlog::logger* logger = spdlog::default_logger_raw();
  const spdlog::level::level_enum spdlog_level = ToSpdlog(level);
  if (!logger->should_log(spdlog_level)) return;
  const Event event{component, message, fields};
  CurrentEventScope scope(&event);
  if (active_format.load(std::memory_order_relaxed) == LogFormat::kJson) {
    logger->log(spdlog_level, spdlog::string_view_t(message.data(), message.size()));
  } else {
    const std::string body = RenderTextBody(event);
    logger->log(spdlog_level, spdlog::string_view_t(body.data(), body.size()));
  }
}

}  // namespace fp
