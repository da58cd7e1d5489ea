// RoPE kernel and launchers; see rope_cuda.h.
//
// Design. A flat grid over (token, head, group of kPairs rotation pairs): one thread loads
// kPairs elements of each half of a head (16-byte loads when kPairs == 8 and the layout allows)
// and the matching cos/sin entries, rotates, and stores in place. q heads come first, then k
// heads, so one launch covers both. A token's row starts at token * stride: the strides only
// move addresses, the arithmetic per pair is the same.
//
// Thread-safety: see rope_cuda.h.
#include <string>

#include <cuda_bf16.h>

#include "kernels/base/cuda_status.h"
#include "kernels/rope/rope_cuda.h"

namespace fp::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridBlocks = (int64_t{1} << 31) - 1;  // grid.x limit

template <int kPairs>
struct alignas(kPairs * 2) Pairs {
  __nv_bfloat16 v[kPairs];
};

template <int kPairs>
__global__ void __launch_bounds__(kThreads)
    RopeKernel(const float* __restrict__ cos_table, const float* __restrict__ sin_table,
               int32_t max_positions, __nv_bfloat16* q, int64_t q_stride, __nv_bfloat16* k,
               int64_t k_stride, const int32_t* __restrict__ positions, int64_t num_tokens,
               int32_t q_heads, int32_t kv_heads, int32_t half, uint32_t* error_flags) {
  const int32_t groups = half / kPairs;
  const int32_t heads = q_heads + kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (item >= num_tokens * heads * groups) return;
  const int32_t group = static_cast<int32_t>(item % groups);
  const int32_t head = static_cast<int32_t>(item / groups % heads);
  const int64_t token = item / groups / heads;
  int32_t position = positions[token];
  if (position < 0 || position >= max_positions) {
    if (head == 0 && group == 0) atomicOr(error_flags, kRopeErrorPosition);
    position = position < 0 ? 0 : max_positions - 1;
  }
  __nv_bfloat16* x = head < q_heads ? q + token * q_stride + int64_t{head} * 2 * half
                                    : k + token * k_stride + int64_t{head - q_heads} * 2 * half;
  const int32_t i = group * kPairs;
  const float* cos = cos_table + static_cast<int64_t>(position) * half + i;
  const float* sin = sin_table + static_cast<int64_t>(position) * half + i;
  Pairs<kPairs> first = *reinterpret_cast<const Pairs<kPairs>*>(x + i);
  Pairs<kPairs> second = *reinterpret_cast<const Pairs<kPairs>*>(x + i + half);
#pragma unroll
  for (int p = 0; p < kPairs; ++p) {
    const float a = __bfloat162float(first.v[p]);
    const float b = __bfloat162float(second.v[p]);
    const float c = __ldg(cos + p);
    const float s = __ldg(sin + p);
    first.v[p] = __float2bfloat16_rn(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    second.v[p] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
  }
  *reinterpret_cast<Pairs<kPairs>*>(x + i) = first;
  *reinterpret_cast<Pairs<kPairs>*>(x + i + half) = second;
}

bool AlignedTo(const void* pointer, int bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

Status Validate(const RopeDeviceTable& table, const void* q, int64_t q_stride, const void* k,
                int64_t k_stride, const int32_t* positions, int64_t num_tokens, int32_t q_heads,
                int32_t kv_heads, int32_t head_dim, const uint32_t* error_flags) {
  if (num_tokens < 0 || num_tokens > kRopeMaxTokens) {
    return InvalidArgumentError("rope: num_tokens " + std::to_string(num_tokens) + " outside [0, " +
                                std::to_string(kRopeMaxTokens) + "]");
  }
  if (q_heads < 0 || kv_heads < 0 || q_heads > kRopeMaxHeads || kv_heads > kRopeMaxHeads) {
    return InvalidArgumentError("rope: head counts must be in [0, " +
                                std::to_string(kRopeMaxHeads) + "]");
  }
  if (head_dim != table.head_dim || head_dim < 2 || head_dim % 2 != 0) {
    return InvalidArgumentError("rope: head_dim " + std::to_string(head_dim) +
                                " does not match the table's " + std::to_string(table.head_dim));
  }
  const int64_t q_width = int64_t{q_heads} * head_dim;
  const int64_t k_width = int64_t{kv_heads} * head_dim;
  if (q_stride < q_width || q_stride > kRopeMaxRowStride || k_stride < k_width ||
      k_stride > kRopeMaxRowStride) {
    const std::string max = std::to_string(kRopeMaxRowStride);
    return InvalidArgumentError("rope: q_stride " + std::to_string(q_stride) + " must be in [" +
                                std::to_string(q_width) + ", " + max + "] and k_stride " +
                                std::to_string(k_stride) + " in [" + std::to_string(k_width) +
                                ", " + max + "]");
  }
  if (table.cos == nullptr || table.sin == nullptr || table.max_positions < 1) {
    return InvalidArgumentError("rope: empty device table");
  }
  if (num_tokens == 0) return OkStatus();
  if (positions == nullptr || error_flags == nullptr || (q == nullptr && q_heads > 0) ||
      (k == nullptr && kv_heads > 0)) {
    return InvalidArgumentError("rope: null pointer");
  }
  if (!AlignedTo(q, 2) || !AlignedTo(k, 2) || !AlignedTo(positions, 4) ||
      !AlignedTo(error_flags, 4) || !AlignedTo(table.cos, 4) || !AlignedTo(table.sin, 4)) {
    return InvalidArgumentError("rope: misaligned pointer");
  }
  return OkStatus();
}

}  // namespace

int64_t RopeDeviceTableBytes(const RopeTable& table) {
  return int64_t{table.max_positions()} * (table.head_dim() / 2) * int64_t{sizeof(float)};
}

StatusOr<RopeDeviceTable> CopyRopeTableToDevice(const RopeTable& table, float* cos, float* sin,
                                                cudaStream_t stream) {
  if (cos == nullptr || sin == nullptr) return InvalidArgumentError("rope: null device table");
  const int32_t half = table.head_dim() / 2;
  // RopeTable stores every position's entries back to back; one copy per array relies on that.
  FP_CHECK(table.cos(table.max_positions() - 1) ==
           table.cos(0) + static_cast<int64_t>(table.max_positions() - 1) * half);
  FP_CHECK(table.sin(table.max_positions() - 1) ==
           table.sin(0) + static_cast<int64_t>(table.max_positions() - 1) * half);
  const auto bytes = static_cast<size_t>(RopeDeviceTableBytes(table));
  FP_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(cos, table.cos(0), bytes, cudaMemcpyHostToDevice, stream), "rope cos"));
  FP_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(sin, table.sin(0), bytes, cudaMemcpyHostToDevice, stream), "rope sin"));
  return RopeDeviceTable{cos, sin, table.head_dim(), table.max_positions()};
}

