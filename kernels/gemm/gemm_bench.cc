// gemm_bench: times Gemm on LLaMA-like linear-layer shapes (decode m = 1 and prefill m = 128)
// for each weight dtype and thread counts 1, 2, 4, ... max_threads, and prints the best call's
// time, GFLOP/s and weight GB/s, and the mean CPU time per call.
// Usage: kernels_gemm_bench [max_threads]. Not a test; run by hand.
//
// Thread-safety: single-threaded driver.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "kernels/gemm/gemm.h"

namespace fp::kernels {
namespace {

struct Shape {
  int64_t m;
  int64_t n;
  int64_t k;
};

// CPU seconds of the whole process: on a loaded machine this is steadier than wall time.
double ProcessCpuSeconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

struct Timing {
  double wall_seconds;
  double cpu_seconds;
};

Timing SecondsPerCall(const Shape& shape, DType dtype, ThreadPool& pool) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(shape.m * shape.k));
  for (float& value : x) value = uniform(rng);
  // Storage big enough for f32; the same bits read as f16 pairs (1.0), bf16 (2^-7) or f32.
  std::vector<uint32_t> w(static_cast<size_t>(shape.n * shape.k));
  for (uint32_t& value : w) value = 0x3c003c00u;
  std::vector<float> y(static_cast<size_t>(shape.m * shape.n));
  FP_CHECK_OK(Gemm(x.data(), w.data(), dtype, y.data(), shape.m, shape.n, shape.k, pool));
  // The best call: on a shared machine the minimum is the least disturbed measurement.
  int calls = 0;
  double best = 1e30;
  const double cpu_start = ProcessCpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  while (calls < 5 || std::chrono::steady_clock::now() - start < std::chrono::seconds(1)) {
    const auto call_start = std::chrono::steady_clock::now();
    FP_CHECK_OK(Gemm(x.data(), w.data(), dtype, y.data(), shape.m, shape.n, shape.k, pool));
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - call_start).count());
    ++calls;
  }
  return {best, (ProcessCpuSeconds() - cpu_start) / calls};
}

int Run(int max_threads) {
  const Shape shapes[] = {{1, 2048, 2048},  {1, 5632, 2048},   {1, 4096, 4096},
                          {1, 14336, 4096}, {128, 2048, 2048}, {128, 5632, 2048}};
  for (int threads = 1; threads <= max_threads; threads *= 2) {
    StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(threads);
    FP_CHECK_OK(pool);
    for (const Shape& shape : shapes) {
      for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
        const Timing timing = SecondsPerCall(shape, dtype, **pool);
        const double seconds = timing.wall_seconds;
        const double flops = 2.0 * shape.m * shape.n * shape.k;
        const double weight_bytes = static_cast<double>(shape.n * shape.k) * DTypeSize(dtype);
        std::printf(
            "threads %2d  m %4lld n %6lld k %5lld  %-4s  best %9.3f ms  mean cpu %9.3f ms  "
            "%7.2f GFLOP/s  %6.2f weight GB/s (best)\n",
            threads, static_cast<long long>(shape.m), static_cast<long long>(shape.n),
            static_cast<long long>(shape.k), DTypeName(dtype).data(), seconds * 1e3,
            timing.cpu_seconds * 1e3, flops / seconds * 1e-9, weight_bytes / seconds * 1e-9);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace fp::kernels

int main(int argc, char** argv) {
  const int max_threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (max_threads < 1 || max_threads > fp::kernels::ThreadPool::kMaxThreads) {
    std::fprintf(stderr, "usage: kernels_gemm_bench [max_threads]\n");
    return 2;
  }
  return fp::kernels::Run(max_threads);
}
