// Element-wise GPU kernels of the LLaMA layer ("cuda-bf16" profile: bf16 in and out, f32 inside,
// one rounding per output): SwiGLU, the embedding lookup and the residual add.
//
// Numerics, each the same f32 operations as the CPU reference (so, fed the same bf16 inputs,
// the output is the reference's f32 result rounded once to bf16, bit for bit; tested):
//   SwiGLU   out = bf16(Silu(g) * u), Silu(g) = g / (1 + ExpF32(-g)) (swiglu.h, with the device
//            copy of ExpF32 in internal/exp_f32_device.cuh); no contraction anywhere.
//   Residual residual = bf16(residual + delta) (one f32 addition; rms_norm.h's ResidualAdd).
//   Embedding out row t = table row token_ids[t] (bf16 copied exactly; embedding.h).
// Every output element depends only on its own inputs, so all three are batch invariant.
//
// SwiGLU layouts. The CPU backend (node/backend/cpu_backend.cc) runs gate_proj and up_proj as two
// GEMMs into separate [tokens, intermediate] buffers: LaunchSwiGlu takes those. A CUDA backend
// that concatenates the two weights into one [2 * intermediate, hidden] matrix (gate_proj rows
// first, then up_proj rows) gets one GEMM whose output row is [gate | up]: LaunchSwiGluFused
// takes that [tokens, 2 * intermediate] buffer. Both give the same bits for the same values.
//
// Invalid token ids. The launcher cannot read device ids, so an id outside [0, vocab_size) is
// clamped into the table (row 0 for a negative id, the last row for a large one) and
// kEmbeddingErrorTokenId is OR-ed into the caller's device error word, to be checked (once per
// step) before any output is trusted.
//
// Thread-safety: the launchers are reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::kernels {

// Bit of the shared device error word (rope_cuda.h and sampler_cuda.h define the others).
inline constexpr uint32_t kEmbeddingErrorTokenId = 1u << 0;
inline constexpr int64_t kMaxElementwiseCount = int64_t{1} << 34;
inline constexpr int64_t kMaxEmbeddingTokens = int64_t{1} << 24;
inline constexpr int64_t kMaxEmbeddingVocab = int64_t{1} << 24;
inline constexpr int64_t kMaxEmbeddingDim = int64_t{1} << 16;

// out = SwiGLU(gate, up) on `stream`.
//   gate, up: [rows, width] bf16, device, row-major.
//   out:      [rows, width] bf16, device; may equal gate or up, must not otherwise overlap them.
// OK once enqueued (rows * width == 0 enqueues nothing). InvalidArgument without launching for
// negative sizes, rows * width over kMaxElementwiseCount, or a null or misaligned pointer;
// Internal if the launch fails. No workspace.
Status LaunchSwiGlu(const void* gate, const void* up, void* out, int64_t rows, int64_t width,
                    cudaStream_t stream);

// out = SwiGLU(gate_up[:, :width], gate_up[:, width:]) on `stream`.
//   gate_up: [rows, 2 * width] bf16, device: per row the gate half, then the up half.
//   out:     [rows, width] bf16, device; must not overlap gate_up.
// Errors as LaunchSwiGlu.
Status LaunchSwiGluFused(const void* gate_up, void* out, int64_t rows, int64_t width,
                         cudaStream_t stream);

// residual[i] = bf16(residual[i] + delta[i]) for i in [0, count), on `stream`.
//   residual: [count] bf16, device, updated in place.
//   delta:    [count] bf16, device; must not overlap residual.
// Errors as LaunchSwiGlu.
Status LaunchResidualAdd(void* residual, const void* delta, int64_t count, cudaStream_t stream);

// out[t, :] = table[clamp(token_ids[t]), :] on `stream`.
//   token_ids:   [num_tokens] int32, device.
//   table:       [vocab_size, dim] bf16, device, row-major (the embedding weight).
//   out:         [num_tokens, dim] bf16, device.
//   error_flags: one uint32 word, device; kEmbeddingErrorTokenId is OR-ed in for a bad id.
// OK once enqueued (num_tokens == 0 enqueues nothing). InvalidArgument without launching for
// num_tokens outside [0, kMaxEmbeddingTokens], vocab_size outside [1, kMaxEmbeddingVocab], dim
// outside [1, kMaxEmbeddingDim], or a null or misaligned pointer; Internal if the launch fails.
Status LaunchEmbedding(const int32_t* token_ids, const void* table, void* out, int64_t num_tokens,
                       int64_t vocab_size, int64_t dim, uint32_t* error_flags, cudaStream_t stream);

}  // namespace fp::kernels
