// The CPU reference backend; see cpu_backend.h.
//
// One forward pass: gather the batch's tokens into one [T, hidden] f32 residual stream (each
// token at its sequence's cache row = RoPE position), run every layer over all T rows at once
// (GEMMs over the whole batch; attention per token against its own sequence's paged cache),
// then take the last row of each emitting sequence through the final RMSNorm, round it to the
// canonical dtype, digest it, project it to logits and sample. All kernels are row-independent
// with fixed reduction orders, so a sequence's rows come out the same in any batch.
#include "node/backend/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/leaf/quantize.h"
#include "common/leaf/state_digest.h"
#include "kernels/activation/embedding.h"
#include "kernels/activation/swiglu.h"
#include "kernels/base/half.h"
#include "kernels/gemm/gemm.h"
#include "kernels/norm/rms_norm.h"

namespace fp::node {
namespace {

// The layer's GEMM: y[m, n] = x[m, k] * w^T for a weight tensor w [n, k].
Status Linear(const std::vector<float>& x, const Tensor& w, std::vector<float>& y, int64_t m,
              kernels::ThreadPool& pool) {
  return kernels::Gemm(x.data(), w.data(), w.dtype(), y.data(), m, w.dim(0), w.dim(1), pool);
}

kernels::RopeConfig RopeConfigFor(const LlamaConfig& c) {
  kernels::RopeScaling scaling{kernels::RopeScalingType::kNone, 1.0, 1.0, 4.0, 1};
  if (c.rope_scaling == RopeScaling::kLlama3) {
    scaling = {kernels::RopeScalingType::kLlama3, c.rope_factor, c.rope_low_freq_factor,
               c.rope_high_freq_factor, c.rope_original_max_positions};
  }
  return {static_cast<int32_t>(c.head_dim), c.rope_theta, static_cast<int32_t>(c.max_positions),
          scaling};
}

std::vector<float> WidenToF32(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.elements()));
  kernels::ConvertToF32(t.data(), t.dtype(), out.size(), out.data());
  return out;
}

}  // namespace

void CpuBackend::FreeDeleter::operator()(float* p) const { std::free(p); }

StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const CpuBackendOptions& options) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<kernels::ThreadPool> pool,
                      kernels::ThreadPool::Create(options.num_threads));
  return std::unique_ptr<CpuBackend>(new CpuBackend(std::move(pool)));
}

BackendIdentity CpuBackend::identity() const {
  // The CPU kernels' bits do not depend on the CPU model or the thread count, only on the
  // kernels' fixed-order definitions (f32 activations, f32 KV cache), so every CPU shares one
  // identity.
  return {"cpu", 0, 0, "cpu-reference-f32-v1"};
}

Status CpuBackend::LoadModel(const Model& model, const DigestOptions& digest) {
  const LlamaConfig& c = model.config();
  if (c.head_dim > kernels::kAttentionMaxHeadDim || c.num_heads > kernels::kAttentionMaxHeads) {
    return InvalidArgumentError("cpu backend: head_dim or head count beyond the kernels' limits");
  }
  DigestOptions resolved = digest;
  if (resolved.quantize_bits == -1) {
    resolved.quantize_bits = DTypeMantissaBits(resolved.canonical_dtype);
  }
  FP_RETURN_IF_ERROR(leaf::ValidateQuantizeBits(resolved.canonical_dtype, resolved.quantize_bits));
  FP_ASSIGN_OR_RETURN(kernels::RopeTable table, kernels::RopeTable::Create(RopeConfigFor(c)));
  rope_.emplace(std::move(table));
  model_ = &model;
  digest_ = resolved;
  attention_ = {kernels::AttentionMode::kPrefix,
                kernels::DefaultSoftmaxScale(static_cast<int32_t>(c.head_dim))};
  return OkStatus();
}

Status CpuBackend::LoadAnchors(const AnchorSet* anchors, AnchorMode mode) {
  FP_CHECK(model_ != nullptr);
  anchor_mode_ = mode;
  num_anchors_ = 0;
  anchor_key_.clear();
  anchor_value_.clear();
  gamma_.clear();
  attention_.mode = kernels::AttentionMode::kPrefix;
  if (anchors == nullptr) return OkStatus();
  FP_RETURN_IF_ERROR(anchors->CheckCompatible(model_->config()));
  num_anchors_ = static_cast<int32_t>(anchors->num_anchors());
  for (const AnchorLayer& l : anchors->layers()) {
    anchor_key_.push_back(WidenToF32(l.key));
    anchor_value_.push_back(WidenToF32(l.value));
    gamma_.push_back(WidenToF32(l.gamma));
  }
  // Prefix mode is plain causal attention over rows the engine had written; mix mode fuses the
  // anchor path into the kernel.
  if (mode == AnchorMode::kMix) attention_.mode = kernels::AttentionMode::kMix;
  return OkStatus();
}

