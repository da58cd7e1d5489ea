// C2SP tlog-proof bundles; see proof_bundle.h.
#include "common/tlog/proof_bundle.h"

#include <algorithm>
#include <utility>

#include "common/tlog/internal/text.h"

namespace fp::tlog {
namespace {

constexpr std::string_view kExtraPrefix = "extra ";
constexpr std::string_view kIndexPrefix = "index ";

Status ValidateCheckpointNote(std::string_view note) {
  FP_ASSIGN_OR_RETURN(ParsedNote parsed, ParseNote(note));
  return ParseCheckpoint(parsed.text).status();
}

// Reads the hash lines up to and including the empty line that ends them.
StatusOr<std::vector<Hash>> ParseProofLines(std::string_view& text) {
  std::vector<Hash> proof;
  std::string_view line;
  while (true) {
    if (!internal::ConsumeLine(text, line)) {
      return InvalidArgumentError("bundle has no empty line before the checkpoint");
    }
    if (line.empty()) return proof;
    if (proof.size() == kMaxBundleProofHashes) {
      return InvalidArgumentError("bundle proof has more than " +
                                  std::to_string(kMaxBundleProofHashes) + " hashes");
    }
    auto hash = Base64Decode(line);
    if (!hash.ok() || hash->size() != kHashSize) {
      return InvalidArgumentError("bundle proof line " + std::to_string(proof.size()) +
                                  " is not base64 of 32 bytes");
    }
    proof.emplace_back();
    std::copy(hash->begin(), hash->end(), proof.back().begin());
  }
}

}  // namespace

StatusOr<ProofBundle> ParseProofBundle(std::string_view text) {
  if (text.size() > kMaxBundleBytes) return InvalidArgumentError("bundle is too large");
  std::string_view line;
  if (!internal::ConsumeLine(text, line) || line != kProofBundleHeader) {
    return InvalidArgumentError("bundle does not start with " + std::string(kProofBundleHeader));
  }
  ProofBundle bundle;
  if (!internal::ConsumeLine(text, line)) return InvalidArgumentError("bundle has no index line");
  if (line.starts_with(kExtraPrefix)) {
    auto extra = Base64Decode(line.substr(kExtraPrefix.size()));
    if (!extra.ok()) return InvalidArgumentError("bundle extra data is not base64");
    // An empty extra would have no line at all; one canonical text per bundle.
    if (extra->empty() || extra->size() > kMaxBundleExtraBytes) {
      return InvalidArgumentError("bundle extra data is empty or too large");
    }
    bundle.extra = *std::move(extra);
    if (!internal::ConsumeLine(text, line)) {
      return InvalidArgumentError("bundle has no index line");
    }
  }
  if (!line.starts_with(kIndexPrefix)) return InvalidArgumentError("bundle has no index line");
  FP_ASSIGN_OR_RETURN(bundle.index, internal::ParseCanonicalDecimal(
                                        line.substr(kIndexPrefix.size()), "bundle index"));
  FP_ASSIGN_OR_RETURN(bundle.proof, ParseProofLines(text));
  FP_RETURN_IF_ERROR(ValidateCheckpointNote(text));
  bundle.checkpoint_note = std::string(text);
  return bundle;
}

StatusOr<std::string> FormatProofBundle(const ProofBundle& bundle) {
  if (bundle.extra.size() > kMaxBundleExtraBytes) {
    return InvalidArgumentError("bundle extra data is too large");
  }
  if (bundle.proof.size() > kMaxBundleProofHashes) {
    return InvalidArgumentError("bundle proof has too many hashes");
  }
  FP_RETURN_IF_ERROR(ValidateCheckpointNote(bundle.checkpoint_note));
  std::string text(kProofBundleHeader);
  text += '\n';
  if (!bundle.extra.empty()) {
    text += kExtraPrefix;
    text += Base64Encode(bundle.extra);
    text += '\n';
  }
  text += kIndexPrefix;
  text += std::to_string(bundle.index);
  text += '\n';
  for (const Hash& hash : bundle.proof) {
    text += Base64Encode(hash);
    text += '\n';
  }
  text += '\n';
  text += bundle.checkpoint_note;
  return text;
}

StatusOr<OpenedCheckpoint> VerifyProofBundle(const ProofBundle& bundle, const Hash& leaf_hash,
                                             std::span<const NoteVerifier> verifiers,
                                             std::string_view expected_origin) {
  FP_ASSIGN_OR_RETURN(OpenedCheckpoint opened,
                      OpenCheckpoint(bundle.checkpoint_note, verifiers, expected_origin));
  const Checkpoint& checkpoint = opened.checkpoint;
  Status included = merkle::VerifyInclusion(leaf_hash, bundle.index, checkpoint.size, bundle.proof,
                                            checkpoint.root);
  if (!included.ok()) return included.WithContext("bundle inclusion proof");
  return opened;
}

}  // namespace fp::tlog
