// Byte strings and their text encodings (hex, standard base64).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace fp {

using Bytes = std::vector<uint8_t>;
using ByteSpan = std::span<const uint8_t>;

inline ByteSpan AsBytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}
inline std::string_view AsChars(ByteSpan bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// Lower-case hex.
std::string HexEncode(ByteSpan bytes);
// Accepts upper or lower case; InvalidArgument on odd length or a non-hex character.
StatusOr<Bytes> HexDecode(std::string_view hex);

// Standard base64 with padding (RFC 4648 section 4), as C2SP notes use.
std::string Base64Encode(ByteSpan bytes);
// Strict: InvalidArgument on bad characters, bad padding or whitespace.
StatusOr<Bytes> Base64Decode(std::string_view text);

// Big-endian fixed-width integers, as every fieldprint format uses.
inline void AppendU32(Bytes& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}
inline void AppendU64(Bytes& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}
inline uint32_t LoadU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline uint64_t LoadU64(const uint8_t* p) { return (uint64_t{LoadU32(p)} << 32) | LoadU32(p + 4); }

}  // namespace fp
