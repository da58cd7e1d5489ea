// C2SP tlog-cosignature, Ed25519 "cosignature/v1": a cosigner's timestamped statement that a
// checkpoint is the largest consistent tree head it has seen for the log; and a verifier that
// demands k of n known cosigners before a checkpoint is trusted (the split-view defence: in a
// supervisor cluster, the other supervisors cosign the leader's checkpoints, DESIGN.md section 5).
//
// Spec: https://c2sp.org/tlog-cosignature (v1.0.0). A cosignature is a signed-note signature line
//   "\u2014 <cosigner name> base64(key ID (4) || timestamp (8, big-endian) || Ed25519 sig (64))\n"
// whose key ID is SHA-256(name || "\n" || 0x04 || public key)[:4] (0x04, not the 0x01 of an
// ordinary note key, so the two kinds of line never match each other's verifiers), and whose
// signature covers
//   "cosignature/v1\n" "time <timestamp in decimal>\n" <checkpoint text, with its final "\n">.
// The signed message does not name the cosigner: one key must serve one cosigner only.
//
// A cosigner's private key is stored like a Go note signer key, with the cosignature algorithm
// byte: "PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x04 || 32-byte seed)>" (Cosigner::Parse).
//
// Error codes: InvalidArgument for malformed input and bad arguments (names, seeds, k out of
// range, duplicate cosigners); Unauthenticated when the log's signature or the cosignatures do not
// vouch for the checkpoint (a known cosigner's line fails to verify, or fewer than k valid ones).
//
// Thread-safety: Cosigner and CosignatureVerifier are immutable after construction; their const
// methods and the free functions are safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/ed25519.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/note.h"

namespace fp::tlog {

// Signature type byte of Ed25519 cosignature/v1 keys (key IDs and verifier keys).
inline constexpr uint8_t kCosignatureV1Algorithm = 0x04;
// The spec bounds timestamps by 2^63 - 1.
inline constexpr uint64_t kMaxCosignatureTimestamp = (uint64_t{1} << 63) - 1;
// Bytes of a cosignature after its key ID: timestamp (8) || Ed25519 signature (64).
inline constexpr size_t kCosignatureBytes = 8 + kEd25519SignatureSize;

// SHA-256(name || "\n" || 0x04 || public_key)[:4], big-endian.
uint32_t CosignatureKeyId(std::string_view name, const Ed25519PublicBytes& public_key);

// The message a cosigner signs: "cosignature/v1\ntime <timestamp>\n" || checkpoint_text.
std::string CosignedMessage(std::string_view checkpoint_text, uint64_t timestamp);

// A cosigner's public key. A copyable value type.
class CosignatureVerifier {
 public:
  // InvalidArgument for a bad key name or a key OpenSSL cannot load.
  static StatusOr<CosignatureVerifier> FromPublicKey(std::string_view name,
                                                     const Ed25519PublicBytes& public_key);
  // Parses the vkey "<name>+<8 hex key ID>+<base64(0x04 || 32-byte key)>". InvalidArgument on a
  // bad name, another algorithm, bad base64 or a key ID that does not match.
  static StatusOr<CosignatureVerifier> Parse(std::string_view verifier_key);

  const std::string& name() const { return name_; }
  uint32_t key_id() const { return key_id_; }
  const Ed25519PublicBytes& public_key() const { return public_key_; }
  // The vkey, as Parse accepts it.
  std::string ToString() const;
  // The timestamp of `cosignature` (the bytes after the key ID) when it is a valid cosignature/v1
  // of `checkpoint_text` by this key with a timestamp <= kMaxCosignatureTimestamp; else nullopt.
  std::optional<uint64_t> Verify(std::string_view checkpoint_text, ByteSpan cosignature) const;

