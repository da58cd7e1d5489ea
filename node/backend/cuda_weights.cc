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

// A block of a 2-D tensor (a 1-D tensor is one row): rows [row_begin, row_end), columns
// [col_begin, col_end).
struct Piece {
  const Tensor* tensor;
  int64_t row_begin, row_end, col_begin, col_end;
};

int64_t Columns(const Tensor& t) { return t.rank() == 1 ? t.elements() : t.dim(1); }
int64_t Rows(const Tensor& t) { return t.rank() == 1 ? 1 : t.dim(0); }

Piece Whole(const Tensor& t) { return {&t, 0, Rows(t), 0, Columns(t)}; }
// Rows [r n/R, (r+1) n/R) of a tensor with n rows.
Piece RowSlice(const Tensor& t, int rank, int ranks) {
  const int64_t n = Rows(t) / ranks;
  return {&t, rank * n, (rank + 1) * n, 0, Columns(t)};
}
// Columns [r n/R, (r+1) n/R) of a tensor with n columns.
Piece ColumnSlice(const Tensor& t, int rank, int ranks) {
  const int64_t n = Columns(t) / ranks;
  return {&t, 0, Rows(t), rank * n, (rank + 1) * n};
}

size_t Bf16Bytes(const Piece& p) {
  return static_cast<size_t>((p.row_end - p.row_begin) * (p.col_end - p.col_begin)) * 2;
}

// Pieces stored back to back, the group starting at an aligned offset.
struct Group {
  std::vector<Piece> pieces;
  size_t offset = 0;
};

// Copies `p` as bf16 to `device` (synchronously: the upload runs once, at load). Whole bf16 rows
// are one contiguous range and go straight from the checkpoint; anything else is converted (or
// gathered) on the host kMaxConvertElements at a time.
Status UploadPiece(const Piece& p, uint8_t* device, std::vector<uint16_t>& scratch) {
  const Tensor& t = *p.tensor;
  const int64_t columns = Columns(t), width = p.col_end - p.col_begin;
  const size_t element = DTypeSize(t.dtype());
  const auto* data = static_cast<const uint8_t*>(t.data());
  if (t.dtype() == DType::kBf16 && width == columns) {
    return CudaStatus(
        cudaMemcpy(device, data + p.row_begin * columns * 2, Bf16Bytes(p), cudaMemcpyHostToDevice),
        "upload weights");
  }
  const int64_t rows_per_chunk =
      std::max<int64_t>(1, static_cast<int64_t>(kMaxConvertElements) / width);
  std::vector<float> widened;
  for (int64_t row = p.row_begin; row < p.row_end; row += rows_per_chunk) {
    const int64_t rows = std::min(rows_per_chunk, p.row_end - row);
    scratch.resize(static_cast<size_t>(rows * width));
    for (int64_t i = 0; i < rows; ++i) {
      const uint8_t* src = data + ((row + i) * columns + p.col_begin) * element;
      uint16_t* dst = scratch.data() + i * width;
      if (t.dtype() == DType::kBf16) {
        std::memcpy(dst, src, static_cast<size_t>(width) * 2);
        continue;
      }
      widened.resize(static_cast<size_t>(width));
      kernels::ConvertToF32(src, t.dtype(), widened.size(), widened.data());
      kernels::ConvertF32ToBf16(widened.data(), widened.size(), dst);
    }
    FP_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(device + (row - p.row_begin) * width * 2, scratch.data(),
                              scratch.size() * 2, cudaMemcpyHostToDevice),
                   "upload weights"));
  }
  return OkStatus();
}

// The groups of rank `rank`'s shard, in DeviceWeights order: embedding, LM head (when stored),
// final norm, then per layer input norm, qkv, o, post norm, gate/up, down.
std::vector<Group> ShardGroups(const Model& model, int rank, int ranks, bool store_head) {
  std::vector<Group> groups;
  groups.push_back({{Whole(model.embed_tokens())}});
  if (store_head) groups.push_back({{Whole(model.lm_head())}});
  groups.push_back({{Whole(model.final_norm())}});
  for (const LayerWeights& l : model.layers()) {
    groups.push_back({{Whole(l.input_norm)}});
    groups.push_back({{RowSlice(l.q_proj, rank, ranks), RowSlice(l.k_proj, rank, ranks),
                       RowSlice(l.v_proj, rank, ranks)}});
    groups.push_back({{ColumnSlice(l.o_proj, rank, ranks)}});
    groups.push_back({{Whole(l.post_norm)}});
    groups.push_back({{RowSlice(l.gate_proj, rank, ranks), RowSlice(l.up_proj, rank, ranks)}});
    groups.push_back({{ColumnSlice(l.down_proj, rank, ranks)}});
  }
  return groups;
}

}  // namespace

StatusOr<DeviceWeights> DeviceWeights::Upload(const Model& model, int rank, int ranks) {
  const LlamaConfig& c = model.config();
  FP_CHECK(ranks >= 1 && rank >= 0 && rank < ranks);
  FP_CHECK(c.num_kv_heads % ranks == 0 && c.num_heads % ranks == 0);
  FP_CHECK(c.intermediate_size % ranks == 0);
  const bool tied = c.tie_word_embeddings;
  const bool store_head = !tied && rank == 0;
  std::vector<Group> groups = ShardGroups(model, rank, ranks, store_head);
  size_t total = 0;
  for (Group& g : groups) {
    g.offset = total;
    size_t bytes = 0;
    for (const Piece& p : g.pieces) bytes += Bf16Bytes(p);
    total += AlignUp(bytes);
  }
  DeviceWeights weights;
  FP_ASSIGN_OR_RETURN(weights.arena_, DeviceBuffer::Allocate(total, "model weights"));
  std::vector<uint16_t> scratch;
  for (const Group& g : groups) {
    size_t offset = g.offset;
    for (const Piece& p : g.pieces) {
      FP_RETURN_IF_ERROR(UploadPiece(p, weights.arena_.bytes() + offset, scratch));
      offset += Bf16Bytes(p);
    }
  }
  const uint8_t* base = weights.arena_.bytes();
  size_t g = 0;
  weights.embed_tokens_ = base + groups[g++].offset;
  if (tied) {
    weights.lm_head_ = weights.embed_tokens_;
  } else if (store_head) {
    weights.lm_head_ = base + groups[g++].offset;
  }
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
