// Session requests: validation, and the wire Assign a placed replica receives.
//
// A request is valid exactly when the Assign built from it passes the wire protocol's own
// validation (common/wire/envelope.h) and its replica count is within limits, so nothing that is
// admitted can later fail to reach a worker.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>

#include "common/base/status.h"
#include "common/wire/envelope.h"
#include "supervisor/log/records.pb.h"

namespace fp::supervisor {

// OK or InvalidArgument naming the bad field.
Status ValidateSessionRequest(const ::fieldprint::supervisor::SessionRequest& request);

// The Assign for replica `replica` at `epoch`; `replay` holds the verified tokens a re-placed
// replica replays (empty for a fresh one).
wire::pb::Assign MakeWireAssign(const ::fieldprint::supervisor::SessionRequest& request,
                                uint32_t replica, uint64_t epoch, std::span<const uint32_t> replay);

}  // namespace fp::supervisor
