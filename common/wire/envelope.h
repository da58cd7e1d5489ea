// Wire message limits, validation and small helpers over the generated protobuf types of
// common/wire/fieldprint.proto. Spec: docs/formats.md, section "Wire frames".
//
// Every envelope that FrameDecoder hands out, and every envelope EncodeFrame accepts, has passed
// ValidateEnvelope: fixed-size fields have their size, counts are within the kMax... limits
// below, enums and floats are in range. Handlers may rely on that and need not re-check.
//
// Thread-safety: pure functions over caller-owned messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/leaf/session_id.h"
#include "common/wire/fieldprint.pb.h"

namespace fp::wire {

// The generated message types (package fieldprint.wire).
namespace pb = ::fieldprint::wire;

inline constexpr size_t kSessionIdBytes = kSessionIdSize;
inline constexpr size_t kDigestBytes = kHashSize;
// A session has at most this many replicas (DESIGN default: 3).
inline constexpr uint32_t kMaxReplicas = 64;
// Steps (token ids) in one LeafBatch.
inline constexpr size_t kMaxLeafBatchSteps = 4096;
// Steps covered by one leaf in window mode.
inline constexpr uint32_t kMaxWindowSteps = 1024;
// Prompt tokens, replay tokens and max_tokens of one Assign (each).
inline constexpr size_t kMaxSessionTokens = 256 * 1024;
inline constexpr size_t kMaxStopTokens = 64;
inline constexpr size_t kMaxModels = 64;
// Model ids, software versions and similar short names.
inline constexpr size_t kMaxNameBytes = 256;
// Human-readable reasons in Error and Quarantine.
inline constexpr size_t kMaxReasonBytes = 4096;
// fp32 has the widest mantissa of the canonical dtypes.
inline constexpr uint32_t kMaxQuantizeBits = 23;

// Checks the invariants listed in fieldprint.proto for whichever body `envelope` carries.
// OK or InvalidArgument naming the message and field ("leaf_batch.state_digests: ..."); an
// envelope with no body (empty, or a body type this version does not know) is InvalidArgument.
Status ValidateEnvelope(const pb::Envelope& envelope);

// The body's field name ("registration", "leaf_batch", ...) or "empty", for logs.
std::string_view BodyName(const pb::Envelope& envelope);

// Number of leaves (digests) in a batch that passed validation.
size_t LeafCount(const pb::LeafBatch& batch);
// The 32-byte digest of leaf `index`. FP_CHECKs index < LeafCount(batch). The span borrows the
// batch's storage and is valid until the batch changes.
ByteSpan LeafDigest(const pb::LeafBatch& batch, size_t index);
// Appends one per-step leaf (a token and its state digest).
void AppendStepLeaf(pb::LeafBatch& batch, uint32_t token_id, const Hash& state_digest);

// An Error envelope carrying `status` (which must not be OK: FP_CHECKed) and, when non-empty,
// the session id it concerns. The reason is the status message cut to kMaxReasonBytes, with
// bytes outside printable ASCII replaced by '?' (a proto3 string must be valid UTF-8).
pb::Envelope MakeErrorEnvelope(const Status& status, ByteSpan session_id = {});
// The Status an Error message describes. Codes this version does not know map to kUnknown.
Status StatusFromError(const pb::Error& error);

}  // namespace fp::wire
