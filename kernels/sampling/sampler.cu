// The GPU sampler: one block per row; see sampler_cuda.h for how it reproduces the CPU sampler.
//
// Per row, in this order: (1) validation and the argmax under (logit desc, index asc) in one
// pass; (2) greedy rows stop there; (3) keys = ~order-preserving bits of each logit, sorted with
// their indices by a stable LSD radix sort (4 passes of 8 bits; ranks inside a 1024-element tile
// from __match_any_sync, so equal keys keep index order); (4) weights and their serial double
// running sums in candidate order; (5) the top-p cut and the pick as first-index searches over
// the running sums.
//
// Thread-safety: see sampler_cuda.h.
#include <cmath>
#include <string>

#include "kernels/activation/internal/exp_f32_device.cuh"
#include "kernels/base/cuda_status.h"
#include "kernels/sampling/philox.h"
#include "kernels/sampling/sampler_cuda.h"

namespace fp::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;
constexpr int kPasses = 32 / kRadixBits;
constexpr int64_t kRowAlignment = 256;
static_assert(kPasses % 2 == 0, "the sort must end in the first buffer");

// Per-row workspace: two key/index buffers for the sort and the running sums.
struct RowWorkspace {
  uint32_t* keys[2];  // [vocab] each
  int32_t* indices[2];
  double* sums;  // [vocab]
};

int64_t RowWorkspaceBytes(int32_t vocab_size) {
  const int64_t bytes = int64_t{vocab_size} * (4 * 4 + 8);
  return (bytes + kRowAlignment - 1) / kRowAlignment * kRowAlignment;
}

__device__ RowWorkspace CarveRow(void* workspace, int64_t row_bytes, int32_t vocab) {
  auto* base = static_cast<uint8_t*>(workspace) + row_bytes * blockIdx.x;
  RowWorkspace w;
  w.sums = reinterpret_cast<double*>(base);  // first, so it is 8-byte aligned
  w.keys[0] = reinterpret_cast<uint32_t*>(w.sums + vocab);
  w.keys[1] = w.keys[0] + vocab;
  w.indices[0] = reinterpret_cast<int32_t*>(w.keys[1] + vocab);
  w.indices[1] = w.indices[0] + vocab;
  return w;
}

// Philox4x32-10 and PhiloxUniform of philox.h.
__device__ double DevicePhiloxUniform(uint64_t seed, uint64_t step) {
  uint32_t x0 = static_cast<uint32_t>(step), x1 = static_cast<uint32_t>(step >> 32), x2 = 0, x3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    const uint32_t hi0 = __umulhi(kPhiloxMultiplier0, x0), lo0 = kPhiloxMultiplier0 * x0;
    const uint32_t hi1 = __umulhi(kPhiloxMultiplier1, x2), lo1 = kPhiloxMultiplier1 * x2;
    const uint32_t y0 = hi1 ^ x1 ^ k0, y2 = hi0 ^ x3 ^ k1;
    x0 = y0;
    x1 = lo1;
    x2 = y2;
    x3 = lo0;
  }
  const uint64_t bits = (uint64_t{x0} << 32) | x1;
  return __dmul_rn(static_cast<double>(bits >> 11), 0x1p-53);
}

// True when candidate (value a, index i) comes before (value b, index j).
__device__ __forceinline__ bool Before(float a, int32_t i, float b, int32_t j) {
  return a > b || (a == b && i < j);
}

struct RowScan {
  int32_t best;  // argmax under Before
  int32_t finite;
  bool bad;  // a NaN or +inf
};

// Step 1 for the whole block (every thread gets the result).
__device__ RowScan ScanRow(const float* logits, int32_t vocab) {
  __shared__ float best_value[kWarps];
  __shared__ int32_t best_index[kWarps], finite_count[kWarps], bad_count[kWarps];
  float value = -INFINITY;
  int32_t index = vocab;  // sorts after every real index
  int32_t finite = 0, bad = 0;
  for (int32_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float logit = logits[i];
    bad += (isnan(logit) || logit == INFINITY) ? 1 : 0;
    finite += isfinite(logit) ? 1 : 0;
    if (index == vocab || Before(logit, i, value, index)) {
      value = logit;
      index = i;
    }
  }
  for (int offset = 16; offset >= 1; offset /= 2) {
    const float other_value = __shfl_xor_sync(0xffffffffu, value, offset);
    const int32_t other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    if (other_index != vocab &&
        (index == vocab || Before(other_value, other_index, value, index))) {
      value = other_value;
      index = other_index;
    }
    finite += __shfl_xor_sync(0xffffffffu, finite, offset);
    bad += __shfl_xor_sync(0xffffffffu, bad, offset);
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    best_value[warp] = value;
    best_index[warp] = index;
    finite_count[warp] = finite;
    bad_count[warp] = bad;
  }
  __syncthreads();
  RowScan scan{best_index[0], finite_count[0], bad_count[0] > 0};
  float top = best_value[0];
  for (int w = 1; w < kWarps; ++w) {
    if (best_index[w] != vocab && Before(best_value[w], best_index[w], top, scan.best)) {
      top = best_value[w];
      scan.best = best_index[w];
    }
    scan.finite += finite_count[w];
    scan.bad = scan.bad || bad_count[w] > 0;
  }
  __syncthreads();  // the shared arrays are reused by the next call
  return scan;
}

