// Read-side helpers over the applied state shared by the HTTP API and the worker listener.
//
// Thread-safety: pure reads; safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/crypto/sha256.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

// The verified output tokens [from, to) of a session, to <= session.verified_steps(), read from
// a replica that stores the whole verified prefix. DataLoss when no replica does or leaves are
// missing; Unavailable from storage. The caller bounds to - from.
StatusOr<std::vector<uint32_t>> ReadVerifiedTokens(const RocksStore& state,
                                                   const pb::SessionState& session,
                                                   const std::string& id, uint64_t from,
                                                   uint64_t to);

// The RFC 6962 root of the verified prefix (the session root once verified).
StatusOr<Hash> VerifiedRoot(const StateReader& reader, const pb::SessionState& session,
                            const std::string& id);

}  // namespace fp::supervisor
