// The CUDA backend; see cuda_backend.h.
//
// Buffers. Weights (DeviceWeights), the RoPE table and the anchors are uploaded once. The KV
// cache is one allocation: per layer K then V, each [num_blocks + scratch, block_size, kv_heads,
// head_dim] bf16; the scratch blocks after the engine's pool hold the padding rows of decode
// graphs (cuda_step.h). Step buffers (staging, activations, logits, workspaces) grow on demand
// to the largest batch seen, in powers of two; growing drops every captured graph, because a
// graph bakes in the addresses.
//
// One step on the generation stream: H2D copy of the packed metadata, reset of the device error
// word, the body (graph replay or eager), then for the E emitting rows: canonical state, digest
// enqueue (a D2D snapshot on this stream, the hash on the pipeline's side stream), LM head, Philox
// sampling, D2H copy of [error word, E tokens], an event the host sleeps on. The digest kernel
// runs on the side stream while the LM head and the sampler run here; the host takes the digests
// after the tokens (by then they are nearly always done).
#include "node/backend/cuda_backend.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "common/leaf/quantize.h"
#include "kernels/activation/activation_cuda.h"
#include "kernels/attention/paged_attention_cuda.h"
#include "kernels/base/cuda_status.h"
#include "kernels/base/half.h"
#include "kernels/digest/digest_pipeline.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/norm/rms_norm_cuda.h"
#include "kernels/rope/rope_cuda.h"
#include "kernels/sampling/sampler_cuda.h"
#include "node/backend/cuda_canonical.h"
#include "node/backend/cuda_resources.h"
#include "node/backend/cuda_step.h"
#include "node/backend/cuda_weights.h"

namespace fp::node {
namespace {

using cuda::BatchExtent;
using cuda::DecodeBucketFor;
using cuda::kMinTableStride;
using cuda::MeasureBatch;
using cuda::PackStep;
using cuda::ScratchBlocksFor;
using cuda::StepLayout;
using cuda::StepShape;
using cuda::TableStrideFor;
using kernels::CudaStatus;

// Step buffers never shrink below these capacities (rows), so small batches share one layout.
constexpr int32_t kMinTokenCapacity = 256;
constexpr int32_t kMinEmitCapacity = 32;
constexpr int32_t kMinSeqCapacity = 32;
// Captured decode graphs kept at once (batch bucket x table stride); past it, decode runs
// eagerly rather than capturing without bound.
constexpr size_t kMaxDecodeGraphs = 128;
// Polls for a step's digests before sleeping on them (each poll is an event query, well under a
// microsecond; the bound is a few hundred microseconds).
constexpr int kMaxDigestPolls = 1000;

int32_t GrowTo(int32_t need, int32_t have, int32_t floor) {
  if (need <= have) return have;
  return static_cast<int32_t>(std::bit_ceil(static_cast<uint32_t>(std::max(need, floor))));
}

Status ValidSampling(const kernels::SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature) || p.top_k < 0 ||
      !(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return InvalidArgumentError("cuda backend: sampling parameters out of range");
  }
  return OkStatus();
}

std::vector<uint16_t> ToBf16(const Tensor& t) {
  std::vector<float> widened(static_cast<size_t>(t.elements()));
  kernels::ConvertToF32(t.data(), t.dtype(), widened.size(), widened.data());
  std::vector<uint16_t> out(widened.size());
  kernels::ConvertF32ToBf16(widened.data(), widened.size(), out.data());
  return out;
}

// Capacities of the step buffers.
struct Capacity {
  int32_t tokens = 0;
  int32_t seqs = 0;
  int32_t emits = 0;
  int32_t table_stride = 0;
  int32_t max_context = 0;  // decode attention workspace bound
};

// Per-step device buffers, all sized by a Capacity.
struct StepBuffers {
  cuda::PinnedBuffer staging_host;  // [StepLayout bytes]
  cuda::DeviceBuffer staging;       // device mirror of staging_host
  cuda::DeviceBuffer x;             // [tokens, hidden] bf16 residual stream
  cuda::DeviceBuffer h;             // [tokens, hidden] bf16 normalised
  // [tokens, q_dim + 2 * kv_dim] bf16: the fused projection's q, k and v columns, which RoPE,
  // the KV write and attention use in place through row strides.
  cuda::DeviceBuffer qkv;
  cuda::DeviceBuffer attn;          // [tokens, q_heads * head_dim] bf16
  cuda::DeviceBuffer gate_up;       // [tokens, 2 * intermediate] bf16
  cuda::DeviceBuffer mlp;           // [tokens, intermediate] bf16
  cuda::DeviceBuffer gathered;      // [emits, hidden] bf16 emitting rows of x
  cuda::DeviceBuffer state;         // [emits, hidden] bf16 final RMSNorm output
  cuda::DeviceBuffer canonical;     // [emits, hidden] canonical dtype (f16/f32 models)
  cuda::DeviceBuffer head_input;    // [emits, hidden] bf16 (f16 models)
  cuda::DeviceBuffer logits;        // [emits, vocab] f32
  cuda::DeviceBuffer sampler_ws;    // SamplerWorkspaceBytes(emits, vocab)
  cuda::DeviceBuffer attention_ws;  // PagedAttentionDecodeWorkspaceBytes(seqs, ..., max_context)
  cuda::DeviceBuffer out;           // [4 + emits] int32: error word, 3 unused, tokens
  cuda::PinnedBuffer out_host;      // host mirror of `out`
};

class CudaBackend final : public Backend {
 public:
  static StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options);

