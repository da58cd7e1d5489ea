// Batch-invariant GEMM on the GPU for every linear layer of the engine:
//   y[m, n] = x[m, k] * w[n, k]^T  (+ residual[m, n]),
// x bf16 row-major (tokens x features), w bf16 in Hugging Face layout (nn.Linear weight
// [out_features, in_features], row-major), f32 accumulation, y bf16 (projections) or f32 (the LM
// head's logits), each output rounded once.
//
// Design. One kernel template. A CTA owns a tile of kTileW weight rows (output columns) by
// kTileT tokens (output rows) and walks k in blocks of kBlockK through a multi-stage cp.async
// pipeline into shared memory, each tile row a run of 16-byte chunks XOR-swizzled by row % 8
// (over 128-byte rows this is exactly the hardware's 128-byte swizzle layout). The weights are the
// MMA's A operand (rows along M) and the tokens its B operand (along N), so one decode token
// wastes at most 7/8 of an 8-token MMA, which costs nothing next to streaming the weights.
// Four tile configurations (GemmTile):
//   32x64, 64x64, 128x128: warps issue mma.sync.m16n8k16 (bf16 in, f32 accumulators) fed by
//     ldmatrix; decode shapes, where many CTAs must stream disjoint weight rows;
//   128x256: two warpgroups issue wgmma.m64n256k16 straight from the same shared-memory layout
//     (sm_90a; elsewhere the same products go through mma.sync); prefill.
// ChooseGemmTile picks one from m and n alone (rules fitted to H100 timings of every tile).
//
// Why it is batch invariant. Every output element y[i, j] is one f32 accumulator that starts at
// +0 and receives, in increasing order of s = 0, 1, ..., ceil(k / 16) - 1, exactly one tensor-core
// step D = C + sum of the 16 products x[i, 16s + t] * w[j, 16s + t] (elements past k are zeros,
// the same zeros everywhere). There is no split over k: not inside a warp, not across warps, not
// across CTAs. kBlockK and the stage count only decide when data arrives, never which step adds
// which products or in which order. The tile, the grid, m and the row's position only decide
// which CTA, warp, lane and register hold y[i, j], and a tensor-core dot product for one element
// uses only its own row of A, its own column of B and its own accumulator. The epilogue adds the
// residual (one f32 addition, __fadd_rn) and rounds once (__float2bfloat16_rn for bf16). So the
// bits of row i depend only on x row i, w, k and the residual row.
// Two instruction kinds are involved (mma.sync for decode, wgmma for prefill), and nothing in
// the PTX specification promises they round a k16 step alike. On the H100 they do, bit for bit:
// the GPU test forces every configuration on the same inputs and compares all outputs bitwise,
// and compares rows alone (32x64, mma.sync) with the same rows inside batches of every size
// 1..257 and of prefill sizes (128x256, wgmma) at random positions among random rows. That test
// must pass on every new GPU generation or driver before its results are trusted.
//
// It is not bitwise equal to the CPU reference (kernels/gemm/gemm.h), whose fixed order uses 8
// lanes of single f32 additions; the tensor core sums 16 products per step in its own internal
// order. The CUDA profile ("cuda-bf16") is its own numeric profile: bits agree GPU to GPU.
//
// Requirements: k % 8 == 0 (16-byte rows for cp.async), x and w 16-byte aligned.
//
// Thread-safety: the launcher is reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/dtype.h"
#include "common/base/status.h"

namespace fp::kernels {

// Bounds on one launch, so every index fits the kernel's 32-bit tile arithmetic and the grid.
inline constexpr int64_t kGemmCudaMaxM = int64_t{1} << 20;
inline constexpr int64_t kGemmCudaMaxN = int64_t{1} << 20;
inline constexpr int64_t kGemmCudaMaxK = int64_t{1} << 20;
// k must be a multiple of this (16-byte rows of bf16).
inline constexpr int64_t kGemmCudaKAlignment = 8;

// Tile configurations: weight rows x tokens per CTA. All give the same bits (see above); they
// differ only in speed. kAuto lets ChooseGemmTile decide.
enum class GemmTile : int {
  kAuto = -1,
  k32x64 = 0,    // 4 warps, mma.sync: decode
  k64x64 = 1,    // 4 warps, mma.sync
  k128x128 = 2,  // 8 warps, mma.sync
  k128x256 = 3,  // 2 warpgroups, wgmma on sm_90a (mma.sync elsewhere): prefill
};
inline constexpr int kGemmTileCount = 4;

// The configuration LaunchGemm uses for kAuto: a function of m and n only (never of k, and no
// configuration changes the reduction order anyway).
GemmTile ChooseGemmTile(int64_t m, int64_t n);

// Enqueues y = x * w^T (+ residual) on `stream`.
//   x:        [m, k] bf16, row-major, device memory.
//   w:        [n, k] bf16, row-major (Hugging Face nn.Linear layout), device memory.
//   residual: [m, n] bf16, row-major, device memory, or null for none. It may be y itself
//             (in-place residual add, bf16 output only) but must not otherwise overlap y.
//   y:        [m, n] of y_dtype (kBf16 or kF32), row-major, device memory; must not overlap x or w.
//   tile:     kAuto, or a configuration to force (tests and benchmarks).
// x and w must be 16-byte aligned, y and residual aligned to their element size. All buffers are
// borrowed until the work on `stream` completes. Returns OK once enqueued (m == 0 or n == 0
// enqueues nothing; k == 0 writes zeros, or the residual). InvalidArgument, without launching, for
// null or misaligned pointers, sizes outside [0, kGemmCudaMax*], k % kGemmCudaKAlignment != 0,
// y_dtype other than bf16/f32, y overlapping x, w or (other than exactly, with bf16 output) the
// residual, or an unknown tile; Internal (with the CUDA error) if the launch fails. Allocates
// nothing, never synchronises, reads no device memory on the host: capturable in a CUDA graph.
Status LaunchGemm(const void* x, const void* w, const void* residual, void* y, DType y_dtype,
                  int64_t m, int64_t n, int64_t k, cudaStream_t stream,
                  GemmTile tile = GemmTile::kAuto);

}  // namespace fp::kernels
