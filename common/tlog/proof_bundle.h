// C2SP tlog-proof bundles: a self-contained, offline-verifiable proof that a leaf is in a log.
//
// Spec: https://c2sp.org/tlog-proof and docs/formats.md ("Proof bundles (tlog-proof)"). Text:
//
//   c2sp.org/tlog-proof@v1\n
//   extra <base64>\n                 (only when there is extra data)
//   index <decimal>\n
//   <base64 hash>\n                  (the RFC 6962 inclusion proof, leaf's sibling first)
//   \n
//   <signed checkpoint note, verbatim>
//
// Error codes: InvalidArgument for malformed input (and for an index or proof length that no tree
// of the checkpoint's size allows); Unauthenticated when the checkpoint's signatures do not vouch
// for it or its origin is not the expected one; DataLoss when the proof does not lead to the
// checkpoint's root.
//
// Thread-safety: ProofBundle is a value type; the functions are pure.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/note.h"

namespace fp::tlog {

inline constexpr std::string_view kProofBundleHeader = "c2sp.org/tlog-proof@v1";
// An inclusion proof in a tree of at most 2^64 - 1 leaves has at most 64 hashes.
inline constexpr size_t kMaxBundleProofHashes = merkle::kMaxLevels;
// Room for the header, index and 64 hashes (45 bytes a line) next to a maximal note, plus extra.
inline constexpr size_t kMaxBundleExtraBytes = 4096;
inline constexpr size_t kMaxBundleBytes = kMaxNoteBytes + 16 * 1024;
static_assert(kMaxBundleBytes - kMaxNoteBytes >=
                  64 + kMaxBundleProofHashes * 45 + (kMaxBundleExtraBytes + 2) / 3 * 4 + 7,
              "a bundle must fit a maximal note, proof and extra data");

struct ProofBundle {
  // Opaque application data, not authenticated by anything; empty means no "extra" line.
  Bytes extra;
  uint64_t index = 0;           // zero-based leaf index
  std::vector<Hash> proof;      // RFC 6962 inclusion proof, leaf's sibling first
  std::string checkpoint_note;  // the signed checkpoint note, verbatim

  bool operator==(const ProofBundle&) const = default;
};

// Parses bundle text strictly: the exact header line; an optional "extra " line with non-empty
// base64 of at most kMaxBundleExtraBytes; "index " with a canonical decimal; at most
// kMaxBundleProofHashes lines of base64 32-byte hashes; one empty line; then a note that
// ParseNote accepts whose text ParseCheckpoint accepts (signatures are not verified here).
// InvalidArgument otherwise, or when the text is larger than kMaxBundleBytes.
StatusOr<ProofBundle> ParseProofBundle(std::string_view text);

// The bundle's text. InvalidArgument when the extra data or proof is over its limit or the
// checkpoint note is not a syntactically valid checkpoint note.
StatusOr<std::string> FormatProofBundle(const ProofBundle& bundle);

// Verifies that `leaf_hash` (an RFC 6962 leaf hash, merkle::LeafHash of the entry) is leaf
// `bundle.index` of the log `expected_origin`: opens the checkpoint note with `verifiers` (see
// OpenCheckpoint), then checks the inclusion proof against the checkpoint's root with
// merkle::VerifyInclusion. Returns the opened checkpoint (with which verifiers signed it, for
// k-of-n policies). Errors as listed at the top of this file.
StatusOr<OpenedCheckpoint> VerifyProofBundle(const ProofBundle& bundle, const Hash& leaf_hash,
                                             std::span<const NoteVerifier> verifiers,
                                             std::string_view expected_origin);

}  // namespace fp::tlog