  BackendIdentity identity() const override { return identity_; }
  Status LoadModel(const Model& model, const DigestOptions& digest) override;
  Status LoadAnchors(const AnchorSet* anchors, AnchorMode mode) override;
  int64_t KvBytesPerBlock(int32_t block_size) const override;
  Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override;
  Status WriteAnchorPrefix(std::span<const int32_t> block_table) override;
  Status Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                 ForwardResult* result) override;
  Status ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin, int32_t end,
                    Tensor* key, Tensor* value) override;

 private:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {}

  Status SetDevice() const { return CudaStatus(cudaSetDevice(options_.device), "set device"); }
  Status Validate(std::span<const ForwardSequence> batch) const;
  Status EnsureCapacity(const StepShape& shape, int32_t max_context);
  // The work of one step up to the final state of shape.emits rows (act.state).
  Status RunBody(const StepShape& shape, int32_t max_context, bool decode_attention);
  Status RunLayer(size_t layer, const StepShape& shape, int32_t max_context, bool decode_attention);
  Status RunDecodeGraph(const StepShape& shape, int32_t max_context);
  Status FinishStep(int32_t emits, const ForwardOptions& options, ForwardResult* result);
  Status CheckErrorWord() const;
  // The digests of the one batch in flight.
  StatusOr<kernels::DigestBatch> TakeDigests();
  Status CopyCacheRows(std::span<const int32_t> table, int32_t layer, int32_t begin, int32_t end,
                       bool to_device, uint16_t* key, uint16_t* value);
  template <typename T>
  const T* Staged(size_t offset) const {
    return reinterpret_cast<const T*>(s_.staging.bytes() + offset);
  }
  const void* Canonical() const;  // the digested [emits, hidden] rows

  const CudaBackendOptions options_;
  BackendIdentity identity_;
  cuda::Stream stream_;
  cuda::Event tokens_ready_;  // the host spins on it

  const Model* model_ = nullptr;  // borrowed
  DigestOptions digest_;
  cuda::DeviceWeights weights_;
  cuda::DeviceBuffer rope_cos_, rope_sin_;
  kernels::RopeDeviceTable rope_{};
  int32_t q_dim_ = 0, kv_dim_ = 0;
  kernels::AttentionOptions attention_{};
  std::unique_ptr<kernels::DigestPipeline> digests_;

  AnchorMode anchor_mode_ = AnchorMode::kMix;
  int32_t num_anchors_ = 0;
  cuda::DeviceBuffer anchor_memory_;                  // mix: per layer key, value, gamma
  std::vector<kernels::CudaAnchorSet> anchor_views_;  // [layers] (num_anchors 0 when unused)
  std::vector<std::vector<uint16_t>> prefix_key_;     // prefix: [layers][A, kv_dim] bf16
  std::vector<std::vector<uint16_t>> prefix_value_;   // prefix: [layers][A, kv_dim] bf16

  int32_t num_blocks_ = 0;  // the engine's pool; scratch blocks follow
  int32_t block_size_ = 0;
  cuda::DeviceBuffer kv_memory_;
  std::vector<kernels::CudaPagedKvCache> caches_;  // [layers]

  Capacity capacity_;
  StepBuffers s_;
  StepShape current_shape_;  // the shape the staged metadata of the running step has
  std::map<std::pair<int32_t, int32_t>, cuda::GraphExec> graphs_;  // (bucket, stride)
};

StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(const CudaBackendOptions& options) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (options.device < 0 || options.device >= devices) {
    return FailedPreconditionError("cuda backend: no CUDA device " +
                                   std::to_string(options.device));
  }
  if (options.digest_depth < 1 || options.digest_depth > kernels::kMaxDigestPipelineDepth) {
    return InvalidArgumentError("cuda backend: digest_depth out of range");
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(options));
  FP_RETURN_IF_ERROR(backend->SetDevice());
  cudaDeviceProp prop{};
  FP_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, options.device), "device props"));
  backend->identity_ = {prop.name, static_cast<uint32_t>(prop.major),
                        static_cast<uint32_t>(prop.minor), kCudaKernelBuildId};
  FP_ASSIGN_OR_RETURN(backend->stream_, cuda::Stream::Create());
  // Spinning, not sleeping: a sleeping thread wakes tens of microseconds late, which a
  // one-millisecond decode step would feel.
  FP_ASSIGN_OR_RETURN(backend->tokens_ready_, cuda::Event::Create(/*blocking_sync=*/false));
  return std::unique_ptr<Backend>(std::move(backend));
}

