// Loading and validation of Hugging Face LLaMA checkpoints; see model.h.
#include "node/model/model.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <boost/json.hpp>

#include "node/model/mapped_file.h"

namespace fp::node {
namespace json = boost::json;
namespace {

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// Tensors that checkpoints may carry but the model never reads: rotary tables that old
// transformers versions saved.
bool IsIgnorable(const std::string& name) { return name.ends_with(".rotary_emb.inv_freq"); }

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
         name.ends_with(".safetensors");
}

// The shard files and, for an index, the tensor -> file map it declares.
struct Shards {
  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;  // empty without an index
};

StatusOr<Shards> FindShards(const std::string& dir) {
  Shards shards;
  std::string index_path = dir + "/" + kIndexFile;
  if (!std::filesystem::exists(index_path)) {
    if (!std::filesystem::exists(dir + "/" + kSingleFile)) {
      return NotFoundError(dir + ": neither " + kSingleFile + " nor " + kIndexFile);
    }
    shards.files.push_back(kSingleFile);
    return shards;
  }
  FP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path, kMaxIndexBytes));
  json::error_code ec;
  json::value root = json::parse(text, ec);
  const json::object* obj = ec ? nullptr : root.if_object();
  const json::value* map = obj == nullptr ? nullptr : obj->if_contains("weight_map");
  if (map == nullptr || !map->is_object()) {
    return InvalidArgumentError(index_path + ": not a JSON object with a 'weight_map' object");
  }
  std::set<std::string> files;
  for (const auto& kv : map->get_object()) {
    const json::string* file = kv.value().if_string();
    if (file == nullptr || !IsPlainFileName(std::string(*file))) {
      return InvalidArgumentError(index_path + ": tensor '" + std::string(kv.key()) +
                                  "' maps to something other than a .safetensors file name");
    }
    shards.weight_map[std::string(kv.key())] = std::string(*file);
    files.insert(std::string(*file));
  }
  if (files.empty() || files.size() > kMaxShardFiles) {
    return InvalidArgumentError(index_path + ": needs 1 to 4096 shard files");
  }
  shards.files.assign(files.begin(), files.end());
  return shards;
}

Status CheckShape(const SafetensorsFile& file, const SafetensorsEntry& entry,
                  const Shape& expected) {
  if (entry.shape == expected) return OkStatus();
  return InvalidArgumentError(file.path() + ": tensor '" + entry.name + "' has shape " +
                              ShapeString(entry.shape) + " but config.json needs " +
                              ShapeString(expected));
}

void HashTensor(Sha256Stream& stream, const std::string& name, const Tensor& t) {
  Bytes prefix;
  AppendU32(prefix, static_cast<uint32_t>(name.size()));
  prefix.insert(prefix.end(), name.begin(), name.end());
  prefix.push_back(static_cast<uint8_t>(t.dtype()));
  AppendU32(prefix, static_cast<uint32_t>(t.rank()));
  for (int64_t d : t.shape()) AppendU64(prefix, static_cast<uint64_t>(d));
  AppendU64(prefix, t.bytes_size());
  stream.Update(prefix);
  stream.Update(t.bytes());
}

}  // namespace

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir) {
  std::unique_ptr<Model> model(new Model());
  model->dir_ = dir;
  FP_ASSIGN_OR_RETURN(model->config_, LoadLlamaConfig(dir));
  FP_ASSIGN_OR_RETURN(Shards shards, FindShards(dir));
  std::map<std::string, const SafetensorsFile*> by_name;
  for (const std::string& file_name : shards.files) {
    FP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                        SafetensorsFile::Open(dir + "/" + file_name));
    for (const SafetensorsEntry& entry : file->header().tensors) {
      if (!by_name.emplace(entry.name, file.get()).second) {
        return InvalidArgumentError(file->path() + ": tensor '" + entry.name +
                                    "' also appears in another shard");
      }
      auto mapped = shards.weight_map.find(entry.name);
      if (!shards.weight_map.empty() &&
          (mapped == shards.weight_map.end() || mapped->second != file_name)) {
        return InvalidArgumentError(file->path() + ": tensor '" + entry.name +
                                    "' is not mapped to this file by " + kIndexFile);
      }
    }
    model->files_.push_back(std::move(file));
  }
  for (const auto& [name, file_name] : shards.weight_map) {
    if (!by_name.contains(name)) {
      return InvalidArgumentError(dir + "/" + file_name + ": missing tensor '" + name + "' that " +
                                  kIndexFile + " maps to it");
    }
  }
  FP_RETURN_IF_ERROR(model->LoadTensors(by_name));
  return model;
}

Status Model::LoadTensors(const std::map<std::string, const SafetensorsFile*>& by_name) {
  const LlamaConfig& c = config_;
  const int64_t h = c.hidden_size;
  const int64_t q = c.num_heads * c.head_dim;
  const int64_t kv = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  struct Expected {
    std::string name;
    Shape shape;
    Tensor* dest;
  };
  std::vector<Expected> expected = {
      {"model.embed_tokens.weight", {c.vocab_size, h}, &embed_tokens_},
      {"model.norm.weight", {h}, &final_norm_}};
  if (!c.tie_word_embeddings) expected.push_back({"lm_head.weight", {c.vocab_size, h}, &lm_head_});
  layers_.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = layers_[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    expected.push_back({p + "input_layernorm.weight", {h}, &l.input_norm});
    expected.push_back({p + "self_attn.q_proj.weight", {q, h}, &l.q_proj});
    expected.push_back({p + "self_attn.k_proj.weight", {kv, h}, &l.k_proj});
    expected.push_back({p + "self_attn.v_proj.weight", {kv, h}, &l.v_proj});
    expected.push_back({p + "self_attn.o_proj.weight", {h, q}, &l.o_proj});
    expected.push_back({p + "post_attention_layernorm.weight", {h}, &l.post_norm});
    expected.push_back({p + "mlp.gate_proj.weight", {inter, h}, &l.gate_proj});
    expected.push_back({p + "mlp.up_proj.weight", {inter, h}, &l.up_proj});
    expected.push_back({p + "mlp.down_proj.weight", {h, inter}, &l.down_proj});
  }
  std::set<std::string> used;
  for (Expected& e : expected) {
    auto it = by_name.find(e.name);
    if (it == by_name.end()) {
      return InvalidArgumentError(dir_ + ": missing tensor '" + e.name + "'");
    }
    const SafetensorsEntry* entry = it->second->Find(e.name);
    FP_CHECK(entry != nullptr);
    FP_RETURN_IF_ERROR(CheckShape(*it->second, *entry, e.shape));
    *e.dest = it->second->Load(*entry);
    used.insert(e.name);
  }
  for (const auto& [name, file] : by_name) {
    // A tied checkpoint may still carry a copy of the LM head; the embedding is what is used.
    bool tied_copy = c.tie_word_embeddings && name == "lm_head.weight";
    if (!used.contains(name) && !tied_copy && !IsIgnorable(name)) {
      return InvalidArgumentError(file->path() + ": unexpected tensor '" + name +
                                  "' for a LlamaForCausalLM with this config.json");
    }
  }
  std::sort(expected.begin(), expected.end(),
            [](const Expected& a, const Expected& b) { return a.name < b.name; });
  Sha256Stream stream;
  for (const Expected& e : expected) HashTensor(stream, e.name, *e.dest);
  weights_hash_ = stream.Finish();
  return OkStatus();
}

}  // namespace fp::node
