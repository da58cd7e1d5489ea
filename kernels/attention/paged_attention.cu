// The CUDA PagedFieldprintAttention kernels and launchers; the design and the determinism rules
// are in paged_attention_cuda.h. This file is compiled with --fmad=false (CMakeLists.txt): every
// floating-point operation on row values is the one written here, so the decode and prefill
// kernels, which inline the same device functions, perform the same rounded operations.
//
// Thread-safety: launchers are reentrant (no host state).
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <string>

#include <cuda_bf16.h>

#include "kernels/attention/paged_attention_cuda.h"
#include "kernels/base/cuda_status.h"

namespace fp::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kTile = kCudaAttentionKeyTile;
constexpr int kRowsPerWarp = 16;
constexpr int kPrefillStages = 2;
// Tile ring depth of the decode kernel: pipelining only, no effect on the bits.
constexpr int kDecodeStages = 2;
constexpr int kDecodeWarps = 1;
constexpr int kPrefillWarps = 4;
constexpr int kMaxTokensPerCta = kPrefillWarps * kRowsPerWarp;
constexpr int kCombineWarps = 4;
constexpr int kCombineBatch = 8;
constexpr int kWriteThreads = 256;
constexpr int32_t kMaxGridYZ = 65535;  // CUDA's limit on gridDim.y and gridDim.z
constexpr double kLog2e = 1.4426950408889634;

static_assert(kCudaAttentionSplit % kTile == 0, "splits are whole key tiles");
static_assert(kCudaAttentionMaxAnchors <= kCudaAttentionSplit, "the anchor path is one split");

struct Params {
  const bf16* query;            // token t's [q_heads, d] at query + t * query_stride
  long long query_stride;       // elements, a multiple of 8
  const int32_t* seq_ids;       // [num_tokens]; null in decode (token t is sequence t)
  const int32_t* positions;     // [num_tokens]; null in decode
  const int32_t* context_lens;  // [num_tokens] in decode
  int32_t num_tokens;
  int32_t q_heads;
  int32_t kv_heads;
  int32_t group;
  int32_t tokens_per_warp;
  const int32_t* table;
  int32_t num_seqs;
  int32_t max_blocks;
  const bf16* k_cache;
  const bf16* v_cache;
  int32_t num_blocks;
  int32_t block_size;
  const bf16* anchor_k;
  const bf16* anchor_v;
  const float* gamma;
  int32_t num_anchors;  // 0 in kPrefix mode
  float scale_log2;     // softmax_scale * log2(e), rounded once
  int32_t max_context;
  int32_t split;
  int32_t max_splits;
  bf16* out;
  float* partial_acc;  // [num_tokens, q_heads, max_splits, d] (decode)
  float* partial_ml;   // [num_tokens, q_heads, max_splits, 2] (decode)
  float* anchor_out;   // [num_tokens, q_heads, d] (decode)
};

// ---------------------------------------------------------------------------------------------
// Arithmetic shared by every kernel (the numerics of paged_attention_cuda.h).

__device__ __forceinline__ float Ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct MergeWeights {
  float max;
  float old_weight;
  float new_weight;
};

__device__ __forceinline__ MergeWeights Weights(float old_max, float new_max) {
  const float max = fmaxf(old_max, new_max);
  return {max, Ex2(__fsub_rn(old_max, max)), Ex2(__fsub_rn(new_max, max))};
}

__device__ __forceinline__ float Merge(float old_value, const MergeWeights& w, float new_value) {
  return __fadd_rn(__fmul_rn(old_value, w.old_weight), __fmul_rn(new_value, w.new_weight));
}

// o = acc / l, mixed with the anchor output; +0 added so an exact zero has one sign.
__device__ __forceinline__ float FinalValue(float acc, float sum, float anchor, float gamma,
                                            bool mix) {
  // A NaN sum marks a split that read an out-of-range block id: the row is NaN whatever gamma.
  if (isnan(sum)) return NAN;
  float o = __fdiv_rn(acc, sum);
  if (mix && gamma != 0.0f) {
    o = gamma == 1.0f ? anchor
                      : __fadd_rn(__fmul_rn(__fsub_rn(1.0f, gamma), o), __fmul_rn(gamma, anchor));
  }
  return __fadd_rn(o, 0.0f);
}

struct Token {
  int32_t seq;  // -1: padding or an out-of-range index (the row's output is NaN)
  int32_t pos;
};

__device__ __forceinline__ Token LoadToken(const Params& p, int32_t t) {
  int32_t seq;
  int32_t pos;
  if (p.seq_ids == nullptr) {
    seq = t;
    pos = p.context_lens[t] - 1;
  } else {
    seq = p.seq_ids[t];
    pos = p.positions[t];
  }
  const bool ok = seq >= 0 && seq < p.num_seqs && pos >= 0 && pos < p.max_context;
  return ok ? Token{seq, pos} : Token{-1, -1};
}

// ---------------------------------------------------------------------------------------------
// Tensor-core and copy primitives (sm_80 instructions, valid for the 90a and 80 PTX targets).

__device__ __forceinline__ void Mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void LdMatrix4(uint32_t r[4], const void* address, bool transpose) {
  const auto shared = static_cast<uint32_t>(__cvta_generic_to_shared(address));
  if (transpose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared));
  }
}