Status CudaBackend::LoadModel(const Model& model, const DigestOptions& digest) {
  FP_RETURN_IF_ERROR(SetDevice());
  const LlamaConfig& c = model.config();
  if (c.head_dim != 64 && c.head_dim != 128) {
    return InvalidArgumentError("cuda backend: head_dim must be 64 or 128");
  }
  if (c.num_heads / c.num_kv_heads > kernels::kCudaAttentionMaxGroup ||
      c.hidden_size % kernels::kGemmCudaKAlignment != 0 ||
      c.intermediate_size % kernels::kGemmCudaKAlignment != 0 ||
      c.hidden_size > kernels::kRmsNormMaxWidth) {
    return InvalidArgumentError("cuda backend: model shape beyond the CUDA kernels' limits");
  }
  DigestOptions resolved = digest;
  if (resolved.quantize_bits == -1) {
    resolved.quantize_bits = DTypeMantissaBits(resolved.canonical_dtype);
  }
  FP_RETURN_IF_ERROR(leaf::ValidateQuantizeBits(resolved.canonical_dtype, resolved.quantize_bits));
  FP_ASSIGN_OR_RETURN(
      kernels::RopeTable table,
      kernels::RopeTable::Create(
          {static_cast<int32_t>(c.head_dim),
           c.rope_theta,
           static_cast<int32_t>(c.max_positions),
           {c.rope_scaling == RopeScaling::kLlama3 ? kernels::RopeScalingType::kLlama3
                                                   : kernels::RopeScalingType::kNone,
            c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
            c.rope_original_max_positions}}));
  const auto rope_bytes = static_cast<size_t>(kernels::RopeDeviceTableBytes(table));
  FP_ASSIGN_OR_RETURN(rope_cos_, cuda::DeviceBuffer::Allocate(rope_bytes, "rope cos"));
  FP_ASSIGN_OR_RETURN(rope_sin_, cuda::DeviceBuffer::Allocate(rope_bytes, "rope sin"));
  FP_ASSIGN_OR_RETURN(
      rope_, kernels::CopyRopeTableToDevice(table, static_cast<float*>(rope_cos_.data()),
                                            static_cast<float*>(rope_sin_.data()), stream_.get()));
  FP_ASSIGN_OR_RETURN(weights_, cuda::DeviceWeights::Upload(model));
  digests_.reset();
  if (options_.state_digests) {
    FP_ASSIGN_OR_RETURN(digests_, kernels::DigestPipeline::Create(
                                      {resolved.canonical_dtype, resolved.quantize_bits,
                                       kMaxBatchSequences, c.hidden_size, options_.digest_depth}));
  }
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_.get()), "load model"));
  model_ = &model;
  digest_ = resolved;
  q_dim_ = static_cast<int32_t>(c.num_heads * c.head_dim);
  kv_dim_ = static_cast<int32_t>(c.num_kv_heads * c.head_dim);
  attention_ = {kernels::AttentionMode::kPrefix,
                kernels::DefaultSoftmaxScale(static_cast<int32_t>(c.head_dim))};
  anchor_views_.assign(static_cast<size_t>(c.num_layers), {nullptr, nullptr, nullptr, 0});
  graphs_.clear();
  return OkStatus();
}

Status CudaBackend::LoadAnchors(const AnchorSet* anchors, AnchorMode mode) {
  FP_CHECK(model_ != nullptr);
  FP_RETURN_IF_ERROR(SetDevice());
  const LlamaConfig& c = model_->config();
  anchor_mode_ = mode;
  num_anchors_ = 0;
  anchor_memory_ = cuda::DeviceBuffer();
  anchor_views_.assign(static_cast<size_t>(c.num_layers), {nullptr, nullptr, nullptr, 0});
  prefix_key_.clear();
  prefix_value_.clear();
  attention_.mode = kernels::AttentionMode::kPrefix;
  graphs_.clear();
  if (anchors == nullptr) return OkStatus();
  FP_RETURN_IF_ERROR(anchors->CheckCompatible(c));
  const auto count = static_cast<int32_t>(anchors->num_anchors());
  if (mode == AnchorMode::kPrefix) {
    for (const AnchorLayer& l : anchors->layers()) {
      prefix_key_.push_back(ToBf16(l.key));
      prefix_value_.push_back(ToBf16(l.value));
    }
    num_anchors_ = count;
    return OkStatus();
  }
  if (count < 1 || count > kernels::kCudaAttentionMaxAnchors) {
    return InvalidArgumentError("cuda backend: mix mode takes 1 to 512 anchors");
  }
  // Per layer: key and value [A, kv_dim] bf16, then gamma [q_heads] f32, each 256-aligned.
  const size_t rows_bytes = (static_cast<size_t>(count) * kv_dim_ * 2 + 255) / 256 * 256;
  const size_t gamma_bytes = (static_cast<size_t>(c.num_heads) * 4 + 255) / 256 * 256;
  const size_t layer_bytes = 2 * rows_bytes + gamma_bytes;
  FP_ASSIGN_OR_RETURN(
      anchor_memory_,
      cuda::DeviceBuffer::Allocate(layer_bytes * static_cast<size_t>(c.num_layers), "anchors"));
  for (size_t l = 0; l < anchors->layers().size(); ++l) {
    const AnchorLayer& layer = anchors->layers()[l];
    uint8_t* base = anchor_memory_.bytes() + l * layer_bytes;
    std::vector<uint16_t> key = ToBf16(layer.key), value = ToBf16(layer.value);
    std::vector<float> gamma(static_cast<size_t>(layer.gamma.elements()));
    kernels::ConvertToF32(layer.gamma.data(), layer.gamma.dtype(), gamma.size(), gamma.data());
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(base, key.data(), key.size() * 2, cudaMemcpyHostToDevice), "anchor keys"));
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(base + rows_bytes, value.data(), value.size() * 2, cudaMemcpyHostToDevice),
        "anchor values"));
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(base + 2 * rows_bytes, gamma.data(), gamma.size() * 4, cudaMemcpyHostToDevice),
        "anchor gamma"));
    anchor_views_[l] = {base, base + rows_bytes,
                        reinterpret_cast<const float*>(base + 2 * rows_bytes), count};
  }
  num_anchors_ = count;
  attention_.mode = kernels::AttentionMode::kMix;
  return OkStatus();
}

