// Benchmark of the tensor-parallel CUDA backend, in two parts.
//
// 1. Tokens/s through the engine at tensor-parallel degrees 1, 2 and 4 (those the machine has
//    GPUs for) on the TinyLlama-1.1B-shaped model with random bf16 weights (cuda_bench_model.h),
//    greedy sessions of 16 prompt tokens and exactly 256 outputs, batch 1 and 32, verification on.
//    At each degree above 1 both reductions run, interleaved run by run so drift hits both alike:
//    the deterministic all-gather + fixed-order sum (the worker's) and NCCL's own all-reduce (the
//    in-binary baseline that prices it). Median of kTimedRuns after a warm-up that captures the
//    decode graphs. Also per configuration: in how many of its 256 steps one session's leaf
//    differs between running alone and running in a batch of 32 (batch variance; 0 is the
//    rule).
// 2. The collective of one row-parallel projection alone, per rank, at decode and prefill sizes
//    ([tokens, 2048] f32 partials): all-gather + fixed-order sum versus all-reduce + residual add,
//    kCollectivesPerGraph of them captured in one CUDA graph per rank (as decode replays them),
//    timed with CUDA events on rank 0, median of kTimedGraphs launches. A layer runs two.
// 3. What a rank's share of a layer's projections costs at each degree, which is
//    what tensor parallelism can save per step (MeasureShardGemms).
//
// Output: one JSON object on stdout, a short table on stderr. Exit 77 without a CUDA device,
// 1 on any error.
//
// Thread-safety: the main thread drives the engines; part 2 runs one thread per rank.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/base/temp_dir.h"
#include "kernels/base/cuda_status.h"
#include "kernels/base/half.h"
#include "kernels/base/thread_pool.h"
#include "kernels/gemm/gemm_cuda.h"
#include "node/backend/cuda_backend.h"
#include "node/backend/cuda_bench_model.h"
#include "node/backend/cuda_nccl.h"
#include "node/backend/cuda_resources.h"
#include "node/backend/cuda_tp_reduce.h"
#include "node/engine/engine.h"

