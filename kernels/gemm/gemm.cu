// The batch-invariant GEMM kernel and its launcher; the design and the invariance argument are in
// gemm_cuda.h.
//
// Thread-safety: LaunchGemm is reentrant; concurrent launches must write disjoint outputs.
#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>

#include <cuda_bf16.h>

#include "kernels/base/cuda_status.h"
#include "kernels/gemm/gemm_cuda.h"

namespace fp::kernels {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMmaW = 16;          // weight rows per mma.m16n8k16 (its M)
constexpr int kMmaT = 8;           // tokens per mma (its N)
constexpr int kMmaK = 16;          // products per element per mma (its K)
constexpr int kChunkBytes = 16;    // one cp.async / one ldmatrix row
constexpr int kChunkElements = 8;  // bf16 per chunk
constexpr int kSwizzleRows = 8;    // ldmatrix reads 8 rows at once: XOR chunk with row % 8
// Raster: CTAs walk groups of this many weight tiles, weight tile fastest, so the CTAs resident
// at one time share both their weight rows and their token rows in L2.
constexpr int kRasterGroup = 8;
constexpr int kMaxSharedBytes = 227 * 1024;  // per block on sm_90 after opting in

// One tile configuration: kWarpsW x kWarpsT warps, each owning kFragsW x kFragsT MMA tiles of
// 16 weight rows x 8 tokens; k arrives in blocks of kBlockK through kStages shared-memory stages.
template <int kWarpsW_, int kWarpsT_, int kFragsW_, int kFragsT_, int kBlockK_, int kStages_,
          bool kWgmma_ = false>
struct Config {
  static constexpr int kWarpsW = kWarpsW_;
  static constexpr int kWarpsT = kWarpsT_;
  static constexpr int kFragsW = kFragsW_;
  static constexpr int kFragsT = kFragsT_;
  static constexpr int kBlockK = kBlockK_;
  static constexpr int kStages = kStages_;
  static constexpr bool kWgmma = kWgmma_;
  static constexpr int kThreads = kWarpSize * kWarpsW * kWarpsT;
  static constexpr int kTileW = kWarpsW * kFragsW * kMmaW;
  static constexpr int kTileT = kWarpsT * kFragsT * kMmaT;
  static constexpr int kChunksPerRow = kBlockK / kChunkElements;
  static constexpr int kRowBytes = kBlockK * 2;
  static constexpr int kStageBytes = (kTileW + kTileT) * kRowBytes;
  static constexpr int kSharedBytes = kStageBytes * kStages;
  static constexpr int kStepsPerBlock = kBlockK / kMmaK;

  static_assert(kChunksPerRow % kSwizzleRows == 0, "the swizzle needs 8 chunks per row");
  static_assert(kFragsT % 2 == 0, "token fragments are loaded in pairs (ldmatrix.x4)");
  static_assert(kTileW * kChunksPerRow % kThreads == 0, "weight chunks split evenly");
  static_assert(kTileT * kChunksPerRow % kThreads == 0, "token chunks split evenly");
  static_assert(kStages >= 2 && kSharedBytes <= kMaxSharedBytes);
  // wgmma: two warpgroups of 64 weight rows x 256 tokens; each warp's accumulators then sit
  // exactly where the mma.sync layout of a 16 x 256 warp tile puts them.
  static_assert(!kWgmma || (kWarpsW == 8 && kWarpsT == 1 && kFragsW == 1 && kFragsT == 32 &&
                            kBlockK == 64 && kStageBytes % 1024 == 0));
};

// Indexed by GemmTile.
using Config32x64 = Config<2, 2, 1, 4, 128, 4>;
using Config64x64 = Config<2, 2, 2, 4, 64, 6>;
using Config128x128 = Config<2, 4, 4, 4, 64, 4>;
using Config128x256 = Config<8, 1, 1, 32, 64, 4, true>;

struct TileShape {
  int64_t weights;
  int64_t tokens;
};
constexpr TileShape kTileShapes[kGemmTileCount] = {
    {Config32x64::kTileW, Config32x64::kTileT},
    {Config64x64::kTileW, Config64x64::kTileT},
    {Config128x128::kTileW, Config128x128::kTileT},
    {Config128x256::kTileW, Config128x256::kTileT},
};

// The dispatcher takes the first rule whose batch is at least min_m tall and whose tile still
// makes min_ctas CTAs, else k32x64. Fitted to the H100 timings of every tile forced on every
// TinyLlama shape (kernels_gemm_gpu_bench, 2026-11-28): with these rules the chosen tile is the
// fastest one, within timing noise, on all 54 benchmarked shapes. The big tiles need about 80 CTAs
// (and enough tokens not to multiply mostly padding); 64x64 beats 32x64 only with 160 or more.
struct DispatchRule {
  GemmTile tile;
  int64_t min_m;
  int64_t min_ctas;
};
constexpr DispatchRule kDispatchRules[] = {
    {GemmTile::k128x256, 256, 80}, {GemmTile::k128x128, 128, 80}, {GemmTile::k64x64, 1, 160}};

struct Params {
  const __nv_bfloat16* x;         // [m, k]
  const __nv_bfloat16* w;         // [n, k]
  const __nv_bfloat16* residual;  // [m, n] or null; may equal y
  void* y;                        // [m, n] bf16 or f32
  int m, n, k;
  int w_tiles, t_tiles;
};

__device__ __forceinline__ uint32_t SharedAddress(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Byte offset of 16-byte chunk `chunk` of tile row `row`: chunks XOR-swizzled by row % 8, so the
// 8 rows one ldmatrix phase reads (same logical chunk) fall in 8 different bank groups.
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk, int row_bytes) {
  return static_cast<uint32_t>(row * row_bytes + ((chunk ^ (row % kSwizzleRows)) * kChunkBytes));
}

// 16 bytes global -> shared, or 16 zero bytes when !valid (nothing is read then).
__device__ __forceinline__ void CopyChunk(uint32_t destination, const void* source, bool valid) {
  const int bytes = valid ? kChunkBytes : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(source),
               "r"(bytes));
}

