// The device state digest: one RFC 6962 Merkle root over 1 KiB chunks per row of a [rows, width]
// tensor, after rounding to quantize_bits mantissa bits, computed entirely on the GPU.
//
// Spec: docs/formats.md, "Step leaf and state digest". CPU reference: common/leaf/state_digest.h
// (fp::leaf::RowStateDigests), which this kernel reproduces bit for bit; the rounding is the very
// same constexpr function (common/leaf/quantize.h) compiled for the device.
//
// Design. One thread block per row. Each thread hashes whole leaves, SHA-256(0x00 || chunk),
// reading its chunk straight from global memory (16-byte loads when the row allows it, element
// loads otherwise), rounding each element as it is decoded, so the canonical bytes never exist
// in memory. SHA-256 is a chain of compressions, so a leaf cannot be split across threads; the
// parallelism is across the chunks of a row (4 for a 2048-wide bf16 row) and across rows. The leaf
// digests land in shared memory and the block reduces them level by level: at the level of
// stride s the node for positions [j s, (j + 1) s) sits in slot j s, pairs (2i s, (2i + 1) s) are
// hashed into slot 2i s, and an odd last node is already in the slot of its next level, which is
// exactly the reference's "carry the odd last node up" rule with no copy and no race. Thread 0
// stores the root. No global scratch is needed: the leaf level is at most
// kMaxStateDigestRowBytes / 1024 * 32 bytes of shared memory.
//
// Cost. A launch is latency-bound: a full leaf is 17 dependent SHA-256 compressions and each tree
// level adds 2, and one warp spends about 1500 integer instructions on a compression. Measured on
// an H100 (1.98 GHz, Nsight Compute): about 3.8k cycles per compression, so 40 us for a 2048-wide
// bf16 row (4 leaves, 2 levels) and 49 us for 256 rows of 8192 (16 leaves, 4 levels): batch size
// and width barely matter until the GPU is full. The side stream is what makes that acceptable.
//
// Thread-safety: the launcher is reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "common/leaf/quantize.h"
#include "common/leaf/state_digest.h"
#include "kernels/digest/sha256_device.cuh"

namespace fp::kernels {

// Bounds on one launch. A row is at most 1 MiB (1024 leaves, 32 KiB of shared memory, inside the
// 48 KiB every device grants without opt-in): a hidden state is at most a few tens of KiB. Rows
// map to grid.x.
inline constexpr int64_t kMaxStateDigestRowBytes = int64_t{1} << 20;
inline constexpr int64_t kMaxStateDigestRows = int64_t{1} << 20;
inline constexpr int kStateDigestBytes = 32;

namespace internal {

inline constexpr uint32_t kChunkBytes = static_cast<uint32_t>(leaf::kStateDigestChunkBytes);
inline constexpr int kMaxDigestThreads = 256;
inline constexpr int64_t kMaxChunksPerRow = kMaxStateDigestRowBytes / kChunkBytes;
static_assert(kMaxChunksPerRow * sha256::kDigestWords * 4 <= 48 * 1024,
              "the leaf level of the widest row must fit default shared memory");
static_assert(kChunkBytes % sha256::kBlockBytes == 0, "chunks are whole SHA-256 blocks of data");

// Bytes from little-endian memory order to a big-endian SHA-256 group.
__device__ __forceinline__ uint32_t ByteSwap(uint32_t x) { return __byte_perm(x, 0, 0x0123); }

// One chunk of a row as a SHA-256 payload source (see sha256::HashPrefixed). `raw` holds the
// chunk's bytes as little-endian words exactly as they lie in memory (zero past the end); Decode
// rounds each element and byte-swaps.
template <DType kDType, bool kVectorLoads>
struct ChunkSource {
  static_assert(kDType == DType::kBf16 || kDType == DType::kF16 || kDType == DType::kF32);
  static constexpr uint32_t kElementBytes = static_cast<uint32_t>(DTypeSize(kDType));

  const uint8_t* chunk;  // device, the chunk's first byte; aligned to 16 if kVectorLoads, else to
                         // the element size
  uint32_t length;       // bytes in the chunk: a multiple of the element size, at most 1024
  int keep_bits;         // validated by the launcher

  __device__ __forceinline__ void Fetch(uint32_t block, uint32_t raw[16]) const {
    const uint32_t begin = block * sha256::kBlockBytes;
    if constexpr (kVectorLoads) {
      if (begin + sha256::kBlockBytes <= length) {
        const uint4* vectors = reinterpret_cast<const uint4*>(chunk + begin);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint4 v = __ldg(vectors + q);
          raw[4 * q] = v.x;
          raw[4 * q + 1] = v.y;
          raw[4 * q + 2] = v.z;
          raw[4 * q + 3] = v.w;
        }
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) raw[i] = LoadWord(begin + 4 * i);
  }

  __device__ __forceinline__ void Decode(uint32_t raw[16]) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) raw[i] = ByteSwap(Round(raw[i]));
  }

