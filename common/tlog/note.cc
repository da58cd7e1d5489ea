// C2SP signed notes; see note.h.
#include "common/tlog/note.h"

#include <algorithm>
#include <utility>

#include <openssl/rand.h>

#include "common/crypto/sha256.h"

namespace fp::tlog {
namespace {

// U+2014 EM DASH, then a space: the start of every signature line.
constexpr std::string_view kSignaturePrefix = "\xE2\x80\x94 ";
constexpr std::string_view kSignerKeyPrefix = "PRIVATE+KEY+";
constexpr size_t kKeyIdHexDigits = 8;
constexpr size_t kKeyIdBytes = 4;

// Decodes the code point at `pos` and advances `pos`. False on any ill-formed sequence (RFC 3629:
// overlong forms, surrogates, values above U+10FFFF, truncation), which Go also rejects.
bool NextCodePoint(std::string_view text, size_t& pos, char32_t& code_point) {
  auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  uint8_t lead = byte(pos);
  if (lead < 0x80) {
    code_point = lead;
    pos += 1;
    return true;
  }
  size_t length;
  char32_t min;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, min = 0x80, code_point = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, min = 0x800, code_point = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, min = 0x10000, code_point = lead & 0x07;
  } else {
    return false;
  }
  if (text.size() - pos < length) return false;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(pos + i) & 0xC0) != 0x80) return false;
    code_point = (code_point << 6) | (byte(pos + i) & 0x3F);
  }
  if (code_point < min || code_point > 0x10FFFF) return false;
  if (code_point >= 0xD800 && code_point <= 0xDFFF) return false;
  pos += length;
  return true;
}

// Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space property.
bool IsUnicodeSpace(char32_t c) {
  switch (c) {
    case '\t':
    case '\n':
    case '\v':
    case '\f':
    case '\r':
    case ' ':
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

// Valid UTF-8 without control characters other than "\n", as the whole note must be.
Status ValidateNoteCharacters(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = pos;
    char32_t c;
    if (!NextCodePoint(text, pos, c)) {
      return InvalidArgumentError("note is not valid UTF-8 at byte " + std::to_string(start));
    }
    if (c < 0x20 && c != '\n') {
      return InvalidArgumentError("note has a control character at byte " + std::to_string(start));
    }
  }
  return OkStatus();
}

std::string KeyIdHex(uint32_t key_id) {
  Bytes bytes;
  AppendU32(bytes, key_id);
  return HexEncode(bytes);
}

// The fields of "<name>+<8 hex key ID>+<base64(algorithm || key)>", checked for syntax only.
struct KeyFields {
  std::string_view name;
  uint32_t key_id = 0;
  Bytes key;  // after the algorithm byte
};

StatusOr<KeyFields> SplitKeyString(std::string_view text) {
  size_t first = text.find('+');
  size_t second = first == std::string_view::npos ? first : text.find('+', first + 1);
  if (second == std::string_view::npos) {
    return InvalidArgumentError("key string is not <name>+<key ID>+<key>");
  }
  KeyFields fields;
  fields.name = text.substr(0, first);
  if (!IsValidKeyName(fields.name)) return InvalidArgumentError("key string has a bad key name");
  std::string_view id_hex = text.substr(first + 1, second - first - 1);
  if (id_hex.size() != kKeyIdHexDigits) {
    return InvalidArgumentError("key ID must be 8 hex digits");
  }
  auto id = HexDecode(id_hex);
  if (!id.ok()) return InvalidArgumentError("key ID must be 8 hex digits");
  fields.key_id = LoadU32(id->data());
  auto key = Base64Decode(text.substr(second + 1));
  if (!key.ok()) return InvalidArgumentError("key data is not base64");
  if (key->empty() || (*key)[0] != kEd25519Algorithm) {
    return InvalidArgumentError("key algorithm is not Ed25519 (0x01)");
  }
  fields.key.assign(key->begin() + 1, key->end());
  if (fields.key.size() != kEd25519PublicKeySize) {
    return InvalidArgumentError("Ed25519 key data must be 32 bytes");
  }
  return fields;
}

// Parses one "\u2014 <name> <base64>" line (without its "\n").
StatusOr<NoteSignature> ParseSignatureLine(std::string_view line) {
  if (!line.starts_with(kSignaturePrefix)) {
    return InvalidArgumentError("signature line does not start with an em dash and a space");
  }
  line.remove_prefix(kSignaturePrefix.size());
  size_t space = line.find(' ');
  if (space == std::string_view::npos) return InvalidArgumentError("signature line has no space");
  NoteSignature signature;
  std::string_view name = line.substr(0, space);
  if (!IsValidKeyName(name)) return InvalidArgumentError("signature line has a bad key name");
  signature.key_name = std::string(name);
  auto decoded = Base64Decode(line.substr(space + 1));
  if (!decoded.ok()) return InvalidArgumentError("signature is not base64");
  // A key ID and at least one signature byte, as Go requires.
  if (decoded->size() <= kKeyIdBytes) return InvalidArgumentError("signature is too short");
  signature.key_id = LoadU32(decoded->data());
  signature.signature.assign(decoded->begin() + kKeyIdBytes, decoded->end());
  return signature;
}

// InvalidArgument when two keys share a key name and key ID, which would make a signature line
// ambiguous.
template <typename Key>
Status CheckDistinctKeys(std::span<const Key> keys, std::string_view what) {
  for (size_t i = 0; i < keys.size(); ++i) {
    for (size_t j = i + 1; j < keys.size(); ++j) {
      if (keys[i].name() == keys[j].name() && keys[i].key_id() == keys[j].key_id()) {
        return InvalidArgumentError(std::string(what) + " holds two keys named " + keys[i].name() +
                                    "+" + KeyIdHex(keys[i].key_id()));
      }
    }
  }
  return OkStatus();
}

}  // namespace

