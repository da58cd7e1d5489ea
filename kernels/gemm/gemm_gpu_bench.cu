// Benchmark of LaunchGemm on the TinyLlama-1.1B projection shapes at decode (m 1..256) and
// prefill (m 2048..8192) batch sizes: the dispatcher's choice and every forced tile
// configuration, plus a device-to-device copy as the bandwidth ceiling. JSON on stdout, a table on
// stderr. kernels/gemm/gemm_baseline.py times torch's F.linear (cuBLAS) on the same shapes.
//
// Timing: a CUDA graph of kLaunchesPerGraph back-to-back launches (so the numbers hold no host
// launch latency; it also proves the launcher capturable), CUDA events around each replay, 2
// warm-up replays, median of 25 replays divided by the launches in one. The weights and
// activations rotate over copies filling at least kRotateBytes, so no launch finds its weights in
// the 50 MB L2 left by the previous ones. Data: random bf16 in [-1, 1), generated on the device.
//
// Thread-safety: a single-threaded program.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "kernels/gemm/gemm_cuda.h"

namespace fp::kernels {
namespace {

constexpr int kWarmupRuns = 2;
constexpr int kTimedRuns = 25;
constexpr int kLaunchesPerGraph = 10;
constexpr int64_t kRotateBytes = int64_t{256} << 20;
constexpr int64_t kCopyBytes = int64_t{1} << 30;
constexpr int64_t kBatchSizes[] = {1, 8, 32, 64, 128, 256, 2048, 4096, 8192};

struct Shape {
  const char* name;
  int64_t n, k;
  DType y_dtype;
};
// hidden 2048, intermediate 5632, 32 q heads and 4 KV heads of 64, vocabulary 32000.
constexpr Shape kShapes[] = {
    {"qkv_proj", 2048 + 256 + 256, 2048, DType::kBf16},
    {"o_proj", 2048, 2048, DType::kBf16},
    {"gate_up_proj", 11264, 2048, DType::kBf16},
    {"gate_proj", 5632, 2048, DType::kBf16},
    {"down_proj", 2048, 5632, DType::kBf16},
    {"lm_head", 32000, 2048, DType::kF32},
};

void CheckCuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
  std::exit(1);
}

void CheckOk(const Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "%s\n", status.ToString().c_str());
  std::exit(1);
}

__global__ void FillRandomBf16(__nv_bfloat16* out, int64_t count, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t h = (static_cast<uint64_t>(i) + seed) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    out[i] = __float2bfloat16_rn(static_cast<float>(h >> 40) * 0x1p-23f - 1.0f);
  }
}

// `copies` buffers of `bytes` each, filled with random bf16, in one allocation.
struct Rotation {
  uint8_t* base = nullptr;
  int64_t bytes = 0;
  int copies = 0;
  Rotation(int64_t bytes_each, uint64_t seed) : bytes((bytes_each + 255) / 256 * 256) {
    copies = static_cast<int>(std::max<int64_t>(2, (kRotateBytes + bytes - 1) / bytes));
    CheckCuda(cudaMalloc(&base, bytes * copies), "malloc");
    FillRandomBf16<<<1024, 256>>>(reinterpret_cast<__nv_bfloat16*>(base), bytes * copies / 2, seed);
    CheckCuda(cudaGetLastError(), "fill");
  }
  ~Rotation() { cudaFree(base); }
  Rotation(const Rotation&) = delete;
  Rotation& operator=(const Rotation&) = delete;
  void* Get(int i) const { return base + (i % copies) * bytes; }
};

