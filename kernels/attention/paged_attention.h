// PagedFieldprintAttention, CPU reference (DESIGN.md section 3): attention over a paged KV cache
// (vLLM layout), optionally mixed per query head with attention over the layer's anchor rows:
//
//   O = (1 - g_h) * softmax(Q K^T * scale) V  +  g_h * softmax(Q A_k^T * scale) A_v
//
// Modes: kMix computes the formula above; anchors are shared by all sequences, unmasked and carry
// no RoPE. kPrefix is plain causal attention: the caller has written the anchors as the first
// tokens of each sequence's cache, and no anchor set is passed.
//
// Work is described per query token: token t of a batch belongs to sequence seq_ids[t] and sits at
// positions[t]; it attends to that sequence's keys [0, positions[t]] (causal). Decode is one token
// per sequence at position context_len - 1; a prefill chunk is tokens at start .. start + n - 1
// whose own K/V the caller has already written (WritePagedKv). Both are the same computation.
//
// Determinism (the reason this library exists): the output for one (token, head) depends only on
// its query row, the keys/values at positions [0, position] of its sequence (not on where they
// live in the cache or on block_size), the anchors and gamma. The computation is fixed:
//   - score s_j = DotF32(q, k_j) * scale (kernels/base/fixed_math.h order);
//   - keys are consumed in tiles of kAttentionKeyTile absolute positions [16 i, 16 i + 16),
//     in increasing order, the last tile cut at the query's position; per tile: m_t = max s_j,
//     m' = max(m, m_t), alpha = ExpF32(m - m') (0 for the first tile), l = l * alpha,
//     acc = acc * alpha, then for j in increasing order: p = ExpF32(s_j - m'), l = l + p,
//     acc[c] = acc[c] + p * v_j[c]; finally o[c] = acc[c] / l;
//   - the anchor path is the same online softmax over anchors 0 .. A-1 (unmasked);
//   - the mix: g == 0 gives the attention output itself (the anchor term is dropped, not
//     multiplied by 0), g == 1 the anchor output itself, otherwise (1 - g) * o_kv + g * o_anchor
//     (two rounded products, one rounded sum). Dropping matters: (1 - 0) * x + 0 * y is not
//     bitwise x when x is -0.
// So a query gives the same bits in decode or prefill, in any chunking, alone or in any batch,
// with any thread count. Multi-threading splits (token, head) pairs, never a reduction.
//
// Thread-safety: reentrant. Readers may run concurrently; WritePagedKv must not run concurrently
// with readers or writers of the same cache slots.
#pragma once

#include <cstdint>

#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

// Keys per online-softmax tile, at absolute positions (part of the numerics; never change it
// without changing the kernel build id).
inline constexpr int32_t kAttentionKeyTile = 16;
inline constexpr int32_t kAttentionMaxHeadDim = 512;
inline constexpr int32_t kAttentionMaxHeads = 1024;
inline constexpr int32_t kAttentionMaxAnchors = 1 << 16;
inline constexpr int32_t kAttentionMaxBlockSize = 1 << 16;

// One layer's paged KV cache. Borrowed views; the caller owns the memory.
struct PagedKvCache {
  float* key;    // [num_blocks, block_size, kv_heads, head_dim] f32, row-major
  float* value;  // [num_blocks, block_size, kv_heads, head_dim] f32, row-major
  int32_t num_blocks;
  int32_t block_size;  // tokens per block (16 is the default; any value >= 1)
  int32_t kv_heads;
  int32_t head_dim;
};

// Per-sequence block tables: position p of sequence s lives in block
// table[s * max_blocks_per_seq + p / block_size], slot p % block_size. Borrowed.
struct BlockTables {
  const int32_t* table;  // [num_seqs, max_blocks_per_seq] int32 block ids, row-major
  int32_t num_seqs;
  int32_t max_blocks_per_seq;
};

enum class AttentionMode : uint8_t {
  kMix = 0,     // fused anchor mix; AnchorSet must hold >= 1 anchor and gamma
  kPrefix = 1,  // anchors are cache tokens; AnchorSet must be empty (num_anchors 0)
};

