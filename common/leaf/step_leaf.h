// The canonical step leaf: what replicas commit per generated token and compare bit for bit.
//
// Spec: docs/formats.md, "Step leaf and state digest". The canonical bytes are 61 bytes, fixed
// layout, big-endian integers:
//   offset  0, 1 byte:   leaf type, kStepLeafType (0x01): format version and domain in one, so a
//                        step leaf can never be mistaken for another kind of fieldprint leaf
//   offset  1, 16 bytes: session id
//   offset 17, 8 bytes:  step (uint64, the token's index in the output, from 0)
//   offset 25, 4 bytes:  token id (uint32)
//   offset 29, 32 bytes: state digest (common/leaf/state_digest.h)
// Its leaf hash is the RFC 6962 leaf hash SHA-256(0x00 || bytes).
//
// Thread-safety: value type and pure functions.
#pragma once

#include <array>
#include <cstdint>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/leaf/session_id.h"

namespace fp::leaf {

inline constexpr uint8_t kStepLeafType = 0x01;
inline constexpr size_t kStepLeafSize = 1 + kSessionIdSize + 8 + 4 + kHashSize;
static_assert(kStepLeafSize == 61, "the step leaf layout is fixed by docs/formats.md");

using StepLeafBytes = std::array<uint8_t, kStepLeafSize>;

struct StepLeaf {
  SessionId session_id{};
  uint64_t step = 0;
  uint32_t token_id = 0;
  Hash state_digest{};

  bool operator==(const StepLeaf&) const = default;
};

// The canonical bytes of `leaf`. Never fails.
StepLeafBytes EncodeStepLeaf(const StepLeaf& leaf);

// Parses canonical bytes. InvalidArgument unless `bytes` is exactly kStepLeafSize bytes starting
// with kStepLeafType. `bytes` is borrowed for the call.
StatusOr<StepLeaf> DecodeStepLeaf(ByteSpan bytes);

// The RFC 6962 leaf hash of EncodeStepLeaf(leaf): the value replicas compare and the session
// tree is built from.
Hash StepLeafHash(const StepLeaf& leaf);

}  // namespace fp::leaf