int64_t CpuBackend::KvBytesPerBlock(int32_t block_size) const {
  FP_CHECK(model_ != nullptr);
  const LlamaConfig& c = model_->config();
  return 2 * c.num_layers * int64_t{block_size} * c.num_kv_heads * c.head_dim *
         static_cast<int64_t>(sizeof(float));
}

Status CpuBackend::AllocateKvCache(int32_t num_blocks, int32_t block_size) {
  FP_CHECK(model_ != nullptr);
  if (num_blocks < 1 || block_size < 1 || block_size > kernels::kAttentionMaxBlockSize) {
    return InvalidArgumentError("cpu backend: bad KV cache geometry");
  }
  const LlamaConfig& c = model_->config();
  key_cache_.clear();
  value_cache_.clear();
  size_t floats = static_cast<size_t>(num_blocks) * block_size * c.num_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    // calloc: the OS hands out zero pages lazily, so a large budget costs nothing until used.
    FloatBuffer key(static_cast<float*>(std::calloc(floats, sizeof(float))));
    FloatBuffer value(static_cast<float*>(std::calloc(floats, sizeof(float))));
    if (key == nullptr || value == nullptr) {
      key_cache_.clear();
      value_cache_.clear();
      return ResourceExhaustedError("cpu backend: cannot allocate the KV cache (" +
                                    std::to_string(KvBytesPerBlock(block_size) * num_blocks) +
                                    " bytes)");
    }
    key_cache_.push_back(std::move(key));
    value_cache_.push_back(std::move(value));
  }
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return OkStatus();
}

kernels::PagedKvCache CpuBackend::CacheView(size_t layer) {
  const LlamaConfig& c = model_->config();
  return {key_cache_[layer].get(),
          value_cache_[layer].get(),
          num_blocks_,
          block_size_,
          static_cast<int32_t>(c.num_kv_heads),
          static_cast<int32_t>(c.head_dim)};
}

kernels::AnchorSet CpuBackend::AnchorView(size_t layer) const {
  if (attention_.mode != kernels::AttentionMode::kMix) return {nullptr, nullptr, nullptr, 0};
  return {anchor_key_[layer].data(), anchor_value_[layer].data(), gamma_[layer].data(),
          num_anchors_};
}

Status CpuBackend::WriteAnchorPrefix(std::span<const int32_t> block_table) {
  if (anchor_mode_ != AnchorMode::kPrefix || num_anchors_ == 0) {
    return FailedPreconditionError("cpu backend: no prefix-mode anchor set loaded");
  }
  if (static_cast<int64_t>(block_table.size()) * block_size_ < num_anchors_) {
    return InvalidArgumentError("cpu backend: block table too short for the anchor prefix");
  }
  std::vector<int32_t> seq_ids(static_cast<size_t>(num_anchors_), 0);
  std::vector<int32_t> positions(static_cast<size_t>(num_anchors_));
  for (int32_t i = 0; i < num_anchors_; ++i) positions[static_cast<size_t>(i)] = i;
  kernels::BlockTables tables{block_table.data(), 1, static_cast<int32_t>(block_table.size())};
  for (size_t l = 0; l < key_cache_.size(); ++l) {
    FP_RETURN_IF_ERROR(kernels::WritePagedKv(anchor_key_[l].data(), anchor_value_[l].data(),
                                             seq_ids.data(), positions.data(), num_anchors_, tables,
                                             CacheView(l), *pool_));
  }
  return OkStatus();
}

Status CpuBackend::Validate(std::span<const ForwardSequence> batch, int64_t* total_tokens) const {
  FP_CHECK(model_ != nullptr);
  if (key_cache_.empty()) return FailedPreconditionError("cpu backend: no KV cache allocated");
  if (batch.empty() || batch.size() > static_cast<size_t>(kMaxBatchSequences)) {
    return InvalidArgumentError("cpu backend: a batch holds 1 to 256 sequences");
  }
  int64_t total = 0;
  for (const ForwardSequence& s : batch) {
    int64_t n = static_cast<int64_t>(s.tokens.size());
    int64_t end = s.start_row + n;
    if (n < 1 || s.start_row < 0) {
      return InvalidArgumentError("cpu backend: empty chunk or negative start row");
    }
    if (end > static_cast<int64_t>(s.block_table.size()) * block_size_) {
      return InvalidArgumentError("cpu backend: chunk rows past the sequence's block table");
    }
    if (end > rope_->max_positions()) {
      return InvalidArgumentError("cpu backend: position " + std::to_string(end - 1) +
                                  " beyond max_position_embeddings");
    }
    total += n;
  }
  if (total > kMaxBatchTokens) return InvalidArgumentError("cpu backend: too many tokens");
  *total_tokens = total;
  return OkStatus();
}

