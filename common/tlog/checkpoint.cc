// C2SP checkpoints; see checkpoint.h.
#include "common/tlog/checkpoint.h"

#include <algorithm>
#include <utility>

#include "common/base/bytes.h"
#include "common/tlog/internal/text.h"

namespace fp::tlog {
namespace {

Status ValidateLine(std::string_view line, std::string_view what) {
  if (line.empty()) return InvalidArgumentError("checkpoint " + std::string(what) + " is empty");
  if (line.find('\n') != std::string_view::npos) {
    return InvalidArgumentError("checkpoint " + std::string(what) + " holds a newline");
  }
  return OkStatus();
}

}  // namespace

StatusOr<Checkpoint> ParseCheckpoint(std::string_view text) {
  FP_RETURN_IF_ERROR(ValidateNoteText(text));
  std::string_view origin, size, root;
  if (!internal::ConsumeLine(text, origin) || !internal::ConsumeLine(text, size) ||
      !internal::ConsumeLine(text, root)) {
    return InvalidArgumentError("checkpoint has fewer than three lines");
  }
  Checkpoint checkpoint;
  if (origin.empty()) return InvalidArgumentError("checkpoint origin is empty");
  checkpoint.origin = std::string(origin);
  FP_ASSIGN_OR_RETURN(checkpoint.size, internal::ParseCanonicalDecimal(size, "checkpoint size"));
  auto root_bytes = Base64Decode(root);
  if (!root_bytes.ok() || root_bytes->size() != kHashSize) {
    return InvalidArgumentError("checkpoint root is not base64 of 32 bytes");
  }
  std::copy(root_bytes->begin(), root_bytes->end(), checkpoint.root.begin());
  // ValidateNoteText guaranteed the final "\n", so every remaining line is complete.
  std::string_view extension;
  while (internal::ConsumeLine(text, extension)) {
    if (extension.empty()) return InvalidArgumentError("checkpoint has an empty extension line");
    checkpoint.extensions.emplace_back(extension);
  }
  return checkpoint;
}

StatusOr<std::string> FormatCheckpoint(const Checkpoint& checkpoint) {
  FP_RETURN_IF_ERROR(ValidateLine(checkpoint.origin, "origin"));
  std::string text = checkpoint.origin + "\n" + std::to_string(checkpoint.size) + "\n" +
                     Base64Encode(checkpoint.root) + "\n";
  for (const std::string& extension : checkpoint.extensions) {
    FP_RETURN_IF_ERROR(ValidateLine(extension, "extension line"));
    text += extension;
    text += '\n';
  }
  FP_RETURN_IF_ERROR(ValidateNoteText(text));
  return text;
}

StatusOr<std::string> SignCheckpoint(const Checkpoint& checkpoint,
                                     std::span<const NoteSigner> signers) {
  FP_ASSIGN_OR_RETURN(std::string text, FormatCheckpoint(checkpoint));
  return SignNote(text, signers);
}

StatusOr<OpenedCheckpoint> OpenCheckpoint(std::string_view note,
                                          std::span<const NoteVerifier> verifiers,
                                          std::string_view expected_origin) {
  FP_ASSIGN_OR_RETURN(OpenedNote opened, OpenNote(note, verifiers));
  FP_ASSIGN_OR_RETURN(Checkpoint checkpoint, ParseCheckpoint(opened.text));
  if (checkpoint.origin != expected_origin) {
    return UnauthenticatedError("checkpoint origin is \"" + checkpoint.origin + "\", expected \"" +
                                std::string(expected_origin) + "\"");
  }
  return OpenedCheckpoint{std::move(checkpoint), std::move(opened.signed_by)};
}

}  // namespace fp::tlog
