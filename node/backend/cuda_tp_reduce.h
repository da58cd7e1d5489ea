// The deterministic tensor-parallel residual reduction: after a row-parallel projection (o_proj,
// down_proj) every rank r holds an f32 partial product p_r = x_r W_r^T over its slice of the
// reduction dimension; an all-gather (a pure copy, the same bits whatever algorithm NCCL picks)
// gives every rank all of them, and this kernel adds them to the bf16 residual stream x in fixed
// rank order,
//
//   x = bf16( x + ((((p_0 + p_1) + p_2) + ...) + p_{ranks-1}) ),
//
// each addition one correctly rounded f32 operation (__fadd_rn) and one rounding to bf16
// (round to nearest even). Every rank computes the same bits from the same gathered partials, so
// the replicated residual streams stay identical; the order depends only on the rank count, never
// on the batch, the element's offset or the message size, unlike a ring or tree all-reduce whose
// per-element summation order for 3 or more ranks follows the chunking of the message (and so the
// batch size). With ranks == 1 it is bf16(x + p_0), the bits of the GEMM's fused residual
// epilogue over the same f32 accumulator.
//
// Element-wise: grid and block shapes decide only which thread handles an element.
//
// Thread-safety: the launcher is reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::node::cuda {

// Partials one launch adds (the largest tensor-parallel degree).
inline constexpr int kMaxTpReduceRanks = 8;
// count must be a multiple of this (16-byte vectors of bf16).
inline constexpr int64_t kTpReduceAlignment = 8;

// Enqueues x[i] = bf16(x[i] + sum_r partials[r * count + i]) for i in [0, count) on `stream`.
//   partials: [ranks, count] f32, device, 16-byte aligned.
//   x:        [count] bf16, device, 16-byte aligned; read and written in place; must not overlap
//             the partials.
// OK once enqueued (count == 0 enqueues nothing). InvalidArgument, without launching, for null or
// misaligned pointers, ranks outside [1, kMaxTpReduceRanks], a negative count or one not a
// multiple of kTpReduceAlignment, or overlapping buffers; Internal if the launch fails. Allocates
// nothing, never synchronises: capturable in a CUDA graph.
Status LaunchTpResidualSum(const float* partials, int ranks, int64_t count, void* x,
                           cudaStream_t stream);

}  // namespace fp::node::cuda