uint32_t Ed25519KeyId(std::string_view name, const Ed25519PublicBytes& public_key) {
  const uint8_t separator[] = {'\n', kEd25519Algorithm};
  Hash digest = Sha256Parts({AsBytes(name), ByteSpan(separator), ByteSpan(public_key)});
  return LoadU32(digest.data());
}

bool IsValidKeyName(std::string_view name) {
  if (name.empty()) return false;
  size_t pos = 0;
  while (pos < name.size()) {
    char32_t c;
    if (!NextCodePoint(name, pos, c)) return false;
    if (c == '+' || IsUnicodeSpace(c)) return false;
  }
  return true;
}

Status ValidateNoteText(std::string_view text) {
  if (text.empty()) return InvalidArgumentError("note text is empty");
  if (text.size() > kMaxNoteBytes) return InvalidArgumentError("note text is too large");
  if (text.back() != '\n') return InvalidArgumentError("note text does not end in a newline");
  return ValidateNoteCharacters(text);
}

StatusOr<NoteVerifier> NoteVerifier::Parse(std::string_view verifier_key) {
  FP_ASSIGN_OR_RETURN(KeyFields fields, SplitKeyString(verifier_key));
  Ed25519PublicBytes public_key;
  std::copy(fields.key.begin(), fields.key.end(), public_key.begin());
  FP_ASSIGN_OR_RETURN(NoteVerifier verifier, FromPublicKey(fields.name, public_key));
  if (verifier.key_id_ != fields.key_id) {
    return InvalidArgumentError("verifier key ID does not match the key");
  }
  return verifier;
}

StatusOr<NoteVerifier> NoteVerifier::FromPublicKey(std::string_view name,
                                                   const Ed25519PublicBytes& public_key) {
  if (!IsValidKeyName(name)) return InvalidArgumentError("bad key name");
  // Rejects an encoding OpenSSL cannot load, so that Verify never meets one.
  FP_RETURN_IF_ERROR(Ed25519PublicKey::FromRaw(public_key));
  NoteVerifier verifier;
  verifier.name_ = std::string(name);
  verifier.public_key_ = public_key;
  verifier.key_id_ = Ed25519KeyId(name, public_key);
  return verifier;
}

std::string NoteVerifier::ToString() const {
  Bytes key{kEd25519Algorithm};
  key.insert(key.end(), public_key_.begin(), public_key_.end());
  return name_ + "+" + KeyIdHex(key_id_) + "+" + Base64Encode(key);
}

bool NoteVerifier::Verify(ByteSpan message, ByteSpan signature) const {
  // The key is loaded per call so that a verifier stays a plain copyable value; loading is a copy
  // of 32 bytes next to a signature check of tens of microseconds.
  auto key = Ed25519PublicKey::FromRaw(public_key_);
  FP_CHECK_OK(key);
  return key->Verify(message, signature);
}

NoteSigner::NoteSigner(std::string name, const Bytes& seed, Ed25519PrivateKey key)
    : name_(std::move(name)),
      key_id_(Ed25519KeyId(name_, key.public_key().raw())),
      seed_(seed),
      key_(std::move(key)) {}

StatusOr<NoteSigner> NoteSigner::Parse(std::string_view signer_key) {
  if (!signer_key.starts_with(kSignerKeyPrefix)) {
    return InvalidArgumentError("signer key does not start with PRIVATE+KEY+");
  }
  FP_ASSIGN_OR_RETURN(KeyFields fields, SplitKeyString(signer_key.substr(kSignerKeyPrefix.size())));
  FP_ASSIGN_OR_RETURN(NoteSigner signer, FromSeed(fields.name, fields.key));
  if (signer.key_id_ != fields.key_id) {
    return InvalidArgumentError("signer key ID does not match the key");
  }
  return signer;
}

StatusOr<NoteSigner> NoteSigner::FromSeed(std::string_view name, ByteSpan seed) {
  if (!IsValidKeyName(name)) return InvalidArgumentError("bad key name");
  FP_ASSIGN_OR_RETURN(Ed25519PrivateKey key, Ed25519PrivateKey::FromSeed(seed));
  return NoteSigner(std::string(name), Bytes(seed.begin(), seed.end()), std::move(key));
}

