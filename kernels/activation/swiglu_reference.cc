// SwiGlu on the CPU.
//
// Thread-safety: reentrant.
#include "kernels/activation/swiglu.h"
#include "kernels/base/fixed_math.h"

namespace fp::kernels {

float Silu(float x) { return x / (1.0f + ExpF32(-x)); }

Status SwiGlu(const float* gate, const float* up, float* out, int64_t count, ThreadPool& pool) {
  if (count < 0) return InvalidArgumentError("swiglu: count is negative");
  if (count == 0) return OkStatus();
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return InvalidArgumentError("swiglu: null pointer");
  }
  pool.ParallelFor(count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = Silu(gate[i]) * up[i];
  });
  return OkStatus();
}

}  // namespace fp::kernels
