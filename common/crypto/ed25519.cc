// Ed25519 over OpenSSL's EVP_PKEY interface; see ed25519.h.
#include "common/crypto/ed25519.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

namespace fp {
namespace internal {
void PkeyDeleter::operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
}  // namespace internal

namespace {

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

std::string BioToString(BIO* bio) {
  char* data = nullptr;
  long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(size));
}

}  // namespace

StatusOr<Ed25519PublicKey> Ed25519PublicKey::FromRaw(ByteSpan raw) {
  if (raw.size() != kEd25519PublicKeySize) {
    return InvalidArgumentError("Ed25519 public key must be 32 bytes");
  }
  EVP_PKEY* key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw.data(), raw.size());
  if (key == nullptr) return InvalidArgumentError("invalid Ed25519 public key");
  Ed25519PublicKey out;
  out.key_.reset(key);
  std::copy(raw.begin(), raw.end(), out.raw_.begin());
  return out;
}

StatusOr<Ed25519PublicKey> Ed25519PublicKey::FromPem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::unique_ptr<EVP_PKEY, internal::PkeyDeleter> key(
      PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr || EVP_PKEY_get_id(key.get()) != EVP_PKEY_ED25519) {
    return InvalidArgumentError("not a PEM Ed25519 public key");
  }
  Ed25519PublicBytes raw;
  size_t size = raw.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), raw.data(), &size) != 1 || size != raw.size()) {
    return InvalidArgumentError("cannot extract Ed25519 public key");
  }
  return FromRaw(raw);
}

std::string Ed25519PublicKey::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  FP_CHECK(PEM_write_bio_PUBKEY(bio.get(), key_.get()) == 1);
  return BioToString(bio.get());
}

bool Ed25519PublicKey::Verify(ByteSpan message, ByteSpan signature) const {
  if (signature.size() != kEd25519SignatureSize) return false;
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                          message.size()) == 1;
}

StatusOr<Ed25519PrivateKey> Ed25519PrivateKey::FromPkey(EVP_PKEY* key) {
  Ed25519PrivateKey out;
  out.key_.reset(key);
  Ed25519PublicBytes raw;
  size_t size = raw.size();
  if (EVP_PKEY_get_raw_public_key(key, raw.data(), &size) != 1 || size != raw.size()) {
    return InternalError("cannot derive Ed25519 public key");
  }
  FP_ASSIGN_OR_RETURN(Ed25519PublicKey pub, Ed25519PublicKey::FromRaw(raw));
  out.public_key_ = std::make_unique<Ed25519PublicKey>(std::move(pub));
  return out;
}

StatusOr<Ed25519PrivateKey> Ed25519PrivateKey::Generate() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (key == nullptr) return InternalError("Ed25519 key generation failed");
  return FromPkey(key);
}

StatusOr<Ed25519PrivateKey> Ed25519PrivateKey::FromSeed(ByteSpan seed) {
  if (seed.size() != kEd25519SeedSize) return InvalidArgumentError("Ed25519 seed must be 32 bytes");
  EVP_PKEY* key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed.data(), seed.size());
  if (key == nullptr) return InvalidArgumentError("invalid Ed25519 seed");
  return FromPkey(key);
}

StatusOr<Ed25519PrivateKey> Ed25519PrivateKey::FromPem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) return InvalidArgumentError("not a PEM private key");
  if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(key);
    return InvalidArgumentError("PEM private key is not Ed25519");
  }
  return FromPkey(key);
}

StatusOr<Ed25519PrivateKey> Ed25519PrivateKey::ReadPemFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open key file " + path);
  std::stringstream text;
  text << in.rdbuf();
  auto key = FromPem(text.str());
  if (!key.ok()) return key.status().WithContext(path);
  return key;
}

std::string Ed25519PrivateKey::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  FP_CHECK(PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr) ==
           1);
  return BioToString(bio.get());
}

Status Ed25519PrivateKey::WritePemFile(const std::string& path) const {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return AlreadyExistsError("key file exists: " + path);
    return UnavailableError("cannot create " + path + ": " + std::strerror(errno));
  }
  std::string pem = ToPem();
  ssize_t written = ::write(fd, pem.data(), pem.size());
  int fsync_result = ::fsync(fd);
  ::close(fd);
  if (written != static_cast<ssize_t>(pem.size()) || fsync_result != 0) {
    ::unlink(path.c_str());
    return UnavailableError("cannot write " + path);
  }
  return OkStatus();
}

Ed25519Signature Ed25519PrivateKey::Sign(ByteSpan message) const {
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  FP_CHECK(ctx != nullptr);
  FP_CHECK(EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) == 1);
  Ed25519Signature signature;
  size_t size = signature.size();
  FP_CHECK(EVP_DigestSign(ctx.get(), signature.data(), &size, message.data(), message.size()) == 1);
  FP_CHECK(size == signature.size());
  return signature;
}

}  // namespace fp
