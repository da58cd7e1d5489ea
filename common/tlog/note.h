// C2SP signed notes with Ed25519 keys: key strings, signing and opening.
//
// Spec: https://c2sp.org/signed-note and docs/formats.md ("Signed notes and checkpoints").
// Compatible with Go's golang.org/x/mod/sumdb/note (tests/interop checks both directions).
//
// A signed note is UTF-8 text that ends in "\n", then one blank line, then one or more signature
// lines "\u2014 <key name> <base64(key ID || signature)>\n". The signature covers the text bytes
// including the text's final newline. The key ID of an Ed25519 key is the first 4 bytes
// (big-endian) of SHA-256(key name || 0x0A || 0x01 || public key).
//
// Error codes: InvalidArgument for malformed notes, key strings and verifier sets; Unauthenticated
// when a note's signatures do not vouch for it (a known key's signature fails, or no known key
// signed it).
//
// Thread-safety: NoteVerifier and NoteSigner are immutable after construction; their const
// methods and the free functions are safe to call from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/ed25519.h"

namespace fp::tlog {

// The spec requires accepting at least 16 signatures; more is rejected so that a note cannot make
// a verifier spend unbounded time.
inline constexpr size_t kMaxNoteSignatures = 16;
// Bounds the work and memory of parsing one note (16 post-quantum signatures would fit).
inline constexpr size_t kMaxNoteBytes = 128 * 1024;
// Signature type identifier byte of Ed25519 in key IDs and key strings.
inline constexpr uint8_t kEd25519Algorithm = 0x01;

// First 4 bytes (big-endian) of SHA-256(name || "\n" || 0x01 || public_key).
uint32_t Ed25519KeyId(std::string_view name, const Ed25519PublicBytes& public_key);

// True when `name` is a valid key name: non-empty UTF-8 with no Unicode space and no '+'.
bool IsValidKeyName(std::string_view name);

// OK when `text` may be the text of a signed note: non-empty, at most kMaxNoteBytes, ends in "\n",
// valid UTF-8, and has no control character other than "\n". InvalidArgument otherwise.
Status ValidateNoteText(std::string_view text);

// A public key that verifies note signatures. A copyable value type.
class NoteVerifier {
 public:
  // Parses "<name>+<8 hex digits key ID>+<base64(0x01 || 32-byte public key)>". InvalidArgument
  // on a bad name, a key ID that does not match the key, another algorithm or bad base64.
  static StatusOr<NoteVerifier> Parse(std::string_view verifier_key);
  // InvalidArgument if `name` is not a valid key name.
  static StatusOr<NoteVerifier> FromPublicKey(std::string_view name,
                                              const Ed25519PublicBytes& public_key);

  const std::string& name() const { return name_; }
  uint32_t key_id() const { return key_id_; }
  const Ed25519PublicBytes& public_key() const { return public_key_; }
  // The verifier key string, as Parse accepts it (key ID in lower-case hex).
  std::string ToString() const;
  // True only for a valid Ed25519 signature of `message`; any other length is false.
  bool Verify(ByteSpan message, ByteSpan signature) const;

 private:
  NoteVerifier() = default;
  std::string name_;
  uint32_t key_id_ = 0;
  Ed25519PublicBytes public_key_{};
};

// A private key that signs notes. Move-only: it holds secret key material.
class NoteSigner {
 public:
  // Parses Go's signer key "PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || 32-byte seed)>".
  // InvalidArgument on a bad prefix or name, another algorithm, bad base64, or a key ID that does
  // not match the public key derived from the seed.
  static StatusOr<NoteSigner> Parse(std::string_view signer_key);
  // InvalidArgument on a bad name or a seed that is not 32 bytes.
  static StatusOr<NoteSigner> FromSeed(std::string_view name, ByteSpan seed);
  // A fresh key from the operating system's random source (OpenSSL RAND_bytes). InvalidArgument
  // on a bad name; Internal if the random source fails.
  static StatusOr<NoteSigner> Generate(std::string_view name);

  NoteSigner(NoteSigner&&) = default;
  NoteSigner& operator=(NoteSigner&&) = default;
  NoteSigner(const NoteSigner&) = delete;
  NoteSigner& operator=(const NoteSigner&) = delete;

  const std::string& name() const { return name_; }
  uint32_t key_id() const { return key_id_; }
  // The secret signer key string, as Parse accepts it. Handle like the key itself.
  std::string ToString() const;
  // The matching public verifier.
  NoteVerifier Verifier() const;
  Ed25519Signature Sign(ByteSpan message) const;

 private:
  NoteSigner(std::string name, const Bytes& seed, Ed25519PrivateKey key);
  std::string name_;
  uint32_t key_id_ = 0;
  Bytes seed_;  // 32 bytes, kept to re-export the signer key string
  Ed25519PrivateKey key_;
};

// One signature line of a note, not yet verified.
struct NoteSignature {
  std::string key_name;
  uint32_t key_id = 0;
  Bytes signature;  // the bytes after the key ID; 64 for Ed25519, other lengths for other types
};

// A note split into its text and its signature lines.
struct ParsedNote {
  std::string text;  // ends in "\n"; exactly the signed bytes
  std::vector<NoteSignature> signatures;
};

// Syntax only: splits `note` at its last blank line and parses every signature line without
// verifying any. InvalidArgument when the note is larger than kMaxNoteBytes, is not valid UTF-8,
// holds a control character other than "\n", has no blank line, has no signature line or more
// than kMaxNoteSignatures, or has a malformed signature line (prefix, key name, base64, fewer
// than 5 decoded bytes).
StatusOr<ParsedNote> ParseNote(std::string_view note);

// A note whose signatures were checked against a verifier set.
struct OpenedNote {
  std::string text;
  // Indices into the verifier set of the keys with a valid signature, ascending and distinct.
  // Callers that need k of n signatures check signed_by.size() >= k.
  std::vector<size_t> signed_by;
  // Signature lines whose (key name, key ID) matched no verifier; they were ignored.
  size_t unknown_signatures = 0;
};

// Parses `note` (as ParseNote) and verifies every signature whose key name and key ID match a
// verifier; signatures from unknown keys are ignored. InvalidArgument on malformed input or when
// two verifiers share a key name and key ID; Unauthenticated when a known key's signature fails
// to verify or when no known key signed the note.
StatusOr<OpenedNote> OpenNote(std::string_view note, std::span<const NoteVerifier> verifiers);

// Signs `text` with each signer, in order. InvalidArgument when ValidateNoteText fails, when there
// is no signer or more than kMaxNoteSignatures, when two signers share a key name and key ID, or
// when the note would exceed kMaxNoteBytes.
StatusOr<std::string> SignNote(std::string_view text, std::span<const NoteSigner> signers);

}  // namespace fp::tlog