// Median microseconds of one run(i), from replays of a graph of run(0) .. run(kLaunches - 1).
template <typename Run>
double MedianMicros(cudaStream_t stream, Run run) {
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "event");
  CheckCuda(cudaEventCreate(&stop), "event");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CheckCuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (int i = 0; i < kLaunchesPerGraph; ++i) run(i);
  CheckCuda(cudaStreamEndCapture(stream, &graph), "capture");
  CheckCuda(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  for (int i = 0; i < kWarmupRuns; ++i) CheckCuda(cudaGraphLaunch(exec, stream), "replay");
  std::vector<double> micros;
  for (int i = 0; i < kTimedRuns; ++i) {
    CheckCuda(cudaEventRecord(start, stream), "record");
    CheckCuda(cudaGraphLaunch(exec, stream), "replay");
    CheckCuda(cudaEventRecord(stop, stream), "record");
    CheckCuda(cudaEventSynchronize(stop), "synchronize");
    float milliseconds = 0;
    CheckCuda(cudaEventElapsedTime(&milliseconds, start, stop), "elapsed");
    micros.push_back(1000.0 * milliseconds / kLaunchesPerGraph);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(micros.begin(), micros.end());
  return micros[micros.size() / 2];
}

struct Result {
  const Shape* shape;
  int64_t m;
  GemmTile chosen;
  double auto_us;
  double tile_us[kGemmTileCount];
  int64_t bytes;  // weights + activations read once, output written once
  double flops;
};

Result Measure(const Shape& shape, int64_t m, cudaStream_t stream) {
  Result r{&shape, m, ChooseGemmTile(m, shape.n), 0, {}, 0, 2.0 * m * shape.n * shape.k};
  const int64_t y_bytes = m * shape.n * static_cast<int64_t>(DTypeSize(shape.y_dtype));
  r.bytes = 2 * shape.n * shape.k + 2 * m * shape.k + y_bytes;
  const Rotation weights(2 * shape.n * shape.k, 1 + m);
  const Rotation inputs(2 * m * shape.k, 1000 + m);
  void* y = nullptr;
  CheckCuda(cudaMalloc(&y, y_bytes), "malloc");
  CheckCuda(cudaDeviceSynchronize(), "fill");
  const auto time_tile = [&](GemmTile tile) {
    return MedianMicros(stream, [&](int i) {
      CheckOk(LaunchGemm(inputs.Get(i), weights.Get(i), nullptr, y, shape.y_dtype, m, shape.n,
                         shape.k, stream, tile));
    });
  };
  r.auto_us = time_tile(GemmTile::kAuto);
  for (int t = 0; t < kGemmTileCount; ++t) r.tile_us[t] = time_tile(static_cast<GemmTile>(t));
  cudaFree(y);
  return r;
}

double CopyGigabytesPerSecond(cudaStream_t stream) {
  void *a = nullptr, *b = nullptr;
  CheckCuda(cudaMalloc(&a, kCopyBytes), "malloc");
  CheckCuda(cudaMalloc(&b, kCopyBytes), "malloc");
  const double us = MedianMicros(stream, [&](int) {
    CheckCuda(cudaMemcpyAsync(b, a, kCopyBytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * kCopyBytes / us / 1e3;  // bytes read plus bytes written
}

void PrintJson(const cudaDeviceProp& properties, double copy_gb_per_s,
               const std::vector<Result>& results) {
  std::printf(
      "{\"benchmark\": \"kernels_gemm_gpu\", \"device\": \"%s\", \"compute_capability\": "
      "\"%d.%d\", \"timing\": \"CUDA graph of %d launches; median of %d event-timed replays "
      "after %d warm-up replays, divided by %d; inputs rotated over >= %lld MiB\", "
      "\"copy_gb_per_s\": %.1f, \"results\": [",
      properties.name, properties.major, properties.minor, kLaunchesPerGraph, kTimedRuns,
      kWarmupRuns, kLaunchesPerGraph, static_cast<long long>(kRotateBytes >> 20), copy_gb_per_s);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::printf(
        "%s\n  {\"name\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"out_dtype\": \"%s\", "
        "\"tile\": %d, \"us\": %.3f, \"tflops\": %.2f, \"gb_per_s\": %.1f, \"tile_us\": [",
        i == 0 ? "" : ",", r.shape->name, static_cast<long long>(r.m),
        static_cast<long long>(r.shape->n), static_cast<long long>(r.shape->k),
        r.shape->y_dtype == DType::kF32 ? "f32" : "bf16", static_cast<int>(r.chosen), r.auto_us,
        r.flops / r.auto_us / 1e6, r.bytes / r.auto_us / 1e3);
    for (int t = 0; t < kGemmTileCount; ++t) {
      std::printf("%s%.3f", t == 0 ? "" : ", ", r.tile_us[t]);
    }
    std::printf("]}");
  }
  std::printf("\n]}\n");
}

void PrintTable(double copy_gb_per_s, const std::vector<Result>& results) {
  std::fprintf(stderr, "copy ceiling %.0f GB/s (read + write)\n", copy_gb_per_s);
  std::fprintf(stderr, "%-13s %5s %6s %5s %4s %9s %8s %8s  %s\n", "shape", "m", "n", "k", "tile",
               "us", "TFLOP/s", "GB/s", "us per tile 32x64 64x64 128x128 128x256(wgmma)");
  for (const Result& r : results) {
    std::fprintf(stderr, "%-13s %5lld %6lld %5lld %4d %9.2f %8.1f %8.0f ", r.shape->name,
                 static_cast<long long>(r.m), static_cast<long long>(r.shape->n),
                 static_cast<long long>(r.shape->k), static_cast<int>(r.chosen), r.auto_us,
                 r.flops / r.auto_us / 1e6, r.bytes / r.auto_us / 1e3);
    for (double us : r.tile_us) std::fprintf(stderr, " %8.2f", us);
    std::fprintf(stderr, "\n");
  }
}

}  // namespace
}  // namespace fp::kernels

int main() {
  using namespace fp::kernels;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "SKIPPED: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp properties;
  CheckCuda(cudaGetDeviceProperties(&properties, 0), "device properties");
  cudaStream_t stream;
  CheckCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const double copy_gb_per_s = CopyGigabytesPerSecond(stream);
  std::vector<Result> results;
  for (const Shape& shape : kShapes) {
    for (int64_t m : kBatchSizes) results.push_back(Measure(shape, m, stream));
  }
  cudaStreamDestroy(stream);
  PrintJson(properties, copy_gb_per_s, results);
  PrintTable(copy_gb_per_s, results);
  return 0;
}