int64_t CudaBackend::KvBytesPerBlock(int32_t block_size) const {
  FP_CHECK(model_ != nullptr);
  return 2 * model_->config().num_layers * int64_t{block_size} * kv_dim_ * 2;
}

Status CudaBackend::AllocateKvCache(int32_t num_blocks, int32_t block_size) {
  FP_CHECK(model_ != nullptr);
  FP_RETURN_IF_ERROR(SetDevice());
  if (num_blocks < 1 || block_size < 1 || block_size > kernels::kAttentionMaxBlockSize) {
    return InvalidArgumentError("cuda backend: bad KV cache geometry");
  }
  const LlamaConfig& c = model_->config();
  const int32_t total_blocks = num_blocks + ScratchBlocksFor(block_size);
  const size_t array_bytes = static_cast<size_t>(total_blocks) * block_size * kv_dim_ * 2;
  caches_.clear();
  graphs_.clear();
  kv_memory_ = cuda::DeviceBuffer();
  FP_ASSIGN_OR_RETURN(
      kv_memory_, cuda::DeviceBuffer::Allocate(2 * array_bytes * static_cast<size_t>(c.num_layers),
                                               "KV cache"));
  // Zeros, so no row ever read (scratch rows included) holds a NaN pattern.
  FP_RETURN_IF_ERROR(CudaStatus(
      cudaMemsetAsync(kv_memory_.data(), 0, kv_memory_.size(), stream_.get()), "clear KV cache"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    uint8_t* key = kv_memory_.bytes() + static_cast<size_t>(2 * l) * array_bytes;
    caches_.push_back({key, key + array_bytes, total_blocks, block_size,
                       static_cast<int32_t>(c.num_kv_heads), static_cast<int32_t>(c.head_dim)});
  }
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return CudaStatus(cudaStreamSynchronize(stream_.get()), "clear KV cache");
}

Status CudaBackend::CopyCacheRows(std::span<const int32_t> table, int32_t layer, int32_t begin,
                                  int32_t end, bool to_device, uint16_t* key, uint16_t* value) {
  const size_t row_bytes = static_cast<size_t>(kv_dim_) * 2;
  const kernels::CudaPagedKvCache& cache = caches_[static_cast<size_t>(layer)];
  for (int32_t p = begin; p < end;) {
    const int32_t block = table[static_cast<size_t>(p / block_size_)];
    if (block < 0 || block >= num_blocks_) return InvalidArgumentError("cuda backend: bad block");
    const int32_t run = std::min(end, (p / block_size_ + 1) * block_size_) - p;
    const size_t cache_offset =
        (static_cast<size_t>(block) * block_size_ + p % block_size_) * row_bytes;
    const size_t host_offset = static_cast<size_t>(p - begin) * kv_dim_;
    const size_t bytes = static_cast<size_t>(run) * row_bytes;
    auto* k = static_cast<uint8_t*>(cache.key) + cache_offset;
    auto* v = static_cast<uint8_t*>(cache.value) + cache_offset;
    if (to_device) {
      FP_RETURN_IF_ERROR(
          CudaStatus(cudaMemcpy(k, key + host_offset, bytes, cudaMemcpyHostToDevice), "kv rows"));
      FP_RETURN_IF_ERROR(
          CudaStatus(cudaMemcpy(v, value + host_offset, bytes, cudaMemcpyHostToDevice), "kv rows"));
    } else {
      FP_RETURN_IF_ERROR(
          CudaStatus(cudaMemcpy(key + host_offset, k, bytes, cudaMemcpyDeviceToHost), "kv rows"));
      FP_RETURN_IF_ERROR(
          CudaStatus(cudaMemcpy(value + host_offset, v, bytes, cudaMemcpyDeviceToHost), "kv rows"));
    }
    p += run;
  }
  return OkStatus();
}

Status CudaBackend::WriteAnchorPrefix(std::span<const int32_t> block_table) {
  if (anchor_mode_ != AnchorMode::kPrefix || num_anchors_ == 0 || caches_.empty()) {
    return FailedPreconditionError("cuda backend: no prefix-mode anchor set or KV cache");
  }
  if (static_cast<int64_t>(block_table.size()) * block_size_ < num_anchors_) {
    return InvalidArgumentError("cuda backend: block table too short for the anchor prefix");
  }
  FP_RETURN_IF_ERROR(SetDevice());
  // The generation stream may still be writing other sequences' rows; these blocks are this
  // sequence's own, but the synchronous copies below must not overtake queued work on them.
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_.get()), "anchor prefix"));
  for (size_t l = 0; l < caches_.size(); ++l) {
    FP_RETURN_IF_ERROR(CopyCacheRows(block_table, static_cast<int32_t>(l), 0, num_anchors_, true,
                                     prefix_key_[l].data(), prefix_value_[l].data()));
  }
  return OkStatus();
}

