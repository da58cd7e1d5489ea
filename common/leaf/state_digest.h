// The state digest: an RFC 6962 Merkle root over 1 KiB chunks of a tensor's canonical bytes.
//
// Spec: docs/formats.md, "Step leaf and state digest". The canonical bytes are the tensor's
// elements in its canonical dtype, little-endian, row-major, after rounding to quantize_bits
// mantissa bits when that is below the dtype's native width (common/leaf/quantize.h). Chunk i is
// bytes [1024 i, 1024 (i + 1)); the last chunk may be shorter; each chunk is one Merkle leaf.
// Empty input digests to the RFC 6962 empty-tree root, SHA-256 of the empty string.
//
// This is the CPU reference for the device digest kernel, which must match it bit for bit; the
// root is computed level by level (pair neighbours, carry an odd last node up unchanged), the
// shape a GPU reduction takes, and equal to RFC 6962's recursive definition.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/dtype.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::leaf {

inline constexpr size_t kStateDigestChunkBytes = 1024;

// The digest of bytes that are already canonical (quantized if the profile asks for it). Never
// fails. `canonical_bytes` is borrowed for the call.
Hash StateDigest(ByteSpan canonical_bytes);

// The digest of a whole tensor: a copy is rounded to `quantize_bits` mantissa bits (no copy when
// quantize_bits is the dtype's native width) and digested. InvalidArgument if quantize_bits is out
// of range for `dtype` or the size is not a whole number of elements.
StatusOr<Hash> TensorStateDigest(DType dtype, int quantize_bits, ByteSpan tensor_bytes);

// One digest per row of a row-major [rows, width] tensor (width in elements), each computed as
// TensorStateDigest of that row alone: row r of a batch's hidden state digests the same as the
// sequence's state on its own. InvalidArgument if quantize_bits is out of range or
// tensor_bytes.size() != rows * width * DTypeSize(dtype). Returns `rows` digests in row order.
StatusOr<std::vector<Hash>> RowStateDigests(DType dtype, int quantize_bits, ByteSpan tensor_bytes,
                                            size_t rows, size_t width);

}  // namespace fp::leaf
