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
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/base/temp_dir.h"
#include "kernels/base/half.h"
#include "node/backend/cuda_backend.h"
#include "node/engine/engine.h"
#include "node/model/config.h"
#include "node/model/mapped_file.h"
#include "node/model/safetensors.h"

namespace fp::node {
namespace {

constexpr int kPromptTokens = 16;
constexpr int kOutputTokens = 256;
constexpr int kTimedRuns = 5;
constexpr int kBatches[] = {1, 32};
// Random values reused (from random offsets) by every tensor, so making 1.1B weights is cheap.
constexpr size_t kPoolValues = size_t{1} << 24;

void CheckOk(const Status& status, const char* what) {
  if (status.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

LlamaConfig TinyLlamaConfig() {
  LlamaConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 2048;
  c.intermediate_size = 5632;
  c.num_layers = 22;
  c.num_heads = 32;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  c.max_positions = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_token_ids = {1};
  c.eos_token_ids = {2};
  c.dtype = DType::kBf16;
  return c;
}

uint64_t NextRandom(uint64_t& state) {  // SplitMix64
  uint64_t z = (state += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

// A [rows, cols] bf16 tensor of uniform values in [-scale, scale) (norm weights: all ones).
Tensor RandomTensor(const std::vector<float>& pool, uint64_t& rng, int64_t rows, int64_t cols,
                    float scale) {
  Tensor t = Tensor::Zeros(DType::kBf16, rows == 0 ? Shape{cols} : Shape{rows, cols});
  auto* out = t.mutable_data_as<uint16_t>();
  size_t at = NextRandom(rng) % pool.size();
  for (int64_t i = 0; i < t.elements(); ++i, at = (at + 1) % pool.size()) {
    out[i] = kernels::F32ToBf16(scale == 0 ? 1.0f : pool[at] * scale);
  }
  return t;
}

Status WriteRandomModel(const std::string& dir, const LlamaConfig& c) {
  uint64_t rng = 42;
  std::vector<float> pool(kPoolValues);
  for (float& v : pool) v = static_cast<float>(NextRandom(rng) >> 40) * 0x1p-23f - 1.0f;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const float in_h = 1.0f / std::sqrt(static_cast<float>(h));
  const float in_i = 1.0f / std::sqrt(static_cast<float>(c.intermediate_size));
  std::map<std::string, Tensor> t;
  t["model.embed_tokens.weight"] = RandomTensor(pool, rng, c.vocab_size, h, 0.05f);
  t["lm_head.weight"] = RandomTensor(pool, rng, c.vocab_size, h, in_h);
  t["model.norm.weight"] = RandomTensor(pool, rng, 0, h, 0);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t[p + "input_layernorm.weight"] = RandomTensor(pool, rng, 0, h, 0);
    t[p + "post_attention_layernorm.weight"] = RandomTensor(pool, rng, 0, h, 0);
    t[p + "self_attn.q_proj.weight"] = RandomTensor(pool, rng, q, h, in_h);
    t[p + "self_attn.k_proj.weight"] = RandomTensor(pool, rng, kv, h, in_h);
    t[p + "self_attn.v_proj.weight"] = RandomTensor(pool, rng, kv, h, in_h);
    t[p + "self_attn.o_proj.weight"] = RandomTensor(pool, rng, h, q, in_h);
    t[p + "mlp.gate_proj.weight"] = RandomTensor(pool, rng, c.intermediate_size, h, in_h);
    t[p + "mlp.up_proj.weight"] = RandomTensor(pool, rng, c.intermediate_size, h, in_h);
    t[p + "mlp.down_proj.weight"] = RandomTensor(pool, rng, h, c.intermediate_size, in_i);
  }
  std::vector<NamedTensor> named;
  for (const auto& [name, tensor] : t) named.push_back({name, &tensor});
  FP_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", named, {{"format", "pt"}}));
  return WriteFileAtomically(dir + "/config.json", AsBytes(SerializeLlamaConfig(c)));
}

struct RunTimes {
  double total_seconds = 0;
  double decode_seconds = 0;  // steps after the first (the first step holds every prefill)
};

// One batch of greedy sessions on `engine`, start to finish; removes them afterwards.
RunTimes RunSessions(Engine& engine, int batch, uint32_t& next_id) {
  std::vector<SessionId> ids;
  for (int i = 0; i < batch; ++i) {
    SessionRequest r;
    const uint32_t id = next_id++;
    std::memcpy(r.id.data(), &id, sizeof(id));
    for (int j = 0; j < kPromptTokens; ++j) r.prompt.push_back(3 + (id * 131 + j * 17) % 31000);
    r.max_tokens = kOutputTokens;
    ids.push_back(r.id);
    CheckOk(engine.Submit(r), "submit");
  }
  std::vector<StepOutput> outputs;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  CheckOk(engine.Step(&outputs), "step");
  const Clock::time_point after_prefill = Clock::now();
  while (engine.HasWork()) {
    outputs.clear();
    CheckOk(engine.Step(&outputs), "step");
  }
  const Clock::time_point end = Clock::now();
  for (const SessionId& id : ids) CheckOk(engine.Remove(id), "remove");
  return {std::chrono::duration<double>(end - start).count(),
          std::chrono::duration<double>(end - after_prefill).count()};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

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
  const LlamaConfig config = TinyLlamaConfig();
  CheckOk(WriteRandomModel((*dir)->path().string(), config), "write model");
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
    RunSessions(*on, batch, next_id);  // warm-up: buffers, graphs
    RunSessions(*off, batch, next_id);
    std::vector<double> total[2], decode[2];
    for (int run = 0; run < kTimedRuns; ++run) {
      for (int v = 0; v < 2; ++v) {
        const RunTimes t = RunSessions(v == 0 ? *on : *off, batch, next_id);
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