// 16 bytes global -> shared; zero-filled (and `global` not read) when !valid.
__device__ __forceinline__ void CopyAsync16(void* shared, const void* global, bool valid) {
  const auto destination = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(destination), "l"(global),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void CommitCopies() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// Waits until at most kPending of the most recent copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Element offset of row `row`, 16-byte chunk `chunk` in a [kTile, kD] tile (XOR swizzle).
template <int kD>
__device__ __forceinline__ int Swizzled(int row, int chunk) {
  return row * kD + ((chunk ^ (row & 7)) * 8);
}

// ---------------------------------------------------------------------------------------------
// The CTA: shared memory, row bookkeeping, the tile pipeline.

template <int kD, int kWarps, int kStages>
struct Shared {
  bf16 key[kStages][kTile * kD];
  bf16 value[kStages][kTile * kD];
  bf16 query[kWarps][kRowsPerWarp * kD];  // each warp's query rows, swizzled like the K/V tiles
  int32_t slot[kTile];  // the tile row being prefetched: cache slot (or anchor row); -1: zero-fill
  int32_t seq[kMaxTokensPerCta];
  int32_t pos[kMaxTokensPerCta];
  int32_t bad_pos;  // lowest key position whose block id was out of range in this pass
};

// A thread's view of its two rows (lane / 4 and lane / 4 + 8 of its warp's 16).
struct Rows {
  int32_t token[2];  // global token index; -1 for padding
  int32_t local[2];  // index into Shared::seq/pos; -1 for padding
  int32_t head[2];   // query head
  int32_t pos[2];    // -1 for padding or an invalid token
  bool poisoned[2];
};

// One pass over key tiles [key_begin, key_end) of one source (the cache of one sequence, or the
// anchors), feeding the warp's rows whose limit (last key they see) is >= the tile start.
template <int kD, int kWarps>
struct Pass {
  const bf16* key_base;
  const bf16* value_base;
  int32_t seq;  // -1 for the anchors
  int32_t key_begin;
  int32_t key_end;
};

template <int kD, int kWarps, int kStages>
__device__ void Prefetch(Shared<kD, kWarps, kStages>& sh, const Params& p,
                         const Pass<kD, kWarps>& pass, int kv_head, int tile, int stage) {
  const int tile_start = pass.key_begin + tile * kTile;
#pragma unroll 1
  for (int r = threadIdx.x; r < kTile; r += kWarps * 32) {
    const int key = tile_start + r;
    int32_t slot = -1;
    if (key < pass.key_end) {
      if (pass.seq < 0) {
        slot = key;
      } else {
        const int32_t block =
            p.table[static_cast<long long>(pass.seq) * p.max_blocks + key / p.block_size];
        if (block >= 0 && block < p.num_blocks) {
          slot = block * p.block_size + key % p.block_size;
        } else {
          atomicMin(&sh.bad_pos, key);
        }
      }
    }
    sh.slot[r] = slot;
  }
  __syncthreads();
  constexpr int kChunks = kD / 8;
#pragma unroll 4
  for (int c = threadIdx.x; c < kTile * kChunks; c += kWarps * 32) {
    const int row = c / kChunks;
    const int chunk = c % kChunks;
    const int32_t slot = sh.slot[row];
    const bool valid = slot >= 0;
    const long long source =
        valid ? (static_cast<long long>(slot) * p.kv_heads + kv_head) * kD + chunk * 8 : 0;
    CopyAsync16(&sh.key[stage][Swizzled<kD>(row, chunk)], pass.key_base + source, valid);
    CopyAsync16(&sh.value[stage][Swizzled<kD>(row, chunk)], pass.value_base + source, valid);
  }
}

// The online-softmax state of a warp's 16 rows, in mma fragment layout.
template <int kD>
struct State {
  float max[2];
  float sum[2];
  float acc[kD / 8][4];

  __device__ __forceinline__ void Reset() {
    max[0] = max[1] = -INFINITY;
    sum[0] = sum[1] = 0.0f;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
  }
};

// One key tile for the warp's rows; limit[h]: last key position row h sees (-1: none).
template <int kD>
__device__ __forceinline__ void ComputeTile(const bf16* key_tile, const bf16* value_tile,
                                            const bf16* query_tile, int tile_start,
                                            const int (&limit)[2], float scale_log2,
                                            State<kD>& st) {
  const int lane = threadIdx.x % 32;
  const int quad = lane % 4;
  float s[kTile / 8][4];
#pragma unroll
  for (int n = 0; n < kTile / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kD / 32; ++kk) {
    uint32_t q[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
      LdMatrix4(q[i], query_tile + Swizzled<kD>(row, 4 * kk + 2 * i + (lane >> 4)), false);
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n) {
      const int row = n * 8 + (lane & 7);
      uint32_t b[4];
      LdMatrix4(b, key_tile + Swizzled<kD>(row, 4 * kk + (lane >> 3)), false);
      Mma(s[n], q[0], b[0], b[1]);
      Mma(s[n], q[1], b[2], b[3]);
    }
  }
  bool active[2];
  float new_max[2];
  float alpha[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    active[h] = tile_start <= limit[h];
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = tile_start + n * 8 + quad * 2 + e;
        const float x = key <= limit[h] ? __fmul_rn(s[n][2 * h + e], scale_log2) : -INFINITY;
        s[n][2 * h + e] = x;
        tile_max = fmaxf(tile_max, x);
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    new_max[h] = active[h] ? fmaxf(st.max[h], tile_max) : 0.0f;
    alpha[h] = Ex2(__fsub_rn(st.max[h], new_max[h]));
  }
  uint32_t pa[kTile / 16][4];
  float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < kTile / 8; ++n) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float p0 = Ex2(__fsub_rn(s[n][2 * h], new_max[h]));
      const float p1 = Ex2(__fsub_rn(s[n][2 * h + 1], new_max[h]));
      row_sum[h] = __fadd_rn(row_sum[h], __fadd_rn(p0, p1));
      pa[n / 2][(n % 2) * 2 + h] = PackBf16(p0, p1);
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] = __fadd_rn(row_sum[h], __shfl_xor_sync(0xffffffffu, row_sum[h], 1));
    row_sum[h] = __fadd_rn(row_sum[h], __shfl_xor_sync(0xffffffffu, row_sum[h], 2));
    if (active[h]) {
      st.sum[h] = __fmaf_rn(st.sum[h], alpha[h], row_sum[h]);
      st.max[h] = new_max[h];
    }
  }
#pragma unroll
  for (int dg = 0; dg < kD / 32; ++dg) {
    float t[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) t[i][0] = t[i][1] = t[i][2] = t[i][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j) {
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        const int row = 16 * j + (lane & 7) + ((lane >> 3) & 1) * 8;
        uint32_t b[4];
        LdMatrix4(b, value_tile + Swizzled<kD>(row, 4 * dg + 2 * pair + (lane >> 4)), true);
        Mma(t[2 * pair], pa[j], b[0], b[1]);
        Mma(t[2 * pair + 1], pa[j], b[2], b[3]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2;
        float& a = st.acc[4 * dg + i][e];
        a = active[h] ? __fmaf_rn(a, alpha[h], t[i][e]) : a;
      }
    }
  }
}

