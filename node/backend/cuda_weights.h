// DeviceWeights: a LLaMA model's weights on the GPU, uploaded once, all bf16 (the "cuda-bf16"
// numerics: f16 and f32 checkpoints are rounded to bf16 on upload, round to nearest even; bf16
// checkpoints are copied bit for bit), in the Hugging Face layout ([out_features, in_features]
// row-major).
//
// Layout. One device allocation holds every tensor, each at a 256-byte aligned offset, except
// that q_proj, k_proj and v_proj of a layer are packed back to back (so the three read as one
// [q_heads * head_dim + 2 * kv_heads * head_dim, hidden] matrix, the fused QKV projection), and
// so are gate_proj and up_proj ([2 * intermediate, hidden]). A projection's rows are
// independent dot products, so the fused product gives every output element the bits the
// separate ones would. A tied LM head is the embedding itself (one copy).
//
// Thread-safety: immutable after Upload.
#pragma once

#include <vector>

#include <cuda_runtime_api.h>

#include "common/base/status.h"
#include "node/backend/cuda_resources.h"
#include "node/model/model.h"

namespace fp::node::cuda {

// Device pointers of one decoder layer, all bf16, borrowed from DeviceWeights.
struct DeviceLayerWeights {
  const void* input_norm;    // [hidden]
  const void* qkv_proj;      // [q_heads * head_dim + 2 * kv_heads * head_dim, hidden]: q, k, v rows
  const void* o_proj;        // [hidden, q_heads * head_dim]
  const void* post_norm;     // [hidden]
  const void* gate_up_proj;  // [2 * intermediate, hidden]: gate rows, then up rows
  const void* down_proj;     // [hidden, intermediate]
};

class DeviceWeights {
 public:
  DeviceWeights() = default;
  // Uploads `model`'s tensors (borrowed for the call) to the current device, converting to bf16
  // on the host in bounded pieces. ResourceExhausted if device memory is short; Internal for
  // other CUDA failures. The caller owns the result.
  static StatusOr<DeviceWeights> Upload(const Model& model);

  const void* embed_tokens() const { return embed_tokens_; }  // [vocab, hidden] bf16
  const void* lm_head() const { return lm_head_; }            // [vocab, hidden] bf16
  const void* final_norm() const { return final_norm_; }      // [hidden] bf16
  const std::vector<DeviceLayerWeights>& layers() const { return layers_; }
  size_t bytes() const { return arena_.size(); }

 private:
  DeviceBuffer arena_;  // every tensor; the pointers below point into it
  const void* embed_tokens_ = nullptr;
  const void* lm_head_ = nullptr;
  const void* final_norm_ = nullptr;
  std::vector<DeviceLayerWeights> layers_;
};

}  // namespace fp::node::cuda
