// The CUDA backend: the LLaMA forward pass on one NVIDIA GPU with the batch-invariant bf16
// kernels of kernels/ ("cuda-bf16" numerics, /work/notes: weights and activations bf16, every
// reduction in f32 in a fixed order, one rounding per kernel output, f32 logits).
//
// What it does per Forward (docs/engine.md, "The Backend interface"):
//   - the batch's metadata (tokens, positions, block tables, emitting rows, sampling
//     parameters) goes to the device in one copy from one pinned staging buffer;
//   - embedding, then per layer RMSNorm, fused QKV GEMM, RoPE, KV write, anchored paged
//     attention, O GEMM + residual, RMSNorm, fused gate/up GEMM, SwiGLU, down GEMM + residual,
//     over every token of the batch (mixed prefill chunks and decodes);
//   - only the emitting rows go on: final RMSNorm, rounded once to the canonical dtype, state
//     digest on a side stream (kernels/digest/digest_pipeline.h; the generation stream never
//     waits for it), LM head to f32 logits, Philox sampling; 4 bytes per emitting sequence come
//     back, and the 32-byte digests from the side stream.
//   - a batch of decodes only (one token per sequence, all emitting) replays a CUDA graph
//     captured for its batch-size bucket (1, 2, 4, ..., 256; padding rows are discarded);
//     anything else runs eagerly.
//
// The header needs no CUDA: a build without CUDA links a version of CreateCudaBackend that
// returns Unimplemented, so the worker's backend choice compiles everywhere.
//
// Thread-safety: see Backend (one driving thread). Create makes the chosen device current on the
// calling thread; every later call must come from a thread with that device current (the
// engine's single thread).
#pragma once

#include <memory>

#include "common/base/status.h"
#include "node/backend/backend.h"

namespace fp::node {

// Names the kernels' numerics for the numerics profile. Change it whenever any CUDA kernel of the
// forward pass changes bits (tiling along a reduction, accumulation order, rounding points).
inline constexpr char kCudaKernelBuildId[] = "cuda-bf16-batch-invariant-v1";

struct CudaBackendOptions {
  int device = 0;           // CUDA device ordinal
  bool cuda_graphs = true;  // replay captured graphs for decode batches
  // Compute state digests. Off only to measure what verification costs (benchmarks): digests
  // then come back as zeros, which no supervisor accepts. Never off in a worker.
  bool state_digests = true;
  int digest_depth = 4;  // DigestPipeline slots (batches whose digests may be in flight)
};

// True when this build has CUDA and the machine has at least one CUDA device.
bool CudaDeviceAvailable();

// A CUDA backend on `options.device`. Unimplemented in a build without CUDA; FailedPrecondition
// when the device does not exist; InvalidArgument for options out of range; ResourceExhausted or
// Internal from the CUDA runtime. The caller owns the result.
StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace fp::node
