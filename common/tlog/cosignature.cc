// C2SP tlog-cosignature (Ed25519, cosignature/v1); see cosignature.h.
#include "common/tlog/cosignature.h"

#include <algorithm>

#include <fmt/format.h>
#include <openssl/rand.h>

#include "common/crypto/sha256.h"

namespace fp::tlog {
namespace {

constexpr std::string_view kSignatureLinePrefix = "\u2014 ";
constexpr std::string_view kSignerKeyPrefix = "PRIVATE+KEY+";
constexpr size_t kKeyIdBytes = 4;

struct KeyFields {
  std::string_view name;
  uint32_t key_id = 0;
  Bytes key;  // 32 bytes after the algorithm byte: a public key, or a seed
};

// Splits "<name>+<8 hex key ID>+<base64(0x04 || 32 bytes)>", the shape of both cosigner key
// strings (the private one after its "PRIVATE+KEY+" prefix).
StatusOr<KeyFields> SplitKeyString(std::string_view text) {
  const size_t first = text.find('+');
  const size_t second = first == std::string_view::npos ? first : text.find('+', first + 1);
  if (second == std::string_view::npos) {
    return InvalidArgumentError("cosigner key is not <name>+<key ID>+<key>");
  }
  const std::string_view id_hex = text.substr(first + 1, second - first - 1);
  StatusOr<Bytes> id = HexDecode(id_hex);
  if (id_hex.size() != 2 * kKeyIdBytes || !id.ok()) {
    return InvalidArgumentError("cosigner key ID must be 8 hex digits");
  }
  StatusOr<Bytes> key = Base64Decode(text.substr(second + 1));
  if (!key.ok()) return InvalidArgumentError("cosigner key is not base64");
  if (key->size() != 1 + kEd25519PublicKeySize || (*key)[0] != kCosignatureV1Algorithm) {
    return InvalidArgumentError("cosigner key is not an Ed25519 cosignature/v1 (0x04) key");
  }
  KeyFields fields;
  fields.name = text.substr(0, first);
  fields.key_id = LoadU32(id->data());
  fields.key.assign(key->begin() + 1, key->end());
  return fields;
}

std::string KeyIdHex(uint32_t key_id) {
  Bytes id;
  AppendU32(id, key_id);
  return HexEncode(id);
}

}  // namespace

uint32_t CosignatureKeyId(std::string_view name, const Ed25519PublicBytes& public_key) {
  const uint8_t separator[] = {'\n', kCosignatureV1Algorithm};
  const Hash digest = Sha256Parts({AsBytes(name), ByteSpan(separator), ByteSpan(public_key)});
  return LoadU32(digest.data());
}

std::string CosignedMessage(std::string_view checkpoint_text, uint64_t timestamp) {
  std::string message = fmt::format("cosignature/v1\ntime {}\n", timestamp);
  message.append(checkpoint_text);
  return message;
}

StatusOr<CosignatureVerifier> CosignatureVerifier::FromPublicKey(
    std::string_view name, const Ed25519PublicBytes& public_key) {
  if (!IsValidKeyName(name)) return InvalidArgumentError("cosigner: bad key name");
  if (!Ed25519PublicKey::FromRaw(public_key).ok()) {
    return InvalidArgumentError("cosigner: public key cannot be loaded");
  }
  CosignatureVerifier verifier;
  verifier.name_ = std::string(name);
  verifier.public_key_ = public_key;
  verifier.key_id_ = CosignatureKeyId(name, public_key);
  return verifier;
}

StatusOr<CosignatureVerifier> CosignatureVerifier::Parse(std::string_view verifier_key) {
  FP_ASSIGN_OR_RETURN(KeyFields fields, SplitKeyString(verifier_key));
  Ed25519PublicBytes public_key;
  std::copy(fields.key.begin(), fields.key.end(), public_key.begin());
  FP_ASSIGN_OR_RETURN(CosignatureVerifier verifier, FromPublicKey(fields.name, public_key));
  if (verifier.key_id_ != fields.key_id) {
    return InvalidArgumentError("cosigner key ID does not match the key");
  }
  return verifier;
}

std::string CosignatureVerifier::ToString() const {
  Bytes key{kCosignatureV1Algorithm};
  key.insert(key.end(), public_key_.begin(), public_key_.end());
  return name_ + "+" + KeyIdHex(key_id_) + "+" + Base64Encode(key);
}

std::optional<uint64_t> CosignatureVerifier::Verify(std::string_view checkpoint_text,
                                                    ByteSpan cosignature) const {
  if (cosignature.size() != kCosignatureBytes) return std::nullopt;
  const uint64_t timestamp = LoadU64(cosignature.data());
  if (timestamp > kMaxCosignatureTimestamp) return std::nullopt;
  StatusOr<Ed25519PublicKey> key = Ed25519PublicKey::FromRaw(public_key_);
  FP_CHECK_OK(key);  // FromPublicKey loaded it once already
  const std::string message = CosignedMessage(checkpoint_text, timestamp);
  if (!key->Verify(AsBytes(message), cosignature.subspan(8))) return std::nullopt;
  return timestamp;
}

std::string FormatCosignatureLine(const Cosignature& cosignature) {
  FP_CHECK(IsValidKeyName(cosignature.name));
  Bytes blob;
  AppendU32(blob, cosignature.key_id);
  AppendU64(blob, cosignature.timestamp);
  blob.insert(blob.end(), cosignature.signature.begin(), cosignature.signature.end());
  return fmt::format("{}{} {}\n", kSignatureLinePrefix, cosignature.name, Base64Encode(blob));
}

Cosigner::Cosigner(std::string name, Bytes seed, Ed25519PrivateKey key)
    : name_(std::move(name)), seed_(std::move(seed)), key_(std::move(key)) {}

StatusOr<Cosigner> Cosigner::FromSeed(std::string_view name, ByteSpan seed) {
  if (!IsValidKeyName(name)) return InvalidArgumentError("cosigner: bad key name");
  if (seed.size() != kEd25519SeedSize)
    return InvalidArgumentError("cosigner: seed must be 32 bytes");
  FP_ASSIGN_OR_RETURN(Ed25519PrivateKey key, Ed25519PrivateKey::FromSeed(seed));
  return Cosigner(std::string(name), Bytes(seed.begin(), seed.end()), std::move(key));
}

StatusOr<Cosigner> Cosigner::Generate(std::string_view name) {
  if (!IsValidKeyName(name)) return InvalidArgumentError("cosigner: bad key name");
  Bytes seed(kEd25519SeedSize);
  if (RAND_bytes(seed.data(), static_cast<int>(seed.size())) != 1) {
    return InternalError("cosigner: random source failed");
  }
  return FromSeed(name, seed);
}

StatusOr<Cosigner> Cosigner::Parse(std::string_view signer_key) {
  if (!signer_key.starts_with(kSignerKeyPrefix)) {
    return InvalidArgumentError("cosigner private key does not start with PRIVATE+KEY+");
  }
  FP_ASSIGN_OR_RETURN(KeyFields fields, SplitKeyString(signer_key.substr(kSignerKeyPrefix.size())));
  FP_ASSIGN_OR_RETURN(Cosigner cosigner, FromSeed(fields.name, fields.key));
  if (CosignatureKeyId(cosigner.name_, cosigner.key_.public_key().raw()) != fields.key_id) {
    return InvalidArgumentError("cosigner private key ID does not match the key");
  }
  return cosigner;
}

std::string Cosigner::ToString() const {
  Bytes key{kCosignatureV1Algorithm};
  key.insert(key.end(), seed_.begin(), seed_.end());
  return std::string(kSignerKeyPrefix) + name_ + "+" +
         KeyIdHex(CosignatureKeyId(name_, key_.public_key().raw())) + "+" + Base64Encode(key);
}

CosignatureVerifier Cosigner::Verifier() const {
  StatusOr<CosignatureVerifier> verifier =
      CosignatureVerifier::FromPublicKey(name_, key_.public_key().raw());
  FP_CHECK_OK(verifier);  // the name was checked when the cosigner was made
  return *std::move(verifier);
}

StatusOr<Cosignature> Cosigner::Cosign(std::string_view checkpoint_text, uint64_t timestamp) const {
  FP_RETURN_IF_ERROR(ValidateNoteText(checkpoint_text));
  if (timestamp > kMaxCosignatureTimestamp) {
    return InvalidArgumentError("cosignature timestamp exceeds 2^63 - 1");
  }
  Cosignature cosignature;
  cosignature.name = name_;
  cosignature.key_id = CosignatureKeyId(name_, key_.public_key().raw());
  cosignature.timestamp = timestamp;
  cosignature.signature = key_.Sign(AsBytes(CosignedMessage(checkpoint_text, timestamp)));
  return cosignature;
}

StatusOr<std::string> Cosigner::CosignatureLine(std::string_view checkpoint_text,
                                                uint64_t timestamp) const {
  FP_ASSIGN_OR_RETURN(Cosignature cosignature, Cosign(checkpoint_text, timestamp));
  return FormatCosignatureLine(cosignature);
}

StatusOr<std::string> AddCosignatures(std::string_view signed_note,
                                      std::span<const Cosigner> cosigners, uint64_t timestamp) {
  FP_ASSIGN_OR_RETURN(ParsedNote parsed, ParseNote(signed_note));
  if (parsed.signatures.size() + cosigners.size() > kMaxNoteSignatures) {
    return InvalidArgumentError(
        fmt::format("a note holds at most {} signatures", kMaxNoteSignatures));
  }
  std::string note(signed_note);
  for (const Cosigner& cosigner : cosigners) {
    FP_ASSIGN_OR_RETURN(std::string line, cosigner.CosignatureLine(parsed.text, timestamp));
    note += line;
  }
  if (note.size() > kMaxNoteBytes) {
    return InvalidArgumentError(fmt::format("note over {} bytes", kMaxNoteBytes));
  }
  return note;
}

namespace {

Status CheckPolicy(const CosignaturePolicy& policy) {
  const size_t n = policy.cosigners.size();
  if (n == 0 || n > kMaxNoteSignatures || policy.required < 1 || policy.required > n) {
    return InvalidArgumentError(
        fmt::format("cosignature policy: need 1 <= k <= n <= {} (k = {}, n = {})",
                    kMaxNoteSignatures, policy.required, n));
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      if (policy.cosigners[i].name() == policy.cosigners[j].name() &&
          policy.cosigners[i].key_id() == policy.cosigners[j].key_id()) {
        return InvalidArgumentError(
            fmt::format("cosignature policy: cosigner {} twice", policy.cosigners[i].name()));
      }
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<CosignedCheckpoint> OpenCosignedCheckpoint(std::string_view note,
                                                    std::span<const NoteVerifier> log_verifiers,
                                                    std::string_view origin,
                                                    const CosignaturePolicy& policy) {
  FP_RETURN_IF_ERROR(CheckPolicy(policy));
  FP_ASSIGN_OR_RETURN(OpenedCheckpoint opened, OpenCheckpoint(note, log_verifiers, origin));
  FP_ASSIGN_OR_RETURN(ParsedNote parsed, ParseNote(note));
  std::vector<std::optional<uint64_t>> valid(policy.cosigners.size());
  for (const NoteSignature& line : parsed.signatures) {
    for (size_t i = 0; i < policy.cosigners.size(); ++i) {
      const CosignatureVerifier& cosigner = policy.cosigners[i];
      if (line.key_name != cosigner.name() || line.key_id != cosigner.key_id()) continue;
      const std::optional<uint64_t> timestamp = cosigner.Verify(parsed.text, line.signature);
      if (!timestamp.has_value()) {
        return UnauthenticatedError(
            fmt::format("cosignature by {} does not verify", cosigner.name()));
      }
      if (*timestamp > policy.max_timestamp) {
        return UnauthenticatedError(fmt::format("cosignature by {} is dated {}, after {}",
                                                cosigner.name(), *timestamp, policy.max_timestamp));
      }
      valid[i] = std::max(valid[i].value_or(0), *timestamp);
    }
  }
  CosignedCheckpoint result;
  result.checkpoint = std::move(opened.checkpoint);
  result.signed_by = std::move(opened.signed_by);
  for (size_t i = 0; i < valid.size(); ++i) {
    if (!valid[i].has_value()) continue;
    result.cosigned_by.push_back(i);
    result.timestamps.push_back(*valid[i]);
  }
  if (result.cosigned_by.size() < policy.required) {
    return UnauthenticatedError(fmt::format("checkpoint has {} of the {} required cosignatures",
                                            result.cosigned_by.size(), policy.required));
  }
  return result;
}

}  // namespace fp::tlog
