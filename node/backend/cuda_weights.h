// DeviceWeights: a LLaMA model's weights on the GPU, uploaded once, all bf16 (the "cuda-bf16"
// numerics: f16 and f32 checkpoints are rounded to bf16 on upload, round to nearest even; bf16
// checkpoints are copied bit for bit), in the Hugging Face layout ([out_features, in_features]
// row-major); or one rank's shard of them under tensor parallelism.
//
// Layout. One device allocation holds every tensor, each at a 256-byte aligned offset, except
// that q_proj, k_proj and v_proj of a layer are packed back to back (so the three read as one
// [q_heads * head_dim + 2 * kv_heads * head_dim, hidden] matrix, the fused QKV projection), and
// so are gate_proj and up_proj ([2 * intermediate, hidden]). A projection's rows are
// independent dot products, so the fused product gives every output element the bits the
// separate ones would. A tied LM head is the embedding itself (one copy).
//
// Shards (rank r of R; R == 1 is the whole model, byte for byte the layout above). With
// qd = q_heads * head_dim, kd = kv_heads * head_dim and I = intermediate:
//   qkv_proj      rows [r qd/R, (r+1) qd/R) of q_proj, then the same slice (kd/R rows) of k_proj
//                 and of v_proj: the query heads of kv heads [r kv/R, (r+1) kv/R) and those heads;
//   o_proj        columns [r qd/R, (r+1) qd/R): [hidden, qd/R] (row-parallel);
//   gate_up_proj  rows [r I/R, (r+1) I/R) of gate_proj, then of up_proj: [2 I/R, hidden];
//   down_proj     columns [r I/R, (r+1) I/R): [hidden, I/R] (row-parallel);
//   embedding, norms: whole on every rank; the LM head: whole on rank 0 only (the rank that
//   samples), null elsewhere unless tied to the embedding.
// Column slices are gathered on the host in bounded pieces, then copied.
//
// Thread-safety: immutable after Upload.
#pragma once

#include <vector>

#include <cuda_runtime_api.h>

#include "common/base/status.h"
#include "node/backend/cuda_resources.h"
#include "node/model/model.h"

namespace fp::node::cuda {

// Device pointers of one decoder layer, all bf16, borrowed from DeviceWeights. Shapes for a
// shard of R ranks (R == 1: the whole layer).
struct DeviceLayerWeights {
  const void* input_norm;    // [hidden]
  const void* qkv_proj;      // [(q_heads + 2 * kv_heads) * head_dim / R, hidden]: q, k, v rows
  const void* o_proj;        // [hidden, q_heads * head_dim / R]
  const void* post_norm;     // [hidden]
  const void* gate_up_proj;  // [2 * intermediate / R, hidden]: gate rows, then up rows
  const void* down_proj;     // [hidden, intermediate / R]
};

class DeviceWeights {
 public:
  DeviceWeights() = default;
  // Uploads rank `rank`'s shard of `model`'s tensors for `ranks`-way tensor parallelism (1: the
  // whole model) to the current device, converting to bf16 on the host in bounded pieces.
  // `model` is borrowed for the call; its head counts and intermediate size must divide by
  // `ranks` (FP_CHECKed: the backend validates the model first). ResourceExhausted if device
  // memory is short; Internal for other CUDA failures. The caller owns the result.
  static StatusOr<DeviceWeights> Upload(const Model& model, int rank, int ranks);

  const void* embed_tokens() const { return embed_tokens_; }  // [vocab, hidden] bf16
  const void* lm_head() const { return lm_head_; }            // [vocab, hidden] bf16 or null
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
