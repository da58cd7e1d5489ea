// PagedFieldprintAttention and WritePagedKv on the CPU. The numerics are specified in
// paged_attention.h; this file is the executable form of that specification, and the future
// CUDA kernel is tested against it.
//
// Work split: a work item is one token and a run of query heads of one GQA group. The heads of
// an item are computed together, key by key, so each K/V row is read once per item instead of
// once per head; each head still performs exactly the operations of the specification, in its
// order (interleaving independent heads changes no result). Items are split finer only when
// there are too few of them for the pool, which changes nothing either.
//
// Thread-safety: reentrant; see paged_attention.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/attention/paged_attention.h"
#include "kernels/base/fixed_math.h"
#include "kernels/base/internal/cpu_dispatch.h"

namespace fp::kernels {
namespace {

constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();

// Rows of one sequence's paged cache for one kv head, by absolute position.
struct PagedRows {
  const float* key;
  const float* value;
  const int32_t* block_table;  // [max_blocks_per_seq] this sequence's row of the tables
  int64_t block_size;
  int64_t row_stride;   // kv_heads * head_dim
  int64_t head_offset;  // kv_head * head_dim

  int64_t Offset(int64_t position) const {
    const int64_t block = block_table[position / block_size];
    return (block * block_size + position % block_size) * row_stride + head_offset;
  }
  const float* Key(int64_t position) const { return key + Offset(position); }
  const float* Value(int64_t position) const { return value + Offset(position); }
};

// Anchor rows for one kv head.
struct AnchorRows {
  const float* key;
  const float* value;
  int64_t row_stride;
  int64_t head_offset;

