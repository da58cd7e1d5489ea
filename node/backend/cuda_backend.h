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
// Tensor parallelism (options.tensor_parallel = R > 1; docs/kernels.md, "Tensor parallelism"):
// one process, one thread per GPU ("rank"), NCCL communicators from ncclCommInitAll. Rank r holds
// kv heads [r kv/R, (r+1) kv/R) with their query heads (fused QKV, its KV cache shard, its slice of
// the anchors), gate/up rows [r I/R, (r+1) I/R), and the matching column slices of o_proj and
// down_proj; embedding, norms and the residual stream are replicated. Each row-parallel projection
// writes f32 partials, an ncclAllGather hands every rank all R of them, and a fixed-order sum
// (cuda_tp_reduce.h) adds them to the residual stream, so every rank holds the same bits whatever
// algorithm NCCL chose, and the bits never depend on the batch. Only rank 0 runs the emitting
// tail (final norm, digest, LM head, sampler). Decode graphs are captured per rank with the NCCL
// calls inside. R == 1 is the single-GPU backend, kernel for kernel and bit for bit. The degree
// is part of the identity (kernel build id suffix "-tpR"), so replicas at different degrees are
// never compared as if identical; their bits differ (the o_proj and down_proj sums split k).
//
// The header needs no CUDA: a build without CUDA links a version of CreateCudaBackend that
// returns Unimplemented, so the worker's backend choice compiles everywhere.
//
// Thread-safety: see Backend (one driving thread). Create makes rank 0's device current on the
// calling thread; every later call must come from that thread (the engine's), which also runs
// rank 0's work; the backend's own threads run the other ranks.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "node/backend/backend.h"

namespace fp::node {

// Names the kernels' numerics for the numerics profile. Change it whenever any CUDA kernel of the
// forward pass changes bits (tiling along a reduction, accumulation order, rounding points).
inline constexpr char kCudaKernelBuildId[] = "cuda-bf16-batch-invariant-v1";

// How a tensor-parallel backend sums the row-parallel partial products.
enum class TpReduction : int {
  // ncclAllGather, then a fixed-order f32 sum on every rank: bitwise deterministic. The default,
  // and the only choice for a worker.
  kGatherFixedOrder = 0,
  // ncclAllReduce (NCCL's own algorithm and order), then the residual add: for benchmarks only,
  // to price the deterministic reduction. With 3 or more ranks its summation order per element
  // follows NCCL's chunking of the message, so its bits may depend on the batch.
  kNcclAllReduce = 1,
};

// The kernel build id of a backend at `tensor_parallel` ranks with `reduction`: kCudaKernelBuildId
// at 1, with "-tpR" appended above (and "-nccl-allreduce" for that reduction).
inline std::string CudaKernelBuildId(int tensor_parallel, TpReduction reduction) {
  if (tensor_parallel <= 1) return kCudaKernelBuildId;
  std::string id = std::string(kCudaKernelBuildId) + "-tp" + std::to_string(tensor_parallel);
  if (reduction == TpReduction::kNcclAllReduce) id += "-nccl-allreduce";
  return id;
}

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal of rank 0 (with an empty `devices`)
  // Ranks (GPUs) the model is split over: 1 to 8, dividing the model's kv heads and
  // intermediate size (LoadModel checks).
  int tensor_parallel = 1;
  // The ordinal of each rank's GPU ([tensor_parallel], distinct); empty means device,
  // device + 1, ..., device + tensor_parallel - 1.
  std::vector<int> devices;
  TpReduction reduction = TpReduction::kGatherFixedOrder;
  bool cuda_graphs = true;  // replay captured graphs for decode batches
  // Compute state digests. Off only to measure what verification costs (benchmarks): digests
  // then come back as zeros, which no supervisor accepts. Never off in a worker.
  bool state_digests = true;
  int digest_depth = 4;  // DigestPipeline slots (batches whose digests may be in flight)
};

// True when this build has CUDA and the machine has at least one CUDA device.
bool CudaDeviceAvailable();

// How many CUDA devices this build sees (0 without CUDA or a device).
int CudaDeviceCount();

// A CUDA backend on `options.device` (or the tensor-parallel ranks' devices). Unimplemented in a
// build without CUDA; FailedPrecondition when a device does not exist or the ranks' GPUs differ in
// kind; InvalidArgument for options out of range (a degree outside 1..8, a device list of the
// wrong length or with repeats); ResourceExhausted, Internal or Unavailable from the CUDA
// runtime or NCCL. The caller owns the result. LoadModel then answers InvalidArgument when the
// degree does not divide the model's kv heads and intermediate size.
StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace fp::node