// Runs `pass` through the tile ring for this warp's rows. At the end of each split (and of the
// pass) calls flush(split_index) with the state of that split.
template <int kD, int kWarps, int kStages, typename Flush>
__device__ void RunPass(Shared<kD, kWarps, kStages>& sh, const Params& p,
                        const Pass<kD, kWarps>& pass, int kv_head, const int (&limit)[2], int split,
                        State<kD>& st, Flush flush) {
  if (pass.key_begin >= pass.key_end) return;
  int warp_limit = max(limit[0], limit[1]);
  warp_limit = max(warp_limit, __shfl_xor_sync(0xffffffffu, warp_limit, 4));
  warp_limit = max(warp_limit, __shfl_xor_sync(0xffffffffu, warp_limit, 8));
  warp_limit = max(warp_limit, __shfl_xor_sync(0xffffffffu, warp_limit, 16));
  const int tiles = (pass.key_end - pass.key_begin + kTile - 1) / kTile;
  // Up to kStages - 1 tiles in flight ahead of the one being computed.
#pragma unroll 1
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < tiles) Prefetch(sh, p, pass, kv_head, j, j);
    CommitCopies();
    __syncthreads();  // sh.slot is rewritten by the next Prefetch
  }
  for (int i = 0; i < tiles; ++i) {
    const int tile_start = pass.key_begin + i * kTile;
    if (tile_start % split == 0) st.Reset();
    const int ahead = i + kStages - 1;
    if (ahead < tiles) Prefetch(sh, p, pass, kv_head, ahead, ahead % kStages);
    CommitCopies();
    WaitCopies<kStages - 1>();
    __syncthreads();
    if (tile_start <= warp_limit) {
      ComputeTile<kD>(sh.key[i % kStages], sh.value[i % kStages], sh.query[threadIdx.x / 32],
                      tile_start, limit, p.scale_log2, st);
    }
    if ((tile_start + kTile) % split == 0 || i + 1 == tiles) flush(tile_start / split);
    __syncthreads();
  }
}

// Stores the warp's 16 query rows into its shared tile (zeros for padding and invalid rows).
template <int kD>
__device__ __forceinline__ void LoadQuery(const Params& p, const Rows& rows, bf16* tile) {
  const int quad = threadIdx.x % 4;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = lane / 4 + 8 * h;
    const uint32_t* source =
        rows.pos[h] >= 0 ? reinterpret_cast<const uint32_t*>(
                               p.query + static_cast<long long>(rows.token[h]) * p.query_stride +
                               rows.head[h] * kD)
                         : nullptr;
#pragma unroll
    for (int w = quad; w < kD / 2; w += 4) {
      const uint32_t word = source != nullptr ? source[w] : 0u;
      *reinterpret_cast<uint32_t*>(tile + Swizzled<kD>(row, w / 4) + (w % 4) * 2) = word;
    }
  }
  __syncwarp();
}

template <int kD, int kWarps, int kStages>
__device__ Rows LoadRows(Shared<kD, kWarps, kStages>& sh, const Params& p, int kv_head,
                         int first_token) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int tokens_per_cta = kWarps * p.tokens_per_warp;
  for (int i = threadIdx.x; i < tokens_per_cta; i += kWarps * 32) {
    const int t = first_token + i;
    const Token token = t < p.num_tokens ? LoadToken(p, t) : Token{-1, -1};
    sh.seq[i] = token.seq;
    sh.pos[i] = token.pos;
  }
  __syncthreads();
  Rows rows;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = lane / 4 + 8 * h;
    const int in_warp = r / p.group;
    const int local = warp * p.tokens_per_warp + in_warp;
    const bool present = in_warp < p.tokens_per_warp && first_token + local < p.num_tokens;
    rows.token[h] = present ? first_token + local : -1;
    rows.local[h] = present ? local : -1;
    rows.head[h] = kv_head * p.group + r % p.group;
    rows.pos[h] = present ? sh.pos[local] : -1;
    rows.poisoned[h] = false;
  }
  return rows;
}

// True for the whole CTA when some valid row of it has gamma != 0 (the anchor path is needed).
__device__ __forceinline__ bool NeedAnchors(const Params& p, const Rows& rows) {
  bool need = false;
  if (p.num_anchors > 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) need = need || (rows.pos[h] >= 0 && p.gamma[rows.head[h]] != 0.0f);
  }
  return __syncthreads_or(need) != 0;
}

// Finds the next run of consecutive tokens of one sequence at or after `next` (CTA-uniform).
struct Run {
  int first;
  int last;
  int seq;
  int max_pos;
};

template <int kD, int kWarps, int kStages>
__device__ __forceinline__ bool NextRun(const Shared<kD, kWarps, kStages>& sh, int tokens,
                                        int& next, Run& run) {
  int first = next;
  while (first < tokens && sh.seq[first] < 0) ++first;
  if (first >= tokens) return false;
  run = {first, first, sh.seq[first], sh.pos[first]};
  while (run.last + 1 < tokens && sh.seq[run.last + 1] == run.seq) {
    ++run.last;
    run.max_pos = max(run.max_pos, sh.pos[run.last]);
  }
  next = run.last + 1;
  return true;
}