namespace fp::node {
namespace {

using bench::CheckOk;
using bench::kOutputTokens;
using bench::Median;
using bench::RunSessions;
using bench::RunTimes;
using kernels::CudaStatus;

constexpr int kTimedRuns = 5;
constexpr int kBatches[] = {1, 32};
constexpr int kDegrees[] = {1, 2, 4};
constexpr int kCollectiveTokens[] = {1, 32, 512, 2048};
constexpr int kCollectivesPerGraph = 20;
constexpr int kTimedGraphs = 25;
constexpr int kWarmupCollectives = 10;
constexpr int64_t kHidden = 2048;

const char* ReductionName(TpReduction r) {
  return r == TpReduction::kGatherFixedOrder ? "gather_fixed_order" : "nccl_allreduce";
}

std::unique_ptr<Engine> MakeEngine(const Model& model, int degree, TpReduction reduction) {
  CudaBackendOptions o;
  o.tensor_parallel = degree;
  o.reduction = reduction;
  StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(o);
  CheckOk(backend.status(), "cuda backend");
  EngineOptions options;
  options.kv_budget_bytes = int64_t{2} << 30;
  options.max_batch_sequences = 32;
  options.max_batch_tokens = 2048;
  StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(model, std::move(backend).value(), nullptr, options);
  CheckOk(engine.status(), "engine");
  return std::move(engine).value();
}

struct Config {
  int degree;
  TpReduction reduction;
  std::unique_ptr<Engine> engine;
  std::vector<double> total[std::size(kBatches)], decode[std::size(kBatches)];
  int variant_steps = 0;  // steps whose leaf differs alone vs in a batch of 32
};

// Part 1 for one degree: every reduction's engine, runs interleaved.
void MeasureDegree(const Model& model, int degree, uint32_t& next_id, std::string& json,
                   bool& first_row) {
  std::vector<Config> configs;
  configs.push_back({degree, TpReduction::kGatherFixedOrder, nullptr, {}, {}, 0});
  if (degree > 1) configs.push_back({degree, TpReduction::kNcclAllReduce, nullptr, {}, {}, 0});
  for (Config& c : configs) c.engine = MakeEngine(model, degree, c.reduction);
  for (size_t b = 0; b < std::size(kBatches); ++b) {
    const int batch = kBatches[b];
    for (Config& c : configs) {
      RunSessions(*c.engine, batch, next_id, nullptr);  // warm-up: buffers, graphs
      next_id += batch;
    }
    for (int run = 0; run < kTimedRuns; ++run) {
      for (Config& c : configs) {
        const RunTimes t = RunSessions(*c.engine, batch, next_id, nullptr);
        next_id += batch;
        c.total[b].push_back(batch * static_cast<double>(kOutputTokens) / t.total_seconds);
        c.decode[b].push_back(batch * static_cast<double>(kOutputTokens - 1) / t.decode_seconds);
      }
    }
  }
  for (Config& c : configs) {
    // Session 1 000 000 alone, then leading a batch of 32.
    std::vector<Hash> alone, batched;
    RunSessions(*c.engine, 1, 1000000, &alone);
    RunSessions(*c.engine, 32, 1000000, &batched);
    for (size_t s = 0; s < alone.size() && s < batched.size(); ++s) {
      c.variant_steps += alone[s] != batched[s];
    }
    for (size_t b = 0; b < std::size(kBatches); ++b) {
      const double tps = Median(c.total[b]), dps = Median(c.decode[b]);
      std::fprintf(stderr, "%-4d %-20s %-6d %12.0f %14.0f %10.3f %9d\n", degree,
                   ReductionName(c.reduction), kBatches[b], tps, dps, 1000.0 * kBatches[b] / dps,
                   c.variant_steps);
      char row[400];
      std::snprintf(row, sizeof(row),
                    "%s{\"tensor_parallel\":%d,\"reduction\":\"%s\",\"batch\":%d,"
                    "\"tokens_per_second\":%.1f,\"decode_tokens_per_second\":%.1f,"
                    "\"decode_ms_per_step\":%.4f,\"batch_variant_steps\":%d}",
                    first_row ? "" : ",", degree, ReductionName(c.reduction), kBatches[b], tps, dps,
                    1000.0 * kBatches[b] / dps, c.variant_steps);
      first_row = false;
      json += row;
    }
  }
}

// Part 2: one rank's buffers, stream and graphs.
struct CollectiveRank {
  int index = 0;
  cuda::Stream stream;
  cuda::DeviceBuffer partials;  // [degree, max tokens, hidden] f32
  cuda::DeviceBuffer x;         // [max tokens, hidden] bf16
  cuda::Event start, stop;      // timing (rank 0)
  cuda::GraphExec graph;
};

// One collective of `tokens` rows on rank `r`: the backend's two reductions.
Status EnqueueCollective(CollectiveRank& r, ncclComm_t comm, int degree, TpReduction reduction,
                         int64_t tokens) {
  const auto count = static_cast<size_t>(tokens * kHidden);
  auto* partials = static_cast<float*>(r.partials.data());
  const cudaStream_t st = r.stream.get();
  if (reduction == TpReduction::kGatherFixedOrder) {
    float* mine = partials + static_cast<size_t>(r.index) * count;
    FP_RETURN_IF_ERROR(cuda::NcclStatus(ncclAllGather(mine, partials, count, ncclFloat, comm, st),
                                        "ncclAllGather"));
    return cuda::LaunchTpResidualSum(partials, degree, static_cast<int64_t>(count), r.x.data(), st);
  }
  FP_RETURN_IF_ERROR(cuda::NcclStatus(
      ncclAllReduce(partials, partials, count, ncclFloat, ncclSum, comm, st), "ncclAllReduce"));
  return cuda::LaunchTpResidualSum(partials, 1, static_cast<int64_t>(count), r.x.data(), st);
}

// Median microseconds per collective on rank 0, every rank replaying its captured graph.
StatusOr<double> TimeCollective(std::vector<CollectiveRank>& ranks, cuda::NcclClique& clique,
                                kernels::ThreadPool& pool, TpReduction reduction, int tokens) {
  const int degree = static_cast<int>(ranks.size());
  std::vector<Status> statuses(ranks.size());
  std::vector<double> per_graph_ms;
  pool.ParallelFor(degree, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      CollectiveRank& r = ranks[static_cast<size_t>(i)];
      const auto run = [&]() -> Status {
        FP_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(static_cast<int>(i)), "set device"));
        const cudaStream_t st = r.stream.get();
        ncclComm_t comm = clique.comm(r.index);
        // Eager first: NCCL sets up this size's connections outside any capture.
        for (int w = 0; w < kWarmupCollectives; ++w) {
          FP_RETURN_IF_ERROR(EnqueueCollective(r, comm, degree, reduction, tokens));
        }
        FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(st), "warm-up"));
        FP_RETURN_IF_ERROR(
            CudaStatus(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture"));
        Status body = OkStatus();
        for (int c = 0; c < kCollectivesPerGraph && body.ok(); ++c) {
          body = EnqueueCollective(r, comm, degree, reduction, tokens);
        }
        StatusOr<cuda::GraphExec> graph = cuda::GraphExec::EndCaptureAndInstantiate(st);
        FP_RETURN_IF_ERROR(body);
        FP_ASSIGN_OR_RETURN(r.graph, std::move(graph));
        FP_RETURN_IF_ERROR(r.graph.Launch(st));  // warm-up replay
        for (int g = 0; g < kTimedGraphs; ++g) {
          if (r.index == 0)
            FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(r.start.get(), st), "ev"));
          FP_RETURN_IF_ERROR(r.graph.Launch(st));
          if (r.index != 0) continue;
          FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(r.stop.get(), st), "event"));
          FP_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(r.stop.get()), "event"));
          float ms = 0;
          FP_RETURN_IF_ERROR(
              CudaStatus(cudaEventElapsedTime(&ms, r.start.get(), r.stop.get()), "elapsed"));
          per_graph_ms.push_back(ms);
        }
        return CudaStatus(cudaStreamSynchronize(st), "timed graphs");
      };
      statuses[static_cast<size_t>(i)] = run();
    }
  });
  for (const Status& s : statuses) FP_RETURN_IF_ERROR(s);
  return 1000.0 * Median(per_graph_ms) / kCollectivesPerGraph;
}

