// The quantizer over whole tensors; see quantize.h.
#include "common/leaf/quantize.h"

#include <string>

namespace fp::leaf {
namespace {

// Elements are little-endian in memory; assembling them byte by byte keeps the result
// independent of the host's byte order.
// A template parameter rather than a function pointer so the element function inlines.
template <uint16_t (*kQuantize)(uint16_t, int)>
void Quantize16(std::span<uint8_t> data, int keep_bits) {
  for (size_t i = 0; i < data.size(); i += 2) {
    const uint16_t bits = static_cast<uint16_t>(data[i] | (data[i + 1] << 8));
    const uint16_t rounded = kQuantize(bits, keep_bits);
    data[i] = static_cast<uint8_t>(rounded);
    data[i + 1] = static_cast<uint8_t>(rounded >> 8);
  }
}

void Quantize32(std::span<uint8_t> data, int keep_bits) {
  for (size_t i = 0; i < data.size(); i += 4) {
    const uint32_t bits = uint32_t{data[i]} | (uint32_t{data[i + 1]} << 8) |
                          (uint32_t{data[i + 2]} << 16) | (uint32_t{data[i + 3]} << 24);
    const uint32_t rounded = QuantizeF32Bits(bits, keep_bits);
    for (int byte = 0; byte < 4; ++byte) {
      data[i + byte] = static_cast<uint8_t>(rounded >> (8 * byte));
    }
  }
}

}  // namespace

Status ValidateQuantizeBits(DType dtype, int keep_bits) {
  const int native_bits = DTypeMantissaBits(dtype);
  if (native_bits == 0) {
    return InvalidArgumentError("unknown dtype " + std::to_string(static_cast<int>(dtype)));
  }
  if (keep_bits < 0 || keep_bits > native_bits) {
    return InvalidArgumentError("quantize_bits " + std::to_string(keep_bits) + " is outside [0, " +
                                std::to_string(native_bits) + "] for " +
                                std::string(DTypeName(dtype)));
  }
  return OkStatus();
}

Status QuantizeInPlace(DType dtype, int keep_bits, std::span<uint8_t> data) {
  FP_RETURN_IF_ERROR(ValidateQuantizeBits(dtype, keep_bits));
  const size_t element_size = DTypeSize(dtype);
  if (data.size() % element_size != 0) {
    return InvalidArgumentError("tensor of " + std::to_string(data.size()) +
                                " bytes is not a whole number of " + std::string(DTypeName(dtype)) +
                                " elements");
  }
  if (keep_bits == DTypeMantissaBits(dtype)) return OkStatus();
  switch (dtype) {
    case DType::kBf16:
      Quantize16<&QuantizeBf16Bits>(data, keep_bits);
      break;
    case DType::kF16:
      Quantize16<&QuantizeF16Bits>(data, keep_bits);
      break;
    case DType::kF32:
      Quantize32(data, keep_bits);
      break;
  }
  return OkStatus();
}

}  // namespace fp::leaf