// The pass sequence of a CTA: the anchor pass (when `anchors_first`), then one pass per run of
// tokens of one sequence over keys [key_begin, min(key_end, last position + 1)), then the anchor
// pass (when !anchors_first). Returns false when done. CTA-uniform. Sets each row's limit: the
// last key it sees in this pass, -1 when it takes no part.
template <int kD, int kWarps, int kStages>
__device__ __forceinline__ bool NextPass(Shared<kD, kWarps, kStages>& sh, const Params& p,
                                         const Rows& rows, int key_begin, int key_end,
                                         bool anchors_first, int& next, bool& anchors_pending,
                                         Pass<kD, kWarps>& pass, int (&limit)[2]) {
  Run run;
  const bool have_run =
      !(anchors_pending && anchors_first) && NextRun(sh, kWarps * p.tokens_per_warp, next, run);
  if (!have_run) {
    if (!anchors_pending) return false;
    anchors_pending = false;
    pass = {p.anchor_k, p.anchor_v, -1, 0, p.num_anchors};
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = rows.pos[h] >= 0 ? p.num_anchors - 1 : -1;
    return true;
  }
  if (threadIdx.x == 0) sh.bad_pos = INT_MAX;
  __syncthreads();
  pass = {p.k_cache, p.v_cache, run.seq, key_begin, min(key_end, run.max_pos + 1)};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const bool in_run = rows.local[h] >= run.first && rows.local[h] <= run.last;
    limit[h] = in_run ? rows.pos[h] : -1;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Decode: one warp per (sequence, kv head, split); split states to the workspace.

template <int kD, int kStages>
__global__ void __launch_bounds__(kDecodeWarps * 32, 1)
    DecodeSplitKernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char raw_shared[];
  auto& sh = *reinterpret_cast<Shared<kD, kDecodeWarps, kStages>*>(raw_shared);
  // kv head fastest: the CTAs of all kv heads of one (sequence, split) run together and read
  // their interleaved rows of each cache slot from the same DRAM pages.
  const int kv_head = blockIdx.x;
  const int split_index = blockIdx.z;
  const int first_token = blockIdx.y * kDecodeWarps * p.tokens_per_warp;
  Rows rows = LoadRows(sh, p, kv_head, first_token);
  LoadQuery<kD>(p, rows, sh.query[threadIdx.x / 32]);
  const int quad = threadIdx.x % 4;
  State<kD> st;
  const int key_begin = split_index * p.split;
  bool anchors_pending = split_index == 0 && NeedAnchors(p, rows);
  int next = 0;
  Pass<kD, kDecodeWarps> pass;  // NOLINT
  int limit[2];
  while (NextPass(sh, p, rows, key_begin, key_begin + p.split, true, next, anchors_pending, pass,
                  limit)) {
    const bool anchor_pass = pass.seq < 0;
    RunPass(sh, p, pass, kv_head, limit, anchor_pass ? kCudaAttentionSplit : p.split, st,
            [&](int split) {
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                if (limit[h] < split * p.split || limit[h] < 0) continue;
                const long long row =
                    static_cast<long long>(rows.token[h]) * p.q_heads + rows.head[h];
                if (anchor_pass) {
                  float* out = p.anchor_out + row * kD;
#pragma unroll
                  for (int c = 0; c < kD / 8; ++c) {
                    *reinterpret_cast<float2*>(out + c * 8 + quad * 2) =
                        make_float2(__fdiv_rn(st.acc[c][2 * h], st.sum[h]),
                                    __fdiv_rn(st.acc[c][2 * h + 1], st.sum[h]));
                  }
                  continue;
                }
                const bool poisoned = sh.bad_pos <= limit[h];
                const long long slot = row * p.max_splits + split;
                float* acc = p.partial_acc + slot * kD;
#pragma unroll
                for (int c = 0; c < kD / 8; ++c) {
                  *reinterpret_cast<float2*>(acc + c * 8 + quad * 2) =
                      make_float2(st.acc[c][2 * h], st.acc[c][2 * h + 1]);
                }
                if (quad == 0) {
                  *reinterpret_cast<float2*>(p.partial_ml + slot * 2) =
                      make_float2(st.max[h], poisoned ? NAN : st.sum[h]);
                }
              }
            });
  }
}

// Merges each row's split states in split order and writes the mixed output.
template <int kD>
__global__ void __launch_bounds__(kCombineWarps * 32)
    CombineKernel(const __grid_constant__ Params p) {
  constexpr int kPerLane = kD / 32;
  const int lane = threadIdx.x % 32;
  const long long row = static_cast<long long>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= static_cast<long long>(p.num_tokens) * p.q_heads) return;
  const int t = static_cast<int>(row / p.q_heads);
  const int head = static_cast<int>(row % p.q_heads);
  const Token token = LoadToken(p, t);
  bf16* out = p.out + row * kD + lane * kPerLane;
  if (token.seq < 0) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) out[i] = __float2bfloat16_rn(NAN);
    return;
  }
  const int splits = token.pos / p.split + 1;
  float acc[kPerLane];
  float max = 0.0f;
  float sum = 0.0f;
  // Loads kCombineBatch splits before merging them (in order) so the loads overlap.
  for (int first = 0; first < splits; first += kCombineBatch) {
    float2 ml[kCombineBatch];
    float value[kCombineBatch][kPerLane];
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      if (first + b >= splits) break;
      const long long slot = row * p.max_splits + first + b;
      ml[b] = *reinterpret_cast<const float2*>(p.partial_ml + slot * 2);
      const float* part = p.partial_acc + slot * kD + lane * kPerLane;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) value[b][i] = part[i];
    }
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      if (first + b >= splits) break;
      if (first + b == 0) {
        max = ml[b].x;
        sum = ml[b].y;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[i] = value[b][i];
        continue;
      }
      const MergeWeights w = Weights(max, ml[b].x);
      sum = Merge(sum, w, ml[b].y);
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[i] = Merge(acc[i], w, value[b][i]);
      max = w.max;
    }
  }
  const bool mix = p.num_anchors > 0;
  const float gamma = mix ? p.gamma[head] : 0.0f;
  const float* anchor = p.anchor_out + row * kD + lane * kPerLane;