Status CudaBackend::ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin,
                               int32_t end, Tensor* key, Tensor* value) {
  FP_CHECK(model_ != nullptr);
  const LlamaConfig& c = model_->config();
  if (caches_.empty()) return FailedPreconditionError("cuda backend: no KV cache allocated");
  if (layer < 0 || layer >= c.num_layers || begin < 0 || end < begin ||
      end > static_cast<int64_t>(block_table.size()) * block_size_) {
    return InvalidArgumentError("cuda backend: KV rows out of range");
  }
  FP_RETURN_IF_ERROR(SetDevice());
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_.get()), "read kv rows"));
  const size_t elements = static_cast<size_t>(end - begin) * kv_dim_;
  std::vector<uint16_t> k(elements), v(elements);
  FP_RETURN_IF_ERROR(CopyCacheRows(block_table, layer, begin, end, false, k.data(), v.data()));
  *key = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  *value = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  kernels::ConvertToF32(k.data(), DType::kBf16, elements, key->mutable_data_as<float>());
  kernels::ConvertToF32(v.data(), DType::kBf16, elements, value->mutable_data_as<float>());
  return OkStatus();
}

Status CudaBackend::Validate(std::span<const ForwardSequence> batch) const {
  FP_CHECK(model_ != nullptr);
  if (caches_.empty()) return FailedPreconditionError("cuda backend: no KV cache allocated");
  if (batch.empty() || batch.size() > static_cast<size_t>(kMaxBatchSequences)) {
    return InvalidArgumentError("cuda backend: a batch holds 1 to 256 sequences");
  }
  const LlamaConfig& c = model_->config();
  int64_t total = 0;
  for (const ForwardSequence& s : batch) {
    const auto n = static_cast<int64_t>(s.tokens.size());
    const int64_t end = s.start_row + n;
    if (n < 1 || s.start_row < 0) {
      return InvalidArgumentError("cuda backend: empty chunk or negative start row");
    }
    if (end > static_cast<int64_t>(s.block_table.size()) * block_size_) {
      return InvalidArgumentError("cuda backend: chunk rows past the sequence's block table");
    }
    if (end > c.max_positions) {
      return InvalidArgumentError("cuda backend: position " + std::to_string(end - 1) +
                                  " beyond max_position_embeddings");
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) return InvalidArgumentError("cuda backend: bad token id");
    }
    for (int32_t b : s.block_table) {
      if (b < 0 || b >= num_blocks_) return InvalidArgumentError("cuda backend: bad block id");
    }
    if (s.emit) FP_RETURN_IF_ERROR(ValidSampling(s.sampling));
    total += n;
  }
  if (total > kMaxBatchTokens) return InvalidArgumentError("cuda backend: too many tokens");
  return OkStatus();
}