 private:
  // The little-endian word of chunk bytes [offset, offset + 4), zero past `length`, read with
  // element-sized loads (always aligned).
  __device__ __forceinline__ uint32_t LoadWord(uint32_t offset) const {
    if constexpr (kElementBytes == 4) {
      return offset < length ? __ldg(reinterpret_cast<const unsigned int*>(chunk + offset)) : 0u;
    } else {
      const auto* halves = reinterpret_cast<const unsigned short*>(chunk + offset);
      const uint32_t low = offset < length ? __ldg(halves) : 0u;
      const uint32_t high = offset + 2 < length ? __ldg(halves + 1) : 0u;
      return low | (high << 16);
    }
  }

  // Rounds the element(s) of one little-endian word. Zero words (past the end) stay zero.
  __device__ __forceinline__ uint32_t Round(uint32_t word) const {
    if constexpr (kDType == DType::kF32) {
      return leaf::QuantizeF32Bits(word, keep_bits);
    } else {
      const auto round16 = [this](uint32_t half) -> uint32_t {
        const auto bits = static_cast<uint16_t>(half);
        return kDType == DType::kBf16 ? leaf::QuantizeBf16Bits(bits, keep_bits)
                                      : leaf::QuantizeF16Bits(bits, keep_bits);
      };
      return round16(word & 0xffffu) | (round16(word >> 16) << 16);
    }
  }
};

}  // namespace internal

// One block per row; blockDim.x threads share the row's leaves, then its tree.
//   tensor:      [rows, row_bytes / element size] kDType, row-major, device; rows = gridDim.x.
//   row_bytes:   at most kMaxStateDigestRowBytes; 0 gives the empty-tree root.
//   out_digests: [rows, 32] bytes, device, 4-byte aligned.
// Dynamic shared memory: ceil(row_bytes / 1024) * 32 bytes.
template <DType kDType, bool kVectorLoads>
__global__ void __launch_bounds__(internal::kMaxDigestThreads)
    RowStateDigestKernel(const uint8_t* __restrict__ tensor, uint32_t row_bytes, int keep_bits,
                         uint8_t* __restrict__ out_digests) {
  constexpr int kWords = sha256::kDigestWords;
  extern __shared__ uint32_t nodes[];  // [chunks, 8] state words, the tree's working level
  const uint32_t chunks = (row_bytes + internal::kChunkBytes - 1) / internal::kChunkBytes;
  const uint8_t* row = tensor + static_cast<uint64_t>(blockIdx.x) * row_bytes;

  for (uint32_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const uint32_t begin = c * internal::kChunkBytes;
    const internal::ChunkSource<kDType, kVectorLoads> source{
        row + begin, min(internal::kChunkBytes, row_bytes - begin), keep_bits};
    uint32_t digest[kWords];
    sha256::HashPrefixed(0x00, source.length, source, digest);
#pragma unroll
    for (int w = 0; w < kWords; ++w) nodes[c * kWords + w] = digest[w];
  }
  __syncthreads();

  for (uint32_t stride = 1; stride < chunks; stride *= 2) {
    for (uint32_t i = threadIdx.x; (2 * i + 1) * stride < chunks; i += blockDim.x) {
      uint32_t* left_slot = nodes + 2 * i * stride * kWords;
      const uint32_t* right_slot = nodes + (2 * i + 1) * stride * kWords;
      uint32_t left[kWords], right[kWords], parent[kWords];
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        left[w] = left_slot[w];
        right[w] = right_slot[w];
      }
      sha256::HashNode(left, right, parent);
#pragma unroll
      for (int w = 0; w < kWords; ++w) left_slot[w] = parent[w];
    }
    __syncthreads();
  }

  if (threadIdx.x == 0) {
    uint32_t root[kWords];
    if (chunks == 0) {
      sha256::HashEmpty(root);
    } else {
#pragma unroll
      for (int w = 0; w < kWords; ++w) root[w] = nodes[w];
    }
    auto* out = reinterpret_cast<uint32_t*>(out_digests +
                                            static_cast<uint64_t>(blockIdx.x) * kStateDigestBytes);
#pragma unroll
    for (int w = 0; w < kWords; ++w) out[w] = internal::ByteSwap(root[w]);
  }
}

// Digests each row of `tensor` on `stream`: out_digests row r = fp::leaf::RowStateDigests(dtype,
// quantize_bits, tensor, rows, width)[r], bit for bit.
//   tensor:      [rows, width] dtype, row-major, device memory, aligned to the element size;
//                borrowed until the work on `stream` completes, and must not be written before.
//   out_digests: [rows, 32] bytes, device memory, 4-byte aligned; written on `stream`.
// Returns OK once the kernel is enqueued (rows == 0 enqueues nothing). InvalidArgument for an
// unknown dtype, quantize_bits outside [0, mantissa bits of dtype], negative sizes, more than
// kMaxStateDigestRows rows, a row over kMaxStateDigestRowBytes, a null or misaligned pointer;
// Internal (with the CUDA error) if the launch fails. Needs no scratch memory and allocates none.
Status LaunchRowStateDigests(const void* tensor, DType dtype, int quantize_bits, int64_t rows,
                             int64_t width, uint8_t* out_digests, cudaStream_t stream);

}  // namespace fp::kernels
