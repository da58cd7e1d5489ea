// Element types of tensors that cross module boundaries (weights, hidden states, digests).
//
// Thread-safety: pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fp {

enum class DType : uint8_t {
  kBf16 = 1,
  kF16 = 2,
  kF32 = 3,
};

inline constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// Explicitly stored mantissa bits (7 for bf16, 10 for fp16, 23 for fp32).
inline constexpr int DTypeMantissaBits(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return 7;
    case DType::kF16:
      return 10;
    case DType::kF32:
      return 23;
  }
  return 0;
}

// "bf16", "f16", "f32".
inline constexpr std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kF32:
      return "f32";
  }
  return "unknown";
}

}  // namespace fp
