// SwiGLU, the LLaMA MLP activation: out = silu(gate) * up, with silu(x) = x / (1 + e^-x) using
// ExpF32 (kernels/base/fixed_math.h), so the bits are the same on every machine. Each element is
// independent of every other.
//
// Thread-safety: reentrant; concurrent calls must use disjoint outputs.
#pragma once

#include <cstdint>

#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

// silu(x) = x / (1 + ExpF32(-x)).
float Silu(float x);

// out[i] = Silu(gate[i]) * up[i] for i in [0, count).
//   gate: [count] f32 (e.g. [tokens, intermediate] row-major).
//   up:   [count] f32, same layout.
//   out:  [count] f32; may equal gate or up (in place), must not otherwise overlap them.
// InvalidArgument on null pointers or count < 0.
Status SwiGlu(const float* gate, const float* up, float* out, int64_t count, ThreadPool& pool);

}  // namespace fp::kernels
