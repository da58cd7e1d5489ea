// SHA-256 over OpenSSL 3 (EVP), one-shot and streaming.
//
// Thread-safety: the free functions are safe from any thread (each thread keeps its own context);
// a Sha256Stream object is not shared between threads.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "common/base/bytes.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace fp {

inline constexpr size_t kHashSize = 32;
using Hash = std::array<uint8_t, kHashSize>;

Hash Sha256(ByteSpan data);
inline Hash Sha256(std::string_view data) { return Sha256(AsBytes(data)); }
// SHA-256 of the concatenation of `parts` (no copies).
Hash Sha256Parts(std::initializer_list<ByteSpan> parts);

inline std::string HexEncode(const Hash& hash) { return HexEncode(ByteSpan(hash)); }
// InvalidArgument unless `hex` is exactly 64 hex characters.
StatusOr<Hash> HashFromHex(std::string_view hex);
// InvalidArgument unless `bytes` has exactly 32 bytes.
StatusOr<Hash> HashFromBytes(ByteSpan bytes);

// Incremental SHA-256. Finish() returns the digest and resets the stream for reuse.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;

  void Update(ByteSpan data);
  void Update(std::string_view data) { Update(AsBytes(data)); }
  Hash Finish();

 private:
  EVP_MD_CTX* ctx_;  // owned
};

}  // namespace fp
