// Benchmark of the CUDA PagedFieldprintAttention (paged_attention_cuda.h) on the shapes of
// issue 6: decode B=64, L=4096 and B=1, L=16384 (32 query heads, 8 KV heads, d=128, 64 anchors,
// mix mode, pages of 16 tokens placed at random), each also with the split chosen per shape
// (internal::LaunchPagedAttentionDecodeWithSplit, the best of several) to price the fixed split;
// and causal prefill of 4k, 8k and 16k tokens with the same heads and anchors. Baseline in the
// same run: a device copy kernel (the bandwidth ceiling; effective TB/s counts each byte read
// and written once). PyTorch SDPA on the same shapes is paged_attention_baseline.py.
//
// GPU times are medians of kTimedRuns CUDA-event runs after kWarmupRuns; the B=1 decode rotates
// over kRotations caches so the 67 MB cache is not served from the 50 MB L2. Data are random
// bf16 generated on the device.
//
// Output: one JSON object on stdout, a table on stderr. Exit 77 without a CUDA device, 1 on a
// CUDA error or a launcher error.
//
// Thread-safety: a single-threaded program.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "kernels/attention/paged_attention_cuda.h"

namespace fp::kernels {
namespace {

constexpr int kWarmupRuns = 5;
constexpr int kTimedRuns = 25;
constexpr int kRotations = 4;
constexpr int32_t kQHeads = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kHeadDim = 128;
constexpr int32_t kAnchors = 64;
constexpr int32_t kBlockSize = 16;
constexpr int32_t kSplitChoices[] = {256, 512, 1024, 2048, 4096};

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

void* Allocate(size_t bytes) {
  void* p = nullptr;
  CheckCuda(cudaMalloc(&p, bytes), "malloc");
  return p;
}

// Random bf16 in about [-2, 2) from a hash of the index (no host data for a 1 GB cache).
__global__ void FillRandomBf16(uint16_t* data, size_t count, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    // Sign, exponent 126 or 127 (|v| in [0.5, 2)), 7 random mantissa bits.
    data[i] = static_cast<uint16_t>(((x >> 16) & 0x8000u) | ((126u + ((x >> 8) & 1u)) << 7) |
                                    (x & 0x7fu));
  }
}

__global__ void CopyKernel(const uint4* in, uint4* out, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i];
  }
}

uint16_t* RandomBf16(size_t count, uint32_t seed) {
  auto* p = static_cast<uint16_t*>(Allocate(count * 2));
  FillRandomBf16<<<1024, 256>>>(p, count, seed);
  CheckCuda(cudaGetLastError(), "fill");
  return p;
}