#pragma unroll
  for (int i = 0; i < kPerLane; i += 2) {
    const float a0 = mix && gamma != 0.0f ? anchor[i] : 0.0f;
    const float a1 = mix && gamma != 0.0f ? anchor[i + 1] : 0.0f;
    *reinterpret_cast<__nv_bfloat162*>(out + i) = __floats2bfloat162_rn(
        FinalValue(acc[i], sum, a0, gamma, mix), FinalValue(acc[i + 1], sum, a1, gamma, mix));
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill: 4 warps per (token tile, kv head) share K/V tiles; splits merged into shared memory.

template <int kD>
struct PrefillShared {
  Shared<kD, kPrefillWarps, kPrefillStages> ring;
  float4 park[kPrefillWarps][kD / 8][32];  // merged KV state, fragment layout
};

template <int kD>
__global__ void __launch_bounds__(kPrefillWarps * 32, 1)
    PrefillKernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char raw_shared[];
  auto& all = *reinterpret_cast<PrefillShared<kD>*>(raw_shared);
  auto& sh = all.ring;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane % 4;
  const int kv_head = blockIdx.y;
  // Longest (latest) token tiles first: the causal work grows with the position.
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int first_token = tile * kPrefillWarps * p.tokens_per_warp;
  Rows rows = LoadRows(sh, p, kv_head, first_token);
  LoadQuery<kD>(p, rows, sh.query[threadIdx.x / 32]);
  float merged_max[2] = {0.0f, 0.0f};
  float merged_sum[2] = {0.0f, 0.0f};
  State<kD> st;
  bool anchors_pending = NeedAnchors(p, rows);
  int next = 0;
  Pass<kD, kPrefillWarps> pass;
  int limit[2];
  while (NextPass(sh, p, rows, 0, INT_MAX, false, next, anchors_pending, pass, limit)) {
    const bool anchor_pass = pass.seq < 0;
    RunPass(sh, p, pass, kv_head, limit, p.split, st, [&](int split) {
      if (anchor_pass) return;  // its state stays in `st` for the epilogue
      bool flush[2];
      MergeWeights w[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        flush[h] = limit[h] >= split * p.split;
        if (flush[h] && sh.bad_pos <= limit[h]) rows.poisoned[h] = true;
        w[h] = Weights(merged_max[h], st.max[h]);
        if (flush[h]) {
          merged_sum[h] = split == 0 ? st.sum[h] : Merge(merged_sum[h], w[h], st.sum[h]);
          merged_max[h] = split == 0 ? st.max[h] : w[h].max;
        }
      }
#pragma unroll
      for (int c = 0; c < kD / 8; ++c) {
        float4& slot = all.park[warp][c][lane];
        float v[4] = {slot.x, slot.y, slot.z, slot.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          if (flush[h]) v[e] = split == 0 ? st.acc[c][e] : Merge(v[e], w[h], st.acc[c][e]);
        }
        slot = make_float4(v[0], v[1], v[2], v[3]);
      }
    });
  }
  const bool mix = p.num_anchors > 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (rows.token[h] < 0) continue;
    bf16* out = p.out + (static_cast<long long>(rows.token[h]) * p.q_heads + rows.head[h]) * kD;
    const bool nan = rows.pos[h] < 0 || rows.poisoned[h];
    const float gamma = mix ? p.gamma[rows.head[h]] : 0.0f;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      const float4 slot = all.park[warp][c][lane];
      const float acc0 = h == 0 ? slot.x : slot.z;
      const float acc1 = h == 0 ? slot.y : slot.w;
      // The anchor output, exactly as the decode path parks it: acc / l.
      const bool anchor = mix && gamma != 0.0f;
      const float a0 = anchor ? __fdiv_rn(st.acc[c][2 * h], st.sum[h]) : 0.0f;
      const float a1 = anchor ? __fdiv_rn(st.acc[c][2 * h + 1], st.sum[h]) : 0.0f;
      const float o0 = nan ? NAN : FinalValue(acc0, merged_sum[h], a0, gamma, mix);
      const float o1 = nan ? NAN : FinalValue(acc1, merged_sum[h], a1, gamma, mix);
      *reinterpret_cast<__nv_bfloat162*>(out + c * 8 + quad * 2) = __floats2bfloat162_rn(o0, o1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KV write: one thread per 16-byte chunk of a token's K (and the same chunk of V). Source rows
// are key_stride / value_stride chunks apart.

__global__ void __launch_bounds__(kWriteThreads)
    WriteKvKernel(const uint4* key, long long key_stride, const uint4* value,
                  long long value_stride, const int32_t* seq_ids, const int32_t* positions,
                  int32_t num_tokens, int32_t chunks_per_token, const int32_t* table,
                  int32_t num_seqs, int32_t max_blocks, int32_t num_blocks, int32_t block_size,
                  uint4* key_cache, uint4* value_cache) {
  const long long i = static_cast<long long>(blockIdx.x) * kWriteThreads + threadIdx.x;
  if (i >= static_cast<long long>(num_tokens) * chunks_per_token) return;
  const int t = static_cast<int>(i / chunks_per_token);
  const int chunk = static_cast<int>(i % chunks_per_token);
  const int32_t seq = seq_ids[t];
  const int32_t pos = positions[t];
  if (seq < 0 || seq >= num_seqs || pos < 0 ||
      static_cast<long long>(pos) >= static_cast<long long>(max_blocks) * block_size) {
    return;
  }
  const int32_t block = table[static_cast<long long>(seq) * max_blocks + pos / block_size];
  if (block < 0 || block >= num_blocks) return;
  const long long slot = static_cast<long long>(block) * block_size + pos % block_size;
  key_cache[slot * chunks_per_token + chunk] = key[t * key_stride + chunk];
  value_cache[slot * chunks_per_token + chunk] = value[t * value_stride + chunk];
}

// ---------------------------------------------------------------------------------------------
// Host side.

bool Aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

int32_t SplitsFor(int32_t max_context, int32_t split) { return (max_context + split - 1) / split; }

// A row stride in elements: at least the row's width, whole 16-byte units (every row keeps the
// base's alignment for the vector loads), bounded.
Status ValidateStride(const char* what, int64_t stride, int64_t width) {
  if (stride < width || stride % 8 != 0 || stride > kCudaAttentionMaxRowStride) {
    return InvalidArgumentError(std::string(what) + " " + std::to_string(stride) +
                                " must be a multiple of 8 in [" + std::to_string(width) + ", " +
                                std::to_string(kCudaAttentionMaxRowStride) + "]");
  }
  return OkStatus();
}

Status ValidateCache(const CudaBlockTables& tables, const CudaPagedKvCache& cache) {
  if (cache.key == nullptr || cache.value == nullptr || !Aligned16(cache.key) ||
      !Aligned16(cache.value)) {
    return InvalidArgumentError("attention (cuda): cache key/value null or not 16-byte aligned");
  }
  if (cache.head_dim != 64 && cache.head_dim != 128) {
    return InvalidArgumentError("attention (cuda): head_dim " + std::to_string(cache.head_dim) +
                                " is not 64 or 128");
  }
  if (cache.num_blocks < 1 || cache.block_size < 1 || cache.block_size > kAttentionMaxBlockSize) {
    return InvalidArgumentError("attention (cuda): num_blocks must be >= 1 and block_size in [1, " +
                                std::to_string(kAttentionMaxBlockSize) + "]");
  }
  if (static_cast<long long>(cache.num_blocks) * cache.block_size > INT_MAX) {
    return InvalidArgumentError("attention (cuda): num_blocks * block_size exceeds 2^31 - 1");
  }
  if (cache.kv_heads < 1 || cache.kv_heads > kAttentionMaxHeads) {
    return InvalidArgumentError("attention (cuda): kv_heads " + std::to_string(cache.kv_heads) +
                                " is outside [1, " + std::to_string(kAttentionMaxHeads) + "]");
  }
  if (tables.table == nullptr || tables.num_seqs < 1 || tables.max_blocks_per_seq < 1) {
    return InvalidArgumentError(
        "attention (cuda): block tables need a table, num_seqs >= 1 and max_blocks_per_seq >= 1");
  }
  return OkStatus();
}

Status ValidateCall(const void* query, int64_t query_stride, int32_t num_tokens,
                    int32_t max_context, int32_t q_heads, const CudaBlockTables& tables,
                    const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
                    const AttentionOptions& options, const void* out) {
  FP_RETURN_IF_ERROR(ValidateCache(tables, cache));
  if (num_tokens < 0 || num_tokens > kCudaAttentionMaxTokens) {
    return InvalidArgumentError("attention (cuda): num_tokens " + std::to_string(num_tokens) +
                                " is outside [0, " + std::to_string(kCudaAttentionMaxTokens) + "]");
  }
  if (q_heads < 1 || q_heads > kAttentionMaxHeads || q_heads % cache.kv_heads != 0 ||
      q_heads / cache.kv_heads > kCudaAttentionMaxGroup) {
    return InvalidArgumentError("attention (cuda): q_heads " + std::to_string(q_heads) +
                                " must be a multiple of kv_heads " +
                                std::to_string(cache.kv_heads) + " with a group of at most " +
                                std::to_string(kCudaAttentionMaxGroup));
  }
  FP_RETURN_IF_ERROR(ValidateStride("attention (cuda): query_stride", query_stride,
                                    int64_t{q_heads} * cache.head_dim));
  const long long capacity = static_cast<long long>(tables.max_blocks_per_seq) * cache.block_size;
  if (max_context < 1 || max_context > kCudaAttentionMaxContext || max_context > capacity) {
    return InvalidArgumentError("attention (cuda): max_context " + std::to_string(max_context) +
                                " is outside [1, min(" + std::to_string(kCudaAttentionMaxContext) +
                                ", table capacity " + std::to_string(capacity) + ")]");
  }
  if (!std::isfinite(options.softmax_scale)) {
    return InvalidArgumentError("attention (cuda): softmax_scale is not finite");
  }
  if (options.mode == AttentionMode::kPrefix) {
    if (anchors.num_anchors != 0) {
      return InvalidArgumentError("attention (cuda): prefix mode takes no anchors");
    }
  } else if (options.mode == AttentionMode::kMix) {
    if (anchors.num_anchors < 1 || anchors.num_anchors > kCudaAttentionMaxAnchors) {
      return InvalidArgumentError("attention (cuda): mix mode needs num_anchors in [1, " +
                                  std::to_string(kCudaAttentionMaxAnchors) + "]");
    }
    if (anchors.key == nullptr || anchors.value == nullptr || anchors.gamma == nullptr ||
        !Aligned16(anchors.key) || !Aligned16(anchors.value)) {
      return InvalidArgumentError(
          "attention (cuda): mix mode needs 16-byte aligned anchor key/value and a gamma");
    }
  } else {
    return InvalidArgumentError("attention (cuda): unknown mode");
  }
  if (num_tokens > 0 && (query == nullptr || out == nullptr || !Aligned16(query) ||
                         reinterpret_cast<uintptr_t>(out) % 4 != 0)) {
    return InvalidArgumentError("attention (cuda): query (16-byte) or out (4-byte) misaligned");
  }
  return OkStatus();
}

Params BaseParams(const void* query, int64_t query_stride, int32_t num_tokens, int32_t max_context,
                  int32_t q_heads, const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                  const CudaAnchorSet& anchors, const AttentionOptions& options, void* out) {
  Params p{};
  p.query = static_cast<const bf16*>(query);
  p.query_stride = query_stride;
  p.num_tokens = num_tokens;
  p.q_heads = q_heads;
  p.kv_heads = cache.kv_heads;
  p.group = q_heads / cache.kv_heads;
  p.table = tables.table;
  p.num_seqs = tables.num_seqs;
  p.max_blocks = tables.max_blocks_per_seq;
  p.k_cache = static_cast<const bf16*>(cache.key);
  p.v_cache = static_cast<const bf16*>(cache.value);
  p.num_blocks = cache.num_blocks;
  p.block_size = cache.block_size;
  const bool mix = options.mode == AttentionMode::kMix;
  p.anchor_k = mix ? static_cast<const bf16*>(anchors.key) : nullptr;
  p.anchor_v = mix ? static_cast<const bf16*>(anchors.value) : nullptr;
  p.gamma = mix ? anchors.gamma : nullptr;
  p.num_anchors = mix ? anchors.num_anchors : 0;
  p.scale_log2 = static_cast<float>(static_cast<double>(options.softmax_scale) * kLog2e);
  p.max_context = max_context;
  p.out = static_cast<bf16*>(out);
  return p;
}

// Kernel attributes are per device and need setting once: the launch path then costs no extra
// driver calls (which would show as idle GPU time between short launches). One bit per device
// (devices beyond kMaxTrackedDevices are set every time); setting twice is harmless, so the race
// between two first launches is benign.
constexpr int kMaxTrackedDevices = 32;

template <int kD, int kStages>
std::atomic<uint32_t>& DecodeReady() {
  static std::atomic<uint32_t> devices{0};
  return devices;
}

template <int kD>
std::atomic<uint32_t>& PrefillReady() {
  static std::atomic<uint32_t> devices{0};
  return devices;
}

// Up to `shared` bytes of dynamic shared memory and the full carve-out (two prefill CTAs or three
// decode CTAs per multiprocessor need it).
template <typename Kernel>
Status PrepareKernel(Kernel kernel, size_t shared, std::atomic<uint32_t>& ready) {
  int device = 0;
  FP_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  const uint32_t bit = device < kMaxTrackedDevices ? 1u << device : 0u;
  if (bit != 0 && (ready.load(std::memory_order_acquire) & bit) != 0) return OkStatus();
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared)),
                 "attention kernel shared memory"));
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared),
                 "attention kernel carve-out"));
  ready.fetch_or(bit, std::memory_order_release);
  return OkStatus();
}

