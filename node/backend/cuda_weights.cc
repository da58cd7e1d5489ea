// Weight upload; see cuda_weights.h.
#include "node/backend/cuda_weights.h"

#include <algorithm>
#include <cstring>

#include "kernels/base/cuda_status.h"
#include "kernels/base/half.h"

namespace fp::node::cuda {
namespace {

using kernels::CudaStatus;

constexpr size_t kAlignment = 256;
// Elements converted on the host per copy: bounds the host scratch (32 MiB) for f16/f32 models.
constexpr size_t kMaxConvertElements = size_t{16} << 20;

size_t AlignUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// Tensors stored back to back, the group starting at an aligned offset.
struct Group {
  std::vector<const Tensor*> tensors;
  size_t offset = 0;
};

size_t Bf16Bytes(const Tensor& t) { return static_cast<size_t>(t.elements()) * 2; }

// Copies `t` as bf16 to `device` (synchronously: the upload runs once, at load).
Status UploadTensor(const Tensor& t, uint8_t* device, std::vector<uint16_t>& scratch) {
  if (t.dtype() == DType::kBf16) {
    return CudaStatus(cudaMemcpy(device, t.data(), t.bytes_size(), cudaMemcpyHostToDevice),
                      "upload weights");
  }
  const size_t total = static_cast<size_t>(t.elements());
  const size_t element = DTypeSize(t.dtype());
  std::vector<float> widened;
  for (size_t begin = 0; begin < total; begin += kMaxConvertElements) {
    const size_t count = std::min(kMaxConvertElements, total - begin);
    const uint8_t* src = static_cast<const uint8_t*>(t.data()) + begin * element;
    widened.resize(count);
    kernels::ConvertToF32(src, t.dtype(), count, widened.data());
    scratch.resize(count);
    kernels::ConvertF32ToBf16(widened.data(), count, scratch.data());
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(device + begin * 2, scratch.data(), count * 2, cudaMemcpyHostToDevice),
        "upload weights"));
  }
  return OkStatus();
}

}  // namespace

StatusOr<DeviceWeights> DeviceWeights::Upload(const Model& model) {
  const bool tied = model.config().tie_word_embeddings;
  std::vector<Group> groups;
  groups.push_back({{&model.embed_tokens()}});
  if (!tied) groups.push_back({{&model.lm_head()}});
  groups.push_back({{&model.final_norm()}});
  for (const LayerWeights& l : model.layers()) {
    groups.push_back({{&l.input_norm}});
    groups.push_back({{&l.q_proj, &l.k_proj, &l.v_proj}});
    groups.push_back({{&l.o_proj}});
    groups.push_back({{&l.post_norm}});
    groups.push_back({{&l.gate_proj, &l.up_proj}});
    groups.push_back({{&l.down_proj}});
  }
  size_t total = 0;
  for (Group& g : groups) {
    g.offset = total;
    size_t bytes = 0;
    for (const Tensor* t : g.tensors) bytes += Bf16Bytes(*t);
    total += AlignUp(bytes);
  }
  DeviceWeights weights;
  FP_ASSIGN_OR_RETURN(weights.arena_, DeviceBuffer::Allocate(total, "model weights"));
  std::vector<uint16_t> scratch;
  for (const Group& g : groups) {
    size_t offset = g.offset;
    for (const Tensor* t : g.tensors) {
      FP_RETURN_IF_ERROR(UploadTensor(*t, weights.arena_.bytes() + offset, scratch));
      offset += Bf16Bytes(*t);
    }
  }
  const uint8_t* base = weights.arena_.bytes();
  size_t g = 0;
  weights.embed_tokens_ = base + groups[g++].offset;
  weights.lm_head_ = tied ? weights.embed_tokens_ : base + groups[g++].offset;
  weights.final_norm_ = base + groups[g++].offset;
  for (size_t l = 0; l < model.layers().size(); ++l) {
    DeviceLayerWeights layer;
    layer.input_norm = base + groups[g++].offset;
    layer.qkv_proj = base + groups[g++].offset;
    layer.o_proj = base + groups[g++].offset;
    layer.post_norm = base + groups[g++].offset;
    layer.gate_up_proj = base + groups[g++].offset;
    layer.down_proj = base + groups[g++].offset;
    weights.layers_.push_back(layer);
  }
  return weights;
}

}  // namespace fp::node::cuda
