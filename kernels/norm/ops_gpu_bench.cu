// Benchmark of the small batch-invariant ops at TinyLlama shapes (hidden 2048, 32 q heads and
// 4 kv heads of 64, intermediate 5632, vocab 32000) for batches of 1, 32 and 256 rows: RMSNorm,
// fused residual-add + RMSNorm, RoPE on q and k, SwiGLU (separate and fused gate/up), embedding
// lookup, residual add, and the sampler (greedy, full-vocabulary top-p, top-k 40). Each op's
// bytes (every input read once, every output written once) over its time give GB/s, set against
// a 16-byte device copy kernel of the same byte count and a 256 MiB copy (the bandwidth ceiling),
// both measured in this binary on the same card.
//
// Timing: CUDA events around kLaunchesPerSample back-to-back launches (so launch overhead is
// counted once per launch, as in a CUDA-graph-free engine), the median of kSamples samples after
// warm-up. Inputs rotate through a 256 MiB arena of random data (larger than the 50 MB L2), so
// every launch reads cold memory.
//
// Output: one JSON object on stdout, a table on stderr. Exit 77 without a CUDA device, 1 on a
// CUDA or launcher error.
//
// Thread-safety: a single-threaded program.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "kernels/activation/activation_cuda.h"
#include "kernels/base/half.h"
#include "kernels/norm/rms_norm_cuda.h"
#include "kernels/rope/rope_cuda.h"
#include "kernels/sampling/sampler_cuda.h"

namespace fp::kernels {
namespace {

constexpr int64_t kHidden = 2048, kQHeads = 32, kKvHeads = 4, kHeadDim = 64;
constexpr int64_t kIntermediate = 5632, kVocab = 32000, kMaxPositions = 4096;
constexpr int64_t kBatches[] = {1, 32, 256};
constexpr size_t kArenaBytes = size_t{256} << 20;
constexpr size_t kCeilingBytes = size_t{256} << 20;
constexpr int kWarmupSamples = 3, kSamples = 21, kLaunchesPerSample = 20;

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

__global__ void CopyKernel(const uint4* __restrict__ in, uint4* __restrict__ out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i];
  }
}

