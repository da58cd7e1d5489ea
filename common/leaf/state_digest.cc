// The state digest; see state_digest.h.
#include "common/leaf/state_digest.h"

#include <algorithm>
#include <limits>
#include <string>

#include "common/leaf/quantize.h"
#include "common/merkle/merkle.h"

namespace fp::leaf {
namespace {

// Tensors arrive whole (a hidden-state row is a few KiB), so the leaf level is materialised and
// reduced in place rather than streamed.
Hash MerkleRootOfChunks(ByteSpan bytes) {
  if (bytes.empty()) return merkle::EmptyRoot();
  std::vector<Hash> level;
  level.reserve((bytes.size() + kStateDigestChunkBytes - 1) / kStateDigestChunkBytes);
  for (size_t offset = 0; offset < bytes.size(); offset += kStateDigestChunkBytes) {
    const size_t length = std::min(kStateDigestChunkBytes, bytes.size() - offset);
    level.push_back(merkle::LeafHash(bytes.subspan(offset, length)));
  }
  size_t count = level.size();
  while (count > 1) {
    const size_t pairs = count / 2;
    for (size_t i = 0; i < pairs; ++i) level[i] = merkle::NodeHash(level[2 * i], level[2 * i + 1]);
    // An odd last node has no sibling at this level and moves up unchanged (RFC 6962's split at
    // the largest power of two gives the same tree).
    if (count % 2 == 1) level[pairs] = level[count - 1];
    count = pairs + count % 2;
  }
  return level[0];
}

Status CheckWholeElements(DType dtype, size_t size) {
  if (size % DTypeSize(dtype) != 0) {
    return InvalidArgumentError("tensor of " + std::to_string(size) +
                                " bytes is not a whole number of " + std::string(DTypeName(dtype)) +
                                " elements");
  }
  return OkStatus();
}

}  // namespace

Hash StateDigest(ByteSpan canonical_bytes) { return MerkleRootOfChunks(canonical_bytes); }

StatusOr<Hash> TensorStateDigest(DType dtype, int quantize_bits, ByteSpan tensor_bytes) {
  FP_RETURN_IF_ERROR(ValidateQuantizeBits(dtype, quantize_bits));
  FP_RETURN_IF_ERROR(CheckWholeElements(dtype, tensor_bytes.size()));
  if (quantize_bits == DTypeMantissaBits(dtype)) return StateDigest(tensor_bytes);
  Bytes rounded(tensor_bytes.begin(), tensor_bytes.end());
  FP_RETURN_IF_ERROR(QuantizeInPlace(dtype, quantize_bits, rounded));
  return StateDigest(rounded);
}

StatusOr<std::vector<Hash>> RowStateDigests(DType dtype, int quantize_bits, ByteSpan tensor_bytes,
                                            size_t rows, size_t width) {
  FP_RETURN_IF_ERROR(ValidateQuantizeBits(dtype, quantize_bits));
  const size_t element_size = DTypeSize(dtype);
  if (width > std::numeric_limits<size_t>::max() / element_size) {
    return InvalidArgumentError("row width " + std::to_string(width) + " overflows");
  }
  const size_t row_bytes = width * element_size;
  if (row_bytes != 0 && rows > std::numeric_limits<size_t>::max() / row_bytes) {
    return InvalidArgumentError("tensor shape [" + std::to_string(rows) + ", " +
                                std::to_string(width) + "] overflows");
  }
  if (tensor_bytes.size() != rows * row_bytes) {
    return InvalidArgumentError("tensor of " + std::to_string(tensor_bytes.size()) +
                                " bytes is not [" + std::to_string(rows) + ", " +
                                std::to_string(width) + "] " + std::string(DTypeName(dtype)));
  }
  const bool rounding = quantize_bits < DTypeMantissaBits(dtype);
  std::vector<Hash> digests;
  digests.reserve(rows);
  Bytes scratch;  // one row, reused so rounding allocates once
  for (size_t row = 0; row < rows; ++row) {
    ByteSpan row_span = tensor_bytes.subspan(row * row_bytes, row_bytes);
    if (rounding) {
      scratch.assign(row_span.begin(), row_span.end());
      FP_CHECK_OK(QuantizeInPlace(dtype, quantize_bits, scratch));  // arguments validated above
      row_span = scratch;
    }
    digests.push_back(StateDigest(row_span));
  }
  return digests;
}

}  // namespace fp::leaf