template <typename Enqueue>
double MedianMicros(cudaStream_t stream, Enqueue enqueue) {
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "event");
  CheckCuda(cudaEventCreate(&stop), "event");
  for (int i = 0; i < kWarmupRuns; ++i) enqueue(i);
  std::vector<double> micros;
  for (int i = 0; i < kTimedRuns; ++i) {
    CheckCuda(cudaEventRecord(start, stream), "record");
    enqueue(i);
    CheckCuda(cudaEventRecord(stop, stream), "record");
    CheckCuda(cudaEventSynchronize(stop), "synchronize");
    float ms = 0;
    CheckCuda(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    micros.push_back(1000.0 * ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(micros.begin(), micros.end());
  return micros[micros.size() / 2];
}

// One layer's cache for `seqs` sequences of `length` tokens, pages placed at random.
struct Cache {
  CudaPagedKvCache view;
  CudaBlockTables tables;
  int32_t* context_lens;
};

Cache MakeCache(int32_t seqs, int32_t length, uint32_t seed) {
  const int32_t blocks_per_seq = (length + kBlockSize - 1) / kBlockSize;
  const int32_t num_blocks = seqs * blocks_per_seq;
  const size_t elements = static_cast<size_t>(num_blocks) * kBlockSize * kKvHeads * kHeadDim;
  Cache c;
  c.view = {RandomBf16(elements, seed),
            RandomBf16(elements, seed + 1),
            num_blocks,
            kBlockSize,
            kKvHeads,
            kHeadDim};
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(seed));
  auto* device_table = static_cast<int32_t*>(Allocate(table.size() * 4));
  CheckCuda(cudaMemcpy(device_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice),
            "table");
  c.tables = {device_table, seqs, blocks_per_seq};
  const std::vector<int32_t> lens(static_cast<size_t>(seqs), length);
  c.context_lens = static_cast<int32_t*>(Allocate(lens.size() * 4));
  CheckCuda(cudaMemcpy(c.context_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice),
            "lens");
  return c;
}

struct Anchors {
  CudaAnchorSet set;
};

Anchors MakeAnchors(uint32_t seed) {
  const size_t elements = static_cast<size_t>(kAnchors) * kKvHeads * kHeadDim;
  std::vector<float> gamma(kQHeads);
  for (int32_t h = 0; h < kQHeads; ++h) gamma[static_cast<size_t>(h)] = 0.25f + 0.5f * (h % 2);
  auto* device_gamma = static_cast<float*>(Allocate(gamma.size() * 4));
  CheckCuda(cudaMemcpy(device_gamma, gamma.data(), gamma.size() * 4, cudaMemcpyHostToDevice),
            "gamma");
  return {{RandomBf16(elements, seed), RandomBf16(elements, seed + 1), device_gamma, kAnchors}};
}

struct DecodeResult {
  int32_t batch, length;
  double bytes, stages2_us, stages3_us, fixed_us, best_us;
  int32_t best_split;
};

DecodeResult MeasureDecode(int32_t batch, int32_t length, int rotations, cudaStream_t stream) {
  std::vector<Cache> caches;
  for (int r = 0; r < rotations; ++r) {
    caches.push_back(MakeCache(batch, length, 100u + 10u * static_cast<uint32_t>(r)));
  }
  const Anchors anchors = MakeAnchors(7);
  const AttentionOptions options{AttentionMode::kMix, DefaultSoftmaxScale(kHeadDim)};
  const size_t q_elements = static_cast<size_t>(batch) * kQHeads * kHeadDim;
  uint16_t* query = RandomBf16(q_elements * rotations, 3);
  auto* out = static_cast<uint16_t*>(Allocate(q_elements * 2));
  size_t workspace_bytes = 0;
  for (int32_t split : kSplitChoices) {
    workspace_bytes = std::max(workspace_bytes, internal::DecodeWorkspaceBytesWithSplit(
                                                    batch, kQHeads, kHeadDim, length, split));
  }
  void* workspace = Allocate(workspace_bytes);
  CheckCuda(cudaDeviceSynchronize(), "setup");
  const auto run = [&](int32_t split, int32_t stages) {
    return MedianMicros(stream, [&](int i) {
      const Cache& c = caches[static_cast<size_t>(i % rotations)];
      CheckOk(internal::LaunchPagedAttentionDecodeWithSplit(
          query + (i % rotations) * q_elements, c.context_lens, length, kQHeads, c.tables, c.view,
          anchors.set, options, split, stages, workspace, workspace_bytes, out, stream));
    });
  };
  DecodeResult r{batch, length, 0, 0, 0, 0, 0, 0};
  // The public launcher's configuration (2 stages) and the 3-stage ring, at the fixed split.
  r.stages2_us = run(kCudaAttentionSplit, 2);
  r.stages3_us = run(kCudaAttentionSplit, 3);
  r.fixed_us = std::min(r.stages2_us, r.stages3_us);
  r.best_us = r.fixed_us;
  r.best_split = kCudaAttentionSplit;
  const int32_t stages = r.stages2_us <= r.stages3_us ? 2 : 3;
  for (int32_t split : kSplitChoices) {
    if (split == kCudaAttentionSplit) continue;
    const double us = run(split, stages);
    if (us < r.best_us) {
      r.best_us = us;
      r.best_split = split;
    }
  }
  r.bytes =
      2.0 * batch * length * kKvHeads * kHeadDim * 2 + 2.0 * kAnchors * kKvHeads * kHeadDim * 2;
  for (Cache& c : caches) {
    cudaFree(c.view.key);
    cudaFree(c.view.value);
    cudaFree(const_cast<int32_t*>(c.tables.table));
    cudaFree(c.context_lens);
  }
  cudaFree(query);
  cudaFree(out);
  cudaFree(workspace);
  cudaFree(const_cast<void*>(anchors.set.key));
  cudaFree(const_cast<void*>(anchors.set.value));
  cudaFree(const_cast<float*>(anchors.set.gamma));
  return r;
}

struct PrefillResult {
  int32_t length;
  double us, causal_flops, anchor_flops;
};

PrefillResult MeasurePrefill(int32_t length, cudaStream_t stream) {
  Cache c = MakeCache(1, length, 900);
  const Anchors anchors = MakeAnchors(11);
  const AttentionOptions options{AttentionMode::kMix, DefaultSoftmaxScale(kHeadDim)};
  const size_t q_elements = static_cast<size_t>(length) * kQHeads * kHeadDim;
  uint16_t* query = RandomBf16(q_elements, 5);
  auto* out = static_cast<uint16_t*>(Allocate(q_elements * 2));
  std::vector<int32_t> positions(static_cast<size_t>(length));
  std::iota(positions.begin(), positions.end(), 0);
  const std::vector<int32_t> seq_ids(static_cast<size_t>(length), 0);
  auto* device_positions = static_cast<int32_t*>(Allocate(positions.size() * 4));
  auto* device_seq_ids = static_cast<int32_t*>(Allocate(seq_ids.size() * 4));
  CheckCuda(
      cudaMemcpy(device_positions, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice),
      "positions");
  CheckCuda(cudaMemcpy(device_seq_ids, seq_ids.data(), seq_ids.size() * 4, cudaMemcpyHostToDevice),
            "seq ids");
  CheckCuda(cudaDeviceSynchronize(), "setup");
  PrefillResult r{length, 0, 0, 0};
  r.us = MedianMicros(stream, [&](int) {
    CheckOk(LaunchPagedAttentionPrefillCuda(query, device_seq_ids, device_positions, length, length,
                                            kQHeads, c.tables, c.view, anchors.set, options, out,
                                            stream));
  });
  // 2 flops per multiply-add, two matrix products (Q K^T and P V), the causal triangle.
  r.causal_flops = 4.0 * kHeadDim * kQHeads * (static_cast<double>(length) * (length + 1) / 2);
  r.anchor_flops = 4.0 * kHeadDim * kQHeads * static_cast<double>(length) * kAnchors;
  cudaFree(c.view.key);
  cudaFree(c.view.value);
  cudaFree(const_cast<int32_t*>(c.tables.table));
  cudaFree(c.context_lens);
  cudaFree(query);
  cudaFree(out);
  cudaFree(device_positions);
  cudaFree(device_seq_ids);
  return r;
}

// (bytes read + bytes written) / time of a grid-stride 16-byte copy of 1 GiB.
double CopyTbPerSecond(cudaStream_t stream, const cudaDeviceProp& properties) {
  const size_t bytes = size_t{1} << 30;
  auto* in = static_cast<uint4*>(Allocate(bytes));
  auto* out = static_cast<uint4*>(Allocate(bytes));
  CheckCuda(cudaMemset(in, 1, bytes), "memset");
  const int blocks = properties.multiProcessorCount * 8;
  const double us = MedianMicros(
      stream, [&](int) { CopyKernel<<<blocks, 512, 0, stream>>>(in, out, bytes / 16); });
  cudaFree(in);
  cudaFree(out);
  return 2.0 * bytes / us / 1e6;
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
  const double copy_tb_s = CopyTbPerSecond(stream, properties);
  const DecodeResult decodes[] = {MeasureDecode(64, 4096, 1, stream),
                                  MeasureDecode(1, 16384, kRotations, stream)};
  std::vector<PrefillResult> prefills;
  for (int32_t length : {4096, 8192, 16384}) prefills.push_back(MeasurePrefill(length, stream));
  cudaStreamDestroy(stream);

  std::printf(
      "{\"benchmark\": \"kernels_paged_attention_gpu\", \"device\": \"%s\", \"q_heads\": %d, "
      "\"kv_heads\": %d, \"head_dim\": %d, \"anchors\": %d, \"block_size\": %d, \"mode\": "
      "\"mix\", \"split\": %d, \"timing\": \"median of %d CUDA-event runs after %d warm-up "
      "runs\", \"copy_kernel_tb_per_s\": %.3f, \"decode\": [",
      properties.name, kQHeads, kKvHeads, kHeadDim, kAnchors, kBlockSize, kCudaAttentionSplit,
      kTimedRuns, kWarmupRuns, copy_tb_s);
  for (size_t i = 0; i < 2; ++i) {
    const DecodeResult& r = decodes[i];
    std::printf(
        "%s\n  {\"batch\": %d, \"context\": %d, \"bytes_read\": %.0f, \"us\": %.2f, "
        "\"stages2_us\": %.2f, \"stages3_us\": %.2f, "
        "\"tb_per_s\": %.3f, \"fraction_of_copy\": %.3f, \"best_split\": %d, "
        "\"best_split_us\": %.2f, \"fixed_split_cost\": %.3f}",
        i == 0 ? "" : ",", r.batch, r.length, r.bytes, r.fixed_us, r.stages2_us, r.stages3_us,
        r.bytes / r.fixed_us / 1e6, r.bytes / r.fixed_us / 1e6 / copy_tb_s, r.best_split, r.best_us,
        r.fixed_us / r.best_us - 1.0);
  }
  std::printf("\n], \"prefill\": [");
  for (size_t i = 0; i < prefills.size(); ++i) {
    const PrefillResult& r = prefills[i];
    std::printf(
        "%s\n  {\"tokens\": %d, \"us\": %.1f, \"causal_tflop_per_s\": %.1f, "
        "\"with_anchor_tflop_per_s\": %.1f}",
        i == 0 ? "" : ",", r.length, r.us, r.causal_flops / r.us / 1e6,
        (r.causal_flops + r.anchor_flops) / r.us / 1e6);
  }
  std::printf("\n]}\n");

  std::fprintf(stderr, "device %s, copy kernel %.3f TB/s\n", properties.name, copy_tb_s);
  std::fprintf(stderr, "%-18s %9s %9s %9s %8s %8s %10s %9s %7s\n", "decode", "2stg_us", "3stg_us",
               "us", "TB/s", "of_copy", "best_split", "best_us", "cost");
  for (const DecodeResult& r : decodes) {
    std::fprintf(stderr, "B=%-3d L=%-10d %9.2f %9.2f %9.2f %8.3f %8.3f %10d %9.2f %6.1f%%\n",
                 r.batch, r.length, r.stages2_us, r.stages3_us, r.fixed_us,
                 r.bytes / r.fixed_us / 1e6, r.bytes / r.fixed_us / 1e6 / copy_tb_s, r.best_split,
                 r.best_us, 100.0 * (r.fixed_us / r.best_us - 1.0));
  }
  std::fprintf(stderr, "%-22s %10s %12s %14s\n", "prefill", "us", "causal_TF/s", "w_anchor_TF/s");
  for (const PrefillResult& r : prefills) {
    std::fprintf(stderr, "tokens=%-15d %10.1f %12.1f %14.1f\n", r.length, r.us,
                 r.causal_flops / r.us / 1e6, (r.causal_flops + r.anchor_flops) / r.us / 1e6);
  }
  return 0;
}
