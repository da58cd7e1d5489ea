// Anchor sets: validation, canonical serialisation and hashing; see anchor_set.h.
#include "node/anchors/anchor_set.h"

#include <map>

#include "node/model/safetensors.h"

namespace fp::node {
namespace {

constexpr char kFormatKey[] = "format";
constexpr char kFormatValue[] = "fieldprint-anchors-v1";

std::string TensorName(size_t layer, std::string_view what) {
  return "layers." + std::to_string(layer) + "." + std::string(what);
}

Status ValidateLayers(const std::vector<AnchorLayer>& layers) {
  if (layers.empty()) return InvalidArgumentError("anchor set: no layers");
  const AnchorLayer& first = layers[0];
  if (first.key.rank() != 3 || first.gamma.rank() != 1) {
    return InvalidArgumentError("anchor set: key must be [A, kv_heads, head_dim], gamma [q_heads]");
  }
  if (first.key.dim(0) < 1 || first.key.dim(0) > kMaxAnchors) {
    return InvalidArgumentError("anchor set: needs 1 to 65536 anchors, got " +
                                std::to_string(first.key.dim(0)));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const AnchorLayer& l = layers[i];
    std::string where = "anchor set layer " + std::to_string(i) + ": ";
    if (l.key.shape() != first.key.shape() || l.value.shape() != first.key.shape() ||
        l.key.dtype() != first.key.dtype() || l.value.dtype() != first.key.dtype()) {
      return InvalidArgumentError(where + "key/value shape or dtype differs from layer 0 (" +
                                  ShapeString(first.key.shape()) + ")");
    }
    if (l.gamma.shape() != first.gamma.shape() || l.gamma.dtype() != DType::kF32) {
      return InvalidArgumentError(where + "gamma must be f32 " + ShapeString(first.gamma.shape()));
    }
    const float* g = l.gamma.data_as<float>();
    for (int64_t h = 0; h < l.gamma.elements(); ++h) {
      if (!(g[h] >= 0.0f && g[h] <= 1.0f)) {
        return InvalidArgumentError(where + "gamma of head " + std::to_string(h) +
                                    " is outside [0, 1]");
      }
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<AnchorMode> ParseAnchorMode(std::string_view name) {
  if (name == "mix") return AnchorMode::kMix;
  if (name == "prefix") return AnchorMode::kPrefix;
  return InvalidArgumentError("anchor mode must be 'mix' or 'prefix', got '" + std::string(name) +
                              "'");
}

std::string_view AnchorModeName(AnchorMode mode) {
  return mode == AnchorMode::kMix ? "mix" : "prefix";
}

StatusOr<std::unique_ptr<AnchorSet>> AnchorSet::Create(std::vector<AnchorLayer> layers) {
  FP_RETURN_IF_ERROR(ValidateLayers(layers));
  std::unique_ptr<AnchorSet> set(new AnchorSet(std::move(layers)));
  FP_ASSIGN_OR_RETURN(Bytes bytes, set->Serialize());
  set->hash_ = Sha256(bytes);
  return set;
}

StatusOr<std::unique_ptr<AnchorSet>> AnchorSet::Load(const std::string& path) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  size_t count = file->header().tensors.size();
  if (count == 0 || count % 3 != 0) {
    return InvalidArgumentError(path + ": an anchor set holds 3 tensors per layer, found " +
                                std::to_string(count));
  }
  std::vector<AnchorLayer> layers(count / 3);
  for (size_t i = 0; i < layers.size(); ++i) {
    Tensor* dest[] = {&layers[i].key, &layers[i].value, &layers[i].gamma};
    const char* names[] = {"anchor_key", "anchor_value", "gamma"};
    for (int j = 0; j < 3; ++j) {
      const SafetensorsEntry* entry = file->Find(TensorName(i, names[j]));
      if (entry == nullptr) {
        return InvalidArgumentError(path + ": missing tensor '" + TensorName(i, names[j]) + "'");
      }
      // Owning copies: anchor sets are small and must outlive the mapping.
      *dest[j] = file->Load(*entry).Clone();
    }
  }
  auto set = Create(std::move(layers));
  if (!set.ok()) return set.status().WithContext(path);
  return set;
}

StatusOr<Bytes> AnchorSet::Serialize() const {
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i < layers_.size(); ++i) {
    tensors.push_back({TensorName(i, "anchor_key"), &layers_[i].key});
    tensors.push_back({TensorName(i, "anchor_value"), &layers_[i].value});
    tensors.push_back({TensorName(i, "gamma"), &layers_[i].gamma});
  }
  return SerializeSafetensors(tensors, {{kFormatKey, kFormatValue}});
}

Status AnchorSet::Save(const std::string& path) const {
  FP_ASSIGN_OR_RETURN(Bytes bytes, Serialize());
  return WriteFileAtomically(path, bytes);
}

StatusOr<std::unique_ptr<AnchorSet>> AnchorSet::WithGamma(float gamma) const {
  if (!(gamma >= 0.0f && gamma <= 1.0f)) {
    return InvalidArgumentError("gamma must be in [0, 1], got " + std::to_string(gamma));
  }
  std::vector<AnchorLayer> layers;
  for (const AnchorLayer& l : layers_) {
    AnchorLayer copy{l.key.Clone(), l.value.Clone(), Tensor::Zeros(DType::kF32, l.gamma.shape())};
    float* g = copy.gamma.mutable_data_as<float>();
    for (int64_t h = 0; h < copy.gamma.elements(); ++h) g[h] = gamma;
    layers.push_back(std::move(copy));
  }
  return Create(std::move(layers));
}

Status AnchorSet::CheckCompatible(const LlamaConfig& c) const {
  if (num_layers() != c.num_layers || kv_heads() != c.num_kv_heads || head_dim() != c.head_dim ||
      q_heads() != c.num_heads) {
    return InvalidArgumentError("anchor set has " + std::to_string(num_layers()) + " layers, " +
                                std::to_string(kv_heads()) + " KV heads, head_dim " +
                                std::to_string(head_dim()) + ", " + std::to_string(q_heads()) +
                                " query heads; the model has " + std::to_string(c.num_layers) +
                                ", " + std::to_string(c.num_kv_heads) + ", " +
                                std::to_string(c.head_dim) + ", " + std::to_string(c.num_heads));
  }
  return OkStatus();
}

}  // namespace fp::node