__device__ __forceinline__ void CommitGroup() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void WaitGroup() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void LoadMatrixX4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// acc += A (16 weight rows x 16 k) * B (16 k x 8 tokens), the only arithmetic on accumulators.
__device__ __forceinline__ void Mma(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Issues the cp.async copies of k-block `block` (weight rows then token rows) into one stage.
// Rows past n or m and chunks past k become zeros.
template <class C>
__device__ __forceinline__ void LoadStage(const Params& p, uint32_t stage, int w0, int t0,
                                          int block) {
  const int k_begin = block * C::kBlockK;
#pragma unroll
  for (int i = 0; i < C::kTileW * C::kChunksPerRow / C::kThreads; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * C::kThreads;
    const int row = index / C::kChunksPerRow;
    const int chunk = index % C::kChunksPerRow;
    const int column = k_begin + chunk * kChunkElements;
    const bool valid = w0 + row < p.n && column < p.k;
    const __nv_bfloat16* source = p.w + static_cast<int64_t>(w0 + row) * p.k + column;
    CopyChunk(stage + SwizzledOffset(row, chunk, C::kRowBytes), valid ? source : p.w, valid);
  }
  const uint32_t token_stage = stage + C::kTileW * C::kRowBytes;
#pragma unroll
  for (int i = 0; i < C::kTileT * C::kChunksPerRow / C::kThreads; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * C::kThreads;
    const int row = index / C::kChunksPerRow;
    const int chunk = index % C::kChunksPerRow;
    const int column = k_begin + chunk * kChunkElements;
    const bool valid = t0 + row < p.m && column < p.k;
    const __nv_bfloat16* source = p.x + static_cast<int64_t>(t0 + row) * p.k + column;
    CopyChunk(token_stage + SwizzledOffset(row, chunk, C::kRowBytes), valid ? source : p.x, valid);
  }
}

// The warp's MMAs of k16 step `s` of one stage.
template <class C>
__device__ __forceinline__ void ComputeStep(uint32_t stage, int warp_w, int warp_t, int lane, int s,
                                            float (&acc)[C::kFragsW][C::kFragsT][4]) {
  const uint32_t token_stage = stage + C::kTileW * C::kRowBytes;
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
  uint32_t a[C::kFragsW][4];
#pragma unroll
  for (int f = 0; f < C::kFragsW; ++f) {
    const int row = (warp_w * C::kFragsW + f) * kMmaW + lane % 16;
    LoadMatrixX4(a[f], stage + SwizzledOffset(row, 2 * s + lane / 16, C::kRowBytes));
  }
  // B for two token fragments at a time, used at once so few registers hold B:
  // (tokens 0-7, k 0-7), (0-7, k 8-15), (8-15, k 0-7), (8-15, k 8-15).
#pragma unroll
  for (int f = 0; f < C::kFragsT; f += 2) {
    const int row = (warp_t * C::kFragsT + f) * kMmaT + lane % 8 + (lane / 16) * 8;
    uint32_t b[4];
    LoadMatrixX4(b, token_stage + SwizzledOffset(row, 2 * s + (lane / 8) % 2, C::kRowBytes));
#pragma unroll
    for (int fw = 0; fw < C::kFragsW; ++fw) {
      Mma(acc[fw][f], a[fw], b[0], b[1]);
      Mma(acc[fw][f + 1], a[fw], b[2], b[3]);
    }
  }
}

// The warp's MMAs over the first `steps` k16 steps of one stage, in increasing k. A full stage is
// one straight run of code, so the scheduler can load the next step's fragments while the
// current step's MMAs run; only the last stage of a k that is not a multiple of kBlockK loops.
template <class C>
__device__ __forceinline__ void ComputeStage(uint32_t stage, int warp_w, int warp_t, int lane,
                                             int steps, float (&acc)[C::kFragsW][C::kFragsT][4]) {
  if (steps >= C::kStepsPerBlock) {
#pragma unroll
    for (int s = 0; s < C::kStepsPerBlock; ++s) ComputeStep<C>(stage, warp_w, warp_t, lane, s, acc);
  } else {
#pragma unroll 1
    for (int s = 0; s < steps; ++s) ComputeStep<C>(stage, warp_w, warp_t, lane, s, acc);
  }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle layout: rows of
// 64 bf16 (128 bytes), 8-row atoms of 1024 bytes (1024-byte aligned) stacked along M or N. It is
// the layout LoadStage writes (chunk ^ row % 8 over 128-byte rows). Leading offset unused (1),
// stride offset 1024 bytes, layout type 1 (128-byte swizzle). Adding 2 moves 32 bytes along k.
__device__ __forceinline__ uint64_t SwizzledDescriptor(uint32_t address) {
  return uint64_t{(address & 0x3ffffu) >> 4} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// One wgmma.m64n256k16 (bf16 in, f32 accumulate): acc (64 weight rows x 256 tokens of this
// warpgroup, in the m16n8k16 accumulator layout of warp w % 4) += A(desc) * B(desc).
__device__ __forceinline__ void Wgmma64x256(float (&acc)[32][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, "
      "%127"
      "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(acc[0][0]), "+f"(acc[0][1]), "+f"(acc[0][2]), "+f"(acc[0][3]), "+f"(acc[1][0]),
        "+f"(acc[1][1]), "+f"(acc[1][2]), "+f"(acc[1][3]), "+f"(acc[2][0]), "+f"(acc[2][1]),
        "+f"(acc[2][2]), "+f"(acc[2][3]), "+f"(acc[3][0]), "+f"(acc[3][1]), "+f"(acc[3][2]),
        "+f"(acc[3][3]), "+f"(acc[4][0]), "+f"(acc[4][1]), "+f"(acc[4][2]), "+f"(acc[4][3]),
        "+f"(acc[5][0]), "+f"(acc[5][1]), "+f"(acc[5][2]), "+f"(acc[5][3]), "+f"(acc[6][0]),
        "+f"(acc[6][1]), "+f"(acc[6][2]), "+f"(acc[6][3]), "+f"(acc[7][0]), "+f"(acc[7][1]),
        "+f"(acc[7][2]), "+f"(acc[7][3]), "+f"(acc[8][0]), "+f"(acc[8][1]), "+f"(acc[8][2]),
        "+f"(acc[8][3]), "+f"(acc[9][0]), "+f"(acc[9][1]), "+f"(acc[9][2]), "+f"(acc[9][3]),
        "+f"(acc[10][0]), "+f"(acc[10][1]), "+f"(acc[10][2]), "+f"(acc[10][3]), "+f"(acc[11][0]),
        "+f"(acc[11][1]), "+f"(acc[11][2]), "+f"(acc[11][3]), "+f"(acc[12][0]), "+f"(acc[12][1]),
        "+f"(acc[12][2]), "+f"(acc[12][3]), "+f"(acc[13][0]), "+f"(acc[13][1]), "+f"(acc[13][2]),
        "+f"(acc[13][3]), "+f"(acc[14][0]), "+f"(acc[14][1]), "+f"(acc[14][2]), "+f"(acc[14][3]),
        "+f"(acc[15][0]), "+f"(acc[15][1]), "+f"(acc[15][2]), "+f"(acc[15][3]), "+f"(acc[16][0]),
        "+f"(acc[16][1]), "+f"(acc[16][2]), "+f"(acc[16][3]), "+f"(acc[17][0]), "+f"(acc[17][1]),
        "+f"(acc[17][2]), "+f"(acc[17][3]), "+f"(acc[18][0]), "+f"(acc[18][1]), "+f"(acc[18][2]),
        "+f"(acc[18][3]), "+f"(acc[19][0]), "+f"(acc[19][1]), "+f"(acc[19][2]), "+f"(acc[19][3]),
        "+f"(acc[20][0]), "+f"(acc[20][1]), "+f"(acc[20][2]), "+f"(acc[20][3]), "+f"(acc[21][0]),
        "+f"(acc[21][1]), "+f"(acc[21][2]), "+f"(acc[21][3]), "+f"(acc[22][0]), "+f"(acc[22][1]),
        "+f"(acc[22][2]), "+f"(acc[22][3]), "+f"(acc[23][0]), "+f"(acc[23][1]), "+f"(acc[23][2]),
        "+f"(acc[23][3]), "+f"(acc[24][0]), "+f"(acc[24][1]), "+f"(acc[24][2]), "+f"(acc[24][3]),
        "+f"(acc[25][0]), "+f"(acc[25][1]), "+f"(acc[25][2]), "+f"(acc[25][3]), "+f"(acc[26][0]),
        "+f"(acc[26][1]), "+f"(acc[26][2]), "+f"(acc[26][3]), "+f"(acc[27][0]), "+f"(acc[27][1]),
        "+f"(acc[27][2]), "+f"(acc[27][3]), "+f"(acc[28][0]), "+f"(acc[28][1]), "+f"(acc[28][2]),
        "+f"(acc[28][3]), "+f"(acc[29][0]), "+f"(acc[29][1]), "+f"(acc[29][2]), "+f"(acc[29][3]),
        "+f"(acc[30][0]), "+f"(acc[30][1]), "+f"(acc[30][2]), "+f"(acc[30][3]), "+f"(acc[31][0]),
        "+f"(acc[31][1]), "+f"(acc[31][2]), "+f"(acc[31][3])
      : "l"(a), "l"(b), "r"(1));
}
#endif

// The wgmma configuration's stage: each warpgroup's MMAs over the first `steps` k16 steps, in
// increasing k, completed before returning (the next copy may overwrite the stage). Off sm_90a
// the same products go through mma.sync in the same order.
template <class C>
__device__ __forceinline__ void ComputeStageWgmma(uint32_t stage, int warp, int lane, int steps,
                                                  float (&acc)[C::kFragsW][C::kFragsT][4]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  const uint64_t a = SwizzledDescriptor(stage + warp / 4 * 64 * C::kRowBytes);
  const uint64_t b = SwizzledDescriptor(stage + C::kTileW * C::kRowBytes);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int s = 0; s < C::kStepsPerBlock; ++s) {
    if (s < steps) Wgmma64x256(acc[0], a + 2 * s, b + 2 * s);
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#else
  ComputeStage<C>(stage, warp, 0, lane, steps, acc);
#endif
}

// y[row, column] = (residual +) value, rounded once to the output type.
template <bool kF32Out>
__device__ __forceinline__ void StoreOutput(const Params& p, int row, int column, float value) {
  const int64_t index = static_cast<int64_t>(row) * p.n + column;
  if (p.residual != nullptr) value = __fadd_rn(__bfloat162float(p.residual[index]), value);
  if constexpr (kF32Out) {
    static_cast<float*>(p.y)[index] = value;
  } else {
    static_cast<__nv_bfloat16*>(p.y)[index] = __float2bfloat16_rn(value);
  }
}

template <class C, bool kF32Out>
__global__ void __launch_bounds__(C::kThreads, 1) GemmKernel(const Params p) {
  extern __shared__ __align__(1024) uint8_t shared[];
  const int tile = static_cast<int>(blockIdx.x);
  const int group_tiles = kRasterGroup * p.t_tiles;
  const int first_w = tile / group_tiles * kRasterGroup;
  const int group_w = min(p.w_tiles - first_w, kRasterGroup);
  const int in_group = tile % group_tiles;
  const int w0 = (first_w + in_group % group_w) * C::kTileW;
  const int t0 = in_group / group_w * C::kTileT;

  const uint32_t base = SharedAddress(shared);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp_w = warp % C::kWarpsW;
  const int warp_t = warp / C::kWarpsW;
  // Warps whose tokens or weight rows all lie past m or n skip the MMAs (their outputs are never
  // stored; no other warp's arithmetic depends on them).
  // wgmma needs its whole warpgroup (64 weight rows), so it decides per warpgroup.
  const int first_row = C::kWgmma ? warp / 4 * 64 : warp_w * C::kFragsW * kMmaW;
  const bool active = t0 + warp_t * C::kFragsT * kMmaT < p.m && w0 + first_row < p.n;

  float acc[C::kFragsW][C::kFragsT][4];
#pragma unroll
  for (int fw = 0; fw < C::kFragsW; ++fw) {
#pragma unroll
    for (int ft = 0; ft < C::kFragsT; ++ft) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[fw][ft][e] = 0.0f;
    }
  }

  const int blocks = (p.k + C::kBlockK - 1) / C::kBlockK;
  const int steps = (p.k + kMmaK - 1) / kMmaK;
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < blocks) LoadStage<C>(p, base + s * C::kStageBytes, w0, t0, s);
    CommitGroup();
  }
  for (int block = 0; block < blocks; ++block) {
    WaitGroup<C::kStages - 2>();
    // The tensor cores read wgmma operands through the async proxy.
    if constexpr (C::kWgmma) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    // Block `block` is visible to all warps, and every warp is done with block - 1, whose stage
    // the next copy overwrites.
    __syncthreads();
    const int next = block + C::kStages - 1;
    if (next < blocks) LoadStage<C>(p, base + next % C::kStages * C::kStageBytes, w0, t0, next);
    CommitGroup();
    if (active) {
      const uint32_t stage = base + block % C::kStages * C::kStageBytes;
      const int stage_steps = steps - block * C::kStepsPerBlock;
      if constexpr (C::kWgmma) {
        ComputeStageWgmma<C>(stage, warp, lane, stage_steps, acc);
      } else {
        ComputeStage<C>(stage, warp_w, warp_t, lane, stage_steps, acc);
      }
    }
  }
  WaitGroup<0>();

  // Accumulator layout of m16n8k16: e0, e1 at (weight row g, tokens 2q, 2q + 1), e2, e3 at
  // (weight row g + 8, same tokens), g = lane / 4, q = lane % 4.
  const int g = lane / 4;
  const int q = lane % 4;
#pragma unroll
  for (int fw = 0; fw < C::kFragsW; ++fw) {
#pragma unroll
    for (int ft = 0; ft < C::kFragsT; ++ft) {
      const int column = w0 + (warp_w * C::kFragsW + fw) * kMmaW + g;
      const int row = t0 + (warp_t * C::kFragsT + ft) * kMmaT + 2 * q;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = row + e % 2;
        const int c = column + (e / 2) * 8;
        if (r < p.m && c < p.n) StoreOutput<kF32Out>(p, r, c, acc[fw][ft][e]);
      }
    }
  }
}