StatusOr<std::unique_ptr<kernels::ThreadPool>> MakeCollectiveRanks(
    int degree, std::vector<CollectiveRank>& ranks) {
  const int max_tokens = kCollectiveTokens[std::size(kCollectiveTokens) - 1];
  const size_t rows = static_cast<size_t>(max_tokens) * kHidden;
  ranks.resize(static_cast<size_t>(degree));
  for (int i = 0; i < degree; ++i) {
    CollectiveRank& r = ranks[static_cast<size_t>(i)];
    r.index = i;
    FP_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(i), "set device"));
    FP_ASSIGN_OR_RETURN(r.stream, cuda::Stream::Create());
    FP_ASSIGN_OR_RETURN(r.partials, cuda::DeviceBuffer::Allocate(rows * 4 * degree, "partials"));
    FP_ASSIGN_OR_RETURN(r.x, cuda::DeviceBuffer::Allocate(rows * 2, "residual"));
    // Finite values (zeros) so repeated sums never overflow; the collectives' timing does not
    // depend on the values they move.
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemset(r.partials.data(), 0, r.partials.size()), "memset"));
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemset(r.x.data(), 0, r.x.size()), "memset"));
    FP_ASSIGN_OR_RETURN(r.start, cuda::Event::CreateTiming());
    FP_ASSIGN_OR_RETURN(r.stop, cuda::Event::CreateTiming());
  }
  return kernels::ThreadPool::Create(degree);
}

void MeasureCollectives(int degree, std::string& json, bool& first_row) {
  std::vector<int> devices;
  for (int i = 0; i < degree; ++i) devices.push_back(i);
  // Made before the ranks so it is destroyed after them: destroying a communicator waits until
  // no captured graph holds its operations any more.
  StatusOr<std::unique_ptr<cuda::NcclClique>> clique = cuda::NcclClique::Create(devices);
  CheckOk(clique.status(), "nccl");
  std::vector<CollectiveRank> ranks;
  StatusOr<std::unique_ptr<kernels::ThreadPool>> pool = MakeCollectiveRanks(degree, ranks);
  CheckOk(pool.status(), "collective buffers");
  for (int tokens : kCollectiveTokens) {
    StatusOr<double> gather =
        TimeCollective(ranks, **clique, **pool, TpReduction::kGatherFixedOrder, tokens);
    CheckOk(gather.status(), "all-gather");
    StatusOr<double> reduce =
        TimeCollective(ranks, **clique, **pool, TpReduction::kNcclAllReduce, tokens);
    CheckOk(reduce.status(), "all-reduce");
    std::fprintf(stderr, "%-4d %-8d %16.2f %18.2f %8.2fx\n", degree, tokens, *gather, *reduce,
                 *gather / *reduce);
    char row[300];
    std::snprintf(row, sizeof(row),
                  "%s{\"tensor_parallel\":%d,\"tokens\":%d,\"bytes_per_rank\":%lld,"
                  "\"gather_fixed_sum_us\":%.3f,\"allreduce_add_us\":%.3f}",
                  first_row ? "" : ",", degree, tokens,
                  static_cast<long long>(tokens * kHidden * 4), *gather, *reduce);
    first_row = false;
    json += row;
  }
}

