// The canonical final hidden state on the GPU: the CUDA kernels produce the final RMSNorm's
// output in bf16, and docs/engine.md (rule 3) wants it rounded once to the model's dtype, digested
// in that dtype, and the logits computed from exactly those values.
//   bf16: the state itself (nothing to launch);
//   f32:  canonical = the bf16 values widened (exact); the LM head reads the bf16 state, which
//         holds the same values;
//   f16:  canonical = f16(state) (round to nearest even); the LM head reads bf16(canonical), so
//         the logits are a function of the digested bytes.
//
// Thread-safety: the launcher is reentrant; concurrent launches must write disjoint outputs.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/base/dtype.h"
#include "common/base/status.h"

namespace fp::node::cuda {

// Enqueues the conversion of `state` ([rows, width] bf16, device) on `stream`.
//   canonical:  [rows, width] of `dtype` (kF16 or kF32), device.
//   head_input: [rows, width] bf16, device, written for kF16 only (may be null for kF32).
// OK once enqueued (rows * width == 0 enqueues nothing). InvalidArgument, without launching, for
// another dtype, negative sizes or null pointers; Internal if the launch fails. Capturable.
Status LaunchCanonicalState(const void* state, DType dtype, int64_t rows, int64_t width,
                            void* canonical, void* head_input, cudaStream_t stream);

}  // namespace fp::node::cuda