template <class C, bool kF32Out>
Status LaunchConfig(const Params& p, cudaStream_t stream) {
  const auto kernel = GemmKernel<C, kF32Out>;
  FP_RETURN_IF_ERROR(CudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes),
      "gemm: raising the shared-memory limit"));
  const unsigned tiles = static_cast<unsigned>(p.w_tiles) * static_cast<unsigned>(p.t_tiles);
  kernel<<<tiles, C::kThreads, C::kSharedBytes, stream>>>(p);
  return CudaStatus(cudaGetLastError(), "gemm: launch");
}

template <bool kF32Out>
Status LaunchTile(GemmTile tile, const Params& p, cudaStream_t stream) {
  switch (tile) {
    case GemmTile::k32x64:
      return LaunchConfig<Config32x64, kF32Out>(p, stream);
    case GemmTile::k64x64:
      return LaunchConfig<Config64x64, kF32Out>(p, stream);
    case GemmTile::k128x128:
      return LaunchConfig<Config128x128, kF32Out>(p, stream);
    case GemmTile::k128x256:
      return LaunchConfig<Config128x256, kF32Out>(p, stream);
    case GemmTile::kAuto:
      break;
  }
  return InternalError("gemm: unresolved tile");
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool Aligned(const void* pointer, size_t alignment) {
  return reinterpret_cast<uintptr_t>(pointer) % alignment == 0;
}

// True when [a, a + a_bytes) and [b, b + b_bytes) share a byte.
bool Overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const auto a0 = reinterpret_cast<uintptr_t>(a);
  const auto b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + static_cast<uintptr_t>(b_bytes) && b0 < a0 + static_cast<uintptr_t>(a_bytes);
}

