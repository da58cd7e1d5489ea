// Rotary position embedding on the GPU ("cuda-bf16" profile): q and k bf16, rotated in place at
// each token's position, with the cos/sin of a RopeTable (rope.h, default or llama3 scaling)
// copied to the device once.
//
// Numerics: the same f32 operations as ApplyRope in rope.h, in the same order and without
// contraction (for h = head_dim / 2 and i < h, with x widened exactly from bf16):
//   out[i]     = bf16(x[i] * cos[i] - x[i + h] * sin[i])
//   out[i + h] = bf16(x[i + h] * cos[i] + x[i] * sin[i])
// each product rounded to f32, then the sum, then one rounding to bf16. Fed the same bf16 inputs,
// the result is ApplyRope's f32 output rounded to bf16, bit for bit (tested). Every element
// depends only on its own pair and its token's position: batch invariant by construction.
//
// Invalid positions. The launcher cannot read device positions, so a position outside
// [0, max_positions) is clamped into the table (the token's heads are rotated at the clamped
// position) and kRopeErrorPosition is OR-ed into the caller's device error word; the caller
// checks that word (once per step, after the step's kernels) before trusting any output.
//
// Thread-safety: the launchers are reentrant; concurrent launches must use disjoint q and k rows.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"
#include "kernels/rope/rope.h"

namespace fp::kernels {

// Bit of the shared device error word (see also activation_cuda.h and sampler_cuda.h).
inline constexpr uint32_t kRopeErrorPosition = 1u << 1;
inline constexpr int64_t kRopeMaxTokens = int64_t{1} << 24;
inline constexpr int32_t kRopeMaxHeads = 1024;
// Bound on a row stride (elements), so token * stride stays far inside int64.
inline constexpr int64_t kRopeMaxRowStride = int64_t{1} << 24;

// A RopeTable's cos and sin in device memory, borrowed (the caller owns the buffers).
struct RopeDeviceTable {
  const float* cos;       // [max_positions, head_dim / 2] f32, device
  const float* sin;       // [max_positions, head_dim / 2] f32, device
  int32_t head_dim;       // the table's head_dim
  int32_t max_positions;  // the table's max_positions
};

// Bytes of each of the two device arrays a table needs: max_positions * head_dim / 2 * 4.
int64_t RopeDeviceTableBytes(const RopeTable& table);

// Copies `table`'s cos and sin into `cos` and `sin` (device, RopeDeviceTableBytes each) on
// `stream` and returns the view. The copies are from pageable memory, so the host table may be
// destroyed when this returns. InvalidArgument for null pointers; Internal on a CUDA failure.
StatusOr<RopeDeviceTable> CopyRopeTableToDevice(const RopeTable& table, float* cos, float* sin,
                                                cudaStream_t stream);

// Rotates q and k in place on `stream`. Rows are strided, so q and k may be column ranges of a
// wider buffer (the fused [tokens, q | k | v] output of one QKV projection).
//   q:           token t's [q_heads, head_dim] bf16 at q + t * q_stride, device.
//   q_stride:    elements from one token's q row to the next, in
//                [q_heads * head_dim, kRopeMaxRowStride].
//   k:           token t's [kv_heads, head_dim] bf16 at k + t * k_stride, device; may be null
//                when kv_heads == 0. No q row may overlap a k row.
//   k_stride:    likewise, in [kv_heads * head_dim, kRopeMaxRowStride].
//   positions:   [num_tokens] int32, device.
//   error_flags: one uint32 word, device; kRopeErrorPosition is OR-ed in for a bad position.
// Strides change addressing only: the bits of a head are those of the packed layout. 16-byte
// accesses are used when q, k, both strides and head_dim keep every pair group 16-byte aligned,
// 2-byte accesses otherwise (same bits), so any stride in range is accepted.
// OK once enqueued (num_tokens == 0 enqueues nothing). InvalidArgument without launching for
// sizes outside [0, kRopeMaxTokens] / [0, kRopeMaxHeads], a stride outside its range,
// head_dim != table.head_dim, a null table, pointer or error word, or a misaligned pointer;
// Internal if the launch fails.
Status LaunchRope(const RopeDeviceTable& table, void* q, int64_t q_stride, void* k,
                  int64_t k_stride, const int32_t* positions, int64_t num_tokens, int32_t q_heads,
                  int32_t kv_heads, int32_t head_dim, uint32_t* error_flags, cudaStream_t stream);

// The strided launcher on packed rows: q [num_tokens, q_heads, head_dim] and k [num_tokens,
// kv_heads, head_dim], row-major (q_stride = q_heads * head_dim, k_stride = kv_heads * head_dim).
Status LaunchRope(const RopeDeviceTable& table, void* q, void* k, const int32_t* positions,
                  int64_t num_tokens, int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                  uint32_t* error_flags, cudaStream_t stream);

}  // namespace fp::kernels
