// Gemm on the CPU: blocked, register-tiled and multi-threaded, yet every output is the fixed-order
// dot product of kernels/base/fixed_math.h.
//
// How the blocking keeps the order: each output owns 8 lane accumulators (one 8-wide vector),
// lane j receives the products of k indices i with i % 8 == j in increasing i. Blocks over k
// (kBlockK, a multiple of 8) continue the same lanes instead of starting new partial sums, so
// blocking over m, n and k, and the choice between widening weights in registers or through a
// panel, only change when a product is added, never which lane it joins or the order within a
// lane. The lanes are combined once at the end with CombineLanes. The 8-wide
// vector type is GCC's generic vector extension: element-wise IEEE operations whose results do
// not depend on the instruction set the compiler picks (SSE2 or AVX2, internal/cpu_dispatch.h).
//
// Work split: tasks are (m-block, n-block) pairs, m-block fastest so a thread's consecutive tasks
// reuse the same weight panel; the pool splits tasks statically.
//
// Thread-safety: reentrant; scratch buffers are thread_local.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/base/fixed_math.h"
#include "kernels/base/half.h"
#include "kernels/base/internal/cpu_dispatch.h"
#include "kernels/gemm/gemm.h"

namespace fp::kernels {
namespace {

typedef float V8 __attribute__((vector_size(32)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
static_assert(sizeof(V8) == kDotLanes * sizeof(float));

inline constexpr int64_t kBlockK = 512;  // k per block of the panel path; a multiple of 8
inline constexpr int64_t kBlockM = 16;   // x rows per task
inline constexpr int64_t kBlockN = 48;   // w rows per task
inline constexpr int kTileM = 2;         // register tile: x rows
inline constexpr int kTileN = 6;         // register tile: w rows
static_assert(kBlockK % kDotLanes == 0);
static_assert(kBlockM % kTileM == 0 && kBlockN % kTileN == 0);

struct GemmArgs {
  const float* x;
  const void* w;
  DType w_dtype;
  float* y;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t m_blocks;
};

// Loads w[index, index + 8) of dtype kW widened to f32: the same bit operations as Bf16ToF32
// and F16ToF32 in half.h, eight lanes at a time.
template <DType kW>
__attribute__((always_inline)) inline void LoadWeights(const void* w, int64_t index, V8& out) {
  if constexpr (kW == DType::kF32) {
    std::memcpy(&out, static_cast<const float*>(w) + index, sizeof(V8));
  } else {
    U16x8 half;
    std::memcpy(&half, static_cast<const uint16_t*>(w) + index, sizeof(U16x8));
    U32x8 bits = __builtin_convertvector(half, U32x8);
    if constexpr (kW == DType::kBf16) {
      bits = bits << 16;
    } else {
      const U32x8 sign = (bits & 0x8000u) << 16;
      const U32x8 magnitude = bits & 0x7fffu;
      const V8 rebased = (V8)(magnitude << 13) * 0x1p112f;
      const U32x8 special_mask = (U32x8)(magnitude >= 0x7c00u);
      const U32x8 special = (magnitude << 13) | 0x7f800000u;
      bits = sign | (special & special_mask) | ((U32x8)rebased & ~special_mask);
    }
    out = (V8)bits;  // GCC vector casts between equal sizes reinterpret the bits
  }
}

// acc[r * acc_stride + c * 8 + lane] += products over [0, length) (length a multiple of 8) for
// x rows r < MR (stride x_stride) and w rows c < NR (kW elements, stride w_stride).
template <int MR, int NR, DType kW>
__attribute__((always_inline)) inline void TileKernel(const float* x, int64_t x_stride,
                                                      const void* w, int64_t w_stride,
                                                      int64_t length, float* acc,
                                                      int64_t acc_stride) {
  V8 sums[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) std::memcpy(&sums[r][c], acc + r * acc_stride + c * 8, 32);
  }
  for (int64_t s = 0; s < length; s += kDotLanes) {
    V8 xs[MR];
    for (int r = 0; r < MR; ++r) std::memcpy(&xs[r], x + r * x_stride + s, 32);
    for (int c = 0; c < NR; ++c) {
      V8 ws;
      LoadWeights<kW>(w, c * w_stride + s, ws);
      for (int r = 0; r < MR; ++r) sums[r][c] = sums[r][c] + xs[r] * ws;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) std::memcpy(acc + r * acc_stride + c * 8, &sums[r][c], 32);
  }
}

// Runs the MR x-row tile against w rows [0, rows_n) in tiles of kTileN.
template <int MR, DType kW>
__attribute__((always_inline)) inline void TileRow(const float* x, int64_t x_stride, const void* w,
                                                   int64_t w_stride, int64_t rows_n, int64_t length,
                                                   float* acc, int64_t acc_stride) {
  const size_t element_size = DTypeSize(kW);
  for (int64_t c = 0; c < rows_n; c += kTileN) {
    const void* w_tile = static_cast<const char*>(w) + c * w_stride * element_size;
    float* tile_acc = acc + c * kDotLanes;
    switch (std::min<int64_t>(kTileN, rows_n - c)) {
      case 1:
        TileKernel<MR, 1, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
      case 2:
        TileKernel<MR, 2, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
      case 3:
        TileKernel<MR, 3, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
      case 4:
        TileKernel<MR, 4, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
      case 5:
        TileKernel<MR, 5, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
      default:
        TileKernel<MR, kTileN, kW>(x, x_stride, w_tile, w_stride, length, tile_acc, acc_stride);
        break;
    }
  }
}

// Every x row of the block [rows_m] against w [rows_n] rows of kW, over `length` columns.
template <DType kW>
__attribute__((always_inline)) inline void TileBlock(const float* x, int64_t x_stride,
                                                     int64_t rows_m, const void* w,
                                                     int64_t w_stride, int64_t rows_n,
                                                     int64_t length, float* acc,
                                                     int64_t acc_stride) {
  for (int64_t r = 0; r < rows_m; r += kTileM) {
    if (r + 1 < rows_m) {
      TileRow<2, kW>(x + r * x_stride, x_stride, w, w_stride, rows_n, length, acc + r * acc_stride,
                     acc_stride);
    } else {
      TileRow<1, kW>(x + r * x_stride, x_stride, w, w_stride, rows_n, length, acc + r * acc_stride,
                     acc_stride);
    }
  }
}

// Widens rows [n0, n0 + rows) x columns [k0, k0 + length) of 16-bit w into panel
// [rows, kBlockK].
template <DType kW>
__attribute__((always_inline)) inline void LoadPanel(const GemmArgs& args, int64_t n0, int64_t rows,
                                                     int64_t k0, int64_t length, float* panel) {
  const auto* w = static_cast<const uint16_t*>(args.w);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = w + (n0 + r) * args.k + k0;
    float* out = panel + r * kBlockK;
    for (int64_t i = 0; i < length; ++i) {
      out[i] = kW == DType::kBf16 ? Bf16ToF32(in[i]) : F16ToF32(in[i]);
    }
  }
}

struct Scratch {
  std::vector<float> panel = std::vector<float>(kBlockN * kBlockK);
  std::vector<float> acc = std::vector<float>(kBlockM * kBlockN * kDotLanes);
};

// The task's accumulators over all of k. Few x rows: w is widened in registers as it streams
// (decode is bound by reading w). More rows: 16-bit w is widened once per k-block into a panel
// that every x row then reuses.
template <DType kW>
__attribute__((always_inline)) inline void Accumulate(const GemmArgs& args, int64_t m0,
                                                      int64_t rows_m, int64_t n0, int64_t rows_n,
                                                      Scratch& scratch, int64_t acc_stride) {
  const float* x = args.x + m0 * args.k;
  float* acc = scratch.acc.data();
  const int64_t vector_k = args.k - args.k % kDotLanes;
  const size_t element_size = DTypeSize(kW);
  const void* w = static_cast<const char*>(args.w) + n0 * args.k * element_size;
  if (kW == DType::kF32 || rows_m <= kTileM) {
    TileBlock<kW>(x, args.k, rows_m, w, args.k, rows_n, vector_k, acc, acc_stride);
  } else {
    for (int64_t k0 = 0; k0 < vector_k; k0 += kBlockK) {
      const int64_t length = std::min(kBlockK, vector_k - k0);
      LoadPanel<kW>(args, n0, rows_n, k0, length, scratch.panel.data());
      TileBlock<DType::kF32>(x + k0, args.k, rows_m, scratch.panel.data(), kBlockK, rows_n, length,
                             acc, acc_stride);
    }
  }
  // The k % 8 tail: element i joins lane i % 8, like every other element.
  for (int64_t r = 0; r < rows_m; ++r) {
    for (int64_t c = 0; c < rows_n; ++c) {
      float* lanes = acc + r * acc_stride + c * kDotLanes;
      for (int64_t i = vector_k; i < args.k; ++i) {
        const float weight = LoadAsF32(args.w, kW, static_cast<size_t>((n0 + c) * args.k + i));
        lanes[i % kDotLanes] = lanes[i % kDotLanes] + x[r * args.k + i] * weight;
      }
    }
  }
}

__attribute__((always_inline)) inline void RunTaskBody(const GemmArgs& args, int64_t task) {
  thread_local Scratch scratch;
  const int64_t m0 = (task % args.m_blocks) * kBlockM;
  const int64_t n0 = (task / args.m_blocks) * kBlockN;
  const int64_t rows_m = std::min(kBlockM, args.m - m0);
  const int64_t rows_n = std::min(kBlockN, args.n - n0);
  const int64_t acc_stride = kBlockN * kDotLanes;
  std::fill(scratch.acc.begin(), scratch.acc.end(), 0.0f);
  switch (args.w_dtype) {
    case DType::kBf16:
      Accumulate<DType::kBf16>(args, m0, rows_m, n0, rows_n, scratch, acc_stride);
      break;
    case DType::kF16:
      Accumulate<DType::kF16>(args, m0, rows_m, n0, rows_n, scratch, acc_stride);
      break;
    case DType::kF32:
      Accumulate<DType::kF32>(args, m0, rows_m, n0, rows_n, scratch, acc_stride);
      break;
  }
  const float* acc = scratch.acc.data();
  for (int64_t r = 0; r < rows_m; ++r) {
    float* y_row = args.y + (m0 + r) * args.n + n0;
    for (int64_t c = 0; c < rows_n; ++c) {
      y_row[c] = CombineLanes(acc + r * acc_stride + c * kDotLanes);
    }
  }
}

FP_KERNELS_TARGET_AVX2 void RunTaskAvx2(const GemmArgs& args, int64_t task) {
  RunTaskBody(args, task);
}

void RunTaskBaseline(const GemmArgs& args, int64_t task) { RunTaskBody(args, task); }

Status ValidateGemm(const float* x, const void* w, DType w_dtype, const float* y, int64_t m,
                    int64_t n, int64_t k) {
  for (const auto& [name, value] : {std::pair{"m", m}, {"n", n}, {"k", k}}) {
    if (value < 0 || value > kGemmMaxDim) {
      return InvalidArgumentError(std::string("gemm: ") + name + " = " + std::to_string(value) +
                                  " is outside [0, " + std::to_string(kGemmMaxDim) + "]");
    }
  }
  if (m == 0 || n == 0) return OkStatus();
  if (x == nullptr && k > 0) return InvalidArgumentError("gemm: x is null");
  if (w == nullptr && k > 0) return InvalidArgumentError("gemm: w is null");
  if (y == nullptr) return InvalidArgumentError("gemm: y is null");
  if (!IsKnownDType(w_dtype)) return InvalidArgumentError("gemm: unknown weight dtype");
  if (w != nullptr && !IsAlignedFor(w, w_dtype)) {
    return InvalidArgumentError(std::string("gemm: w is not aligned for ") +
                                std::string(DTypeName(w_dtype)));
  }
  return OkStatus();
}

}  // namespace

Status Gemm(const float* x, const void* w, DType w_dtype, float* y, int64_t m, int64_t n, int64_t k,
            ThreadPool& pool) {
  FP_RETURN_IF_ERROR(ValidateGemm(x, w, w_dtype, y, m, n, k));
  if (m == 0 || n == 0) return OkStatus();
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return OkStatus();
  }
  const GemmArgs args{x, w, w_dtype, y, m, n, k, (m + kBlockM - 1) / kBlockM};
  const int64_t tasks = args.m_blocks * ((n + kBlockN - 1) / kBlockN);
  const auto run_task = internal::UseAvx2() ? RunTaskAvx2 : RunTaskBaseline;
  pool.ParallelFor(tasks, [&args, run_task](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) run_task(args, task);
  });
  return OkStatus();
}

}  // namespace fp::kernels