// Ascending keys give (logit desc); -0 is keyed as +0 because the CPU compares them equal.
__device__ __forceinline__ uint32_t DescendingKey(float logit) {
  const uint32_t bits = __float_as_uint(logit == 0.0f ? 0.0f : logit);
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return ~ordered;
}

// One stable counting pass on digit `shift` from (src keys, indices) to dst.
__device__ void RadixPass(const uint32_t* src_keys, const int32_t* src_indices, uint32_t* dst_keys,
                          int32_t* dst_indices, int32_t n, int shift) {
  __shared__ int32_t bin_base[kBins];
  __shared__ int32_t warp_offsets[kWarps][kBins];
  if (threadIdx.x < kBins) bin_base[threadIdx.x] = 0;
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    atomicAdd(&bin_base[(src_keys[i] >> shift) & (kBins - 1)], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t running = 0;
    for (int b = 0; b < kBins; ++b) {
      const int32_t count = bin_base[b];
      bin_base[b] = running;
      running += count;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int32_t tile = 0; tile < n; tile += kThreads) {
    for (int b = lane; b < kBins; b += 32) warp_offsets[warp][b] = 0;
    __syncthreads();  // also orders the bin_base scan before the first tile
    const int32_t i = tile + static_cast<int32_t>(threadIdx.x);
    const bool valid = i < n;
    const uint32_t key = valid ? src_keys[i] : 0u;
    const int digit = valid ? static_cast<int>((key >> shift) & (kBins - 1)) : kBins;
    const uint32_t peers = __match_any_sync(0xffffffffu, digit);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid && rank == 0) warp_offsets[warp][digit] = __popc(peers);
    __syncthreads();
    if (threadIdx.x < kBins) {
      int32_t running = bin_base[threadIdx.x];
      for (int w = 0; w < kWarps; ++w) {
        const int32_t count = warp_offsets[w][threadIdx.x];
        warp_offsets[w][threadIdx.x] = running;
        running += count;
      }
      bin_base[threadIdx.x] = running;
    }
    __syncthreads();
    if (valid) {
      const int32_t position = warp_offsets[warp][digit] + rank;
      dst_keys[position] = key;
      dst_indices[position] = src_indices[i];
    }
    __syncthreads();
  }
}

// The first index in [0, n) whose running sum satisfies `pred`, or n; every thread gets it.
template <typename Pred>
__device__ int32_t FirstIndex(const double* sums, int32_t n, Pred pred) {
  __shared__ int32_t first;
  if (threadIdx.x == 0) first = n;
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    if (pred(sums[i])) {
      atomicMin(&first, i);
      break;  // a thread's later indices are larger
    }
  }
  __syncthreads();
  const int32_t result = first;
  __syncthreads();
  return result;
}

// Step 4: sums[i] = the double running sum of ExpF32(logit_i / t - z0) over candidates 0..i.
__device__ void RunningSums(const float* logits, const int32_t* order, int32_t n, float t, float z0,
                            double* sums) {
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const float z = __fdiv_rn(logits[order[i]], t);
    sums[i] = static_cast<double>(internal::DeviceExpF32(__fsub_rn(z, z0)));
  }
  __syncthreads();
  // Warp 0 walks the candidates 32 at a time: lane l loads element l of the next chunk early,
  // every lane performs the same 32 additions on broadcast values (the CPU's sequence of
  // roundings), and lane l keeps the running sum after element l. Past n the chunk holds +0,
  // which leaves a non-negative sum unchanged and is never stored.
  if (threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    double running = 0.0;
    double next = lane < n ? sums[lane] : 0.0;
    for (int32_t base = 0; base < n; base += 32) {
      const double current = next;
      next = base + 32 + lane < n ? sums[base + 32 + lane] : 0.0;
      double mine = 0.0;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        running = __dadd_rn(running, __shfl_sync(0xffffffffu, current, j));
        if (lane == j) mine = running;
      }
      if (base + lane < n) sums[base + lane] = mine;
    }
  }
  __syncthreads();
}

__device__ bool ParamsValid(const SamplingParams& p) {
  return p.temperature >= 0.0f && isfinite(p.temperature) && p.top_k >= 0 && p.top_p > 0.0f &&
         p.top_p <= 1.0f;
}

