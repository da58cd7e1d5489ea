// End-to-end benchmark of the CUDA backend through the engine: a TinyLlama-1.1B-shaped model
// (hidden 2048, 22 layers, 32 query / 4 KV heads, head_dim 64, intermediate 5632, vocabulary
// 32000) with random bf16 weights, greedy sessions of kPromptTokens prompt tokens and exactly
// kOutputTokens outputs each, at batch 1 and 32, with verification on (state digests on the side
// stream, leaves built by the engine) and off (digests skipped), runs interleaved so drift hits
// both alike. Reported per configuration: output tokens/s over the whole run (prefill included,
// as HF generate() is timed by node/backend/cuda_backend_baseline.py in the same device call),
// decode tokens/s (the steps after the prefill step), and verification's cost. Wall clock
// (steady_clock) around Engine::Step calls, median of kTimedRuns after a warm-up run that also
// captures the decode graphs.
//
// Output: one JSON object on stdout, a short table on stderr. Exit 77 without a CUDA device,
// 1 on any error.
//
// Thread-safety: a single-threaded program.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/base/temp_dir.h"
#include "node/backend/cuda_backend.h"
#include "node/backend/cuda_bench_model.h"
#include "node/engine/engine.h"

namespace fp::node {
namespace {

using bench::CheckOk;
using bench::kOutputTokens;
using bench::kPromptTokens;
using bench::Median;
using bench::RunSessions;
using bench::RunTimes;

constexpr int kTimedRuns = 5;
constexpr int kBatches[] = {1, 32};

std::unique_ptr<Engine> MakeEngine(const Model& model, bool verification) {
  CudaBackendOptions o;
  o.state_digests = verification;
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

int Main() {
  if (!CudaDeviceAvailable()) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  StatusOr<std::unique_ptr<ScopedTempDir>> dir = ScopedTempDir::Create("fp-cuda-bench");
  CheckOk(dir.status(), "temp dir");
  const LlamaConfig config = bench::TinyLlamaConfig();
  CheckOk(bench::WriteRandomModel((*dir)->path().string(), config), "write model");
  StatusOr<std::unique_ptr<Model>> model = Model::Load((*dir)->path().string());
  CheckOk(model.status(), "load model");
  std::unique_ptr<Engine> on = MakeEngine(**model, true);
  std::unique_ptr<Engine> off = MakeEngine(**model, false);
  const std::string device = on->backend().identity().device_kind;
  uint32_t next_id = 1;
  std::string json = "{\"device\":\"" + device +
                     "\",\"model\":\"tinyllama-1.1b-shape-random-bf16\"," +
                     "\"prompt_tokens\":" + std::to_string(kPromptTokens) +
                     ",\"output_tokens\":" + std::to_string(kOutputTokens) + ",\"results\":[";
  std::fprintf(stderr, "%-6s %-13s %14s %14s %14s\n", "batch", "verification", "tokens/s",
               "decode tok/s", "ms/step");
  for (size_t b = 0; b < std::size(kBatches); ++b) {
    const int batch = kBatches[b];
    RunSessions(*on, batch, next_id, nullptr);  // warm-up: buffers, graphs
    next_id += batch;
    RunSessions(*off, batch, next_id, nullptr);
    next_id += batch;
    std::vector<double> total[2], decode[2];
    for (int run = 0; run < kTimedRuns; ++run) {
      for (int v = 0; v < 2; ++v) {
        const RunTimes t = RunSessions(v == 0 ? *on : *off, batch, next_id, nullptr);
        next_id += batch;
        total[v].push_back(batch * static_cast<double>(kOutputTokens) / t.total_seconds);
        decode[v].push_back(batch * static_cast<double>(kOutputTokens - 1) / t.decode_seconds);
      }
    }
    const double cost = 1.0 - Median(decode[0]) / Median(decode[1]);
    for (int v = 0; v < 2; ++v) {
      const double tps = Median(total[v]), dps = Median(decode[v]);
      std::fprintf(stderr, "%-6d %-13s %14.0f %14.0f %14.3f\n", batch, v == 0 ? "on" : "off", tps,
                   dps, 1000.0 * batch / dps);
      char row[320];
      std::snprintf(row, sizeof(row),
                    "%s{\"batch\":%d,\"verification\":%s,\"tokens_per_second\":%.1f,"
                    "\"decode_tokens_per_second\":%.1f,\"decode_ms_per_step\":%.4f}",
                    (b == 0 && v == 0) ? "" : ",", batch, v == 0 ? "true" : "false", tps, dps,
                    1000.0 * batch / dps);
      json += row;
    }
    std::fprintf(stderr, "batch %d: verification costs %.2f%% of decode tokens/s\n", batch,
                 100 * cost);
  }
  json += "]}";
  std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace fp::node

int main() { return fp::node::Main(); }