  const float* Key(int64_t index) const { return key + index * row_stride + head_offset; }
  const float* Value(int64_t index) const { return value + index * row_stride + head_offset; }
};

// Online-softmax state of `heads` query heads sharing one kv head; borrowed scratch.
struct GroupState {
  int32_t heads;
  float* max;     // [heads]
  float* sum;     // [heads]
  float* scores;  // [heads, kAttentionKeyTile]
};

// out[g, :] = softmax(q_g . rows[0, count) * scale) rows.value for heads g < state.heads, online
// over fixed tiles of kAttentionKeyTile rows (the order paged_attention.h specifies).
//   queries: [heads, head_dim] (rows `query_stride` apart); out: [heads, head_dim]. count >= 1.
template <typename Rows>
__attribute__((always_inline)) inline void GroupAttention(const float* queries,
                                                          int64_t query_stride, const Rows& rows,
                                                          int64_t count, int32_t head_dim,
                                                          float scale, GroupState& state,
                                                          float* out) {
  const int32_t heads = state.heads;
  std::fill(state.max, state.max + heads, kNegativeInfinity);
  std::fill(state.sum, state.sum + heads, 0.0f);
  std::fill(out, out + int64_t{heads} * head_dim, 0.0f);  // out doubles as the accumulators
  for (int64_t tile_start = 0; tile_start < count; tile_start += kAttentionKeyTile) {
    const int64_t tile_length = std::min<int64_t>(kAttentionKeyTile, count - tile_start);
    for (int64_t j = 0; j < tile_length; ++j) {
      const float* key = rows.Key(tile_start + j);
      for (int32_t g = 0; g < heads; ++g) {
        state.scores[g * kAttentionKeyTile + j] =
            DotF32(queries + g * query_stride, key, head_dim) * scale;
      }
    }
    for (int32_t g = 0; g < heads; ++g) {
      const float* scores = state.scores + g * kAttentionKeyTile;
      float tile_max = kNegativeInfinity;
      for (int64_t j = 0; j < tile_length; ++j) tile_max = std::max(tile_max, scores[j]);
      const float new_max = std::max(state.max[g], tile_max);
      if (tile_start > 0) {
        const float alpha = ExpF32(state.max[g] - new_max);
        state.sum[g] = state.sum[g] * alpha;
        float* acc = out + int64_t{g} * head_dim;
        for (int32_t c = 0; c < head_dim; ++c) acc[c] = acc[c] * alpha;
      }
      state.max[g] = new_max;
    }
    for (int64_t j = 0; j < tile_length; ++j) {
      const float* value = rows.Value(tile_start + j);
      for (int32_t g = 0; g < heads; ++g) {
        const float p = ExpF32(state.scores[g * kAttentionKeyTile + j] - state.max[g]);
        state.sum[g] = state.sum[g] + p;
        float* acc = out + int64_t{g} * head_dim;
        for (int32_t c = 0; c < head_dim; ++c) acc[c] = acc[c] + p * value[c];
      }
    }
  }
  for (int32_t g = 0; g < heads; ++g) {
    float* acc = out + int64_t{g} * head_dim;
    for (int32_t c = 0; c < head_dim; ++c) acc[c] = acc[c] / state.sum[g];
  }
}

Status ValidateCacheAndTables(const BlockTables& tables, const PagedKvCache& cache) {
  if (cache.key == nullptr || cache.value == nullptr) {
    return InvalidArgumentError("attention: cache key or value is null");
  }
  if (cache.num_blocks < 1 || cache.block_size < 1 || cache.block_size > kAttentionMaxBlockSize) {
    return InvalidArgumentError("attention: cache num_blocks must be >= 1 and block_size in [1, " +
                                std::to_string(kAttentionMaxBlockSize) + "]");
  }
  if (cache.kv_heads < 1 || cache.kv_heads > kAttentionMaxHeads) {
    return InvalidArgumentError("attention: kv_heads " + std::to_string(cache.kv_heads) +
                                " is outside [1, " + std::to_string(kAttentionMaxHeads) + "]");
  }
  if (cache.head_dim < 1 || cache.head_dim > kAttentionMaxHeadDim) {
    return InvalidArgumentError("attention: head_dim " + std::to_string(cache.head_dim) +
                                " is outside [1, " + std::to_string(kAttentionMaxHeadDim) + "]");
  }
  if (tables.table == nullptr || tables.num_seqs < 1 || tables.max_blocks_per_seq < 1) {
    return InvalidArgumentError(
        "attention: block tables need a table, num_seqs >= 1 and max_blocks_per_seq >= 1");
  }
  return OkStatus();
}

// Checks a token's sequence id, position and every block id its keys [0, position] use.
Status ValidateToken(int64_t t, int32_t seq_id, int32_t position, const BlockTables& tables,
                     const PagedKvCache& cache) {
  if (seq_id < 0 || seq_id >= tables.num_seqs) {
    return InvalidArgumentError("attention: token " + std::to_string(t) + " has seq id " +
                                std::to_string(seq_id) + " outside [0, " +
                                std::to_string(tables.num_seqs) + ")");
  }
  const int64_t capacity = int64_t{tables.max_blocks_per_seq} * cache.block_size;
  if (position < 0 || position >= capacity) {
    return InvalidArgumentError("attention: token " + std::to_string(t) + " has position " +
                                std::to_string(position) + " outside [0, " +
                                std::to_string(capacity) + ")");
  }
  const int32_t* row = tables.table + int64_t{seq_id} * tables.max_blocks_per_seq;
  for (int64_t b = 0; b <= position / cache.block_size; ++b) {
    if (row[b] < 0 || row[b] >= cache.num_blocks) {
      return InvalidArgumentError("attention: sequence " + std::to_string(seq_id) + " maps block " +
                                  std::to_string(b) + " to " + std::to_string(row[b]) +
                                  ", outside [0, " + std::to_string(cache.num_blocks) + ")");
    }
  }
  return OkStatus();
}

Status ValidateTokens(const int32_t* seq_ids, const int32_t* positions, int32_t num_tokens,
                      const BlockTables& tables, const PagedKvCache& cache) {
  for (int32_t t = 0; t < num_tokens; ++t) {
    FP_RETURN_IF_ERROR(ValidateToken(t, seq_ids[t], positions[t], tables, cache));
  }
  return OkStatus();
}

Status ValidateAnchors(const AnchorSet& anchors, const AttentionOptions& options, int32_t q_heads) {
  if (!std::isfinite(options.softmax_scale)) {
    return InvalidArgumentError("attention: softmax_scale is not finite");
  }
  if (options.mode == AttentionMode::kPrefix) {
    if (anchors.num_anchors != 0) {
      return InvalidArgumentError("attention: prefix mode takes no anchor set (num_anchors 0)");
    }
    return OkStatus();
  }
  if (options.mode != AttentionMode::kMix) return InvalidArgumentError("attention: unknown mode");
  if (anchors.num_anchors < 1 || anchors.num_anchors > kAttentionMaxAnchors) {
    return InvalidArgumentError("attention: mix mode needs num_anchors in [1, " +
                                std::to_string(kAttentionMaxAnchors) + "], got " +
                                std::to_string(anchors.num_anchors));
  }
  if (anchors.key == nullptr || anchors.value == nullptr || anchors.gamma == nullptr) {
    return InvalidArgumentError("attention: mix mode needs anchor key, value and gamma");
  }
  for (int32_t h = 0; h < q_heads; ++h) {
    if (!(anchors.gamma[h] >= 0.0f && anchors.gamma[h] <= 1.0f)) {
      return InvalidArgumentError("attention: gamma of head " + std::to_string(h) +
                                  " is outside [0, 1]");
    }
  }
  return OkStatus();
}

Status ValidateAttention(const float* query, const int32_t* seq_ids, const int32_t* positions,
                         int32_t num_tokens, int32_t q_heads, const BlockTables& tables,
                         const PagedKvCache& cache, const AnchorSet& anchors,
                         const AttentionOptions& options, const float* out) {
  if (num_tokens < 0) return InvalidArgumentError("attention: num_tokens is negative");
  FP_RETURN_IF_ERROR(ValidateCacheAndTables(tables, cache));
  if (q_heads < 1 || q_heads > kAttentionMaxHeads || q_heads % cache.kv_heads != 0) {
    return InvalidArgumentError("attention: q_heads " + std::to_string(q_heads) +
                                " must be in [1, " + std::to_string(kAttentionMaxHeads) +
                                "] and a multiple of kv_heads " + std::to_string(cache.kv_heads));
  }
  FP_RETURN_IF_ERROR(ValidateAnchors(anchors, options, q_heads));
  if (num_tokens == 0) return OkStatus();
  if (query == nullptr || seq_ids == nullptr || positions == nullptr || out == nullptr) {
    return InvalidArgumentError("attention: null query, seq_ids, positions or out");
  }
  return ValidateTokens(seq_ids, positions, num_tokens, tables, cache);
}

struct AttentionCall {
  const float* query;
  const int32_t* seq_ids;
  const int32_t* positions;
  int32_t q_heads;
  const BlockTables& tables;
  const PagedKvCache& cache;
  const AnchorSet& anchors;
  const AttentionOptions& options;
  float* out;
};

struct Scratch {
  std::vector<float> max;
  std::vector<float> sum;
  std::vector<float> scores;
  std::vector<float> anchor_out;
};

// Query heads [head_begin, head_end) of token t, all in the GQA group of one kv head.
__attribute__((always_inline)) inline void AttendHeadsBody(const AttentionCall& call, int64_t t,
                                                           int32_t head_begin, int32_t head_end) {
  thread_local Scratch scratch;
  const PagedKvCache& cache = call.cache;
  const int32_t head_dim = cache.head_dim;
  const int32_t heads = head_end - head_begin;
  const int32_t kv_head = head_begin / (call.q_heads / cache.kv_heads);
  const int64_t row_stride = int64_t{cache.kv_heads} * head_dim;
  const int64_t head_offset = int64_t{kv_head} * head_dim;
  scratch.max.resize(static_cast<size_t>(heads));
  scratch.sum.resize(static_cast<size_t>(heads));
  scratch.scores.resize(static_cast<size_t>(heads) * kAttentionKeyTile);
  GroupState state{heads, scratch.max.data(), scratch.sum.data(), scratch.scores.data()};
  const int64_t first = t * call.q_heads + head_begin;
  const float* query = call.query + first * head_dim;
  float* out = call.out + first * head_dim;
  const int32_t* block_table =
      call.tables.table + int64_t{call.seq_ids[t]} * call.tables.max_blocks_per_seq;
  const PagedRows rows{cache.key,        cache.value, block_table,
                       cache.block_size, row_stride,  head_offset};
  const float scale = call.options.softmax_scale;
  GroupAttention(query, head_dim, rows, int64_t{call.positions[t]} + 1, head_dim, scale, state,
                 out);
  if (call.options.mode == AttentionMode::kPrefix) return;
  const float* gamma = call.anchors.gamma + head_begin;
  if (std::all_of(gamma, gamma + heads, [](float g) { return g == 0.0f; })) return;
  scratch.anchor_out.resize(static_cast<size_t>(heads) * head_dim);
  float* anchor_out = scratch.anchor_out.data();
  const AnchorRows anchor_rows{call.anchors.key, call.anchors.value, row_stride, head_offset};
  GroupAttention(query, head_dim, anchor_rows, call.anchors.num_anchors, head_dim, scale, state,
                 anchor_out);
  for (int32_t g = 0; g < heads; ++g) {
    // g == 0 keeps the attention output itself, exactly (see paged_attention.h).
    if (gamma[g] == 0.0f) continue;
    float* mixed = out + int64_t{g} * head_dim;
    const float* anchor = anchor_out + int64_t{g} * head_dim;
    if (gamma[g] == 1.0f) {
      std::copy(anchor, anchor + head_dim, mixed);
      continue;
    }
    const float keep = 1.0f - gamma[g];
    for (int32_t c = 0; c < head_dim; ++c) mixed[c] = keep * mixed[c] + gamma[g] * anchor[c];
  }
}

FP_KERNELS_TARGET_AVX2 void AttendHeadsAvx2(const AttentionCall& call, int64_t t,
                                            int32_t head_begin, int32_t head_end) {
  AttendHeadsBody(call, t, head_begin, head_end);
}

void AttendHeadsBaseline(const AttentionCall& call, int64_t t, int32_t head_begin,
                         int32_t head_end) {
  AttendHeadsBody(call, t, head_begin, head_end);
}

// Query heads per work item: a whole GQA group, halved while there are fewer than two items per
// thread (so one long decode still spreads over the pool).
int32_t HeadsPerItem(int64_t num_tokens, int32_t kv_heads, int32_t group, int threads) {
  int32_t heads = group;
  while (heads > 1 && num_tokens * kv_heads * ((group + heads - 1) / heads) < 2 * threads) {
    heads = (heads + 1) / 2;
  }
  return heads;
}

}  // namespace

float DefaultSoftmaxScale(int32_t head_dim) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

Status PagedFieldprintAttention(const float* query, const int32_t* seq_ids,
                                const int32_t* positions, int32_t num_tokens, int32_t q_heads,
                                const BlockTables& tables, const PagedKvCache& cache,
                                const AnchorSet& anchors, const AttentionOptions& options,
                                float* out, ThreadPool& pool) {
  FP_RETURN_IF_ERROR(ValidateAttention(query, seq_ids, positions, num_tokens, q_heads, tables,
                                       cache, anchors, options, out));
  const int32_t group = q_heads / cache.kv_heads;
  const int32_t heads_per_item =
      HeadsPerItem(num_tokens, cache.kv_heads, group, pool.num_threads());
  const int32_t items_per_group = (group + heads_per_item - 1) / heads_per_item;
  const int64_t items_per_token = int64_t{cache.kv_heads} * items_per_group;
  const AttentionCall call{query, seq_ids, positions, q_heads, tables,
                           cache, anchors, options,   out};
  const auto attend = internal::UseAvx2() ? AttendHeadsAvx2 : AttendHeadsBaseline;
  pool.ParallelFor(num_tokens * items_per_token, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / items_per_token;
      const int64_t within = item % items_per_token;
      const auto kv_head = static_cast<int32_t>(within / items_per_group);
      const auto part = static_cast<int32_t>(within % items_per_group);
      const int32_t head_begin = kv_head * group + part * heads_per_item;
      const int32_t head_end = std::min(head_begin + heads_per_item, (kv_head + 1) * group);
      attend(call, t, head_begin, head_end);
    }
  });
  return OkStatus();
}

