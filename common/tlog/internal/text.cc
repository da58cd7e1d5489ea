// Text helpers for the tlog formats; see text.h.
#include "common/tlog/internal/text.h"

#include <string>

namespace fp::tlog::internal {

StatusOr<uint64_t> ParseCanonicalDecimal(std::string_view text, std::string_view what) {
  if (text.empty()) return InvalidArgumentError(std::string(what) + " is empty");
  if (text.size() > 1 && text[0] == '0') {
    return InvalidArgumentError(std::string(what) + " has a leading zero");
  }
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return InvalidArgumentError(std::string(what) + " is not decimal");
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) {
      return InvalidArgumentError(std::string(what) + " does not fit in 64 bits");
    }
    value = value * 10 + digit;
  }
  return value;
}

bool ConsumeLine(std::string_view& text, std::string_view& line) {
  size_t end = text.find('\n');
  if (end == std::string_view::npos) return false;
  line = text.substr(0, end);
  text.remove_prefix(end + 1);
  return true;
}

}  // namespace fp::tlog::internal