// Part 3: one rank's four projections of one decoder layer at degree R (its shard shapes), on
// GPU 0, weights rotated over kLayerCopies copies (>= 0.7 GB at R = 1, far past the 50 MB L2) so
// they stream from memory as in decode; kLayerCopies layers captured in one graph, median of
// kTimedGraphs launches, reported per layer.
constexpr int kLayerCopies = 8;
constexpr int kShardTokens[] = {1, 32};

struct Projection {
  int64_t n, k;
};

// (n, k) of qkv, o, gate/up and down for rank shards of `degree` ranks.
std::vector<Projection> ShardProjections(const LlamaConfig& c, int64_t degree) {
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  return {{(q + 2 * kv) / degree, c.hidden_size},
          {c.hidden_size, q / degree},
          {2 * c.intermediate_size / degree, c.hidden_size},
          {c.hidden_size, c.intermediate_size / degree}};
}

// Fills `buffer` with random bf16 values of magnitude below `scale` (never zeros: they run
// faster than real data).
Status FillRandom(cuda::DeviceBuffer& buffer, float scale, uint64_t seed) {
  std::vector<uint16_t> host(buffer.size() / 2);
  uint64_t state = seed;
  for (uint16_t& v : host) {
    state = state * 6364136223846793005u + 1442695040888963407u;
    const float unit = static_cast<float>(state >> 40) * 0x1p-24f;  // [0, 1)
    v = kernels::F32ToBf16((2 * unit - 1) * scale);
  }
  return CudaStatus(cudaMemcpy(buffer.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice),
                    "fill");
}

StatusOr<double> TimeShardLayer(const std::vector<Projection>& shapes, int64_t tokens) {
  size_t layer_bytes = 0;
  int64_t widest_n = 0, widest_k = 0;
  for (const Projection& p : shapes) {
    layer_bytes += static_cast<size_t>(p.n * p.k) * 2;
    widest_n = std::max(widest_n, p.n);
    widest_k = std::max(widest_k, p.k);
  }
  FP_ASSIGN_OR_RETURN(cuda::DeviceBuffer weights,
                      cuda::DeviceBuffer::Allocate(layer_bytes * kLayerCopies, "weights"));
  FP_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, cuda::DeviceBuffer::Allocate(
                                                static_cast<size_t>(tokens * widest_k) * 2, "x"));
  FP_ASSIGN_OR_RETURN(cuda::DeviceBuffer y, cuda::DeviceBuffer::Allocate(
                                                static_cast<size_t>(tokens * widest_n) * 2, "y"));
  FP_RETURN_IF_ERROR(FillRandom(weights, 0.02f, 7));
  FP_RETURN_IF_ERROR(FillRandom(x, 1.0f, 11));
  FP_ASSIGN_OR_RETURN(cuda::Stream stream, cuda::Stream::Create());
  FP_ASSIGN_OR_RETURN(cuda::Event start, cuda::Event::CreateTiming());
  FP_ASSIGN_OR_RETURN(cuda::Event stop, cuda::Event::CreateTiming());
  const cudaStream_t st = stream.get();
  const auto enqueue = [&]() -> Status {
    const uint8_t* w = weights.bytes();
    for (int copy = 0; copy < kLayerCopies; ++copy) {
      for (const Projection& p : shapes) {
        FP_RETURN_IF_ERROR(kernels::LaunchGemm(x.data(), w, nullptr, y.data(), DType::kBf16, tokens,
                                               p.n, p.k, st));
        w += static_cast<size_t>(p.n * p.k) * 2;
      }
    }
    return OkStatus();
  };
  FP_RETURN_IF_ERROR(enqueue());  // warm-up
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture"));
  const Status body = enqueue();
  StatusOr<cuda::GraphExec> graph = cuda::GraphExec::EndCaptureAndInstantiate(st);
  FP_RETURN_IF_ERROR(body);
  FP_RETURN_IF_ERROR(graph.status());
  FP_RETURN_IF_ERROR(graph->Launch(st));
  std::vector<double> per_layer_us;
  for (int g = 0; g < kTimedGraphs; ++g) {
    FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(start.get(), st), "event"));
    FP_RETURN_IF_ERROR(graph->Launch(st));
    FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(stop.get(), st), "event"));
    FP_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(stop.get()), "event"));
    float ms = 0;
    FP_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&ms, start.get(), stop.get()), "elapsed"));
    per_layer_us.push_back(1000.0 * ms / kLayerCopies);
  }
  return Median(per_layer_us);
}