Status PagedFieldprintAttentionDecode(const float* query, const int32_t* context_lens,
                                      int32_t q_heads, const BlockTables& tables,
                                      const PagedKvCache& cache, const AnchorSet& anchors,
                                      const AttentionOptions& options, float* out,
                                      ThreadPool& pool) {
  if (context_lens == nullptr) return InvalidArgumentError("attention: context_lens is null");
  if (tables.num_seqs < 1) return InvalidArgumentError("attention: num_seqs must be >= 1");
  std::vector<int32_t> seq_ids(static_cast<size_t>(tables.num_seqs));
  std::vector<int32_t> positions(static_cast<size_t>(tables.num_seqs));
  for (int32_t s = 0; s < tables.num_seqs; ++s) {
    if (context_lens[s] < 1) {
      return InvalidArgumentError("attention: context length of sequence " + std::to_string(s) +
                                  " is " + std::to_string(context_lens[s]) + ", not >= 1");
    }
    seq_ids[static_cast<size_t>(s)] = s;
    positions[static_cast<size_t>(s)] = context_lens[s] - 1;
  }
  return PagedFieldprintAttention(query, seq_ids.data(), positions.data(), tables.num_seqs, q_heads,
                                  tables, cache, anchors, options, out, pool);
}

Status PagedFieldprintAttentionPrefill(const float* query, int32_t num_tokens,
                                       int32_t start_position, int32_t seq_id, int32_t q_heads,
                                       const BlockTables& tables, const PagedKvCache& cache,
                                       const AnchorSet& anchors, const AttentionOptions& options,
                                       float* out, ThreadPool& pool) {
  if (num_tokens < 0 || start_position < 0 ||
      int64_t{start_position} + num_tokens > std::numeric_limits<int32_t>::max()) {
    return InvalidArgumentError("attention: prefill num_tokens and start_position must be >= 0");
  }
  std::vector<int32_t> seq_ids(static_cast<size_t>(num_tokens), seq_id);
  std::vector<int32_t> positions(static_cast<size_t>(num_tokens));
  for (int32_t t = 0; t < num_tokens; ++t) positions[static_cast<size_t>(t)] = start_position + t;
  return PagedFieldprintAttention(query, seq_ids.data(), positions.data(), num_tokens, q_heads,
                                  tables, cache, anchors, options, out, pool);
}

