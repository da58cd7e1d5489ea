// The numerics profile: everything that changes the bits a replica computes, hashed into one
// identifier. Replicas of a session must share it; that is what makes bitwise comparison fair.
//
// Spec: docs/formats.md, "Step leaf and state digest" (numerics profile encoding). The hash is
// SHA-256 over a versioned encoding in which every field is length-prefixed, so no two distinct
// profiles encode to the same bytes.
//
// Thread-safety: value type and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/bytes.h"
#include "common/base/dtype.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::leaf {

// What the state digest covers. kHiddenKv adds the K/V rows the step appends to the cache, so
// cache corruption is caught at the step that wrote it.
enum class DigestScope : uint8_t {
  kHidden = 1,
  kHiddenKv = 2,
};
// "hidden", "hidden+kv".
std::string_view DigestScopeName(DigestScope scope);
// Inverse of DigestScopeName; InvalidArgument on any other text.
StatusOr<DigestScope> ParseDigestScope(std::string_view name);

inline constexpr uint32_t kNumericsProfileVersion = 1;
// Bounds the text fields so an encoded profile stays small and printable.
inline constexpr size_t kMaxProfileStringBytes = 256;

struct NumericsProfile {
  std::string device_kind;                // e.g. "NVIDIA H100 80GB HBM3", or "cpu"
  uint32_t compute_capability_major = 0;  // 0.0 for CPU backends
  uint32_t compute_capability_minor = 0;
  std::string kernel_build_id;   // identifies the exact kernel binaries (build hash)
  DType dtype = DType::kBf16;    // canonical dtype of the digested state
  std::string determinism_mode;  // e.g. "batch_invariant"
  Hash model_weights_hash{};
  Hash anchor_set_hash{};  // all zeros for a session without anchors
  uint32_t tensor_parallel_degree = 1;
  int quantize_bits = DTypeMantissaBits(DType::kBf16);  // native width means no rounding
  DigestScope digest_scope = DigestScope::kHidden;

  bool operator==(const NumericsProfile&) const = default;
};

// OK when every field is well formed: text fields of 1..kMaxProfileStringBytes printable ASCII
// bytes, a known dtype and digest scope, tensor_parallel_degree >= 1, and quantize_bits within
// [0, DTypeMantissaBits(dtype)]. InvalidArgument naming the first bad field otherwise.
Status ValidateNumericsProfile(const NumericsProfile& profile);

// The canonical encoding (version kNumericsProfileVersion). InvalidArgument if the profile does
// not validate.
StatusOr<Bytes> EncodeNumericsProfile(const NumericsProfile& profile);

// SHA-256 of EncodeNumericsProfile(profile); InvalidArgument if the profile does not validate.
StatusOr<Hash> NumericsProfileHash(const NumericsProfile& profile);

}  // namespace fp::leaf