Status ValidateSizes(DType y_dtype, int64_t m, int64_t n, int64_t k, GemmTile tile) {
  for (const auto& [name, value, limit] :
       {std::tuple{"m", m, kGemmCudaMaxM}, std::tuple{"n", n, kGemmCudaMaxN},
        std::tuple{"k", k, kGemmCudaMaxK}}) {
    if (value < 0 || value > limit) {
      return InvalidArgumentError(std::string("gemm: ") + name + " = " + std::to_string(value) +
                                  " is outside [0, " + std::to_string(limit) + "]");
    }
  }
  if (k % kGemmCudaKAlignment != 0) {
    return InvalidArgumentError("gemm: k = " + std::to_string(k) + " is not a multiple of " +
                                std::to_string(kGemmCudaKAlignment));
  }
  if (y_dtype != DType::kBf16 && y_dtype != DType::kF32) {
    return InvalidArgumentError("gemm: the output dtype must be bf16 or f32");
  }
  const int index = static_cast<int>(tile);
  if (tile != GemmTile::kAuto && (index < 0 || index >= kGemmTileCount)) {
    return InvalidArgumentError("gemm: unknown tile configuration " + std::to_string(index));
  }
  return OkStatus();
}

Status ValidatePointers(const void* x, const void* w, const void* residual, const void* y,
                        DType y_dtype, int64_t m, int64_t n, int64_t k) {
  if (y == nullptr) return InvalidArgumentError("gemm: y is null");
  if (!Aligned(y, DTypeSize(y_dtype))) return InvalidArgumentError("gemm: y is misaligned");
  const int64_t y_bytes = m * n * static_cast<int64_t>(DTypeSize(y_dtype));
  if (k > 0) {
    if (x == nullptr || w == nullptr) return InvalidArgumentError("gemm: x or w is null");
    if (!Aligned(x, 16) || !Aligned(w, 16)) {
      return InvalidArgumentError("gemm: x and w must be 16-byte aligned");
    }
    if (Overlap(y, y_bytes, x, m * k * 2) || Overlap(y, y_bytes, w, n * k * 2)) {
      return InvalidArgumentError("gemm: y overlaps x or w");
    }
  }
  if (residual != nullptr) {
    if (!Aligned(residual, 2)) return InvalidArgumentError("gemm: residual is misaligned");
    const bool in_place = residual == y && y_dtype == DType::kBf16;
    if (!in_place && Overlap(y, y_bytes, residual, m * n * 2)) {
      return InvalidArgumentError("gemm: the residual overlaps y without being y (bf16)");
    }
  }
  return OkStatus();
}

}  // namespace