Status CudaBackend::EnsureCapacity(const StepShape& shape, int32_t max_context) {
  Capacity want = capacity_;
  want.tokens = GrowTo(shape.tokens, want.tokens, kMinTokenCapacity);
  want.seqs = GrowTo(shape.seqs, want.seqs, kMinSeqCapacity);
  want.emits = GrowTo(shape.emits, want.emits, kMinEmitCapacity);
  want.table_stride = GrowTo(shape.table_stride, want.table_stride, kMinTableStride);
  want.max_context = GrowTo(max_context, want.max_context, kernels::kCudaAttentionSplit);
  if (want.tokens == capacity_.tokens && want.seqs == capacity_.seqs &&
      want.emits == capacity_.emits && want.table_stride == capacity_.table_stride &&
      want.max_context == capacity_.max_context) {
    return OkStatus();
  }
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_.get()), "grow step buffers"));
  graphs_.clear();
  s_ = StepBuffers();
  capacity_ = Capacity();
  const LlamaConfig& c = model_->config();
  const auto t = static_cast<size_t>(want.tokens);
  const auto e = static_cast<size_t>(want.emits);
  const auto hidden = static_cast<size_t>(c.hidden_size);
  const auto inter = static_cast<size_t>(c.intermediate_size);
  const auto vocab = static_cast<int32_t>(c.vocab_size);
  const size_t staging =
      StepLayout::For({want.tokens, want.seqs, want.emits, want.table_stride}).bytes;
  const size_t attention_ws = kernels::PagedAttentionDecodeWorkspaceBytes(
      want.seqs, static_cast<int32_t>(c.num_heads), static_cast<int32_t>(c.head_dim),
      want.max_context);
  const int64_t sampler_ws = kernels::SamplerWorkspaceBytes(want.emits, vocab);
  if (attention_ws == 0 || sampler_ws < 0) {
    return InvalidArgumentError("cuda backend: batch beyond the kernels' workspace limits");
  }
  using cuda::DeviceBuffer;
  FP_ASSIGN_OR_RETURN(s_.staging_host, cuda::PinnedBuffer::Allocate(staging, "staging"));
  FP_ASSIGN_OR_RETURN(s_.staging, DeviceBuffer::Allocate(staging, "staging"));
  FP_ASSIGN_OR_RETURN(s_.x, DeviceBuffer::Allocate(t * hidden * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s_.h, DeviceBuffer::Allocate(t * hidden * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s_.qkv,
                      DeviceBuffer::Allocate(t * (q_dim_ + 2 * kv_dim_) * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s_.attn, DeviceBuffer::Allocate(t * q_dim_ * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s_.gate_up, DeviceBuffer::Allocate(t * inter * 4, "activations"));
  FP_ASSIGN_OR_RETURN(s_.mlp, DeviceBuffer::Allocate(t * inter * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s_.gathered, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s_.state, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s_.canonical, DeviceBuffer::Allocate(e * hidden * 4, "final rows"));
  FP_ASSIGN_OR_RETURN(s_.head_input, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s_.logits,
                      DeviceBuffer::Allocate(e * static_cast<size_t>(vocab) * 4, "logits"));
  FP_ASSIGN_OR_RETURN(s_.sampler_ws,
                      DeviceBuffer::Allocate(static_cast<size_t>(sampler_ws), "sampler"));
  FP_ASSIGN_OR_RETURN(s_.attention_ws, DeviceBuffer::Allocate(attention_ws, "attention"));
  FP_ASSIGN_OR_RETURN(s_.out, DeviceBuffer::Allocate((4 + e) * 4, "tokens"));
  FP_ASSIGN_OR_RETURN(s_.out_host, cuda::PinnedBuffer::Allocate((4 + e) * 4, "tokens"));
  capacity_ = want;
  return OkStatus();
}

Status CudaBackend::RunLayer(size_t layer, const StepShape& shape, int32_t max_context,
                             bool decode_attention) {
  const LlamaConfig& c = model_->config();
  const cuda::DeviceLayerWeights& w = weights_.layers()[layer];
  const cudaStream_t st = stream_.get();
  const StepLayout l = StepLayout::For(shape);
  const int64_t t = shape.tokens;
  const int64_t hidden = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  const auto q_heads = static_cast<int32_t>(c.num_heads);
  const auto kv_heads = static_cast<int32_t>(c.num_kv_heads);
  const auto head_dim = static_cast<int32_t>(c.head_dim);
  auto* error = reinterpret_cast<uint32_t*>(s_.out.data());
  FP_RETURN_IF_ERROR(
      kernels::LaunchRmsNorm(s_.x.data(), w.input_norm, eps, s_.h.data(), t, hidden, st));
  // One GEMM over q_proj, k_proj and v_proj stored back to back: each output column is the same
  // dot product as in a GEMM of its own projection (the GEMM's bits per element depend only on
  // its row, its weight row and k), and decode streams the weights with one wide grid.
  const int64_t qkv_dim = q_dim_ + 2 * int64_t{kv_dim_};
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(s_.h.data(), w.qkv_proj, nullptr, s_.qkv.data(),
                                         DType::kBf16, t, qkv_dim, hidden, st));
  auto* q = static_cast<uint16_t*>(s_.qkv.data());
  uint16_t* k = q + q_dim_;
  const uint16_t* v = k + kv_dim_;
  const auto* positions = Staged<int32_t>(l.positions);
  const auto* seq_ids = Staged<int32_t>(l.seq_ids);
  FP_RETURN_IF_ERROR(kernels::LaunchRope(rope_, q, qkv_dim, k, qkv_dim, positions, t, q_heads,
                                         kv_heads, head_dim, error, st));
  const kernels::CudaBlockTables tables{Staged<int32_t>(l.block_tables), shape.seqs,
                                        shape.table_stride};
  const kernels::CudaPagedKvCache& cache = caches_[layer];
  FP_RETURN_IF_ERROR(kernels::LaunchWritePagedKvCuda(k, qkv_dim, v, qkv_dim, seq_ids, positions,
                                                     shape.tokens, tables, cache, st));
  if (decode_attention) {
    FP_RETURN_IF_ERROR(kernels::LaunchPagedAttentionDecodeCuda(
        q, qkv_dim, Staged<int32_t>(l.context_lens), max_context, q_heads, tables, cache,
        anchor_views_[layer], attention_, s_.attention_ws.data(), s_.attention_ws.size(),
        s_.attn.data(), st));
  } else {
    FP_RETURN_IF_ERROR(kernels::LaunchPagedAttentionPrefillCuda(
        q, qkv_dim, seq_ids, positions, shape.tokens, max_context, q_heads, tables, cache,
        anchor_views_[layer], attention_, s_.attn.data(), st));
  }
  // Residual adds fused into the projections' epilogue: x = bf16(x + attn o_proj^T).
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(s_.attn.data(), w.o_proj, s_.x.data(), s_.x.data(),
                                         DType::kBf16, t, hidden, q_dim_, st));
  FP_RETURN_IF_ERROR(
      kernels::LaunchRmsNorm(s_.x.data(), w.post_norm, eps, s_.h.data(), t, hidden, st));
  const int64_t inter = c.intermediate_size;
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(s_.h.data(), w.gate_up_proj, nullptr, s_.gate_up.data(),
                                         DType::kBf16, t, 2 * inter, hidden, st));
  FP_RETURN_IF_ERROR(kernels::LaunchSwiGluFused(s_.gate_up.data(), s_.mlp.data(), t, inter, st));
  return kernels::LaunchGemm(s_.mlp.data(), w.down_proj, s_.x.data(), s_.x.data(), DType::kBf16, t,
                             hidden, inter, st);
}

Status CudaBackend::RunBody(const StepShape& shape, int32_t max_context, bool decode_attention) {
  const LlamaConfig& c = model_->config();
  const StepLayout l = StepLayout::For(shape);
  const cudaStream_t st = stream_.get();
  auto* error = reinterpret_cast<uint32_t*>(s_.out.data());
  FP_RETURN_IF_ERROR(kernels::LaunchEmbedding(Staged<int32_t>(l.tokens), weights_.embed_tokens(),
                                              s_.x.data(), shape.tokens, c.vocab_size,
                                              c.hidden_size, error, st));
  for (size_t layer = 0; layer < weights_.layers().size(); ++layer) {
    FP_RETURN_IF_ERROR(RunLayer(layer, shape, max_context, decode_attention));
  }
  if (shape.emits == 0) return OkStatus();
  // The emitting rows of the residual stream, gathered by row index (an exact bf16 copy: the
  // embedding kernel with the residual stream as its table), then the final RMSNorm.
  FP_RETURN_IF_ERROR(kernels::LaunchEmbedding(Staged<int32_t>(l.emit_rows), s_.x.data(),
                                              s_.gathered.data(), shape.emits, shape.tokens,
                                              c.hidden_size, error, st));
  return kernels::LaunchRmsNorm(s_.gathered.data(), weights_.final_norm(),
                                static_cast<float>(c.rms_norm_eps), s_.state.data(), shape.emits,
                                c.hidden_size, st);
}

Status CudaBackend::RunDecodeGraph(const StepShape& shape, int32_t max_context) {
  const auto key = std::make_pair(shape.seqs, shape.table_stride);
  auto found = graphs_.find(key);
  if (found != graphs_.end()) return found->second.Launch(stream_.get());
  // First time for this shape: run it eagerly (the step's result), then capture the same work
  // for later replays. Capture records without executing.
  FP_RETURN_IF_ERROR(RunBody(shape, max_context, /*decode_attention=*/true));
  if (graphs_.size() >= kMaxDecodeGraphs) return OkStatus();
  const cudaStream_t st = stream_.get();
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "begin capture"));
  const Status body = RunBody(shape, max_context, /*decode_attention=*/true);
  StatusOr<cuda::GraphExec> exec = cuda::GraphExec::EndCaptureAndInstantiate(st);
  FP_RETURN_IF_ERROR(body);
  FP_RETURN_IF_ERROR(exec.status());
  graphs_.emplace(key, std::move(exec).value());
  return OkStatus();
}