Status CpuBackend::PrepareBatch(std::span<const ForwardSequence> batch, int64_t total_tokens) {
  const LlamaConfig& c = model_->config();
  size_t t = static_cast<size_t>(total_tokens);
  s_.tokens.clear();
  s_.positions.clear();
  s_.seq_ids.clear();
  size_t max_blocks = 0;
  for (const ForwardSequence& s : batch) max_blocks = std::max(max_blocks, s.block_table.size());
  // Unused table entries point at block 0: valid, never read (rows past a sequence's length are
  // never attended to).
  s_.tables.assign(batch.size() * max_blocks, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardSequence& s = batch[i];
    std::copy(s.block_table.begin(), s.block_table.end(), s_.tables.begin() + i * max_blocks);
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      s_.tokens.push_back(s.tokens[j]);
      s_.positions.push_back(s.start_row + static_cast<int32_t>(j));
      s_.seq_ids.push_back(static_cast<int32_t>(i));
    }
  }
  size_t hidden = static_cast<size_t>(c.hidden_size);
  size_t q = static_cast<size_t>(c.num_heads * c.head_dim);
  size_t kv = static_cast<size_t>(c.num_kv_heads * c.head_dim);
  size_t inter = static_cast<size_t>(c.intermediate_size);
  s_.x.resize(t * hidden);
  s_.h.resize(t * hidden);
  s_.out.resize(t * hidden);
  s_.q.resize(t * q);
  s_.attn.resize(t * q);
  s_.k.resize(t * kv);
  s_.v.resize(t * kv);
  s_.gate.resize(t * inter);
  s_.up.resize(t * inter);
  const Tensor& embed = model_->embed_tokens();
  return kernels::EmbeddingLookup(s_.tokens.data(), embed.data(), embed.dtype(), s_.x.data(),
                                  total_tokens, embed.dim(0), embed.dim(1), *pool_);
}

Status CpuBackend::RunLayer(size_t layer, int64_t t, int32_t num_seqs, int32_t max_blocks) {
  const LlamaConfig& c = model_->config();
  const LayerWeights& w = model_->layers()[layer];
  kernels::ThreadPool& pool = *pool_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int32_t q_heads = static_cast<int32_t>(c.num_heads);
  const int32_t kv_heads = static_cast<int32_t>(c.num_kv_heads);
  const int32_t head_dim = static_cast<int32_t>(c.head_dim);
  FP_RETURN_IF_ERROR(kernels::RmsNorm(s_.x.data(), w.input_norm.data(), w.input_norm.dtype(), eps,
                                      s_.h.data(), t, c.hidden_size, pool));
  FP_RETURN_IF_ERROR(Linear(s_.h, w.q_proj, s_.q, t, pool));
  FP_RETURN_IF_ERROR(Linear(s_.h, w.k_proj, s_.k, t, pool));
  FP_RETURN_IF_ERROR(Linear(s_.h, w.v_proj, s_.v, t, pool));
  FP_RETURN_IF_ERROR(kernels::ApplyRope(*rope_, s_.q.data(), s_.k.data(), s_.positions.data(), t,
                                        q_heads, kv_heads, head_dim, pool));
  kernels::BlockTables tables{s_.tables.data(), num_seqs, max_blocks};
  kernels::PagedKvCache cache = CacheView(layer);
  const int32_t tokens = static_cast<int32_t>(t);
  FP_RETURN_IF_ERROR(kernels::WritePagedKv(s_.k.data(), s_.v.data(), s_.seq_ids.data(),
                                           s_.positions.data(), tokens, tables, cache, pool));
  FP_RETURN_IF_ERROR(kernels::PagedFieldprintAttention(
      s_.q.data(), s_.seq_ids.data(), s_.positions.data(), tokens, q_heads, tables, cache,
      AnchorView(layer), attention_, s_.attn.data(), pool));
  FP_RETURN_IF_ERROR(Linear(s_.attn, w.o_proj, s_.out, t, pool));
  FP_RETURN_IF_ERROR(kernels::ResidualAdd(s_.x.data(), s_.out.data(), t * c.hidden_size, pool));
  FP_RETURN_IF_ERROR(kernels::RmsNorm(s_.x.data(), w.post_norm.data(), w.post_norm.dtype(), eps,
                                      s_.h.data(), t, c.hidden_size, pool));
  FP_RETURN_IF_ERROR(Linear(s_.h, w.gate_proj, s_.gate, t, pool));
  FP_RETURN_IF_ERROR(Linear(s_.h, w.up_proj, s_.up, t, pool));
  FP_RETURN_IF_ERROR(
      kernels::SwiGlu(s_.gate.data(), s_.up.data(), s_.gate.data(), t * c.intermediate_size, pool));
  FP_RETURN_IF_ERROR(Linear(s_.gate, w.down_proj, s_.out, t, pool));
  return kernels::ResidualAdd(s_.x.data(), s_.out.data(), t * c.hidden_size, pool);
}