StatusOr<NoteSigner> NoteSigner::Generate(std::string_view name) {
  Bytes seed(kEd25519SeedSize);
  if (RAND_bytes(seed.data(), static_cast<int>(seed.size())) != 1) {
    return InternalError("random source failed");
  }
  return FromSeed(name, seed);
}

std::string NoteSigner::ToString() const {
  Bytes key{kEd25519Algorithm};
  key.insert(key.end(), seed_.begin(), seed_.end());
  return std::string(kSignerKeyPrefix) + name_ + "+" + KeyIdHex(key_id_) + "+" + Base64Encode(key);
}

NoteVerifier NoteSigner::Verifier() const {
  auto verifier = NoteVerifier::FromPublicKey(name_, key_.public_key().raw());
  FP_CHECK_OK(verifier);  // the name was validated when this signer was made
  return *std::move(verifier);
}

Ed25519Signature NoteSigner::Sign(ByteSpan message) const { return key_.Sign(message); }

StatusOr<ParsedNote> ParseNote(std::string_view note) {
  if (note.size() > kMaxNoteBytes) return InvalidArgumentError("note is too large");
  FP_RETURN_IF_ERROR(ValidateNoteCharacters(note));
  // The text may hold blank lines itself; the last one separates it from the signatures.
  size_t split = note.rfind("\n\n");
  if (split == std::string_view::npos) return InvalidArgumentError("note has no blank line");
  ParsedNote parsed;
  parsed.text = std::string(note.substr(0, split + 1));
  std::string_view lines = note.substr(split + 2);
  if (lines.empty()) return InvalidArgumentError("note has no signature");
  if (lines.back() != '\n') return InvalidArgumentError("note does not end in a newline");
  while (!lines.empty()) {
    if (parsed.signatures.size() == kMaxNoteSignatures) {
      return InvalidArgumentError("note has more than " + std::to_string(kMaxNoteSignatures) +
                                  " signatures");
    }
    size_t end = lines.find('\n');
    FP_ASSIGN_OR_RETURN(NoteSignature signature, ParseSignatureLine(lines.substr(0, end)));
    parsed.signatures.push_back(std::move(signature));
    lines.remove_prefix(end + 1);
  }
  return parsed;
}

StatusOr<OpenedNote> OpenNote(std::string_view note, std::span<const NoteVerifier> verifiers) {
  FP_RETURN_IF_ERROR(CheckDistinctKeys(verifiers, "verifier set"));
  FP_ASSIGN_OR_RETURN(ParsedNote parsed, ParseNote(note));
  OpenedNote opened;
  for (const NoteSignature& signature : parsed.signatures) {
    auto known = std::find_if(verifiers.begin(), verifiers.end(), [&](const NoteVerifier& v) {
      return v.name() == signature.key_name && v.key_id() == signature.key_id;
    });
    if (known == verifiers.end()) {
      ++opened.unknown_signatures;
      continue;
    }
    // Every signature of a known key is checked, repeated lines included: one bad signature from
    // a trusted key means the note cannot be trusted.
    if (!known->Verify(AsBytes(parsed.text), signature.signature)) {
      return UnauthenticatedError("invalid signature from key " + signature.key_name + "+" +
                                  KeyIdHex(signature.key_id));
    }
    opened.signed_by.push_back(static_cast<size_t>(known - verifiers.begin()));
  }
  if (opened.signed_by.empty()) {
    return UnauthenticatedError("note has no signature from a known key");
  }
  std::sort(opened.signed_by.begin(), opened.signed_by.end());
  opened.signed_by.erase(std::unique(opened.signed_by.begin(), opened.signed_by.end()),
                         opened.signed_by.end());
  opened.text = std::move(parsed.text);
  return opened;
}

StatusOr<std::string> SignNote(std::string_view text, std::span<const NoteSigner> signers) {
  FP_RETURN_IF_ERROR(ValidateNoteText(text));
  if (signers.empty()) return InvalidArgumentError("no signer");
  if (signers.size() > kMaxNoteSignatures) return InvalidArgumentError("too many signers");
  FP_RETURN_IF_ERROR(CheckDistinctKeys(signers, "signer set"));
  std::string note(text);
  note.push_back('\n');
  for (const NoteSigner& signer : signers) {
    Bytes payload;
    AppendU32(payload, signer.key_id());
    Ed25519Signature signature = signer.Sign(AsBytes(text));
    payload.insert(payload.end(), signature.begin(), signature.end());
    note += kSignaturePrefix;
    note += signer.name();
    note += ' ';
    note += Base64Encode(payload);
    note += '\n';
  }
  if (note.size() > kMaxNoteBytes) return InvalidArgumentError("signed note would be too large");
  return note;
}

}  // namespace fp::tlog