template <int kD, int kStages>
Status LaunchDecode(const Params& p, cudaStream_t stream) {
  const size_t shared = sizeof(Shared<kD, kDecodeWarps, kStages>);
  FP_RETURN_IF_ERROR(
      PrepareKernel(DecodeSplitKernel<kD, kStages>, shared, DecodeReady<kD, kStages>()));
  const dim3 grid(static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(p.num_tokens),
                  static_cast<unsigned>(p.max_splits));
  DecodeSplitKernel<kD, kStages><<<grid, kDecodeWarps * 32, shared, stream>>>(p);
  FP_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "DecodeSplitKernel launch"));
  const long long rows = static_cast<long long>(p.num_tokens) * p.q_heads;
  CombineKernel<kD><<<static_cast<unsigned>((rows + kCombineWarps - 1) / kCombineWarps),
                      kCombineWarps * 32, 0, stream>>>(p);
  return CudaStatus(cudaGetLastError(), "CombineKernel launch");
}

template <int kD>
Status LaunchPrefill(const Params& p, cudaStream_t stream) {
  const size_t shared = sizeof(PrefillShared<kD>);
  FP_RETURN_IF_ERROR(PrepareKernel(PrefillKernel<kD>, shared, PrefillReady<kD>()));
  const int tokens_per_cta = kPrefillWarps * p.tokens_per_warp;
  const dim3 grid(static_cast<unsigned>((p.num_tokens + tokens_per_cta - 1) / tokens_per_cta),
                  static_cast<unsigned>(p.kv_heads));
  PrefillKernel<kD><<<grid, kPrefillWarps * 32, shared, stream>>>(p);
  return CudaStatus(cudaGetLastError(), "PrefillKernel launch");
}

