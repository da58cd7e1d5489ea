// Text helpers shared by the tlog formats (checkpoints and proof bundles).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/base/status.h"

namespace fp::tlog::internal {

// Parses a canonical unsigned decimal: ASCII digits only, no sign, no leading zero unless the
// value is "0", and the value fits in 64 bits. InvalidArgument otherwise; the message names
// `what`.
StatusOr<uint64_t> ParseCanonicalDecimal(std::string_view text, std::string_view what);

// Removes the first line (up to and including "\n") from `text` and returns it without its "\n".
// Returns false, leaving `text` unchanged, when `text` holds no "\n".
bool ConsumeLine(std::string_view& text, std::string_view& line);

}  // namespace fp::tlog::internal