// A layer's anchor rows and mixing weights. Borrowed.
struct AnchorSet {
  const float* key;    // [num_anchors, kv_heads, head_dim] f32, row-major (no RoPE)
  const float* value;  // [num_anchors, kv_heads, head_dim] f32, row-major
  const float* gamma;  // [q_heads] f32, each in [0, 1]
  int32_t num_anchors;
};

struct AttentionOptions {
  AttentionMode mode;
  float softmax_scale;  // applied to each q.k; normally DefaultSoftmaxScale(head_dim)
};

// f32(1 / sqrt(head_dim)), computed in double and rounded once.
float DefaultSoftmaxScale(int32_t head_dim);

// Attention for a batch of query tokens (mixed decode and prefill allowed).
//   query:     [num_tokens, q_heads, head_dim] f32, row-major.
//   seq_ids:   [num_tokens] int32, row of `tables` for each token.
//   positions: [num_tokens] int32, each in [0, max_blocks_per_seq * block_size); the keys at
//              [0, position] of that sequence must already be in the cache.
//   out:       [num_tokens, q_heads, head_dim] f32; must not overlap the inputs.
// q_heads must be a positive multiple of cache.kv_heads (GQA: head h reads kv head
// h / (q_heads / kv_heads)). InvalidArgument on null pointers, sizes out of range, a seq id or
// position out of range, a block id out of [0, num_blocks) in a used table entry, a mode /
// anchor set mismatch, or a gamma outside [0, 1]; nothing is written then. num_tokens == 0 is a
// no-op.
Status PagedFieldprintAttention(const float* query, const int32_t* seq_ids,
                                const int32_t* positions, int32_t num_tokens, int32_t q_heads,
                                const BlockTables& tables, const PagedKvCache& cache,
                                const AnchorSet& anchors, const AttentionOptions& options,
                                float* out, ThreadPool& pool);

// Decode: one query per sequence s = 0 .. num_seqs - 1 (tables.num_seqs), at position
// context_lens[s] - 1.
//   query:        [num_seqs, q_heads, head_dim] f32.
//   context_lens: [num_seqs] int32, each >= 1 (tokens in the cache, the query's own included).
//   out:          [num_seqs, q_heads, head_dim] f32.
// Same contract and bits as PagedFieldprintAttention with seq_ids = s, positions = len - 1.
Status PagedFieldprintAttentionDecode(const float* query, const int32_t* context_lens,
                                      int32_t q_heads, const BlockTables& tables,
                                      const PagedKvCache& cache, const AnchorSet& anchors,
                                      const AttentionOptions& options, float* out,
                                      ThreadPool& pool);

// Prefill chunk of one sequence: num_tokens queries at positions start_position ..
// start_position + num_tokens - 1 of sequence seq_id (a row of `tables`), causal.
//   query: [num_tokens, q_heads, head_dim] f32.
//   out:   [num_tokens, q_heads, head_dim] f32.
// Same contract and bits as PagedFieldprintAttention with those seq ids and positions.
Status PagedFieldprintAttentionPrefill(const float* query, int32_t num_tokens,
                                       int32_t start_position, int32_t seq_id, int32_t q_heads,
                                       const BlockTables& tables, const PagedKvCache& cache,
                                       const AnchorSet& anchors, const AttentionOptions& options,
                                       float* out, ThreadPool& pool);

// Writes new K/V rows into the cache: row t goes to sequence seq_ids[t] at positions[t].
//   key:       [num_tokens, kv_heads, head_dim] f32 (after RoPE).
//   value:     [num_tokens, kv_heads, head_dim] f32.
//   seq_ids:   [num_tokens] int32; positions: [num_tokens] int32 (as for the attention).
// Two tokens must not map to the same cache slot (the order of such writes is unspecified).
// InvalidArgument as for the attention; nothing is written then.
Status WritePagedKv(const float* key, const float* value, const int32_t* seq_ids,
                    const int32_t* positions, int32_t num_tokens, const BlockTables& tables,
                    const PagedKvCache& cache, ThreadPool& pool);

}  // namespace fp::kernels
