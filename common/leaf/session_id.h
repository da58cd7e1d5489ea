// SessionId: the 128-bit identifier of a generation session, its hex text form and random
// generation.
//
// Thread-safety: value type and pure functions; NewSessionId is safe from any thread (OpenSSL's
// RAND_bytes is thread-safe in OpenSSL 3).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fp {

inline constexpr size_t kSessionIdSize = 16;
using SessionId = std::array<uint8_t, kSessionIdSize>;

// 32 lower-case hex characters.
std::string SessionIdToHex(const SessionId& id);
// Accepts exactly 32 hex characters of either case; InvalidArgument otherwise.
StatusOr<SessionId> SessionIdFromHex(std::string_view hex);

// A fresh id from OpenSSL's CSPRNG, so ids from independent supervisors do not collide.
// Unavailable if the generator cannot be seeded.
StatusOr<SessionId> NewSessionId();

}  // namespace fp