__device__ void Fail(int32_t* token, uint32_t* error_flags, uint32_t bit) {
  if (threadIdx.x == 0) {
    *token = -1;
    atomicOr(error_flags, bit);
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    SampleKernel(const float* __restrict__ all_logits, int32_t vocab,
                 const SamplingParams* __restrict__ all_params, const uint64_t* __restrict__ steps,
                 int32_t* tokens, void* workspace, int64_t row_bytes, uint32_t* error_flags) {
  const float* logits = all_logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const SamplingParams params = all_params[blockIdx.x];
  int32_t* token = tokens + blockIdx.x;
  if (!ParamsValid(params)) return Fail(token, error_flags, kSamplerErrorParams);
  const RowScan scan = ScanRow(logits, vocab);
  if (scan.bad || scan.finite == 0) return Fail(token, error_flags, kSamplerErrorLogits);
  if (params.temperature == 0.0f || params.top_k == 1) {
    if (threadIdx.x == 0) *token = scan.best;
    return;
  }
  const float z0 = __fdiv_rn(logits[scan.best], params.temperature);
  if (!isfinite(z0)) return Fail(token, error_flags, kSamplerErrorTemperature);

  RowWorkspace w = CarveRow(workspace, row_bytes, vocab);
  for (int32_t i = threadIdx.x; i < vocab; i += kThreads) {
    w.keys[0][i] = DescendingKey(logits[i]);
    w.indices[0][i] = i;
  }
  __syncthreads();
#pragma unroll  // constant buffer indices keep RowWorkspace in registers
  for (int pass = 0; pass < kPasses; ++pass) {
    const int from = pass % 2;
    RadixPass(w.keys[from], w.indices[from], w.keys[1 - from], w.indices[1 - from], vocab,
              pass * kRadixBits);
  }
  // Finite logits come first; the top one is scan.best, so z0 above is the CPU's z_0.
  const int32_t n = params.top_k > 0 && params.top_k < scan.finite ? params.top_k : scan.finite;
  RunningSums(logits, w.indices[0], n, params.temperature, z0, w.sums);
  int32_t kept = n;
  if (params.top_p < 1.0f) {
    const double threshold = __dmul_rn(static_cast<double>(params.top_p), w.sums[n - 1]);
    kept = min(n, FirstIndex(w.sums, n, [threshold](double s) { return s >= threshold; }) + 1);
  }
  const double target =
      __dmul_rn(DevicePhiloxUniform(params.seed, steps[blockIdx.x]), w.sums[kept - 1]);
  const int32_t pick = FirstIndex(w.sums, kept, [target](double s) { return s > target; });
  if (threadIdx.x == 0) *token = w.indices[0][pick < kept ? pick : kept - 1];
}

bool AlignedTo(const void* pointer, int bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace

int64_t SamplerWorkspaceBytes(int32_t num_rows, int32_t vocab_size) {
  if (num_rows < 0 || num_rows > kSamplerMaxRows || vocab_size < 1 ||
      vocab_size > kSamplerMaxVocab) {
    return -1;
  }
  return int64_t{num_rows} * RowWorkspaceBytes(vocab_size);
}

Status LaunchSampleTokens(const float* logits, int32_t num_rows, int32_t vocab_size,
                          const SamplingParams* params, const uint64_t* steps, int32_t* tokens,
                          void* workspace, int64_t workspace_bytes, uint32_t* error_flags,
                          cudaStream_t stream) {
  const int64_t needed = SamplerWorkspaceBytes(num_rows, vocab_size);
  if (needed < 0) {
    return InvalidArgumentError("sampler: num_rows " + std::to_string(num_rows) +
                                " or vocab_size " + std::to_string(vocab_size) + " out of range");
  }
  if (num_rows == 0) return OkStatus();
  if (workspace_bytes < needed) {
    return InvalidArgumentError("sampler: workspace of " + std::to_string(workspace_bytes) +
                                " bytes, " + std::to_string(needed) + " needed");
  }
  if (logits == nullptr || params == nullptr || steps == nullptr || tokens == nullptr ||
      workspace == nullptr || error_flags == nullptr) {
    return InvalidArgumentError("sampler: null pointer");
  }
  if (!AlignedTo(logits, 4) || !AlignedTo(params, alignof(SamplingParams)) ||
      !AlignedTo(steps, 8) || !AlignedTo(tokens, 4) || !AlignedTo(workspace, kRowAlignment) ||
      !AlignedTo(error_flags, 4)) {
    return InvalidArgumentError("sampler: misaligned pointer");
  }
  SampleKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(
      logits, vocab_size, params, steps, tokens, workspace, RowWorkspaceBytes(vocab_size),
      error_flags);
  return CudaStatus(cudaGetLastError(), "SampleKernel launch");
}

}  // namespace fp::kernels
