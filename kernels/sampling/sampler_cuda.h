// Token sampling on the GPU from f32 logits, giving the token of the CPU sampler (sampler.h) bit
// for bit for the same (logits, parameters, seed, step): the same algorithm, steps 0 to 5 of
// sampler.h, and the same Philox4x32-10 stream (the constants are shared through philox.h).
//
// How the GPU keeps the CPU's bits. Greedy is an argmax under the total order (logit desc, index
// asc), which any reduction tree evaluates to the same index. Otherwise every row is sorted by
// that order with a stable radix sort of the logits' order-preserving keys (-0 keyed as +0, as
// the CPU's comparison treats them equal; -inf last and cut), weights p_i = ExpF32(z_i - z_0) are
// computed with the device copy of ExpF32 (activation/internal/exp_f32_device.cuh), and the
// double running sums are taken by one thread in candidate order, exactly the CPU's sequence of
// roundings. The top-p cut and the inverse-CDF pick are then searches over those running sums
// (the first index where the CPU's loop would stop), which need no particular order.
//
// Cost (H100, vocab 32000, measured by kernels_ops_gpu_bench): greedy rows take one pass over
// the logits (11 us for one row, 24 us for 256). Other rows pay a four-pass radix sort of the
// whole row (about 350 us per row, one 1024-thread block each, so 256 rows take about 1.1 ms)
// plus one serial walk of double additions over the kept candidates (about 220 us when top_k == 0,
// which top-p needs for its total): about 0.57 ms for one row and 1.8 ms for 256. Rows are
// independent: a row's token never depends on the batch.
//
// Invalid input. The launcher cannot read device data, so rule 0 of sampler.h (NaN or +inf
// logits, every logit -inf), parameters out of range and a temperature that overflows the top
// logit are detected on the device: the row's token is set to -1 and a bit is OR-ed into the
// caller's device error word (kSamplerError...), which the caller checks before using tokens.
//
// Thread-safety: the launcher is reentrant; concurrent launches need disjoint tokens and
// workspaces.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/status.h"
#include "kernels/sampling/sampler.h"

namespace fp::kernels {

// Bits of the shared device error word (activation_cuda.h and rope_cuda.h define the others).
inline constexpr uint32_t kSamplerErrorLogits = 1u << 2;       // rule 0 of sampler.h
inline constexpr uint32_t kSamplerErrorParams = 1u << 3;       // temperature/top_k/top_p range
inline constexpr uint32_t kSamplerErrorTemperature = 1u << 4;  // z_0 overflows
inline constexpr int32_t kSamplerMaxRows = 4096;

// Device workspace bytes LaunchSampleTokens needs for `num_rows` rows of `vocab_size` logits
// (24 bytes per logit per row, 256-byte aligned per row). -1 for sizes out of range.
int64_t SamplerWorkspaceBytes(int32_t num_rows, int32_t vocab_size);

// tokens[r] = SampleToken(logits row r, vocab_size, params[r], steps[r]) on `stream`, or -1 with
// an error bit for a row the CPU sampler would reject.
//   logits:      [num_rows, vocab_size] f32, device, row-major.
//   params:      [num_rows] SamplingParams, device.
//   steps:       [num_rows] uint64, device.
//   tokens:      [num_rows] int32, device output.
//   workspace:   SamplerWorkspaceBytes(num_rows, vocab_size) bytes, device, 256-byte aligned;
//                scratch owned by the caller, not read before it is written.
//   error_flags: one uint32 word, device.
// OK once enqueued (num_rows == 0 enqueues nothing). InvalidArgument without launching for
// num_rows outside [0, kSamplerMaxRows], vocab_size outside [1, kSamplerMaxVocab], workspace_bytes
// too small, or a null or misaligned pointer; Internal if the launch fails.
Status LaunchSampleTokens(const float* logits, int32_t num_rows, int32_t vocab_size,
                          const SamplingParams* params, const uint64_t* steps, int32_t* tokens,
                          void* workspace, int64_t workspace_bytes, uint32_t* error_flags,
                          cudaStream_t stream);

}  // namespace fp::kernels
