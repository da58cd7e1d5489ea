// Ed25519 keys over OpenSSL 3: generate, PEM files (PKCS#8 / SubjectPublicKeyInfo), sign, verify.
//
// Ownership: each key object owns its OpenSSL key; copying is deleted, moving is allowed.
// Thread-safety: Sign and Verify are const and safe to call concurrently on one object.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "common/base/bytes.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace fp {

inline constexpr size_t kEd25519PublicKeySize = 32;
inline constexpr size_t kEd25519SeedSize = 32;
inline constexpr size_t kEd25519SignatureSize = 64;
using Ed25519Signature = std::array<uint8_t, kEd25519SignatureSize>;
using Ed25519PublicBytes = std::array<uint8_t, kEd25519PublicKeySize>;

namespace internal {
struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const;
};
}  // namespace internal

class Ed25519PublicKey {
 public:
  // InvalidArgument unless `raw` is 32 bytes of a valid key encoding.
  static StatusOr<Ed25519PublicKey> FromRaw(ByteSpan raw);
  // PEM "PUBLIC KEY" text. InvalidArgument on anything else.
  static StatusOr<Ed25519PublicKey> FromPem(std::string_view pem);

  const Ed25519PublicBytes& raw() const { return raw_; }
  std::string ToPem() const;
  // True only for a valid signature of `message` under this key.
  bool Verify(ByteSpan message, ByteSpan signature) const;

 private:
  Ed25519PublicKey() = default;
  Ed25519PublicBytes raw_{};
  std::unique_ptr<EVP_PKEY, internal::PkeyDeleter> key_;
};

class Ed25519PrivateKey {
 public:
  static StatusOr<Ed25519PrivateKey> Generate();
  // Deterministic key from a 32-byte seed (RFC 8032 private key).
  static StatusOr<Ed25519PrivateKey> FromSeed(ByteSpan seed);
  // PEM "PRIVATE KEY" (PKCS#8) text or file.
  static StatusOr<Ed25519PrivateKey> FromPem(std::string_view pem);
  static StatusOr<Ed25519PrivateKey> ReadPemFile(const std::string& path);

  std::string ToPem() const;
  // Writes the key with mode 0600. Fails (AlreadyExists) rather than overwrite an existing file.
  Status WritePemFile(const std::string& path) const;

  Ed25519Signature Sign(ByteSpan message) const;
  const Ed25519PublicKey& public_key() const { return *public_key_; }

 private:
  Ed25519PrivateKey() = default;
  static StatusOr<Ed25519PrivateKey> FromPkey(EVP_PKEY* key);  // takes ownership
  std::unique_ptr<EVP_PKEY, internal::PkeyDeleter> key_;
  std::unique_ptr<Ed25519PublicKey> public_key_;
};

}  // namespace fp
