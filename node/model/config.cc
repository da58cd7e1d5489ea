// config.json parsing and writing for LLaMA-family models; see config.h.
#include "node/model/config.h"

#include <cmath>

#include <boost/json.hpp>

#include "node/model/mapped_file.h"

namespace fp::node {
namespace json = boost::json;
namespace {

// Field readers over one parsed config object; each error names the file and the field.
class Fields {
 public:
  Fields(const json::object& obj, std::string_view file_name) : obj_(obj), file_(file_name) {}

  Status Error(std::string_view field, std::string_view problem) const {
    return InvalidArgumentError(file_ + ": field '" + std::string(field) + "' " +
                                std::string(problem));
  }
  const json::value* Get(std::string_view field) const {
    const json::value* v = obj_.if_contains(field);
    return v != nullptr && !v->is_null() ? v : nullptr;
  }
  // An integer in [min, max]; `fallback` when absent (a negative fallback makes it required).
  StatusOr<int64_t> Int(std::string_view field, int64_t min, int64_t max, int64_t fallback) const {
    const json::value* v = Get(field);
    if (v == nullptr) {
      if (fallback < 0) return Error(field, "is missing");
      return fallback;
    }
    if (!v->is_int64() || v->get_int64() < min || v->get_int64() > max) {
      return Error(field, "must be an integer in [" + std::to_string(min) + ", " +
                              std::to_string(max) + "]");
    }
    return v->get_int64();
  }
  // A positive finite number; `fallback` when absent.
  StatusOr<double> Positive(std::string_view field, double fallback) const {
    const json::value* v = Get(field);
    if (v == nullptr) return fallback;
    if (!v->is_number()) return Error(field, "must be a number");
    json::error_code ec;
    double d = v->to_number<double>(ec);
    if (ec || !std::isfinite(d) || d <= 0) return Error(field, "must be a positive number");
    return d;
  }
  StatusOr<bool> Bool(std::string_view field, bool fallback) const {
    const json::value* v = Get(field);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) return Error(field, "must be true or false");
    return v->get_bool();
  }
  StatusOr<std::string> String(std::string_view field, std::string_view fallback) const {
    const json::value* v = Get(field);
    if (v == nullptr) return std::string(fallback);
    if (!v->is_string()) return Error(field, "must be a string");
    return std::string(v->get_string());
  }
  // An integer or a list of integers in [0, vocab); empty when absent.
  StatusOr<std::vector<int32_t>> TokenIds(std::string_view field, int64_t vocab) const {
    const json::value* v = Get(field);
    std::vector<int32_t> ids;
    if (v == nullptr) return ids;
    json::array single;
    const json::array* list = v->if_array();
    if (list == nullptr) {
      single.push_back(*v);
      list = &single;
    }
    for (const json::value& id : *list) {
      if (!id.is_int64() || id.get_int64() < 0 || id.get_int64() >= vocab) {
        return Error(field, "must hold token ids below vocab_size");
      }
      ids.push_back(static_cast<int32_t>(id.get_int64()));
    }
    return ids;
  }

