// Benchmark helpers; see cuda_bench_model.h.
#include "node/backend/cuda_bench_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "kernels/base/half.h"
#include "node/model/mapped_file.h"
#include "node/model/safetensors.h"

namespace fp::node::bench {
namespace {

// Random values reused (from random offsets) by every tensor, so making 1.1B weights is cheap.
constexpr size_t kPoolValues = size_t{1} << 24;

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

}  // namespace

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

SessionRequest BenchSession(uint32_t id) {
  SessionRequest r;
  std::memcpy(r.id.data(), &id, sizeof(id));
  for (int j = 0; j < kPromptTokens; ++j) {
    r.prompt.push_back(static_cast<int32_t>(3 + (id * 131 + j * 17) % 31000));
  }
  r.max_tokens = kOutputTokens;
  return r;
}

RunTimes RunSessions(Engine& engine, int batch, uint32_t first_id, std::vector<Hash>* leaves) {
  std::vector<SessionId> ids;
  for (int i = 0; i < batch; ++i) {
    SessionRequest r = BenchSession(first_id + static_cast<uint32_t>(i));
    ids.push_back(r.id);
    CheckOk(engine.Submit(std::move(r)), "submit");
  }
  std::vector<StepOutput> outputs;
  const auto keep = [&] {
    if (leaves == nullptr) return;
    for (const StepOutput& out : outputs) {
      if (out.leaf.session_id == ids.front()) leaves->push_back(out.leaf_hash);
    }
  };
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  CheckOk(engine.Step(&outputs), "step");
  const Clock::time_point after_prefill = Clock::now();
  keep();
  while (engine.HasWork()) {
    outputs.clear();
    CheckOk(engine.Step(&outputs), "step");
    keep();
  }
  const Clock::time_point end = Clock::now();
  for (const SessionId& id : ids) CheckOk(engine.Remove(id), "remove");
  return {std::chrono::duration<double>(end - start).count(),
          std::chrono::duration<double>(end - after_prefill).count()};
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace fp::node::bench
