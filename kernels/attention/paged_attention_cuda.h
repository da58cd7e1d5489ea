// PagedFieldprintAttention on the GPU (DESIGN.md section 3): attention over a bf16 paged KV cache
// (vLLM layout), optionally mixed per query head with attention over the layer's anchor rows,
//
//   O = (1 - g_h) * softmax(Q K^T * scale) V  +  g_h * softmax(Q A_k^T * scale) A_v,
//
// with the same modes and contract as the CPU reference (paged_attention.h): kMix computes the
// formula, kPrefix is plain causal attention over a cache whose first rows the caller filled with
// the anchors. Query token t of a work list belongs to sequence seq_ids[t] at positions[t] and
// attends causally to that sequence's keys [0, positions[t]].
//
// DESIGN. Rows of the tensor-core tiles are (query token, query head) pairs of one GQA group, so
// one K/V tile in shared memory serves every head of the group and several tokens. A warp owns 16
// rows (16 / group tokens of `group` heads; padding rows compute garbage nobody reads). Per key
// tile of kCudaAttentionKeyTile keys at absolute positions [64 i, 64 i + 64):
//   S = Q K^T       mma.sync m16n8k16 bf16 -> f32, k (head_dim) in increasing 16-wide steps;
//   x = S * (scale * log2 e), -inf where key > row position (or >= num_anchors);
//   m' = max(m, max_j x_j); alpha = 2^(m - m'); p_j = 2^(x_j - m') (ex2.approx, one instruction);
//   l' = fma(l, alpha, sum_j p_j)  (sum: 16 values per thread in a fixed order, then lanes 1, 2);
//   T = bf16(P) V   mma.sync into a zero accumulator, keys in increasing 16-wide steps;
//   acc' = fma(acc, alpha, T).
// A row whose position lies before the tile keeps (m, l, acc) exactly (a select, so rows that
// share a warp never disturb each other). K/V rows are fetched with cp.async through a 2-stage
// shared-memory ring (rows XOR-swizzled in 16-byte units for conflict-free ldmatrix; a 3-stage
// ring, which fits fewer CTAs per SM, measured 34% slower at B=64); keys past the last row
// position of the tile's rows are zero-filled, never read. The query tile sits in shared memory
// (ldmatrix per tile) to keep the kernels inside 255 registers without spills.
// Split-KV at fixed absolute multiples of kCudaAttentionSplit keys: the state is restarted at
// every split boundary, and split states are merged in increasing split order (the first copied,
// then M' = max(M, m), a = 2^(M - M'), b = 2^(m - M'), L' = L a + l b, ACC' = ACC a + acc b, each
// product and sum rounded), and finally o = ACC / L (IEEE division). Decode runs one CTA (one
// warp) per (sequence, kv head, split) and a combine kernel merges the split states written to
// the workspace (grid x = kv head, so the CTAs reading the interleaved heads of one cache slot
// run together); prefill runs one CTA (4 warps sharing K/V tiles) per (token tile, kv head) that
// walks its splits in order and merges them into shared memory with the same merge function. The
// anchor path is the same online softmax over anchor tiles (no split, at most 512 anchors); in
// decode the split-0 CTA computes it first and parks o_anchor in the workspace, in prefill the
// CTA computes it after the KV stream with o_kv parked in shared memory; the mix then runs in the
// combine kernel / the prefill epilogue: g == 0 gives o_kv itself (the anchor term is dropped),
// g == 1 o_anchor itself, otherwise (1 - g) o_kv + g o_anchor (two rounded products, a rounded
// sum). The output is o + 0 (so an exact zero is always +0) rounded once to bf16.
//
// DETERMINISM. Every operation on a row's values is fixed by the list above and depends only on
// its query row, the K/V rows at positions [0, position] of its sequence, the anchors, gamma, the
// softmax scale and the constants; arithmetic is written with explicit rounding intrinsics and the
// file is compiled with --fmad=false, so no compiler contraction can differ between the kernels.
// Hence a query gives the same bits in decode or prefill, alone or in any batch at any index,
// in any prefill chunking, with any block_size and block placement, in every run. The one
// hardware property relied on (and tested): an mma output row depends only on its own A row and
// on B, and exact-zero products (masked keys of a row's last tile, whose V rows are real values
// in a prefill chunk but zero-filled in decode) leave a sum unchanged. Not the same
// bits as the CPU reference (tensor-core sums and ex2.approx differ from fixed_math.h); the tests
// bound the difference.
//
// Device-side indices: seq ids, positions, context lengths and block tables live in device memory
// and are not checked by the launchers (they never read device memory). The kernels check them:
// a token whose seq id, position (or context length) is out of range, or at or past max_context,
// or whose keys use an out-of-range block id, gets a NaN output row; nothing outside the buffers
// is ever read or written.
//
// Thread-safety: launchers are reentrant; concurrent launches must not write the same outputs,
// workspace or cache slots.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"
#include "kernels/attention/paged_attention.h"