StatusOr<kernels::DigestBatch> CudaBackend::TakeDigests() {
  // The digest ran beside the LM head and the sampler, so it is nearly always done by now;
  // polling briefly avoids the wake-up latency of a sleeping wait.
  for (int poll = 0; poll < kMaxDigestPolls; ++poll) {
    FP_ASSIGN_OR_RETURN(std::vector<kernels::DigestBatch> done, digests_->Poll());
    if (!done.empty()) {
      FP_CHECK(done.size() == 1);  // one batch in flight: every Forward takes its own
      return std::move(done.front());
    }
  }
  return digests_->Wait();
}

const void* CudaBackend::Canonical() const {
  return digest_.canonical_dtype == DType::kBf16 ? s_.state.data() : s_.canonical.data();
}

Status CudaBackend::CheckErrorWord() const {
  const uint32_t error = *reinterpret_cast<const uint32_t*>(s_.out_host.bytes());
  if (error == 0) return OkStatus();
  // Validate() rejects bad ids, positions and parameters on the host first, so a bit here means
  // the device saw something the host did not: non-finite logits or a temperature overflow.
  if ((error & (kernels::kSamplerErrorLogits | kernels::kSamplerErrorTemperature)) != 0) {
    return InvalidArgumentError(
        "cuda backend: logits the sampler rejects (NaN/inf, or the "
        "temperature overflows the top logit); error word " +
        std::to_string(error));
  }
  return InternalError("cuda backend: device error word " + std::to_string(error));
}