void MeasureShardGemms(std::string& json) {
  CheckOk(CudaStatus(cudaSetDevice(0), "set device"), "device");
  const LlamaConfig c = bench::TinyLlamaConfig();
  std::fprintf(stderr, "%-4s %-8s %18s %16s\n", "tp", "tokens", "gemm us/layer/rank",
               "weight GB/s");
  bool first_row = true;
  for (int degree : kDegrees) {
    const std::vector<Projection> shapes = ShardProjections(c, degree);
    double bytes = 0;
    for (const Projection& p : shapes) bytes += 2.0 * static_cast<double>(p.n * p.k);
    for (int tokens : kShardTokens) {
      StatusOr<double> us = TimeShardLayer(shapes, tokens);
      CheckOk(us.status(), "shard gemms");
      std::fprintf(stderr, "%-4d %-8d %18.2f %16.0f\n", degree, tokens, *us, bytes / (*us * 1e3));
      char row[200];
      std::snprintf(row, sizeof(row),
                    "%s{\"tensor_parallel\":%d,\"tokens\":%d,\"us_per_layer\":%.3f,"
                    "\"weight_gb_per_second\":%.1f}",
                    first_row ? "" : ",", degree, tokens, *us, bytes / (*us * 1e3));
      first_row = false;
      json += row;
    }
  }
}

int Main() {
  const int gpus = CudaDeviceCount();
  if (gpus == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  StatusOr<std::unique_ptr<ScopedTempDir>> dir = ScopedTempDir::Create("fp-tp-bench");
  CheckOk(dir.status(), "temp dir");
  CheckOk(bench::WriteRandomModel((*dir)->path().string(), bench::TinyLlamaConfig()),
          "write model");
  StatusOr<std::unique_ptr<Model>> model = Model::Load((*dir)->path().string());
  CheckOk(model.status(), "load model");
  cudaDeviceProp prop{};
  CheckOk(CudaStatus(cudaGetDeviceProperties(&prop, 0), "device"), "device");
  std::string json = std::string("{\"device\":\"") + prop.name +
                     "\",\"gpus\":" + std::to_string(gpus) +
                     ",\"nccl_version\":" + std::to_string(cuda::NcclRuntimeVersion()) +
                     ",\"model\":\"tinyllama-1.1b-shape-random-bf16\",\"prompt_tokens\":" +
                     std::to_string(bench::kPromptTokens) +
                     ",\"output_tokens\":" + std::to_string(kOutputTokens) + ",\"tokens\":[";
  std::fprintf(stderr, "%-4s %-20s %-6s %12s %14s %10s %9s\n", "tp", "reduction", "batch",
               "tokens/s", "decode tok/s", "ms/step", "variant");
  uint32_t next_id = 1;
  bool first_row = true;
  for (int degree : kDegrees) {
    if (degree <= gpus) MeasureDegree(**model, degree, next_id, json, first_row);
  }
  json += "],\"collectives\":[";
  std::fprintf(stderr, "%-4s %-8s %16s %18s %9s\n", "tp", "tokens", "gather+sum us",
               "allreduce+add us", "ratio");
  first_row = true;
  for (int degree : kDegrees) {
    if (degree > 1 && degree <= gpus) MeasureCollectives(degree, json, first_row);
  }
  json += "],\"shard_gemms\":[";
  MeasureShardGemms(json);
  json += "]}";
  std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace fp::node

int main() { return fp::node::Main(); }
