// Anchor sets from a prefill; see anchor_builder.h.
#include "node/anchors/anchor_builder.h"

#include <algorithm>
#include <vector>

#include "node/kv/kv_cache_manager.h"

namespace fp::node {

StatusOr<std::unique_ptr<AnchorSet>> BuildAnchorSet(const Model& model, Backend& backend,
                                                    std::span<const int32_t> tokens,
                                                    int32_t num_anchors, float gamma) {
  const LlamaConfig& c = model.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (num_anchors < 1 || num_anchors > n || n > c.max_positions) {
    return InvalidArgumentError("anchors: need 1 <= anchors (" + std::to_string(num_anchors) +
                                ") <= text tokens (" + std::to_string(n) +
                                ") <= max_position_embeddings");
  }
  if (!(gamma >= 0.0f && gamma <= 1.0f))
    return InvalidArgumentError("anchors: gamma not in [0, 1]");
  for (int32_t id : tokens) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgumentError("anchors: token id " + std::to_string(id) + " out of range");
    }
  }
  FP_RETURN_IF_ERROR(backend.LoadModel(model, DigestOptions{c.dtype, -1}));
  FP_RETURN_IF_ERROR(backend.LoadAnchors(nullptr, AnchorMode::kMix));
  const int32_t blocks = static_cast<int32_t>((n + kKvBlockSize - 1) / kKvBlockSize);
  FP_RETURN_IF_ERROR(backend.AllocateKvCache(blocks, kKvBlockSize));
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int32_t b = 0; b < blocks; ++b) table[static_cast<size_t>(b)] = b;
  ForwardResult ignored;
  for (int64_t start = 0; start < n; start += kMaxBatchTokens) {
    ForwardSequence chunk;
    chunk.tokens =
        tokens.subspan(static_cast<size_t>(start),
                       static_cast<size_t>(std::min<int64_t>(kMaxBatchTokens, n - start)));
    chunk.start_row = static_cast<int32_t>(start);
    chunk.block_table = table;
    FP_RETURN_IF_ERROR(backend.Forward({&chunk, 1}, ForwardOptions{}, &ignored));
  }
  std::vector<AnchorLayer> layers(static_cast<size_t>(c.num_layers));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    AnchorLayer& layer = layers[static_cast<size_t>(l)];
    FP_RETURN_IF_ERROR(backend.ReadKvRows(table, l, static_cast<int32_t>(n - num_anchors),
                                          static_cast<int32_t>(n), &layer.key, &layer.value));
    layer.gamma = Tensor::Zeros(DType::kF32, {c.num_heads});
    std::fill_n(layer.gamma.mutable_data_as<float>(), c.num_heads, gamma);
  }
  return AnchorSet::Create(std::move(layers));
}

}  // namespace fp::node
