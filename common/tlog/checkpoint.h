// C2SP transparency-log checkpoints: the signed head of an RFC 6962 log.
//
// Spec: https://c2sp.org/tlog-checkpoint and docs/formats.md ("Signed notes and checkpoints").
// The checkpoint is the text of a signed note (note.h):
//
//   <origin>\n<decimal tree size>\n<base64 root hash>\n[<extension line>\n ...]
//
// Error codes: InvalidArgument for malformed text; the note's codes for signatures
// (Unauthenticated); Unauthenticated as well for a checkpoint of another origin, since such a
// note does not vouch for the log the caller trusts.
//
// Thread-safety: Checkpoint is a value type; the functions are pure (the signing ones read only
// their signers).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/tlog/note.h"

namespace fp::tlog {

struct Checkpoint {
  std::string origin;                   // non-empty; identifies the log
  uint64_t size = 0;                    // number of leaves
  Hash root{};                          // RFC 6962 root of the first `size` leaves
  std::vector<std::string> extensions;  // optional extra lines, each non-empty, without "\n"

  bool operator==(const Checkpoint&) const = default;
};

// Parses checkpoint text strictly: at least three lines, each ending in "\n"; a non-empty origin;
// a size in canonical decimal (no sign, no leading zero except "0") that fits in 64 bits; a root
// that is standard base64 of exactly 32 bytes; non-empty extension lines; and the note-text rules
// of ValidateNoteText. InvalidArgument otherwise.
StatusOr<Checkpoint> ParseCheckpoint(std::string_view text);

// The checkpoint's text. InvalidArgument when the origin or an extension line is empty or holds
// a newline, or when the text breaks ValidateNoteText.
StatusOr<std::string> FormatCheckpoint(const Checkpoint& checkpoint);

// The checkpoint as a signed note, signed by each of `signers` in order (see SignNote).
StatusOr<std::string> SignCheckpoint(const Checkpoint& checkpoint,
                                     std::span<const NoteSigner> signers);

struct OpenedCheckpoint {
  Checkpoint checkpoint;
  std::vector<size_t> signed_by;  // indices into the verifier set, as OpenedNote::signed_by
};

// Opens a signed checkpoint note (see OpenNote), parses its text and checks that its origin is
// `expected_origin`. InvalidArgument for malformed input; Unauthenticated when the signatures do
// not vouch for the note or the origin differs.
StatusOr<OpenedCheckpoint> OpenCheckpoint(std::string_view note,
                                          std::span<const NoteVerifier> verifiers,
                                          std::string_view expected_origin);

}  // namespace fp::tlog
