// Benchmark of the device state digest on bf16 hidden states, rows x width in {1, 32, 256} x
// {2048, 4096, 8192}, against two baselines measured in the same run on the same input: a plain
// device-to-device cudaMemcpy of the same bytes (the bandwidth ceiling for anything that reads the
// tensor) and the CPU reference fp::leaf::RowStateDigests (what hashing on the host would cost,
// before even copying the tensor there). Also the DigestPipeline's host-side Enqueue cost and its
// Enqueue-to-Wait latency. GPU times are CUDA-event medians after warm-up; CPU times are
// steady_clock medians. Every configuration's GPU digests are checked against the CPU reference.
//
// Output: one JSON object on stdout, a short table on stderr. Exit 77 without a CUDA device,
// 1 on a CUDA error or a digest mismatch.
//
// Thread-safety: a single-threaded program.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/leaf/state_digest.h"
#include "kernels/digest/digest_pipeline.h"
#include "kernels/digest/state_digest.cuh"

namespace fp::kernels {
namespace {

constexpr int kWarmupRuns = 5;
constexpr int kTimedRuns = 51;
constexpr int kPipelineRuns = 31;
constexpr int kMaxCpuRuns = 21;
constexpr double kCpuBudgetSeconds = 0.3;  // per configuration, so the whole run stays short
constexpr int kQuantizedBits = 3;          // a representative rounded profile
constexpr int64_t kRowCounts[] = {1, 32, 256};
constexpr int64_t kWidths[] = {2048, 4096, 8192};

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

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median GPU time of `enqueue` on `stream`, in microseconds, each run bracketed by events.
template <typename Enqueue>
double MedianGpuMicros(cudaStream_t stream, Enqueue enqueue) {
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "event");
  CheckCuda(cudaEventCreate(&stop), "event");
  for (int i = 0; i < kWarmupRuns; ++i) enqueue();
  std::vector<double> micros;
  for (int i = 0; i < kTimedRuns; ++i) {
    CheckCuda(cudaEventRecord(start, stream), "record");
    enqueue();
    CheckCuda(cudaEventRecord(stop, stream), "record");
    CheckCuda(cudaEventSynchronize(stop), "synchronize");
    float milliseconds = 0;
    CheckCuda(cudaEventElapsedTime(&milliseconds, start, stop), "elapsed");
    micros.push_back(1000.0 * milliseconds);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(micros);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Result {
  int64_t rows, width, bytes;
  double digest_us, quantized_us, memcpy_us, cpu_us, enqueue_us, pipeline_latency_us;
};

double MedianCpuMicros(const Bytes& tensor, int64_t rows, int64_t width) {
  std::vector<double> micros;
  double spent = 0;
  while (micros.size() < 3 ||
         (spent < kCpuBudgetSeconds && micros.size() < static_cast<size_t>(kMaxCpuRuns))) {
    const auto start = std::chrono::steady_clock::now();
    CheckOk(leaf::RowStateDigests(DType::kBf16, 7, tensor, rows, width).status());
    micros.push_back(1e6 * SecondsSince(start));
    spent += micros.back() / 1e6;
  }
  return Median(micros);
}

// Enqueue-to-Wait latency and the host cost of Enqueue alone, both medians in microseconds.
void MeasurePipeline(const uint8_t* input, int64_t rows, int64_t width, cudaStream_t producer,
                     Result& result) {
  auto pipeline = DigestPipeline::Create(DigestPipelineOptions{
      .dtype = DType::kBf16, .quantize_bits = 7, .max_rows = rows, .max_width = width, .depth = 2});
  CheckOk(pipeline.status());
  std::vector<double> enqueue_us, latency_us;
  for (int i = 0; i < kWarmupRuns + kPipelineRuns; ++i) {
    const auto start = std::chrono::steady_clock::now();
    CheckOk((*pipeline)->Enqueue(input, rows, width, producer).status());
    const double enqueued = SecondsSince(start);
    CheckOk((*pipeline)->Wait().status());
    if (i < kWarmupRuns) continue;
    enqueue_us.push_back(1e6 * enqueued);
    latency_us.push_back(1e6 * SecondsSince(start));
  }
  result.enqueue_us = Median(enqueue_us);
  result.pipeline_latency_us = Median(latency_us);
}

Result Measure(int64_t rows, int64_t width, cudaStream_t stream) {
  Result result{rows, width, rows * width * 2, 0, 0, 0, 0, 0, 0};
  const size_t bytes = static_cast<size_t>(result.bytes);
  Bytes tensor(bytes);
  std::mt19937_64 rng(static_cast<uint64_t>(rows * 100003 + width));
  for (uint8_t& b : tensor) b = static_cast<uint8_t>(rng());
  uint8_t *input = nullptr, *copy = nullptr, *digests = nullptr;
  CheckCuda(cudaMalloc(&input, bytes), "malloc");
  CheckCuda(cudaMalloc(&copy, bytes), "malloc");
  CheckCuda(cudaMalloc(&digests, static_cast<size_t>(rows) * kStateDigestBytes), "malloc");
  CheckCuda(cudaMemcpy(input, tensor.data(), bytes, cudaMemcpyHostToDevice), "upload");
  CheckCuda(cudaDeviceSynchronize(), "upload");

  const auto digest = [&](int bits) {
    CheckOk(LaunchRowStateDigests(input, DType::kBf16, bits, rows, width, digests, stream));
  };
  result.digest_us = MedianGpuMicros(stream, [&] { digest(7); });
  result.quantized_us = MedianGpuMicros(stream, [&] { digest(kQuantizedBits); });
  result.memcpy_us = MedianGpuMicros(stream, [&] {
    CheckCuda(cudaMemcpyAsync(copy, input, bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });

  digest(7);
  Bytes gpu(static_cast<size_t>(rows) * kStateDigestBytes);
  CheckCuda(cudaStreamSynchronize(stream), "digest");
  CheckCuda(cudaMemcpy(gpu.data(), digests, gpu.size(), cudaMemcpyDeviceToHost), "download");
  auto cpu = leaf::RowStateDigests(DType::kBf16, 7, tensor, rows, width);
  CheckOk(cpu.status());
  for (int64_t r = 0; r < rows; ++r) {
    if (!std::equal(cpu->at(r).begin(), cpu->at(r).end(), gpu.begin() + r * kStateDigestBytes)) {
      std::fprintf(stderr, "digest mismatch at rows %lld width %lld row %lld\n",
                   static_cast<long long>(rows), static_cast<long long>(width),
                   static_cast<long long>(r));
      std::exit(1);
    }
  }
  result.cpu_us = MedianCpuMicros(tensor, rows, width);
  MeasurePipeline(input, rows, width, stream, result);
  cudaFree(input);
  cudaFree(copy);
  cudaFree(digests);
  return result;
}

double GigabytesPerSecond(int64_t bytes, double micros) { return bytes / micros / 1e3; }

void PrintJson(const cudaDeviceProp& properties, const std::vector<Result>& results) {
  std::printf(
      "{\"benchmark\": \"kernels_state_digest\", \"device\": \"%s\", "
      "\"compute_capability\": \"%d.%d\", \"dtype\": \"bf16\", \"quantize_bits\": 7, "
      "\"quantized_bits\": %d, \"timing\": \"median of %d CUDA-event runs after %d "
      "warm-up runs; gb_per_s counts the input bytes once\", \"results\": [",
      properties.name, properties.major, properties.minor, kQuantizedBits, kTimedRuns, kWarmupRuns);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::printf(
        "%s\n  {\"rows\": %lld, \"width\": %lld, \"bytes\": %lld, \"digest_us\": %.3f, "
        "\"digests_per_s\": %.0f, \"digest_gb_per_s\": %.3f, \"quantized_digest_us\": %.3f, "
        "\"memcpy_us\": %.3f, \"memcpy_gb_per_s\": %.3f, \"cpu_reference_us\": %.3f, "
        "\"cpu_reference_gb_per_s\": %.3f, \"speedup_vs_cpu\": %.2f, "
        "\"digest_over_memcpy\": %.2f, \"pipeline_enqueue_us\": %.3f, "
        "\"pipeline_latency_us\": %.3f, \"matches_cpu_reference\": true}",
        i == 0 ? "" : ",", static_cast<long long>(r.rows), static_cast<long long>(r.width),
        static_cast<long long>(r.bytes), r.digest_us, r.rows / r.digest_us * 1e6,
        GigabytesPerSecond(r.bytes, r.digest_us), r.quantized_us, r.memcpy_us,
        GigabytesPerSecond(r.bytes, r.memcpy_us), r.cpu_us, GigabytesPerSecond(r.bytes, r.cpu_us),
        r.cpu_us / r.digest_us, r.digest_us / r.memcpy_us, r.enqueue_us, r.pipeline_latency_us);
  }
  std::printf("\n]}\n");
}

void PrintTable(const std::vector<Result>& results) {
  std::fprintf(stderr, "%5s %6s %10s %10s %9s %10s %11s %9s %11s\n", "rows", "width", "digest_us",
               "digests/s", "GB/s", "memcpy_us", "cpu_ref_us", "vs_cpu", "pipe_lat_us");
  for (const Result& r : results) {
    std::fprintf(stderr, "%5lld %6lld %10.2f %10.3g %9.2f %10.2f %11.1f %8.1fx %11.1f\n",
                 static_cast<long long>(r.rows), static_cast<long long>(r.width), r.digest_us,
                 r.rows / r.digest_us * 1e6, GigabytesPerSecond(r.bytes, r.digest_us), r.memcpy_us,
                 r.cpu_us, r.cpu_us / r.digest_us, r.pipeline_latency_us);
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
  std::vector<Result> results;
  for (int64_t rows : kRowCounts) {
    for (int64_t width : kWidths) results.push_back(Measure(rows, width, stream));
  }
  cudaStreamDestroy(stream);
  PrintJson(properties, results);
  PrintTable(results);
  return 0;
}
