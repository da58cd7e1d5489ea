// LlamaConfig: the subset of a Hugging Face config.json that defines a LLaMA-family model
// (LlamaForCausalLM: RMSNorm, RoPE with optional llama3 scaling, grouped-query attention, SwiGLU,
// optionally tied embeddings), parsed with Boost.JSON and validated.
//
// Thread-safety: pure functions over value types.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/status.h"

namespace fp::node {

// Bounds on what a config may declare, so a hostile file cannot make the loader allocate
// without limit. They cover every published LLaMA-family model with room to spare.
inline constexpr int64_t kMaxVocabSize = 1 << 20;
inline constexpr int64_t kMaxHiddenSize = 1 << 16;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;
inline constexpr int64_t kMaxHeadDim = 1024;
inline constexpr int64_t kMaxPositions = 1 << 22;
inline constexpr size_t kMaxConfigBytes = 1 << 20;

enum class RopeScaling : uint8_t {
  kNone = 0,
  kLlama3 = 1,  // Meta's LLaMA 3.1 frequency-dependent scaling
};

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_positions = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::kNone;
  double rope_factor = 1.0;                 // llama3 only
  double rope_low_freq_factor = 1.0;        // llama3 only
  double rope_high_freq_factor = 4.0;       // llama3 only
  int64_t rope_original_max_positions = 0;  // llama3 only
  bool tie_word_embeddings = false;
  std::vector<int32_t> bos_token_ids;  // usually one
  std::vector<int32_t> eos_token_ids;  // one or several
  // torch_dtype: the dtype the model was trained to run in; the canonical dtype of its hidden
  // states (what state digests hash). Defaults to bf16 when the config omits it.
  DType dtype = DType::kBf16;
};

// Parses config.json text. Unimplemented for an architecture other than LlamaForCausalLM (naming
// it), for attention/MLP biases, an activation other than silu or an unsupported rope_scaling
// type; InvalidArgument for malformed JSON, a missing or out-of-range field, or inconsistent
// sizes (hidden_size not divisible by the heads, heads not divisible by the KV heads).
// `file_name` prefixes every error message.
StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json_text, std::string_view file_name);

// Reads and parses DIR/config.json; NotFound if it is missing.
StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir);

// config.json text for `config` (what mk-tiny writes); ParseLlamaConfig reads it back.
std::string SerializeLlamaConfig(const LlamaConfig& config);

}  // namespace fp::node
