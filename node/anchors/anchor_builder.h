// Building anchor sets from text (`fieldprint anchors build`): prefill the text through a model
// and keep, per layer, the K/V rows of its last A positions as the anchor keys and values (as the
// cache holds them: keys after RoPE at their original positions; the anchored attention applies
// no further rotation), with the same gamma for every query head.
//
// Thread-safety: a call uses only its arguments; the backend is borrowed for the call and must
// not be used by anything else meanwhile.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "common/base/status.h"
#include "node/anchors/anchor_set.h"
#include "node/backend/backend.h"
#include "node/model/model.h"

namespace fp::node {

// Prefills `tokens` through `model` on `backend` (a fresh backend: its model, anchors and KV
// cache are replaced) and returns an anchor set of the last `num_anchors` positions. Keys and
// values are f32. InvalidArgument unless 1 <= num_anchors <= tokens.size() <=
// max_position_embeddings, every id is in the vocabulary and 0 <= gamma <= 1. The caller owns
// the result.
StatusOr<std::unique_ptr<AnchorSet>> BuildAnchorSet(const Model& model, Backend& backend,
                                                    std::span<const int32_t> tokens,
                                                    int32_t num_anchors, float gamma);

}  // namespace fp::node