Status CudaBackend::FinishStep(int32_t emits, const ForwardOptions& options,
                               ForwardResult* result) {
  const LlamaConfig& c = model_->config();
  const cudaStream_t st = stream_.get();
  const auto vocab = static_cast<int32_t>(c.vocab_size);
  const StepLayout layout = StepLayout::For(current_shape_);
  std::optional<uint64_t> ticket;
  if (emits > 0) {
    const void* head_input = s_.state.data();
    if (digest_.canonical_dtype != DType::kBf16) {
      FP_RETURN_IF_ERROR(cuda::LaunchCanonicalState(s_.state.data(), digest_.canonical_dtype, emits,
                                                    c.hidden_size, s_.canonical.data(),
                                                    s_.head_input.data(), st));
      if (digest_.canonical_dtype == DType::kF16) head_input = s_.head_input.data();
    }
    if (digests_ != nullptr) {
      FP_ASSIGN_OR_RETURN(ticket, digests_->Enqueue(Canonical(), emits, c.hidden_size, st));
    }
    FP_RETURN_IF_ERROR(kernels::LaunchGemm(head_input, weights_.lm_head(), nullptr,
                                           s_.logits.data(), DType::kF32, emits, vocab,
                                           c.hidden_size, st));
    FP_RETURN_IF_ERROR(kernels::LaunchSampleTokens(
        static_cast<const float*>(s_.logits.data()), emits, vocab,
        Staged<kernels::SamplingParams>(layout.sampling), Staged<uint64_t>(layout.steps),
        reinterpret_cast<int32_t*>(s_.out.bytes() + 16), s_.sampler_ws.data(),
        static_cast<int64_t>(s_.sampler_ws.size()), reinterpret_cast<uint32_t*>(s_.out.data()),
        st));
  }
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(s_.out_host.bytes(), s_.out.data(),
                                 16 + static_cast<size_t>(emits) * 4, cudaMemcpyDeviceToHost, st),
                 "copy tokens"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(tokens_ready_.get(), st), "record"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(tokens_ready_.get()), "step"));
  *result = ForwardResult();
  Status error = CheckErrorWord();
  std::vector<Hash> digests;
  if (ticket.has_value()) {
    // Take the batch even after an error, so the ring stays in step.
    FP_ASSIGN_OR_RETURN(kernels::DigestBatch batch_digests, TakeDigests());
    FP_CHECK(batch_digests.ticket == *ticket);
    digests = std::move(batch_digests.digests);
  }
  FP_RETURN_IF_ERROR(error);
  if (emits == 0) return OkStatus();
  const auto* tokens = reinterpret_cast<const int32_t*>(s_.out_host.bytes() + 16);
  result->tokens.assign(tokens, tokens + emits);
  result->state_digests =
      ticket.has_value() ? std::move(digests) : std::vector<Hash>(static_cast<size_t>(emits));
  if (options.return_hidden) {
    result->hidden = Tensor::Zeros(digest_.canonical_dtype, {emits, c.hidden_size});
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(result->hidden.mutable_data(), Canonical(),
                                             result->hidden.bytes_size(), cudaMemcpyDeviceToHost),
                                  "copy hidden"));
  }
  if (options.return_logits) {
    result->logits = Tensor::Zeros(DType::kF32, {emits, c.vocab_size});
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(result->logits.mutable_data(), s_.logits.data(),
                                             result->logits.bytes_size(), cudaMemcpyDeviceToHost),
                                  "copy logits"));
  }
  return OkStatus();
}

Status CudaBackend::Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                            ForwardResult* result) {
  FP_RETURN_IF_ERROR(SetDevice());
  FP_RETURN_IF_ERROR(Validate(batch));
  const BatchExtent x = MeasureBatch(batch);
  const int32_t stride = TableStrideFor(x.max_table);
  const bool graph = options_.cuda_graphs && x.decode_only;
  StepShape shape{x.tokens, x.seqs, x.emits, stride};
  int32_t max_context = 0;
  for (const ForwardSequence& s : batch) {
    max_context = std::max(max_context, s.start_row + static_cast<int32_t>(s.tokens.size()));
  }
  if (graph) {
    // A graph serves every batch of its bucket and stride: size the attention for the table.
    const int32_t bucket = DecodeBucketFor(x.seqs);
    shape = {bucket, bucket, bucket, stride};
    max_context = stride * block_size_;
  }
  FP_RETURN_IF_ERROR(EnsureCapacity(shape, max_context));
  current_shape_ = shape;
  const StepLayout layout = StepLayout::For(shape);
  PackStep(batch, shape, num_blocks_, block_size_, s_.staging_host.bytes());
  const cudaStream_t st = stream_.get();
  FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(s_.staging.data(), s_.staging_host.bytes(),
                                                layout.bytes, cudaMemcpyHostToDevice, st),
                                "stage step"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(s_.out.data(), 0, 4, st), "reset error word"));
  if (graph) {
    FP_RETURN_IF_ERROR(RunDecodeGraph(shape, max_context));
  } else {
    FP_RETURN_IF_ERROR(RunBody(shape, max_context, x.decode_only));
  }
  return FinishStep(x.emits, options, result);
}

}  // namespace

bool CudaDeviceAvailable() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
}

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace fp::node
