// The state digest launcher; see state_digest.cuh.
#include <algorithm>
#include <string>

#include "kernels/base/cuda_status.h"
#include "kernels/digest/state_digest.cuh"

namespace fp::kernels {
namespace {

constexpr int kWarpThreads = 32;

template <DType kDType, bool kVectorLoads>
Status Launch(const void* tensor, uint32_t row_bytes, int keep_bits, int64_t rows,
              uint8_t* out_digests, cudaStream_t stream) {
  const uint32_t chunks = (row_bytes + internal::kChunkBytes - 1) / internal::kChunkBytes;
  // Whole warps, one thread per leaf up to the cap; wider rows loop (each thread hashes several
  // leaves), which changes nothing in the result.
  const int threads =
      std::clamp(static_cast<int>((chunks + kWarpThreads - 1) / kWarpThreads * kWarpThreads),
                 kWarpThreads, internal::kMaxDigestThreads);
  const size_t shared_bytes = static_cast<size_t>(chunks) * sha256::kDigestWords * 4;
  RowStateDigestKernel<kDType, kVectorLoads>
      <<<static_cast<unsigned>(rows), threads, shared_bytes, stream>>>(
          static_cast<const uint8_t*>(tensor), row_bytes, keep_bits, out_digests);
  return CudaStatus(cudaGetLastError(), "RowStateDigestKernel launch");
}

// The one place where runtime arguments select a compiled variant. 16-byte loads need every
// chunk start (tensor + r * row_bytes + c * 1024) 16-byte aligned.
Status Dispatch(const void* tensor, DType dtype, uint32_t row_bytes, int keep_bits, int64_t rows,
                uint8_t* out_digests, cudaStream_t stream) {
  const bool vector_loads = reinterpret_cast<uintptr_t>(tensor) % 16 == 0 && row_bytes % 16 == 0;
  switch (dtype) {
    case DType::kBf16:
      return vector_loads ? Launch<DType::kBf16, true>(tensor, row_bytes, keep_bits, rows,
                                                       out_digests, stream)
                          : Launch<DType::kBf16, false>(tensor, row_bytes, keep_bits, rows,
                                                        out_digests, stream);
    case DType::kF16:
      return vector_loads ? Launch<DType::kF16, true>(tensor, row_bytes, keep_bits, rows,
                                                      out_digests, stream)
                          : Launch<DType::kF16, false>(tensor, row_bytes, keep_bits, rows,
                                                       out_digests, stream);
    case DType::kF32:
      return vector_loads ? Launch<DType::kF32, true>(tensor, row_bytes, keep_bits, rows,
                                                      out_digests, stream)
                          : Launch<DType::kF32, false>(tensor, row_bytes, keep_bits, rows,
                                                       out_digests, stream);
  }
  return InvalidArgumentError("unknown dtype " + std::to_string(static_cast<int>(dtype)));
}

Status ValidateShape(DType dtype, int64_t rows, int64_t width) {
  if (rows < 0 || width < 0) {
    return InvalidArgumentError("negative shape [" + std::to_string(rows) + ", " +
                                std::to_string(width) + "]");
  }
  if (rows > kMaxStateDigestRows) {
    return InvalidArgumentError(std::to_string(rows) + " rows exceed the limit of " +
                                std::to_string(kMaxStateDigestRows));
  }
  if (width > kMaxStateDigestRowBytes / static_cast<int64_t>(DTypeSize(dtype))) {
    return InvalidArgumentError("a row of " + std::to_string(width) + " " +
                                std::string(DTypeName(dtype)) + " elements exceeds " +
                                std::to_string(kMaxStateDigestRowBytes) + " bytes");
  }
  return OkStatus();
}

Status ValidatePointers(const void* tensor, DType dtype, int64_t rows, int64_t width,
                        const uint8_t* out_digests) {
  if (out_digests == nullptr) return InvalidArgumentError("out_digests is null");
  if (reinterpret_cast<uintptr_t>(out_digests) % 4 != 0) {
    return InvalidArgumentError("out_digests is not 4-byte aligned");
  }
  if (width == 0) return OkStatus();  // empty rows read nothing
  if (tensor == nullptr) {
    return InvalidArgumentError("tensor is null for shape [" + std::to_string(rows) + ", " +
                                std::to_string(width) + "]");
  }
  if (reinterpret_cast<uintptr_t>(tensor) % DTypeSize(dtype) != 0) {
    return InvalidArgumentError("tensor is not aligned to its " + std::string(DTypeName(dtype)) +
                                " element size");
  }
  return OkStatus();
}

}  // namespace

Status LaunchRowStateDigests(const void* tensor, DType dtype, int quantize_bits, int64_t rows,
                             int64_t width, uint8_t* out_digests, cudaStream_t stream) {
  FP_RETURN_IF_ERROR(leaf::ValidateQuantizeBits(dtype, quantize_bits));
  FP_RETURN_IF_ERROR(ValidateShape(dtype, rows, width));
  if (rows == 0) return OkStatus();
  FP_RETURN_IF_ERROR(ValidatePointers(tensor, dtype, rows, width, out_digests));
  const auto row_bytes = static_cast<uint32_t>(width * static_cast<int64_t>(DTypeSize(dtype)));
  return Dispatch(tensor, dtype, row_bytes, quantize_bits, rows, out_digests, stream);
}

}  // namespace fp::kernels