// Random device data that inputs are carved from at rotating offsets.
class Arena {
 public:
  explicit Arena(size_t bytes) : bytes_(bytes) {
    CheckCuda(cudaMalloc(&data_, bytes), "arena");
    std::vector<uint16_t> host(bytes / 2);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (uint16_t& h : host) h = F32ToBf16(normal(rng));
    CheckCuda(cudaMemcpy(data_, host.data(), bytes, cudaMemcpyHostToDevice), "arena upload");
  }
  ~Arena() { cudaFree(data_); }
  // A 256-byte aligned slice of `bytes`, different for each call (wrapping around).
  uint8_t* Next(size_t bytes) {
    const size_t slice = (bytes + 255) / 256 * 256;
    if (offset_ + slice > bytes_) offset_ = 0;
    uint8_t* p = static_cast<uint8_t*>(data_) + offset_;
    offset_ += slice;
    return p;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_;
  size_t offset_ = 0;
};

// Median microseconds per launch of `launch` (which picks its own rotated buffers).
double MedianMicros(cudaStream_t stream, const std::function<void()>& launch) {
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "event");
  CheckCuda(cudaEventCreate(&stop), "event");
  std::vector<double> micros;
  for (int s = 0; s < kWarmupSamples + kSamples; ++s) {
    CheckCuda(cudaEventRecord(start, stream), "record");
    for (int l = 0; l < kLaunchesPerSample; ++l) launch();
    CheckCuda(cudaEventRecord(stop, stream), "record");
    CheckCuda(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    CheckCuda(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    if (s >= kWarmupSamples) micros.push_back(1000.0 * ms / kLaunchesPerSample);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(micros.begin(), micros.end());
  return micros[micros.size() / 2];
}

struct Row {
  std::string op;
  int64_t batch, bytes;
  double us, copy_us;
};

struct Context {
  cudaStream_t stream;
  Arena inputs{kArenaBytes};
  Arena outputs{kArenaBytes};
  uint32_t* flags = nullptr;
  RopeDeviceTable rope{};
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

double CopyMicros(Context& c, int64_t bytes) {
  const int64_t vectors = (bytes + 15) / 16;
  const int blocks = static_cast<int>(std::min<int64_t>((vectors + 255) / 256, 132 * 16));
  return MedianMicros(c.stream, [&] {
    CopyKernel<<<blocks, 256, 0, c.stream>>>(
        reinterpret_cast<const uint4*>(c.inputs.Next(vectors * 16)),
        reinterpret_cast<uint4*>(c.outputs.Next(vectors * 16)), vectors);
  });
}

// Device int32 ids / positions in [0, bound) for `count` rows, and sampling parameters.
template <typename T>
T* UploadVector(const std::vector<T>& host) {
  T* device = nullptr;
  CheckCuda(cudaMalloc(&device, host.size() * sizeof(T)), "malloc");
  CheckCuda(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            "upload");
  return device;
}

void MeasureBatch(Context& c, int64_t b, std::vector<Row>& rows) {
  std::mt19937 rng(static_cast<uint32_t>(b));
  std::vector<int32_t> ids(b), positions(b);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % kVocab);
  for (int32_t& p : positions) p = static_cast<int32_t>(rng() % kMaxPositions);
  int32_t* d_ids = UploadVector(ids);
  int32_t* d_positions = UploadVector(positions);
  std::vector<uint64_t> steps(b);
  for (int64_t i = 0; i < b; ++i) steps[i] = static_cast<uint64_t>(i);
  uint64_t* d_steps = UploadVector(steps);
  int32_t* d_tokens = nullptr;
  CheckCuda(cudaMalloc(&d_tokens, b * 4), "tokens");
  auto* weight = c.inputs.Next(kHidden * 2);  // stays resident, like a layer's norm weight
  auto* table = c.inputs.Next(kVocab * kHidden * 2);
  const int64_t h = b * kHidden * 2, qk = b * (kQHeads + kKvHeads) * kHeadDim * 2;
  const int64_t inter = b * kIntermediate * 2;
  const auto add = [&](const char* op, int64_t bytes, const std::function<void()>& launch) {
    rows.push_back({op, b, bytes, MedianMicros(c.stream, launch), CopyMicros(c, bytes / 2)});
  };
  add("rms_norm", 2 * h + kHidden * 2, [&] {
    CheckOk(
        LaunchRmsNorm(c.inputs.Next(h), weight, 1e-5f, c.outputs.Next(h), b, kHidden, c.stream));
  });
  add("fused_add_rms_norm", 4 * h + kHidden * 2, [&] {
    CheckOk(LaunchFusedAddRmsNorm(c.outputs.Next(h), c.inputs.Next(h), weight, 1e-5f,
                                  c.outputs.Next(h), b, kHidden, c.stream));
  });
  add("rope_q_k", 2 * qk + b * kHeadDim * 4, [&] {
    uint8_t* q = c.outputs.Next(qk);
    CheckOk(LaunchRope(c.rope, q, q + b * kQHeads * kHeadDim * 2, d_positions, b, kQHeads, kKvHeads,
                       kHeadDim, c.flags, c.stream));
  });
  add("swiglu", 3 * inter, [&] {
    CheckOk(LaunchSwiGlu(c.inputs.Next(inter), c.inputs.Next(inter), c.outputs.Next(inter), b,
                         kIntermediate, c.stream));
  });
  add("swiglu_fused", 3 * inter, [&] {
    CheckOk(LaunchSwiGluFused(c.inputs.Next(2 * inter), c.outputs.Next(inter), b, kIntermediate,
                              c.stream));
  });
  add("embedding", 2 * h + b * 4, [&] {
    CheckOk(
        LaunchEmbedding(d_ids, table, c.outputs.Next(h), b, kVocab, kHidden, c.flags, c.stream));
  });
  add("residual_add", 3 * h, [&] {
    CheckOk(LaunchResidualAdd(c.outputs.Next(h), c.inputs.Next(h), b * kHidden, c.stream));
  });
  const SamplingParams settings[] = {{0.0f, 0, 1.0f, 1}, {1.0f, 0, 0.9f, 1}, {0.8f, 40, 1.0f, 1}};
  const char* names[] = {"sample_greedy", "sample_top_p_0.9", "sample_top_k_40"};
  for (int s = 0; s < 3; ++s) {
    SamplingParams* d_params = UploadVector(std::vector<SamplingParams>(b, settings[s]));
    const int64_t logits = b * kVocab * 4;
    add(names[s], logits + b * 4, [&] {
      // Logits: f32 reinterpretations of random bf16 pairs are finite normal-range values.
      CheckOk(LaunchSampleTokens(reinterpret_cast<const float*>(c.inputs.Next(logits)),
                                 static_cast<int32_t>(b), static_cast<int32_t>(kVocab), d_params,
                                 d_steps, d_tokens, c.workspace, c.workspace_bytes, c.flags,
                                 c.stream));
    });
    cudaFree(d_params);
  }
  uint32_t flags = 0;
  CheckCuda(cudaMemcpy(&flags, c.flags, 4, cudaMemcpyDeviceToHost), "flags");
  if (flags != 0) {
    std::fprintf(stderr, "device error word %#x after batch %lld\n", flags,
                 static_cast<long long>(b));
    std::exit(1);
  }
  cudaFree(d_ids);
  cudaFree(d_positions);
  cudaFree(d_steps);
  cudaFree(d_tokens);
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
  CheckCuda(cudaGetDeviceProperties(&properties, 0), "properties");
  Context c;
  CheckCuda(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "stream");
  CheckCuda(cudaMalloc(&c.flags, 4), "flags");
  CheckCuda(cudaMemset(c.flags, 0, 4), "flags");
  auto table = RopeTable::Create({static_cast<int32_t>(kHeadDim),
                                  10000.0,
                                  static_cast<int32_t>(kMaxPositions),
                                  {RopeScalingType::kNone, 1.0, 1.0, 4.0, 1}});
  CheckOk(table.status());
  float *cos = nullptr, *sin = nullptr;
  CheckCuda(cudaMalloc(&cos, RopeDeviceTableBytes(*table)), "cos");
  CheckCuda(cudaMalloc(&sin, RopeDeviceTableBytes(*table)), "sin");
  auto device_table = CopyRopeTableToDevice(*table, cos, sin, c.stream);
  CheckOk(device_table.status());
  c.rope = *device_table;
  c.workspace_bytes = SamplerWorkspaceBytes(256, static_cast<int32_t>(kVocab));
  CheckCuda(cudaMalloc(&c.workspace, c.workspace_bytes), "workspace");
  CheckCuda(cudaDeviceSynchronize(), "setup");

  const double ceiling_us = CopyMicros(c, kCeilingBytes / 2);
  const double ceiling_gbps = kCeilingBytes / ceiling_us / 1e3;
  std::vector<Row> rows;
  for (int64_t b : kBatches) MeasureBatch(c, b, rows);

  std::printf(
      "{\"benchmark\": \"kernels_ops_gpu\", \"device\": \"%s\", \"copy_ceiling_gb_per_s\": "
      "%.1f, \"timing\": \"median of %d samples of %d back-to-back launches, inputs "
      "rotated through 256 MiB\", \"results\": [",
      properties.name, ceiling_gbps, kSamples, kLaunchesPerSample);
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf(
        "%s\n  {\"op\": \"%s\", \"batch\": %lld, \"bytes\": %lld, \"us\": %.3f, "
        "\"gb_per_s\": %.1f, \"copy_same_bytes_us\": %.3f, \"copy_same_bytes_gb_per_s\": "
        "%.1f}",
        i == 0 ? "" : ",", r.op.c_str(), static_cast<long long>(r.batch),
        static_cast<long long>(r.bytes), r.us, r.bytes / r.us / 1e3, r.copy_us,
        r.bytes / r.copy_us / 1e3);
  }
  std::printf("\n]}\n");
  std::fprintf(stderr, "%s, copy ceiling (256 MiB) %.0f GB/s\n", properties.name, ceiling_gbps);
  std::fprintf(stderr, "%-20s %5s %10s %9s %8s %10s %8s\n", "op", "batch", "bytes", "us", "GB/s",
               "copy_us", "copyGB/s");
  for (const Row& r : rows) {
    std::fprintf(stderr, "%-20s %5lld %10lld %9.2f %8.1f %10.2f %8.1f\n", r.op.c_str(),
                 static_cast<long long>(r.batch), static_cast<long long>(r.bytes), r.us,
                 r.bytes / r.us / 1e3, r.copy_us, r.bytes / r.copy_us / 1e3);
  }
  return 0;
}