 private:
  CosignatureVerifier() = default;
  std::string name_;
  uint32_t key_id_ = 0;
  Ed25519PublicBytes public_key_{};
};

// One cosignature, split into the parts of its signature line.
struct Cosignature {
  std::string name;        // the cosigner's key name
  uint32_t key_id = 0;     // CosignatureKeyId(name, public key)
  uint64_t timestamp = 0;  // POSIX seconds, <= kMaxCosignatureTimestamp
  Ed25519Signature signature{};
};

// The signature line "\u2014 <name> base64(key ID || timestamp || signature)\n". FP_CHECKs that
// the name is a valid key name (a Cosignature is made by Cosigner::Cosign or from a stored,
// validated one).
std::string FormatCosignatureLine(const Cosignature& cosignature);

// A cosigner's private key. Move-only: it holds secret key material.
class Cosigner {
 public:
  // InvalidArgument on a bad key name or a seed that is not 32 bytes.
  static StatusOr<Cosigner> FromSeed(std::string_view name, ByteSpan seed);
  // A fresh key from OpenSSL's random source. InvalidArgument on a bad name; Internal when the
  // random source fails.
  static StatusOr<Cosigner> Generate(std::string_view name);
  // Parses the private key string (see the top of this file). InvalidArgument on a bad prefix or
  // name, another algorithm, bad base64, or a key ID that does not match the key.
  static StatusOr<Cosigner> Parse(std::string_view signer_key);

  Cosigner(Cosigner&&) = default;
  Cosigner& operator=(Cosigner&&) = default;
  Cosigner(const Cosigner&) = delete;
  Cosigner& operator=(const Cosigner&) = delete;

  const std::string& name() const { return name_; }
  CosignatureVerifier Verifier() const;
  // The private key string, as Parse accepts it. Handle like the key itself.
  std::string ToString() const;
  // This cosigner's cosignature of `checkpoint_text` at `timestamp` (POSIX seconds). Ed25519 is
  // deterministic: the same text and timestamp always give the same bytes. The caller has checked
  // that the checkpoint is consistent with every one it cosigned before: this only signs.
  // InvalidArgument when the text breaks ValidateNoteText or the timestamp exceeds
  // kMaxCosignatureTimestamp.
  StatusOr<Cosignature> Cosign(std::string_view checkpoint_text, uint64_t timestamp) const;
  // The signature line ("\u2014 name base64(...)\n") cosigning `checkpoint_text` at `timestamp`
  // (POSIX seconds): FormatCosignatureLine(Cosign(...)), with Cosign's errors.
  StatusOr<std::string> CosignatureLine(std::string_view checkpoint_text, uint64_t timestamp) const;

 private:
  Cosigner(std::string name, Bytes seed, Ed25519PrivateKey key);
  std::string name_;
  Bytes seed_;  // 32 bytes, kept to write the private key string
  Ed25519PrivateKey key_;
};

// `signed_note` with one cosignature line per cosigner appended (after its existing signatures).
// InvalidArgument when the note does not parse (ParseNote), when the result would hold more than
// kMaxNoteSignatures signatures or kMaxNoteBytes, or as CosignatureLine.
StatusOr<std::string> AddCosignatures(std::string_view signed_note,
                                      std::span<const Cosigner> cosigners, uint64_t timestamp);

struct CosignedCheckpoint {
  Checkpoint checkpoint;
  std::vector<size_t> signed_by;     // log key indices, as OpenedCheckpoint::signed_by
  std::vector<size_t> cosigned_by;   // cosigner indices with a valid cosignature, ascending
  std::vector<uint64_t> timestamps;  // cosigned_by[i]'s timestamp
};

struct CosignaturePolicy {
  std::span<const CosignatureVerifier> cosigners;  // n known cosigners, distinct (name, key ID)
  size_t required = 1;                             // k: 1 <= k <= n
  // Cosignatures dated later than this are rejected (a verifier's clock plus allowed skew).
  uint64_t max_timestamp = kMaxCosignatureTimestamp;
};

// Opens a checkpoint signed by the log (OpenCheckpoint with `log_verifiers` and `origin`) and
// demands valid cosignatures from at least `policy.required` distinct known cosigners. Lines of
// unknown keys are ignored; a known cosigner's line that fails to verify, is malformed or is
// dated after max_timestamp is Unauthenticated (a forged or broken line is an attack, not noise).
// InvalidArgument for malformed input or a bad policy.
StatusOr<CosignedCheckpoint> OpenCosignedCheckpoint(std::string_view note,
                                                    std::span<const NoteVerifier> log_verifiers,
                                                    std::string_view origin,
                                                    const CosignaturePolicy& policy);

}  // namespace fp::tlog