GemmTile ChooseGemmTile(int64_t m, int64_t n) {
  for (const DispatchRule& rule : kDispatchRules) {
    const TileShape& shape = kTileShapes[static_cast<int>(rule.tile)];
    if (m >= rule.min_m && CeilDiv(n, shape.weights) * CeilDiv(m, shape.tokens) >= rule.min_ctas) {
      return rule.tile;
    }
  }
  return GemmTile::k32x64;
}

Status LaunchGemm(const void* x, const void* w, const void* residual, void* y, DType y_dtype,
                  int64_t m, int64_t n, int64_t k, cudaStream_t stream, GemmTile tile) {
  FP_RETURN_IF_ERROR(ValidateSizes(y_dtype, m, n, k, tile));
  if (m == 0 || n == 0) return OkStatus();
  FP_RETURN_IF_ERROR(ValidatePointers(x, w, residual, y, y_dtype, m, n, k));
  if (tile == GemmTile::kAuto) tile = ChooseGemmTile(m, n);
  const TileShape shape = kTileShapes[static_cast<int>(tile)];
  const int64_t w_tiles = CeilDiv(n, shape.weights);
  const int64_t t_tiles = CeilDiv(m, shape.tokens);
  if (w_tiles * t_tiles > INT32_MAX) {
    return InvalidArgumentError("gemm: " + std::to_string(w_tiles * t_tiles) +
                                " tiles exceed one grid");
  }
  const Params p{static_cast<const __nv_bfloat16*>(x),
                 static_cast<const __nv_bfloat16*>(w),
                 static_cast<const __nv_bfloat16*>(residual),
                 y,
                 static_cast<int>(m),
                 static_cast<int>(n),
                 static_cast<int>(k),
                 static_cast<int>(w_tiles),
                 static_cast<int>(t_tiles)};
  return y_dtype == DType::kF32 ? LaunchTile<true>(tile, p, stream)
                                : LaunchTile<false>(tile, p, stream);
}

}  // namespace fp::kernels