 private:
  const json::object& obj_;
  std::string file_;
};

Status CheckArchitecture(const Fields& f) {
  if (const json::value* arch = f.Get("architectures")) {
    const json::array* list = arch->if_array();
    if (list == nullptr || list->size() != 1 || !(*list)[0].is_string()) {
      return f.Error("architectures", "must list exactly one architecture");
    }
    std::string name((*list)[0].get_string());
    if (name != "LlamaForCausalLM") {
      return UnimplementedError("unsupported architecture '" + name +
                                "' (only LlamaForCausalLM is supported)");
    }
  }
  FP_ASSIGN_OR_RETURN(std::string model_type, f.String("model_type", "llama"));
  if (model_type != "llama") {
    return UnimplementedError("unsupported model_type '" + model_type + "' (only llama)");
  }
  FP_ASSIGN_OR_RETURN(std::string act, f.String("hidden_act", "silu"));
  if (act != "silu") return UnimplementedError("unsupported hidden_act '" + act + "'");
  FP_ASSIGN_OR_RETURN(bool attention_bias, f.Bool("attention_bias", false));
  FP_ASSIGN_OR_RETURN(bool mlp_bias, f.Bool("mlp_bias", false));
  if (attention_bias || mlp_bias) return UnimplementedError("attention and MLP biases");
  return OkStatus();
}

// RoPE settings: "rope_theta" and "rope_scaling" (transformers 4.x) or one "rope_parameters"
// object holding both (transformers 5).
Status ParseRope(const Fields& f, LlamaConfig& c) {
  FP_ASSIGN_OR_RETURN(c.rope_theta, f.Positive("rope_theta", 10000.0));
  std::string_view field = f.Get("rope_parameters") != nullptr ? "rope_parameters" : "rope_scaling";
  const json::value* v = f.Get(field);
  if (v == nullptr) return OkStatus();
  const json::object* obj = v->if_object();
  if (obj == nullptr) return f.Error(field, "must be null or an object");
  Fields s(*obj, field);
  FP_ASSIGN_OR_RETURN(c.rope_theta, s.Positive("rope_theta", c.rope_theta));
  FP_ASSIGN_OR_RETURN(std::string type, s.String("rope_type", ""));
  if (type.empty()) {
    FP_ASSIGN_OR_RETURN(type, s.String("type", "default"));
  }
  if (type == "default") return OkStatus();
  if (type != "llama3") return UnimplementedError("unsupported rope type '" + type + "'");
  c.rope_scaling = RopeScaling::kLlama3;
  FP_ASSIGN_OR_RETURN(c.rope_factor, s.Positive("factor", 8.0));
  FP_ASSIGN_OR_RETURN(c.rope_low_freq_factor, s.Positive("low_freq_factor", 1.0));
  FP_ASSIGN_OR_RETURN(c.rope_high_freq_factor, s.Positive("high_freq_factor", 4.0));
  FP_ASSIGN_OR_RETURN(c.rope_original_max_positions,
                      s.Int("original_max_position_embeddings", 1, kMaxPositions, 8192));
  if (c.rope_high_freq_factor <= c.rope_low_freq_factor) {
    return f.Error(field, "needs high_freq_factor > low_freq_factor");
  }
  return OkStatus();
}

StatusOr<DType> ParseTorchDType(const Fields& f) {
  FP_ASSIGN_OR_RETURN(std::string name, f.String("torch_dtype", ""));
  if (name.empty()) {
    FP_ASSIGN_OR_RETURN(name, f.String("dtype", "bfloat16"));
  }
  if (name == "bfloat16") return DType::kBf16;
  if (name == "float16") return DType::kF16;
  if (name == "float32") return DType::kF32;
  return UnimplementedError("unsupported torch_dtype '" + name + "'");
}

Status ParseSizes(const Fields& f, LlamaConfig& c) {
  FP_ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size", 1, kMaxVocabSize, -1));
  FP_ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size", 1, kMaxHiddenSize, -1));
  FP_ASSIGN_OR_RETURN(c.intermediate_size, f.Int("intermediate_size", 1, 8 * kMaxHiddenSize, -1));
  FP_ASSIGN_OR_RETURN(c.num_layers, f.Int("num_hidden_layers", 1, kMaxLayers, -1));
  FP_ASSIGN_OR_RETURN(c.num_heads, f.Int("num_attention_heads", 1, kMaxHeads, -1));
  FP_ASSIGN_OR_RETURN(c.num_kv_heads, f.Int("num_key_value_heads", 1, kMaxHeads, c.num_heads));
  if (c.hidden_size % c.num_heads != 0 && f.Get("head_dim") == nullptr) {
    return f.Error("hidden_size", "must be divisible by num_attention_heads");
  }
  FP_ASSIGN_OR_RETURN(c.head_dim, f.Int("head_dim", 2, kMaxHeadDim, c.hidden_size / c.num_heads));
  if (c.head_dim % 2 != 0) return f.Error("head_dim", "must be even (RoPE rotates pairs)");
  if (c.num_heads % c.num_kv_heads != 0) {
    return f.Error("num_key_value_heads", "must divide num_attention_heads");
  }
  FP_ASSIGN_OR_RETURN(c.max_positions, f.Int("max_position_embeddings", 1, kMaxPositions, -1));
  return OkStatus();
}

}  // namespace

StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json_text, std::string_view file_name) {
  json::error_code ec;
  json::value root = json::parse(json::string_view(json_text.data(), json_text.size()), ec);
  if (ec) {
    return InvalidArgumentError(std::string(file_name) + ": not valid JSON: " + ec.message());
  }
  const json::object* obj = root.if_object();
  if (obj == nullptr) return InvalidArgumentError(std::string(file_name) + ": not a JSON object");
  Fields f(*obj, file_name);
  LlamaConfig c;
  Status arch = CheckArchitecture(f);
  if (!arch.ok()) return arch.WithContext(file_name);
  FP_RETURN_IF_ERROR(ParseSizes(f, c));
  FP_ASSIGN_OR_RETURN(c.rms_norm_eps, f.Positive("rms_norm_eps", 1e-6));
  Status rope = ParseRope(f, c);
  if (!rope.ok()) return rope.WithContext(file_name);
  FP_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  FP_ASSIGN_OR_RETURN(c.bos_token_ids, f.TokenIds("bos_token_id", c.vocab_size));
  FP_ASSIGN_OR_RETURN(c.eos_token_ids, f.TokenIds("eos_token_id", c.vocab_size));
  auto dtype = ParseTorchDType(f);
  if (!dtype.ok()) return dtype.status().WithContext(file_name);
  c.dtype = *dtype;
  return c;
}

StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  FP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxConfigBytes));
  return ParseLlamaConfig(text, path);
}

std::string SerializeLlamaConfig(const LlamaConfig& c) {
  json::object obj;
  obj["architectures"] = json::array{"LlamaForCausalLM"};
  obj["model_type"] = "llama";
  obj["hidden_act"] = "silu";
  obj["vocab_size"] = c.vocab_size;
  obj["hidden_size"] = c.hidden_size;
  obj["intermediate_size"] = c.intermediate_size;
  obj["num_hidden_layers"] = c.num_layers;
  obj["num_attention_heads"] = c.num_heads;
  obj["num_key_value_heads"] = c.num_kv_heads;
  obj["head_dim"] = c.head_dim;
  obj["max_position_embeddings"] = c.max_positions;
  obj["rms_norm_eps"] = c.rms_norm_eps;
  obj["rope_theta"] = c.rope_theta;
  if (c.rope_scaling == RopeScaling::kLlama3) {
    obj["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope_factor},
                           {"low_freq_factor", c.rope_low_freq_factor},
                           {"high_freq_factor", c.rope_high_freq_factor},
                           {"original_max_position_embeddings", c.rope_original_max_positions}};
  } else {
    obj["rope_scaling"] = nullptr;
  }
  obj["tie_word_embeddings"] = c.tie_word_embeddings;
  auto ids = [](const std::vector<int32_t>& v) -> json::value {
    if (v.size() == 1) return v[0];
    json::array a;
    for (int32_t id : v) a.push_back(id);
    return a;
  };
  if (!c.bos_token_ids.empty()) obj["bos_token_id"] = ids(c.bos_token_ids);
  if (!c.eos_token_ids.empty()) obj["eos_token_id"] = ids(c.eos_token_ids);
  obj["torch_dtype"] = c.dtype == DType::kF32   ? "float32"
                       : c.dtype == DType::kF16 ? "float16"
                                                : "bfloat16";
  return json::serialize(obj) + "\n";
}

}  // namespace fp::node