Status CpuBackend::FinishEmitting(std::span<const ForwardSequence> batch,
                                  const ForwardOptions& options, ForwardResult* result) {
  const LlamaConfig& c = model_->config();
  const size_t hidden = static_cast<size_t>(c.hidden_size);
  std::vector<float> final_rows;  // [E, hidden]
  std::vector<kernels::SamplingParams> params;
  std::vector<uint64_t> steps;
  size_t row_end = 0;
  for (const ForwardSequence& s : batch) {
    row_end += s.tokens.size();
    if (!s.emit) continue;
    const float* last = s_.x.data() + (row_end - 1) * hidden;
    final_rows.insert(final_rows.end(), last, last + hidden);
    params.push_back(s.sampling);
    steps.push_back(s.step);
  }
  const int64_t e = static_cast<int64_t>(params.size());
  *result = ForwardResult();
  if (e == 0) return OkStatus();
  const Tensor& norm = model_->final_norm();
  FP_RETURN_IF_ERROR(kernels::RmsNorm(final_rows.data(), norm.data(), norm.dtype(),
                                      static_cast<float>(c.rms_norm_eps), final_rows.data(), e,
                                      c.hidden_size, *pool_));
  if (tap_) TapEmitting(TapSite::kFinalHidden, batch, final_rows, {});
  // The canonical state: rounded once to the model's dtype. The digest covers these bytes and
  // the logits are computed from exactly them, so the digest pins what chose the token.
  Tensor canonical = Tensor::Zeros(digest_.canonical_dtype, {e, c.hidden_size});
  if (digest_.canonical_dtype == DType::kBf16) {
    kernels::ConvertF32ToBf16(final_rows.data(), final_rows.size(),
                              canonical.mutable_data_as<uint16_t>());
  } else if (digest_.canonical_dtype == DType::kF16) {
    kernels::ConvertF32ToF16(final_rows.data(), final_rows.size(),
                             canonical.mutable_data_as<uint16_t>());
  } else {
    std::memcpy(canonical.mutable_data(), final_rows.data(), canonical.bytes_size());
  }
  if (tap_) TapEmitting(TapSite::kCanonicalHidden, batch, {}, canonical.bytes());
  kernels::ConvertToF32(canonical.data(), canonical.dtype(), final_rows.size(), final_rows.data());
  if (skip_digests_) {
    result->state_digests.assign(static_cast<size_t>(e), Hash{});
  } else {
    FP_ASSIGN_OR_RETURN(result->state_digests,
                        leaf::RowStateDigests(canonical.dtype(), digest_.quantize_bits,
                                              canonical.bytes(), static_cast<size_t>(e), hidden));
  }
  const Tensor& head = model_->lm_head();
  Tensor logits = Tensor::Zeros(DType::kF32, {e, head.dim(0)});
  FP_RETURN_IF_ERROR(kernels::Gemm(final_rows.data(), head.data(), head.dtype(),
                                   logits.mutable_data_as<float>(), e, head.dim(0), head.dim(1),
                                   *pool_));
  result->tokens.resize(static_cast<size_t>(e));
  FP_RETURN_IF_ERROR(kernels::SampleTokens(logits.data_as<float>(), static_cast<int32_t>(e),
                                           static_cast<int32_t>(head.dim(0)), params.data(),
                                           steps.data(), result->tokens.data(), *pool_));
  if (options.return_hidden) result->hidden = std::move(canonical);
  if (options.return_logits) result->logits = std::move(logits);
  return OkStatus();
}