namespace fp::kernels {

// Keys per online-softmax tile and per split, at absolute positions (both part of the numerics).
inline constexpr int32_t kCudaAttentionKeyTile = 64;
inline constexpr int32_t kCudaAttentionSplit = 512;
inline constexpr int32_t kCudaAttentionMaxAnchors = 512;
inline constexpr int32_t kCudaAttentionMaxGroup = 16;
inline constexpr int32_t kCudaAttentionMaxTokens = 1 << 22;
inline constexpr int32_t kCudaAttentionMaxContext = 1 << 24;
// Bound on a row stride (elements), so token * stride stays far inside int64.
inline constexpr int64_t kCudaAttentionMaxRowStride = int64_t{1} << 24;

// One layer's paged KV cache on the device. Borrowed; 16-byte aligned.
struct CudaPagedKvCache {
  void* key;    // [num_blocks, block_size, kv_heads, head_dim] bf16, row-major
  void* value;  // [num_blocks, block_size, kv_heads, head_dim] bf16, row-major
  int32_t num_blocks;
  int32_t block_size;  // any value >= 1
  int32_t kv_heads;
  int32_t head_dim;  // 64 or 128
};

// Block tables on the device: position p of sequence s lives in block
// table[s * max_blocks_per_seq + p / block_size], slot p % block_size. Borrowed.
struct CudaBlockTables {
  const int32_t* table;  // [num_seqs, max_blocks_per_seq] int32, device
  int32_t num_seqs;
  int32_t max_blocks_per_seq;
};

// A layer's anchors on the device (kMix). Borrowed; key/value 16-byte aligned.
struct CudaAnchorSet {
  const void* key;      // [num_anchors, kv_heads, head_dim] bf16, no RoPE
  const void* value;    // [num_anchors, kv_heads, head_dim] bf16
  const float* gamma;   // [q_heads] f32, each in [0, 1] (not checked: device memory)
  int32_t num_anchors;  // kMix: 1 .. kCudaAttentionMaxAnchors; kPrefix: 0
};

// Workspace bytes LaunchPagedAttentionDecodeCuda needs for num_seqs sequences whose context
// lengths are at most max_context (split states and parked anchor outputs). 0 on bad sizes.
size_t PagedAttentionDecodeWorkspaceBytes(int32_t num_seqs, int32_t q_heads, int32_t head_dim,
                                          int32_t max_context);

// Row strides. The launchers read query, key and value rows `..._stride` elements apart
// (>= the row's width q_heads * head_dim or kv_heads * head_dim, a multiple of 8 so every row
// keeps the base's 16-byte alignment, at most kCudaAttentionMaxRowStride), so they can be column
// ranges of one fused [tokens, q | k | v] projection output. Strides change addressing only: the
// bits are those of packed rows. The overloads without strides take packed rows.

// Decode: one query per sequence s = 0 .. tables.num_seqs - 1 at position context_lens[s] - 1.
//   query:        sequence s's [q_heads, head_dim] bf16 at query + s * query_stride, device,
//                 16-byte aligned.
//   context_lens: [num_seqs] int32, device; each in [1, max_context].
//   max_context:  host-known bound on the context lengths (sizes the grid and workspace).
//   workspace:    device scratch of at least PagedAttentionDecodeWorkspaceBytes(...) bytes,
//                 16-byte aligned; contents need no initialisation and are garbage afterwards.
//   out:          [num_seqs, q_heads, head_dim] bf16, device; must not overlap the inputs.
// Enqueues two kernels on `stream`. InvalidArgument (nothing launched) on null pointers,
// misalignment, sizes out of range (head_dim not 64/128, q_heads not a multiple of kv_heads or a
// group over 16, max_context above the table capacity, a bad query_stride), a mode / anchor set
// mismatch, a non-finite scale or a short workspace; Internal if a launch fails.
Status LaunchPagedAttentionDecodeCuda(const void* query, int64_t query_stride,
                                      const int32_t* context_lens, int32_t max_context,
                                      int32_t q_heads, const CudaBlockTables& tables,
                                      const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
                                      const AttentionOptions& options, void* workspace,
                                      size_t workspace_bytes, void* out, cudaStream_t stream);
// The same on packed queries [num_seqs, q_heads, head_dim] (query_stride = q_heads * head_dim).
Status LaunchPagedAttentionDecodeCuda(const void* query, const int32_t* context_lens,
                                      int32_t max_context, int32_t q_heads,
                                      const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                      const CudaAnchorSet& anchors, const AttentionOptions& options,
                                      void* workspace, size_t workspace_bytes, void* out,
                                      cudaStream_t stream);

// Prefill (or any work list): query token t is sequence seq_ids[t] at positions[t], causal over
// [0, positions[t]]; tokens of one or several sequences, in any order (runs of equal seq ids
// share K/V tiles). The caller has written every token's own K/V (LaunchWritePagedKvCuda).
//   query:       token t's [q_heads, head_dim] bf16 at query + t * query_stride, device,
//                16-byte aligned.
//   seq_ids, positions: [num_tokens] int32, device; positions in [0, max_context).
//   out:         [num_tokens, q_heads, head_dim] bf16, device (packed).
// Same bits per token as the decode launcher. Same errors; no workspace. num_tokens == 0 is a
// no-op.
Status LaunchPagedAttentionPrefillCuda(const void* query, int64_t query_stride,
                                       const int32_t* seq_ids, const int32_t* positions,
                                       int32_t num_tokens, int32_t max_context, int32_t q_heads,
                                       const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                       const CudaAnchorSet& anchors,
                                       const AttentionOptions& options, void* out,
                                       cudaStream_t stream);
// The same on packed queries [num_tokens, q_heads, head_dim] (query_stride = q_heads * head_dim).
Status LaunchPagedAttentionPrefillCuda(const void* query, const int32_t* seq_ids,
                                       const int32_t* positions, int32_t num_tokens,
                                       int32_t max_context, int32_t q_heads,
                                       const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                       const CudaAnchorSet& anchors,
                                       const AttentionOptions& options, void* out,
                                       cudaStream_t stream);

// Writes new rows into the cache: row t to sequence seq_ids[t] at positions[t].
//   key, value: token t's [kv_heads, head_dim] bf16 at key + t * key_stride and
//               value + t * value_stride, device, 16-byte aligned (K after RoPE).
//   seq_ids, positions: [num_tokens] int32, device. A token whose seq id, position or block id is
//   out of range is skipped (device memory cannot be validated from the host). Two tokens must
//   not map to the same slot.
// InvalidArgument (nothing launched) on null pointers, misalignment, bad strides or bad sizes.
Status LaunchWritePagedKvCuda(const void* key, int64_t key_stride, const void* value,
                              int64_t value_stride, const int32_t* seq_ids,
                              const int32_t* positions, int32_t num_tokens,
                              const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                              cudaStream_t stream);
// The same on packed rows [num_tokens, kv_heads, head_dim] (strides kv_heads * head_dim).
Status LaunchWritePagedKvCuda(const void* key, const void* value, const int32_t* seq_ids,
                              const int32_t* positions, int32_t num_tokens,
                              const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                              cudaStream_t stream);

namespace internal {

// Workspace bytes of the decode launcher below for `split_keys` keys per split.
size_t DecodeWorkspaceBytesWithSplit(int32_t num_seqs, int32_t q_heads, int32_t head_dim,
                                     int32_t max_context, int32_t split_keys);

// The decode launcher with a split size other than kCudaAttentionSplit (a positive multiple of
// kCudaAttentionKeyTile; gives different bits) and a tile ring of `stages` (2 or 3; pipelining
// only, same bits): only the benchmark uses it, to price the fixed split against one chosen per
// shape and to pick the ring depth.
Status LaunchPagedAttentionDecodeWithSplit(
    const void* query, const int32_t* context_lens, int32_t max_context, int32_t q_heads,
    const CudaBlockTables& tables, const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
    const AttentionOptions& options, int32_t split_keys, int32_t stages, void* workspace,
    size_t workspace_bytes, void* out, cudaStream_t stream);

}  // namespace internal
}  // namespace fp::kernels