Status LaunchRope(const RopeDeviceTable& table, void* q, int64_t q_stride, void* k,
                  int64_t k_stride, const int32_t* positions, int64_t num_tokens, int32_t q_heads,
                  int32_t kv_heads, int32_t head_dim, uint32_t* error_flags, cudaStream_t stream) {
  FP_RETURN_IF_ERROR(Validate(table, q, q_stride, k, k_stride, positions, num_tokens, q_heads,
                              kv_heads, head_dim, error_flags));
  const int32_t half = head_dim / 2;
  if (num_tokens == 0 || q_heads + kv_heads == 0) return OkStatus();
  // 16-byte accesses need every pair group aligned: half a multiple of 8, aligned bases and
  // strides of whole 16-byte units (the cos/sin rows are then 32-byte aligned as well, given
  // 16-byte aligned tables). A stride only matters for the tensor that has heads.
  const bool vector = half % 8 == 0 && AlignedTo(q, 16) && AlignedTo(k, 16) &&
                      (q_heads == 0 || q_stride % 8 == 0) && (kv_heads == 0 || k_stride % 8 == 0) &&
                      AlignedTo(table.cos, 16) && AlignedTo(table.sin, 16);
  const int pairs = vector ? 8 : 1;
  const int64_t items = num_tokens * (q_heads + kv_heads) * (half / pairs);
  const int64_t grid = (items + kThreads - 1) / kThreads;
  if (grid > kMaxGridBlocks) return InvalidArgumentError("rope: too many tokens x heads");
  const auto blocks = static_cast<unsigned>(grid);
  auto* qb = static_cast<__nv_bfloat16*>(q);
  auto* kb = static_cast<__nv_bfloat16*>(k);
  if (vector) {
    RopeKernel<8><<<blocks, kThreads, 0, stream>>>(table.cos, table.sin, table.max_positions, qb,
                                                   q_stride, kb, k_stride, positions, num_tokens,
                                                   q_heads, kv_heads, half, error_flags);
  } else {
    RopeKernel<1><<<blocks, kThreads, 0, stream>>>(table.cos, table.sin, table.max_positions, qb,
                                                   q_stride, kb, k_stride, positions, num_tokens,
                                                   q_heads, kv_heads, half, error_flags);
  }
  return CudaStatus(cudaGetLastError(), "RopeKernel launch");
}

Status LaunchRope(const RopeDeviceTable& table, void* q, void* k, const int32_t* positions,
                  int64_t num_tokens, int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                  uint32_t* error_flags, cudaStream_t stream) {
  return LaunchRope(table, q, int64_t{q_heads} * head_dim, k, int64_t{kv_heads} * head_dim,
                    positions, num_tokens, q_heads, kv_heads, head_dim, error_flags, stream);
}

}  // namespace fp::kernels