Status WritePagedKv(const float* key, const float* value, const int32_t* seq_ids,
                    const int32_t* positions, int32_t num_tokens, const BlockTables& tables,
                    const PagedKvCache& cache, ThreadPool& pool) {
  if (num_tokens < 0) return InvalidArgumentError("write_kv: num_tokens is negative");
  FP_RETURN_IF_ERROR(ValidateCacheAndTables(tables, cache));
  if (num_tokens == 0) return OkStatus();
  if (key == nullptr || value == nullptr || seq_ids == nullptr || positions == nullptr) {
    return InvalidArgumentError("write_kv: null key, value, seq_ids or positions");
  }
  FP_RETURN_IF_ERROR(ValidateTokens(seq_ids, positions, num_tokens, tables, cache));
  const int64_t row = int64_t{cache.kv_heads} * cache.head_dim;
  pool.ParallelFor(num_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const PagedRows rows{cache.key,
                           cache.value,
                           tables.table + int64_t{seq_ids[t]} * tables.max_blocks_per_seq,
                           cache.block_size,
                           row,
                           0};
      const int64_t offset = rows.Offset(positions[t]);
      std::copy(key + t * row, key + (t + 1) * row, cache.key + offset);
      std::copy(value + t * row, value + (t + 1) * row, cache.value + offset);
    }
  });
  return OkStatus();
}

}  // namespace fp::kernels