size_t WorkspaceBytes(int32_t num_seqs, int32_t q_heads, int32_t head_dim, int32_t max_context,
                      int32_t split) {
  if (num_seqs < 1 || q_heads < 1 || head_dim < 1 || max_context < 1 || split < 1) return 0;
  const size_t rows = static_cast<size_t>(num_seqs) * static_cast<size_t>(q_heads);
  const size_t splits = static_cast<size_t>(SplitsFor(max_context, split));
  const size_t d = static_cast<size_t>(head_dim);
  return (rows * splits * (d + 2) + rows * d) * sizeof(float);
}

Status DecodeImpl(const void* query, int64_t query_stride, const int32_t* context_lens,
                  int32_t max_context, int32_t q_heads, const CudaBlockTables& tables,
                  const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
                  const AttentionOptions& options, int32_t split, int32_t stages, void* workspace,
                  size_t workspace_bytes, void* out, cudaStream_t stream) {
  FP_RETURN_IF_ERROR(ValidateCall(query, query_stride, tables.num_seqs, max_context, q_heads,
                                  tables, cache, anchors, options, out));
  if (context_lens == nullptr) return InvalidArgumentError("attention (cuda): context_lens null");
  if (split < kTile || split % kTile != 0) {
    return InvalidArgumentError("attention (cuda): split must be a positive multiple of 64");
  }
  if (stages != 2 && stages != 3) {
    return InvalidArgumentError("attention (cuda): decode stages must be 2 or 3");
  }
  const size_t needed =
      WorkspaceBytes(tables.num_seqs, q_heads, cache.head_dim, max_context, split);
  if (workspace == nullptr || !Aligned16(workspace) || workspace_bytes < needed) {
    return InvalidArgumentError("attention (cuda): decode needs a 16-byte aligned workspace of " +
                                std::to_string(needed) + " bytes, got " +
                                std::to_string(workspace_bytes));
  }
  if (SplitsFor(max_context, split) > kMaxGridYZ || tables.num_seqs > kMaxGridYZ) {
    return InvalidArgumentError("attention (cuda): decode takes at most " +
                                std::to_string(kMaxGridYZ) + " sequences and splits");
  }
  Params p = BaseParams(query, query_stride, tables.num_seqs, max_context, q_heads, tables, cache,
                        anchors, options, out);
  p.context_lens = context_lens;
  p.tokens_per_warp = 1;
  p.split = split;
  p.max_splits = SplitsFor(max_context, split);
  const size_t rows = static_cast<size_t>(tables.num_seqs) * static_cast<size_t>(q_heads);
  const size_t d = static_cast<size_t>(cache.head_dim);
  p.partial_acc = static_cast<float*>(workspace);
  p.partial_ml = p.partial_acc + rows * static_cast<size_t>(p.max_splits) * d;
  p.anchor_out = p.partial_ml + rows * static_cast<size_t>(p.max_splits) * 2;
  if (stages == 3) {
    return cache.head_dim == 64 ? LaunchDecode<64, 3>(p, stream) : LaunchDecode<128, 3>(p, stream);
  }
  return cache.head_dim == 64 ? LaunchDecode<64, 2>(p, stream) : LaunchDecode<128, 2>(p, stream);
}

}  // namespace

size_t PagedAttentionDecodeWorkspaceBytes(int32_t num_seqs, int32_t q_heads, int32_t head_dim,
                                          int32_t max_context) {
  return WorkspaceBytes(num_seqs, q_heads, head_dim, max_context, kCudaAttentionSplit);
}

