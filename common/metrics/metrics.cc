// Metrics helpers; see metrics.h.
#include "common/metrics/metrics.h"

#include <exception>
#include <vector>

#include <prometheus/text_serializer.h>

#include "common/base/status.h"

namespace fp::metrics {
namespace {

constexpr std::string_view kPrefix = "fieldprint_";

// Scaled or non-base units; any of these as a word of a name is a naming error.
constexpr std::string_view kNonBaseUnits[] = {
    "milliseconds", "microseconds", "nanoseconds", "ms",      "us",    "ns",
    "millis",       "micros",       "nanos",       "minutes", "hours", "days",
    "kilobytes",    "megabytes",    "gigabytes",   "kb",      "mb",    "gb",
    "kib",          "mib",          "gib",         "percent", "pct",
};

// Labels whose values would grow without bound (one series per session or token).
constexpr std::string_view kUnboundedLabels[] = {
    "session", "session_id", "request_id", "step", "token", "token_id", "prompt", "trace_id",
};

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

void CheckWords(std::string_view name) {
  const std::string_view words = name.substr(kPrefix.size());
  FP_CHECK_MSG(!words.empty() && words.front() != '_' && words.back() != '_',
               "metric name " + std::string(name) + " has an empty word");
  size_t start = 0;
  while (start <= words.size()) {
    size_t end = words.find('_', start);
    if (end == std::string_view::npos) end = words.size();
    const std::string_view word = words.substr(start, end - start);
    FP_CHECK_MSG(!word.empty(), "metric name " + std::string(name) + " has '__'");
    for (char c : word) {
      FP_CHECK_MSG(IsLowerAlnum(c), "metric name " + std::string(name) + " has '" +
                                        std::string(1, c) + "'; use [a-z0-9_]");
    }
    for (std::string_view unit : kNonBaseUnits) {
      FP_CHECK_MSG(word != unit, "metric name " + std::string(name) + " uses unit '" +
                                     std::string(unit) + "'; use base units (seconds, bytes)");
    }
    start = end + 1;
  }
}

template <typename Metric>
prometheus::Family<Metric>& Register(prometheus::detail::Builder<Metric> builder,
                                     prometheus::Registry& registry, const std::string& name,
                                     const std::string& help,
                                     const prometheus::Labels& constant_labels) {
  try {
    return builder.Name(name).Help(help).Labels(constant_labels).Register(registry);
  } catch (const std::exception& error) {
    // prometheus-cpp throws on a type or label clash with an existing family.
    CheckFailed("Register", __FILE__, __LINE__, "metric " + name + ": " + error.what());
  }
}

}  // namespace

prometheus::Histogram::BucketBoundaries Buckets(std::span<const double> upper_bounds) {
  FP_CHECK(!upper_bounds.empty());
  for (size_t i = 1; i < upper_bounds.size(); ++i) {
    FP_CHECK_MSG(upper_bounds[i - 1] < upper_bounds[i], "bucket bounds must strictly increase");
  }
  return {upper_bounds.begin(), upper_bounds.end()};
}

void CheckMetricName(std::string_view name, MetricType type) {
  FP_CHECK_MSG(name.substr(0, kPrefix.size()) == kPrefix,
               "metric name " + std::string(name) + " must start with fieldprint_");
  CheckWords(name);
  const bool total = EndsWith(name, "_total");
  if (type == MetricType::kCounter) {
    FP_CHECK_MSG(total, "counter " + std::string(name) + " must end in _total");
  } else {
    FP_CHECK_MSG(!total, "only counters end in _total: " + std::string(name));
  }
  if (type == MetricType::kHistogram) {
    for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
      FP_CHECK_MSG(!EndsWith(name, suffix),
                   "histogram " + std::string(name) + " ends in a reserved series suffix");
    }
  }
}

void CheckLabelNames(const prometheus::Labels& labels) {
  for (const auto& [label, value] : labels) {
    FP_CHECK_MSG(!label.empty() && label[0] >= 'a' && label[0] <= 'z', "label '" + label + "'");
    for (char c : label) FP_CHECK_MSG(IsLowerAlnum(c) || c == '_', "label '" + label + "'");
    FP_CHECK_MSG(label != "le" && label != "quantile", "label '" + label + "' is reserved");
    for (std::string_view unbounded : kUnboundedLabels) {
      FP_CHECK_MSG(label != unbounded, "label '" + label + "' would be unbounded");
    }
  }
}

prometheus::Family<prometheus::Counter>& RegisterCounter(
    prometheus::Registry& registry, const std::string& name, const std::string& help,
    const prometheus::Labels& constant_labels) {
  CheckMetricName(name, MetricType::kCounter);
  CheckLabelNames(constant_labels);
  return Register(prometheus::BuildCounter(), registry, name, help, constant_labels);
}

prometheus::Family<prometheus::Gauge>& RegisterGauge(prometheus::Registry& registry,
                                                     const std::string& name,
                                                     const std::string& help,
                                                     const prometheus::Labels& constant_labels) {
  CheckMetricName(name, MetricType::kGauge);
  CheckLabelNames(constant_labels);
  return Register(prometheus::BuildGauge(), registry, name, help, constant_labels);
}

prometheus::Family<prometheus::Histogram>& RegisterHistogram(
    prometheus::Registry& registry, const std::string& name, const std::string& help,
    const prometheus::Labels& constant_labels) {
  CheckMetricName(name, MetricType::kHistogram);
  CheckLabelNames(constant_labels);
  return Register(prometheus::BuildHistogram(), registry, name, help, constant_labels);
}

std::string RenderText(const prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace fp::metrics