void CpuBackend::TapEmitting(TapSite site, std::span<const ForwardSequence> batch,
                             std::span<float> values, ByteSpan canonical) {
  std::vector<int32_t> sequences;
  std::vector<int32_t> positions;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].emit) continue;
    sequences.push_back(static_cast<int32_t>(i));
    positions.push_back(batch[i].start_row + static_cast<int32_t>(batch[i].tokens.size()) - 1);
  }
  TapEvent event;
  event.site = site;
  event.batch = batch;
  event.width = model_->config().hidden_size;
  event.sequences = sequences;
  event.positions = positions;
  event.values = values;
  event.canonical = canonical;
  tap_(event);
}

Status CpuBackend::Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                           ForwardResult* result) {
  int64_t total_tokens = 0;
  FP_RETURN_IF_ERROR(Validate(batch, &total_tokens));
  FP_RETURN_IF_ERROR(PrepareBatch(batch, total_tokens));
  const int32_t num_seqs = static_cast<int32_t>(batch.size());
  const int32_t max_blocks = static_cast<int32_t>(s_.tables.size() / batch.size());
  for (size_t l = 0; l < model_->layers().size(); ++l) {
    FP_RETURN_IF_ERROR(RunLayer(l, total_tokens, num_seqs, max_blocks));
    if (tap_) {
      TapEvent event;
      event.layer = static_cast<int32_t>(l);
      event.batch = batch;
      event.width = model_->config().hidden_size;
      event.sequences = s_.seq_ids;
      event.positions = s_.positions;
      event.values = s_.x;
      tap_(event);
    }
  }
  return FinishEmitting(batch, options, result);
}

Status CpuBackend::ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin,
                              int32_t end, Tensor* key, Tensor* value) {
  FP_CHECK(model_ != nullptr);
  const LlamaConfig& c = model_->config();
  if (layer < 0 || layer >= c.num_layers || begin < 0 || end < begin ||
      end > static_cast<int64_t>(block_table.size()) * block_size_) {
    return InvalidArgumentError("cpu backend: KV rows out of range");
  }
  const int64_t row = c.num_kv_heads * c.head_dim;
  *key = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  *value = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  for (int32_t p = begin; p < end; ++p) {
    int32_t block = block_table[static_cast<size_t>(p / block_size_)];
    if (block < 0 || block >= num_blocks_) return InvalidArgumentError("cpu backend: bad block");
    size_t src = (static_cast<size_t>(block) * block_size_ + p % block_size_) * row;
    size_t dst = static_cast<size_t>(p - begin) * row;
    std::memcpy(key->mutable_data_as<float>() + dst, key_cache_[layer].get() + src, row * 4);
    std::memcpy(value->mutable_data_as<float>() + dst, value_cache_[layer].get() + src, row * 4);
  }
  return OkStatus();
}

Status CpuBackend::TEST_FlipKvBit(std::span<const int32_t> block_table, int32_t layer, int32_t row,
                                  KvPart part, int64_t element, int32_t bit) {
  FP_CHECK(model_ != nullptr);
  const LlamaConfig& c = model_->config();
  const int64_t row_elements = c.num_kv_heads * c.head_dim;
  if (key_cache_.empty()) return FailedPreconditionError("cpu backend: no KV cache allocated");
  if (layer < 0 || layer >= c.num_layers || row < 0 || element < 0 || element >= row_elements ||
      bit < 0 || bit >= 32) {
    return InvalidArgumentError("cpu backend: KV fault outside the model");
  }
  if (static_cast<size_t>(row / block_size_) >= block_table.size()) {
    return InvalidArgumentError("cpu backend: KV fault row past the block table");
  }
  const int32_t block = block_table[static_cast<size_t>(row / block_size_)];
  if (block < 0 || block >= num_blocks_) return InvalidArgumentError("cpu backend: bad block");
  float* cache =
      (part == KvPart::kKey ? key_cache_ : value_cache_)[static_cast<size_t>(layer)].get();
  float* value = cache +
                 (static_cast<size_t>(block) * block_size_ + row % block_size_) *
                     static_cast<size_t>(row_elements) +
                 static_cast<size_t>(element);
  uint32_t bits = 0;
  std::memcpy(&bits, value, sizeof(bits));
  bits ^= uint32_t{1} << bit;
  std::memcpy(value, &bits, sizeof(bits));
  return OkStatus();
}

}  // namespace fp::node