Status LaunchPagedAttentionDecodeCuda(const void* query, int64_t query_stride,
                                      const int32_t* context_lens, int32_t max_context,
                                      int32_t q_heads, const CudaBlockTables& tables,
                                      const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
                                      const AttentionOptions& options, void* workspace,
                                      size_t workspace_bytes, void* out, cudaStream_t stream) {
  return DecodeImpl(query, query_stride, context_lens, max_context, q_heads, tables, cache, anchors,
                    options, kCudaAttentionSplit, kDecodeStages, workspace, workspace_bytes, out,
                    stream);
}

Status LaunchPagedAttentionDecodeCuda(const void* query, const int32_t* context_lens,
                                      int32_t max_context, int32_t q_heads,
                                      const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                      const CudaAnchorSet& anchors, const AttentionOptions& options,
                                      void* workspace, size_t workspace_bytes, void* out,
                                      cudaStream_t stream) {
  return LaunchPagedAttentionDecodeCuda(query, int64_t{q_heads} * cache.head_dim, context_lens,
                                        max_context, q_heads, tables, cache, anchors, options,
                                        workspace, workspace_bytes, out, stream);
}

Status LaunchPagedAttentionPrefillCuda(const void* query, int64_t query_stride,
                                       const int32_t* seq_ids, const int32_t* positions,
                                       int32_t num_tokens, int32_t max_context, int32_t q_heads,
                                       const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                       const CudaAnchorSet& anchors,
                                       const AttentionOptions& options, void* out,
                                       cudaStream_t stream) {
  FP_RETURN_IF_ERROR(ValidateCall(query, query_stride, num_tokens, max_context, q_heads, tables,
                                  cache, anchors, options, out));
  if (num_tokens == 0) return OkStatus();
  if (seq_ids == nullptr || positions == nullptr) {
    return InvalidArgumentError("attention (cuda): seq_ids or positions null");
  }
  Params p = BaseParams(query, query_stride, num_tokens, max_context, q_heads, tables, cache,
                        anchors, options, out);
  p.seq_ids = seq_ids;
  p.positions = positions;
  p.tokens_per_warp = kRowsPerWarp / p.group;
  p.split = kCudaAttentionSplit;
  p.max_splits = SplitsFor(max_context, kCudaAttentionSplit);
  return cache.head_dim == 64 ? LaunchPrefill<64>(p, stream) : LaunchPrefill<128>(p, stream);
}

Status LaunchPagedAttentionPrefillCuda(const void* query, const int32_t* seq_ids,
                                       const int32_t* positions, int32_t num_tokens,
                                       int32_t max_context, int32_t q_heads,
                                       const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                                       const CudaAnchorSet& anchors,
                                       const AttentionOptions& options, void* out,
                                       cudaStream_t stream) {
  return LaunchPagedAttentionPrefillCuda(query, int64_t{q_heads} * cache.head_dim, seq_ids,
                                         positions, num_tokens, max_context, q_heads, tables, cache,
                                         anchors, options, out, stream);
}

Status LaunchWritePagedKvCuda(const void* key, int64_t key_stride, const void* value,
                              int64_t value_stride, const int32_t* seq_ids,
                              const int32_t* positions, int32_t num_tokens,
                              const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                              cudaStream_t stream) {
  FP_RETURN_IF_ERROR(ValidateCache(tables, cache));
  if (num_tokens < 0 || num_tokens > kCudaAttentionMaxTokens) {
    return InvalidArgumentError("write_kv (cuda): num_tokens out of range");
  }
  const int64_t width = int64_t{cache.kv_heads} * cache.head_dim;
  FP_RETURN_IF_ERROR(ValidateStride("write_kv (cuda): key_stride", key_stride, width));
  FP_RETURN_IF_ERROR(ValidateStride("write_kv (cuda): value_stride", value_stride, width));
  if (num_tokens == 0) return OkStatus();
  if (key == nullptr || value == nullptr || seq_ids == nullptr || positions == nullptr ||
      !Aligned16(key) || !Aligned16(value)) {
    return InvalidArgumentError(
        "write_kv (cuda): key/value (16-byte aligned), seq_ids and positions are required");
  }
  const auto chunks = static_cast<int32_t>(width / 8);
  const long long total = static_cast<long long>(num_tokens) * chunks;
  WriteKvKernel<<<static_cast<unsigned>((total + kWriteThreads - 1) / kWriteThreads), kWriteThreads,
                  0, stream>>>(static_cast<const uint4*>(key), key_stride / 8,
                               static_cast<const uint4*>(value), value_stride / 8, seq_ids,
                               positions, num_tokens, chunks, tables.table, tables.num_seqs,
                               tables.max_blocks_per_seq, cache.num_blocks, cache.block_size,
                               static_cast<uint4*>(cache.key), static_cast<uint4*>(cache.value));
  return CudaStatus(cudaGetLastError(), "WriteKvKernel launch");
}

Status LaunchWritePagedKvCuda(const void* key, const void* value, const int32_t* seq_ids,
                              const int32_t* positions, int32_t num_tokens,
                              const CudaBlockTables& tables, const CudaPagedKvCache& cache,
                              cudaStream_t stream) {
  const int64_t width = int64_t{cache.kv_heads} * cache.head_dim;
  return LaunchWritePagedKvCuda(key, width, value, width, seq_ids, positions, num_tokens, tables,
                                cache, stream);
}

namespace internal {

size_t DecodeWorkspaceBytesWithSplit(int32_t num_seqs, int32_t q_heads, int32_t head_dim,
                                     int32_t max_context, int32_t split_keys) {
  return WorkspaceBytes(num_seqs, q_heads, head_dim, max_context, split_keys);
}

Status LaunchPagedAttentionDecodeWithSplit(
    const void* query, const int32_t* context_lens, int32_t max_context, int32_t q_heads,
    const CudaBlockTables& tables, const CudaPagedKvCache& cache, const CudaAnchorSet& anchors,
    const AttentionOptions& options, int32_t split_keys, int32_t stages, void* workspace,
    size_t workspace_bytes, void* out, cudaStream_t stream) {
  return DecodeImpl(query, int64_t{q_heads} * cache.head_dim, context_lens, max_context, q_heads,
                    tables, cache, anchors, options, split_keys, stages, workspace, workspace_bytes,
                    out, stream);
}

}  // namespace internal
}  // namespace fp::kernels
