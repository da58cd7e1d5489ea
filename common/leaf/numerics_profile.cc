// The numerics profile encoding and hash; see numerics_profile.h.
#include "common/leaf/numerics_profile.h"

#include "common/leaf/quantize.h"

namespace fp::leaf {
namespace {

// Separates profile hashes from every other SHA-256 in fieldprint.
constexpr std::string_view kProfileDomain = "fieldprint/numerics-profile";

Status ValidateText(std::string_view field, std::string_view value) {
  if (value.empty() || value.size() > kMaxProfileStringBytes) {
    return InvalidArgumentError("numerics profile " + std::string(field) + " must be 1.." +
                                std::to_string(kMaxProfileStringBytes) + " bytes, got " +
                                std::to_string(value.size()));
  }
  for (char c : value) {
    if (c < 0x20 || c > 0x7e) {
      return InvalidArgumentError("numerics profile " + std::string(field) +
                                  " must be printable ASCII");
    }
  }
  return OkStatus();
}

void AppendField(Bytes& out, ByteSpan value) {
  AppendU32(out, static_cast<uint32_t>(value.size()));
  out.insert(out.end(), value.begin(), value.end());
}

void AppendU32Field(Bytes& out, uint32_t value) {
  AppendU32(out, 4);
  AppendU32(out, value);
}

void AppendU8Field(Bytes& out, uint8_t value) {
  AppendU32(out, 1);
  out.push_back(value);
}

}  // namespace

std::string_view DigestScopeName(DigestScope scope) {
  switch (scope) {
    case DigestScope::kHidden:
      return "hidden";
    case DigestScope::kHiddenKv:
      return "hidden+kv";
  }
  return "unknown";
}

StatusOr<DigestScope> ParseDigestScope(std::string_view name) {
  for (DigestScope scope : {DigestScope::kHidden, DigestScope::kHiddenKv}) {
    if (name == DigestScopeName(scope)) return scope;
  }
  return InvalidArgumentError("unknown digest scope '" + std::string(name) +
                              "' (expected hidden or hidden+kv)");
}

Status ValidateNumericsProfile(const NumericsProfile& profile) {
  FP_RETURN_IF_ERROR(ValidateText("device_kind", profile.device_kind));
  FP_RETURN_IF_ERROR(ValidateText("kernel_build_id", profile.kernel_build_id));
  FP_RETURN_IF_ERROR(ValidateText("determinism_mode", profile.determinism_mode));
  FP_RETURN_IF_ERROR(ValidateQuantizeBits(profile.dtype, profile.quantize_bits));
  if (profile.tensor_parallel_degree == 0) {
    return InvalidArgumentError("numerics profile tensor_parallel_degree must be >= 1");
  }
  if (DigestScopeName(profile.digest_scope) == "unknown") {
    return InvalidArgumentError("numerics profile digest_scope " +
                                std::to_string(static_cast<int>(profile.digest_scope)) +
                                " is unknown");
  }
  return OkStatus();
}

StatusOr<Bytes> EncodeNumericsProfile(const NumericsProfile& profile) {
  FP_RETURN_IF_ERROR(ValidateNumericsProfile(profile));
  Bytes out;
  AppendField(out, AsBytes(kProfileDomain));
  AppendU32Field(out, kNumericsProfileVersion);
  AppendField(out, AsBytes(profile.device_kind));
  Bytes capability;
  AppendU32(capability, profile.compute_capability_major);
  AppendU32(capability, profile.compute_capability_minor);
  AppendField(out, capability);
  AppendField(out, AsBytes(profile.kernel_build_id));
  AppendU8Field(out, static_cast<uint8_t>(profile.dtype));
  AppendField(out, AsBytes(profile.determinism_mode));
  AppendField(out, profile.model_weights_hash);
  AppendField(out, profile.anchor_set_hash);
  AppendU32Field(out, profile.tensor_parallel_degree);
  AppendU8Field(out, static_cast<uint8_t>(profile.quantize_bits));
  AppendU8Field(out, static_cast<uint8_t>(profile.digest_scope));
  return out;
}

StatusOr<Hash> NumericsProfileHash(const NumericsProfile& profile) {
  FP_ASSIGN_OR_RETURN(Bytes encoding, EncodeNumericsProfile(profile));
  return Sha256(encoding);
}

}  // namespace fp::leaf
