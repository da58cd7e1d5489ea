// Model: a LLaMA-family model in the Hugging Face layout (config.json plus one
// model.safetensors, or shards listed by model.safetensors.index.json), memory-mapped, with every
// tensor's name, shape and dtype validated against the config.
//
// Weights hash (an input of the numerics profile): SHA-256 over the model's tensors in canonical
// order (sorted by name, byte-wise), each encoded as
//   u32 name_length | name | u8 dtype (common/base/dtype.h value) | u32 rank | u64 dims[rank] |
//   u64 byte_length | the tensor's little-endian bytes
// with big-endian integers. It depends only on what the model computes with, not on how the
// tensors are split across shard files or ordered inside them. See docs/engine.md.
//
// Thread-safety: immutable after Load; may be shared by any number of threads.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "node/model/config.h"
#include "node/model/safetensors.h"
#include "node/tensor.h"

namespace fp::node {

inline constexpr size_t kMaxShardFiles = 4096;
inline constexpr size_t kMaxIndexBytes = 64 << 20;

// One decoder layer's weights; views into the mapped files (or aligned copies).
struct LayerWeights {
  Tensor input_norm;  // [hidden]
  Tensor q_proj;      // [num_heads * head_dim, hidden]
  Tensor k_proj;      // [num_kv_heads * head_dim, hidden]
  Tensor v_proj;      // [num_kv_heads * head_dim, hidden]
  Tensor o_proj;      // [hidden, num_heads * head_dim]
  Tensor post_norm;   // [hidden]
  Tensor gate_proj;   // [intermediate, hidden]
  Tensor up_proj;     // [intermediate, hidden]
  Tensor down_proj;   // [hidden, intermediate]
};

class Model {
 public:
  // Loads DIR. NotFound if config.json or the weights are missing; InvalidArgument (naming the
  // file and the tensor) for a malformed file, a missing or unexpected tensor, or a shape that
  // disagrees with the config; Unimplemented for an unsupported architecture or dtype; DataLoss
  // for a truncated file. The caller owns the result.
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& dir);

  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  const Tensor& embed_tokens() const { return embed_tokens_; }  // [vocab, hidden]
  // [vocab, hidden]; the embedding itself when tie_word_embeddings.
  const Tensor& lm_head() const { return config_.tie_word_embeddings ? embed_tokens_ : lm_head_; }
  const Tensor& final_norm() const { return final_norm_; }  // [hidden]
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const Hash& weights_hash() const { return weights_hash_; }

 private:
  Model() = default;
  Status LoadTensors(const std::map<std::string, const SafetensorsFile*>& by_name);

  std::string dir_;
  LlamaConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;  // owned; the tensors below view them
  Tensor embed_tokens_;
  Tensor lm_head_;  // empty when tied
  Tensor final_norm_;
  std::vector<LayerWeights> layers_;
  Hash weights_hash_{};
};

}  // namespace fp::node
