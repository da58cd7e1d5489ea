// RMSNorm and the residual add on the GPU ("cuda-bf16" profile): bf16 activations in and out,
// f32 inside, one rounding per output (round to nearest even).
//
// Numerics. For a row x of width d (bf16 widened exactly to f32):
//   sum      = sum of x[j]^2 in the fixed tree below
//   inv_rms  = 1 / sqrt(sum / d + eps)          (IEEE division and square root, each rounded)
//   out[j]   = bf16(w[j] * (x[j] * inv_rms))    (two rounded f32 products, then one bf16 rounding)
// which is RmsNorm of rms_norm.h except for the order of the sum of squares. The GPU order
// (kRmsNormThreads threads, 8-element chunks): element j belongs to thread (j / 8) % 256, each
// thread accumulates its elements in increasing j with a fused multiply-add (acc = fma(x, x,
// acc), from +0); each warp then adds its 32 partials in an xor butterfly (offsets 16, 8, 4, 2,
// 1), and the 8 warp sums are combined as ((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7)).
// The tree depends on d only, never on the number of rows, the row's position, the pointers'
// alignment (vector and scalar loads visit the same elements in the same order) or the run, so a
// row's bits are batch invariant. Against DotF32's order: both sums of d non-negative terms lie
// within a relative gamma_(d/8 + 4) ~ (d/8 + 4) * 2^-24 of the exact sum (the longest chain of
// roundings, CPU products included), so before the bf16 rounding the outputs differ by less than
// (d/8 + 10) * 2^-24 relative (3e-5 for d = 8192), and the bf16 outputs by at most one ulp where
// the f32 value lies that close to a rounding boundary; the GPU test checks this bound.
//
// Fused form: residual[i, :] = bf16(residual[i, :] + delta[i, :]) (one f32 addition per element)
// is written back, and that rounded row is normalised, so the fused kernel equals ResidualAdd
// followed by RmsNorm bit for bit (tested).
//
// Thread-safety: the launchers are reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::kernels {

// The widest row: 16 KiB hidden size (LLaMA 3 405B), so a thread's share of a row (at most 8
// chunks of 8 elements) stays in registers between the two passes.
inline constexpr int64_t kRmsNormMaxWidth = 16384;
inline constexpr int64_t kRmsNormMaxRows = int64_t{1} << 24;
inline constexpr int kRmsNormThreads = 256;

// out = RmsNorm(x) per row, on `stream`.
//   x:      [rows, width] bf16, row-major, device, 2-byte aligned.
//   weight: [width] bf16, device (the layer's norm weight); borrowed until the kernel ran.
//   out:    [rows, width] bf16, device; may equal x (in place), must not otherwise overlap it.
// OK once enqueued (rows == 0 enqueues nothing). InvalidArgument without launching for rows
// outside [0, kRmsNormMaxRows], width outside [1, kRmsNormMaxWidth], eps not finite and >= 0, or
// a null or misaligned pointer; Internal if the launch fails. Needs no workspace.
Status LaunchRmsNorm(const void* x, const void* weight, float eps, void* out, int64_t rows,
                     int64_t width, cudaStream_t stream);

// residual = bf16(residual + delta), then out = RmsNorm(residual), per row, on `stream`.
//   residual: [rows, width] bf16, device, updated in place.
//   delta:    [rows, width] bf16, device; must not overlap residual or out.
//   weight:   [width] bf16, device.
//   out:      [rows, width] bf16, device; must not overlap residual.
// Errors as LaunchRmsNorm.
Status LaunchFusedAddRmsNorm(void* residual, const void* delta, const void* weight, float eps,
                             void* out, int64_t rows, int64_t width, cudaStream_t stream);

}  // namespace fp::kernels
