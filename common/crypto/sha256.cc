// SHA-256 over OpenSSL's EVP interface; see sha256.h.
//
// The digest method is fetched once per process and each thread reuses one context, so a small
// hash (a Merkle node is 65 bytes) costs one init/update/final and no allocation.
#include "common/crypto/sha256.h"

#include <openssl/evp.h>

namespace fp {
namespace {

const EVP_MD* Sha256Method() {
  static const EVP_MD* method = [] {
    EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    FP_CHECK_MSG(md != nullptr, "OpenSSL has no SHA256");
    return md;
  }();
  return method;
}

struct ContextDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

EVP_MD_CTX* ThreadContext() {
  thread_local std::unique_ptr<EVP_MD_CTX, ContextDeleter> ctx(EVP_MD_CTX_new());
  FP_CHECK(ctx != nullptr);
  return ctx.get();
}

}  // namespace

Hash Sha256Parts(std::initializer_list<ByteSpan> parts) {
  EVP_MD_CTX* ctx = ThreadContext();
  FP_CHECK(EVP_DigestInit_ex2(ctx, Sha256Method(), nullptr) == 1);
  for (ByteSpan part : parts) FP_CHECK(EVP_DigestUpdate(ctx, part.data(), part.size()) == 1);
  Hash out;
  unsigned int size = 0;
  FP_CHECK(EVP_DigestFinal_ex(ctx, out.data(), &size) == 1);
  FP_CHECK(size == kHashSize);
  return out;
}

Hash Sha256(ByteSpan data) { return Sha256Parts({data}); }

StatusOr<Hash> HashFromBytes(ByteSpan bytes) {
  if (bytes.size() != kHashSize) {
    return InvalidArgumentError("hash must be 32 bytes, got " + std::to_string(bytes.size()));
  }
  Hash out;
  std::copy(bytes.begin(), bytes.end(), out.begin());
  return out;
}

StatusOr<Hash> HashFromHex(std::string_view hex) {
  if (hex.size() != 2 * kHashSize) return InvalidArgumentError("hash must be 64 hex characters");
  FP_ASSIGN_OR_RETURN(Bytes bytes, HexDecode(hex));
  return HashFromBytes(bytes);
}

Sha256Stream::Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
  FP_CHECK(ctx_ != nullptr);
  FP_CHECK(EVP_DigestInit_ex2(ctx_, Sha256Method(), nullptr) == 1);
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(ctx_); }

void Sha256Stream::Update(ByteSpan data) {
  FP_CHECK(EVP_DigestUpdate(ctx_, data.data(), data.size()) == 1);
}

Hash Sha256Stream::Finish() {
  Hash out;
  unsigned int size = 0;
  FP_CHECK(EVP_DigestFinal_ex(ctx_, out.data(), &size) == 1);
  FP_CHECK(size == kHashSize);
  FP_CHECK(EVP_DigestInit_ex2(ctx_, Sha256Method(), nullptr) == 1);
  return out;
}

}  // namespace fp
