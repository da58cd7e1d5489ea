// SessionId text form and generation; see session_id.h.
#include "common/leaf/session_id.h"

#include <algorithm>

#include <openssl/rand.h>

#include "common/base/bytes.h"

namespace fp {

std::string SessionIdToHex(const SessionId& id) { return HexEncode(ByteSpan(id)); }

StatusOr<SessionId> SessionIdFromHex(std::string_view hex) {
  if (hex.size() != 2 * kSessionIdSize) {
    return InvalidArgumentError("session id must be " + std::to_string(2 * kSessionIdSize) +
                                " hex characters, got " + std::to_string(hex.size()));
  }
  StatusOr<Bytes> bytes = HexDecode(hex);
  if (!bytes.ok()) return bytes.status().WithContext("session id");
  SessionId id{};
  std::copy(bytes->begin(), bytes->end(), id.begin());
  return id;
}

StatusOr<SessionId> NewSessionId() {
  SessionId id{};
  if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1) {
    return UnavailableError("RAND_bytes failed to produce a session id");
  }
  return id;
}

}  // namespace fp
