// The CUDA backend; see cuda_backend.h.
//
// Ranks. Everything that lives on a GPU belongs to a Rank: its stream, weight shard, RoPE table,
// anchor slice, KV cache shard, step buffers and captured graphs. With one rank (the default)
// the backend is the single-GPU backend and every method runs on the caller's thread. With R > 1,
// OnRanks runs one function per rank on a pool of R threads (the caller's is rank 0's) and joins
// them; a step's collectives pair up across those threads on the GPUs.
//
// Buffers. Weights (DeviceWeights), the RoPE table and the anchors are uploaded once. The KV
// cache is one allocation per rank: per layer K then V, each [num_blocks + scratch, block_size,
// kv_heads / R, head_dim] bf16; the scratch blocks after the engine's pool hold the padding rows of
// decode graphs (cuda_step.h). Step buffers (staging, activations, partials, logits, workspaces)
// grow on demand to the largest batch seen, in powers of two; growing drops every captured graph,
// because a graph bakes in the addresses. The packed step metadata is built once on the host, in
// one pinned buffer every rank copies from.
//
// One step on each rank's stream: H2D copy of the packed metadata, reset of the device error
// word, the body (graph replay or eager). Then rank 0 alone, for the E emitting rows: canonical
// state, digest enqueue (a D2D snapshot on this stream, the hash on the pipeline's side stream),
// LM head, Philox sampling, D2H copy of [error word, E tokens]. Every rank records an event and
// spins on it; after the join the host checks every rank's error word and takes the tokens and
// the digests (by then nearly always done).
//
// A failed rank. If one rank's host thread fails mid-step, its peers' collectives would wait for
// it forever: the failing rank raises rank_failed_, the others stop waiting, and after the join
// the NCCL clique is aborted and the backend refuses all further work (FailedPrecondition).
#include "node/backend/cuda_backend.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "common/leaf/quantize.h"
#include "kernels/activation/activation_cuda.h"
#include "kernels/attention/paged_attention_cuda.h"
#include "kernels/base/cuda_status.h"
#include "kernels/base/half.h"
#include "kernels/base/thread_pool.h"
#include "kernels/digest/digest_pipeline.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/norm/rms_norm_cuda.h"
#include "kernels/rope/rope_cuda.h"
#include "kernels/sampling/sampler_cuda.h"
#include "node/backend/cuda_canonical.h"
#include "node/backend/cuda_nccl.h"
#include "node/backend/cuda_resources.h"
#include "node/backend/cuda_step.h"
#include "node/backend/cuda_tp_reduce.h"
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
// Captured decode graphs kept at once per rank (batch bucket x table stride); past it, decode
// runs eagerly rather than capturing without bound.
constexpr size_t kMaxDecodeGraphs = 128;
// Polls for a step's digests before sleeping on them (each poll is an event query, well under a
// microsecond; the bound is a few hundred microseconds).
constexpr int kMaxDigestPolls = 1000;
// Bytes of a rank's `out` buffer before the tokens: the error word and 3 unused words.
constexpr size_t kOutHeaderBytes = 16;

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

// Rows [0, rows) of `t` viewed as [rows, groups, group_width], keeping groups
// [first_group, first_group + count) of each row, converted to bf16: one rank's kv heads of an
// anchor tensor, or its query heads of gamma (group_width 1, then widened back by the caller).
std::vector<uint16_t> SliceToBf16(const Tensor& t, int64_t groups, int64_t group_width,
                                  int64_t first_group, int64_t count) {
  std::vector<float> widened(static_cast<size_t>(t.elements()));
  kernels::ConvertToF32(t.data(), t.dtype(), widened.size(), widened.data());
  const int64_t row_width = groups * group_width, keep = count * group_width;
  const int64_t rows = t.elements() / row_width;
  std::vector<float> kept(static_cast<size_t>(rows * keep));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(kept.data() + r * keep, widened.data() + r * row_width + first_group * group_width,
                static_cast<size_t>(keep) * sizeof(float));
  }
  std::vector<uint16_t> out(kept.size());
  kernels::ConvertF32ToBf16(kept.data(), kept.size(), out.data());
  return out;
}

// Capacities of the step buffers (the same on every rank).
struct Capacity {
  int32_t tokens = 0;
  int32_t seqs = 0;
  int32_t emits = 0;
  int32_t table_stride = 0;
  int32_t max_context = 0;  // decode attention workspace bound
};

// Per-step device buffers of one rank, all sized by a Capacity. R is the tensor-parallel degree;
// widths marked "/ R" are the rank's shard. The emitting tail's buffers exist on rank 0 only.
struct StepBuffers {
  cuda::DeviceBuffer staging;  // device mirror of the backend's pinned staging buffer
  cuda::DeviceBuffer x;        // [tokens, hidden] bf16 residual stream (replicated)
  cuda::DeviceBuffer h;        // [tokens, hidden] bf16 normalised (replicated)
  // [tokens, (q_dim + 2 * kv_dim) / R] bf16: the fused projection's q, k and v columns, which
  // RoPE, the KV write and attention use in place through row strides.
  cuda::DeviceBuffer qkv;
  cuda::DeviceBuffer attn;          // [tokens, q_dim / R] bf16
  cuda::DeviceBuffer gate_up;       // [tokens, 2 * intermediate / R] bf16
  cuda::DeviceBuffer mlp;           // [tokens, intermediate / R] bf16
  cuda::DeviceBuffer partials;      // [R, tokens, hidden] f32 row-parallel partial products (R > 1)
  cuda::DeviceBuffer gathered;      // rank 0: [emits, hidden] bf16 emitting rows of x
  cuda::DeviceBuffer state;         // rank 0: [emits, hidden] bf16 final RMSNorm output
  cuda::DeviceBuffer canonical;     // rank 0: [emits, hidden] canonical dtype (f16/f32 models)
  cuda::DeviceBuffer head_input;    // rank 0: [emits, hidden] bf16 (f16 models)
  cuda::DeviceBuffer logits;        // rank 0: [emits, vocab] f32
  cuda::DeviceBuffer sampler_ws;    // rank 0: SamplerWorkspaceBytes(emits, vocab)
  cuda::DeviceBuffer attention_ws;  // PagedAttentionDecodeWorkspaceBytes(seqs, q / R, ...)
  cuda::DeviceBuffer out;       // int32 [4 + emits] on rank 0, [4] elsewhere: error word, tokens
  cuda::PinnedBuffer out_host;  // host mirror of `out`
};

// Sizes of one rank's shard (R == 1: the whole model).
struct Shard {
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t q_dim = 0;   // q_heads * head_dim
  int32_t kv_dim = 0;  // kv_heads * head_dim
  int64_t intermediate = 0;
  int64_t qkv_dim() const { return q_dim + 2 * int64_t{kv_dim}; }
};

// One GPU's part of the backend.
struct Rank {
  int index = 0;
  int device = 0;
  ncclComm_t comm = nullptr;  // borrowed from the clique; null with one rank
  cuda::Stream stream;
  cuda::Event step_done;  // the host spins on it
  cuda::DeviceWeights weights;
  cuda::DeviceBuffer rope_cos, rope_sin;
  kernels::RopeDeviceTable rope{};
  cuda::DeviceBuffer anchor_memory;                  // mix: per layer key, value, gamma
  std::vector<kernels::CudaAnchorSet> anchor_views;  // [layers] (num_anchors 0 when unused)
  std::vector<std::vector<uint16_t>> prefix_key;     // prefix: [layers][A, kv_dim / R] bf16
  std::vector<std::vector<uint16_t>> prefix_value;   // prefix: [layers][A, kv_dim / R] bf16
  cuda::DeviceBuffer kv_memory;
  std::vector<kernels::CudaPagedKvCache> caches;  // [layers]
  StepBuffers s;
  std::map<std::pair<int32_t, int32_t>, cuda::GraphExec> graphs;  // (bucket, stride)
};

class CudaBackend final : public Backend {
 public:
  static StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override;

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

  int ranks() const { return static_cast<int>(ranks_.size()); }
  Rank& rank0() const { return *ranks_.front(); }
  // Makes rank 0's device current on the calling thread; FailedPrecondition once broken.
  Status Enter() const;
  // Runs fn(rank) for every rank, each on its own thread with its device current, and returns the
  // first error in rank order. `collectives`: fn enqueues collectives, so with R > 1 an error
  // leaves peers waiting and breaks the backend (see the file comment).
  Status OnRanks(const std::function<Status(Rank&)>& fn, bool collectives = false);
  Status CreateRanks(const std::vector<int>& devices);
  Status ValidateModel(const LlamaConfig& c) const;
  Status LoadRank(Rank& r, const Model& model, const kernels::RopeTable& table);
  Status UploadMixAnchors(Rank& r, const AnchorSet& anchors);
  Status Validate(std::span<const ForwardSequence> batch) const;
  Status EnsureCapacity(const StepShape& shape, int32_t max_context);
  Status AllocateStepBuffers(Rank& r, const Capacity& want);
  Status RunStep(Rank& r, const StepShape& shape, int32_t max_context, bool graph,
                 bool decode_attention, int32_t emits);
  // The work of one step up to the final state of shape.emits rows (rank 0's s.state).
  Status RunBody(Rank& r, const StepShape& shape, int32_t max_context, bool decode_attention);
  Status RunLayer(Rank& r, size_t layer, const StepShape& shape, int32_t max_context,
                  bool decode_attention);
  // x += input * w^T, w a row-parallel shard with k_local inputs per rank.
  Status RowParallel(Rank& r, const void* input, const void* w, int64_t k_local, int64_t tokens);
  Status RunDecodeGraph(Rank& r, const StepShape& shape, int32_t max_context);
  Status EnqueueTail(Rank& r, int32_t emits);
  Status WaitForStep(const Rank& r) const;
  Status FinishStep(int32_t emits, const ForwardOptions& options, ForwardResult* result);
  Status CheckErrorWords() const;
  // The digests of the one batch in flight.
  StatusOr<kernels::DigestBatch> TakeDigests();
  Status CopyCacheRows(const Rank& r, std::span<const int32_t> table, int32_t layer, int32_t begin,
                       int32_t end, bool to_device, uint16_t* key, uint16_t* value) const;
  template <typename T>
  static const T* Staged(const Rank& r, size_t offset) {
    return reinterpret_cast<const T*>(r.s.staging.bytes() + offset);
  }
  const void* Canonical() const;  // the digested [emits, hidden] rows (rank 0)

  const CudaBackendOptions options_;
  BackendIdentity identity_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<kernels::ThreadPool> pool_;  // R threads (the caller's is rank 0's); R > 1
  std::unique_ptr<cuda::NcclClique> clique_;   // R > 1
  std::atomic<bool> rank_failed_{false};       // raised by a rank whose step failed
  bool broken_ = false;                        // a rank failed with R > 1: nothing more runs

  const Model* model_ = nullptr;  // borrowed
  DigestOptions digest_;
  Shard shard_;
  kernels::AttentionOptions attention_{};
  std::unique_ptr<kernels::DigestPipeline> digests_;  // on rank 0's device
  std::optional<uint64_t> ticket_;                    // the running step's digest batch

  AnchorMode anchor_mode_ = AnchorMode::kMix;
  int32_t num_anchors_ = 0;
  int32_t num_blocks_ = 0;  // the engine's pool; scratch blocks follow
  int32_t block_size_ = 0;

  Capacity capacity_;
  cuda::PinnedBuffer staging_host_;  // [StepLayout bytes] packed metadata, read by every rank
  StepShape current_shape_;          // the shape the staged metadata of the running step has
};

Status CudaBackend::Enter() const {
  if (broken_) {
    return FailedPreconditionError(
        "cuda backend: a tensor-parallel rank failed; the backend must be recreated");
  }
  return CudaStatus(cudaSetDevice(rank0().device), "set device");
}

Status CudaBackend::OnRanks(const std::function<Status(Rank&)>& fn, bool collectives) {
  if (ranks() == 1) return fn(rank0());
  std::vector<Status> statuses(ranks_.size());
  rank_failed_.store(false);
  pool_->ParallelFor(ranks(), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Rank& r = *ranks_[static_cast<size_t>(i)];
      Status status = CudaStatus(cudaSetDevice(r.device), "set device");
      if (status.ok()) status = fn(r);
      if (!status.ok()) rank_failed_.store(true);
      statuses[static_cast<size_t>(i)] = std::move(status);
    }
  });
  // Back on rank 0's device whatever the pool did with this thread.
  FP_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(rank0().device), "set device"));
  for (Status& status : statuses) {
    if (status.ok()) continue;
    if (collectives) {
      // Peers may be parked in a collective waiting for the failed rank: end them, and refuse to
      // run on communicators in an unknown state.
      clique_->Abort();
      broken_ = true;
    }
    return std::move(status);
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(const CudaBackendOptions& options) {
  if (options.tensor_parallel < 1 || options.tensor_parallel > cuda::kMaxTensorParallel) {
    return InvalidArgumentError("cuda backend: tensor_parallel must be in [1, 8]");
  }
  std::vector<int> devices = options.devices;
  if (devices.empty()) {
    for (int r = 0; r < options.tensor_parallel; ++r) devices.push_back(options.device + r);
  }
  if (static_cast<int>(devices.size()) != options.tensor_parallel) {
    return InvalidArgumentError("cuda backend: the device list must name one GPU per rank");
  }
  std::vector<int> sorted = devices;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return InvalidArgumentError("cuda backend: a GPU appears twice in the device list");
  }
  const int available = CudaDeviceCount();
  for (int d : devices) {
    if (d < 0 || d >= available) {
      return FailedPreconditionError("cuda backend: no CUDA device " + std::to_string(d) + " (" +
                                     std::to_string(available) + " present)");
    }
  }
  if (options.digest_depth < 1 || options.digest_depth > kernels::kMaxDigestPipelineDepth) {
    return InvalidArgumentError("cuda backend: digest_depth out of range");
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(options));
  FP_RETURN_IF_ERROR(backend->CreateRanks(devices));
  return std::unique_ptr<Backend>(std::move(backend));
}

Status CudaBackend::CreateRanks(const std::vector<int>& devices) {
  cudaDeviceProp first{};
  for (size_t i = 0; i < devices.size(); ++i) {
    auto r = std::make_unique<Rank>();
    r->index = static_cast<int>(i);
    r->device = devices[i];
    FP_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(r->device), "set device"));
    cudaDeviceProp prop{};
    FP_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, r->device), "device props"));
    if (i == 0) first = prop;
    // One numerics profile covers the worker: every rank must compute alike.
    if (std::strcmp(prop.name, first.name) != 0 || prop.major != first.major ||
        prop.minor != first.minor) {
      return FailedPreconditionError(std::string("cuda backend: tensor-parallel GPUs differ (") +
                                     first.name + " vs " + prop.name + ")");
    }
    FP_ASSIGN_OR_RETURN(r->stream, cuda::Stream::Create());
    // Spinning, not sleeping: a sleeping thread wakes tens of microseconds late, which a
    // one-millisecond decode step would feel.
    FP_ASSIGN_OR_RETURN(r->step_done, cuda::Event::Create(/*blocking_sync=*/false));
    ranks_.push_back(std::move(r));
  }
  identity_ = {first.name, static_cast<uint32_t>(first.major), static_cast<uint32_t>(first.minor),
               CudaKernelBuildId(ranks(), options_.reduction), static_cast<uint32_t>(ranks())};
  if (ranks() > 1) {
    FP_ASSIGN_OR_RETURN(pool_, kernels::ThreadPool::Create(ranks()));
    FP_ASSIGN_OR_RETURN(clique_, cuda::NcclClique::Create(devices));
    for (auto& r : ranks_) r->comm = clique_->comm(r->index);
  }
  return CudaStatus(cudaSetDevice(rank0().device), "set device");
}

CudaBackend::~CudaBackend() {
  // Each rank's objects are released with its own device current (streams, events and graphs
  // belong to a device); the digest pipeline lives on rank 0's device. The ranks go before the
  // clique: destroying a communicator waits until no captured graph holds its operations.
  if (!ranks_.empty()) cudaSetDevice(rank0().device);
  digests_.reset();
  for (auto& r : ranks_) {
    cudaSetDevice(r->device);
    if (!broken_) cudaStreamSynchronize(r->stream.get());
    r.reset();
  }
  clique_.reset();
}

Status CudaBackend::ValidateModel(const LlamaConfig& c) const {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return InvalidArgumentError("cuda backend: head_dim must be 64 or 128");
  }
  if (c.num_heads / c.num_kv_heads > kernels::kCudaAttentionMaxGroup ||
      c.hidden_size % kernels::kGemmCudaKAlignment != 0 ||
      c.intermediate_size % kernels::kGemmCudaKAlignment != 0 ||
      c.hidden_size > kernels::kRmsNormMaxWidth) {
    return InvalidArgumentError("cuda backend: model shape beyond the CUDA kernels' limits");
  }
  // Each rank's slice of o_proj and down_proj is a GEMM reduction of its own: k must stay aligned.
  const int64_t r = ranks();
  if (c.num_kv_heads % r != 0 || c.intermediate_size % (r * kernels::kGemmCudaKAlignment) != 0) {
    return InvalidArgumentError("cuda backend: tensor_parallel " + std::to_string(r) +
                                " must divide the kv heads (" + std::to_string(c.num_kv_heads) +
                                ") and the intermediate size / 8 (" +
                                std::to_string(c.intermediate_size) + ")");
  }
  return OkStatus();
}

Status CudaBackend::LoadRank(Rank& r, const Model& model, const kernels::RopeTable& table) {
  const auto rope_bytes = static_cast<size_t>(kernels::RopeDeviceTableBytes(table));
  FP_ASSIGN_OR_RETURN(r.rope_cos, cuda::DeviceBuffer::Allocate(rope_bytes, "rope cos"));
  FP_ASSIGN_OR_RETURN(r.rope_sin, cuda::DeviceBuffer::Allocate(rope_bytes, "rope sin"));
  FP_ASSIGN_OR_RETURN(r.rope, kernels::CopyRopeTableToDevice(
                                  table, static_cast<float*>(r.rope_cos.data()),
                                  static_cast<float*>(r.rope_sin.data()), r.stream.get()));
  FP_ASSIGN_OR_RETURN(r.weights, cuda::DeviceWeights::Upload(model, r.index, ranks()));
  r.anchor_views.assign(static_cast<size_t>(model.config().num_layers),
                        {nullptr, nullptr, nullptr, 0});
  r.graphs.clear();
  return CudaStatus(cudaStreamSynchronize(r.stream.get()), "load model");
}

Status CudaBackend::LoadModel(const Model& model, const DigestOptions& digest) {
  FP_RETURN_IF_ERROR(Enter());
  const LlamaConfig& c = model.config();
  FP_RETURN_IF_ERROR(ValidateModel(c));
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
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) { return LoadRank(r, model, table); }));
  digests_.reset();
  if (options_.state_digests) {
    FP_ASSIGN_OR_RETURN(digests_, kernels::DigestPipeline::Create(
                                      {resolved.canonical_dtype, resolved.quantize_bits,
                                       kMaxBatchSequences, c.hidden_size, options_.digest_depth}));
  }
  model_ = &model;
  digest_ = resolved;
  const auto r = static_cast<int32_t>(ranks());
  shard_.q_heads = static_cast<int32_t>(c.num_heads) / r;
  shard_.kv_heads = static_cast<int32_t>(c.num_kv_heads) / r;
  shard_.q_dim = shard_.q_heads * static_cast<int32_t>(c.head_dim);
  shard_.kv_dim = shard_.kv_heads * static_cast<int32_t>(c.head_dim);
  shard_.intermediate = c.intermediate_size / r;
  attention_ = {kernels::AttentionMode::kPrefix,
                kernels::DefaultSoftmaxScale(static_cast<int32_t>(c.head_dim))};
  return OkStatus();
}

Status CudaBackend::UploadMixAnchors(Rank& r, const AnchorSet& anchors) {
  const LlamaConfig& c = model_->config();
  const auto count = static_cast<int32_t>(anchors.num_anchors());
  // Per layer: key and value [A, kv_dim / R] bf16, then gamma [q_heads / R] f32, each 256-aligned.
  const size_t rows_bytes = (static_cast<size_t>(count) * shard_.kv_dim * 2 + 255) / 256 * 256;
  const size_t gamma_bytes = (static_cast<size_t>(shard_.q_heads) * 4 + 255) / 256 * 256;
  const size_t layer_bytes = 2 * rows_bytes + gamma_bytes;
  FP_ASSIGN_OR_RETURN(
      r.anchor_memory,
      cuda::DeviceBuffer::Allocate(layer_bytes * static_cast<size_t>(c.num_layers), "anchors"));
  for (size_t l = 0; l < anchors.layers().size(); ++l) {
    const AnchorLayer& layer = anchors.layers()[l];
    uint8_t* base = r.anchor_memory.bytes() + l * layer_bytes;
    const int64_t first_kv = int64_t{r.index} * shard_.kv_heads;
    std::vector<uint16_t> key =
        SliceToBf16(layer.key, c.num_kv_heads, c.head_dim, first_kv, shard_.kv_heads);
    std::vector<uint16_t> value =
        SliceToBf16(layer.value, c.num_kv_heads, c.head_dim, first_kv, shard_.kv_heads);
    // Gamma stays f32 (the kernel reads f32): slice the widened values directly.
    std::vector<float> all(static_cast<size_t>(layer.gamma.elements()));
    kernels::ConvertToF32(layer.gamma.data(), layer.gamma.dtype(), all.size(), all.data());
    const float* gamma = all.data() + int64_t{r.index} * shard_.q_heads;
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(base, key.data(), key.size() * 2, cudaMemcpyHostToDevice), "anchor keys"));
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(base + rows_bytes, value.data(), value.size() * 2, cudaMemcpyHostToDevice),
        "anchor values"));
    FP_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(base + 2 * rows_bytes, gamma, static_cast<size_t>(shard_.q_heads) * 4,
                              cudaMemcpyHostToDevice),
                   "anchor gamma"));
    r.anchor_views[l] = {base, base + rows_bytes,
                         reinterpret_cast<const float*>(base + 2 * rows_bytes), count};
  }
  return OkStatus();
}

Status CudaBackend::LoadAnchors(const AnchorSet* anchors, AnchorMode mode) {
  FP_CHECK(model_ != nullptr);
  FP_RETURN_IF_ERROR(Enter());
  const LlamaConfig& c = model_->config();
  anchor_mode_ = mode;
  num_anchors_ = 0;
  attention_.mode = kernels::AttentionMode::kPrefix;
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) {
    r.anchor_memory = cuda::DeviceBuffer();
    r.anchor_views.assign(static_cast<size_t>(c.num_layers), {nullptr, nullptr, nullptr, 0});
    r.prefix_key.clear();
    r.prefix_value.clear();
    r.graphs.clear();
    return OkStatus();
  }));
  if (anchors == nullptr) return OkStatus();
  FP_RETURN_IF_ERROR(anchors->CheckCompatible(c));
  const auto count = static_cast<int32_t>(anchors->num_anchors());
  if (mode == AnchorMode::kMix && (count < 1 || count > kernels::kCudaAttentionMaxAnchors)) {
    return InvalidArgumentError("cuda backend: mix mode takes 1 to 512 anchors");
  }
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) -> Status {
    if (mode == AnchorMode::kMix) return UploadMixAnchors(r, *anchors);
    const int64_t first_kv = int64_t{r.index} * shard_.kv_heads;
    for (const AnchorLayer& l : anchors->layers()) {
      r.prefix_key.push_back(
          SliceToBf16(l.key, c.num_kv_heads, c.head_dim, first_kv, shard_.kv_heads));
      r.prefix_value.push_back(
          SliceToBf16(l.value, c.num_kv_heads, c.head_dim, first_kv, shard_.kv_heads));
    }
    return OkStatus();
  }));
  num_anchors_ = count;
  if (mode == AnchorMode::kMix) attention_.mode = kernels::AttentionMode::kMix;
  return OkStatus();
}

int64_t CudaBackend::KvBytesPerBlock(int32_t block_size) const {
  FP_CHECK(model_ != nullptr);
  // Per GPU: each rank holds its kv heads' rows of every block, and the budget is per GPU.
  return 2 * model_->config().num_layers * int64_t{block_size} * shard_.kv_dim * 2;
}

Status CudaBackend::AllocateKvCache(int32_t num_blocks, int32_t block_size) {
  FP_CHECK(model_ != nullptr);
  FP_RETURN_IF_ERROR(Enter());
  if (num_blocks < 1 || block_size < 1 || block_size > kernels::kAttentionMaxBlockSize) {
    return InvalidArgumentError("cuda backend: bad KV cache geometry");
  }
  const LlamaConfig& c = model_->config();
  const int32_t total_blocks = num_blocks + ScratchBlocksFor(block_size);
  const size_t array_bytes = static_cast<size_t>(total_blocks) * block_size * shard_.kv_dim * 2;
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) -> Status {
    r.caches.clear();
    r.graphs.clear();
    r.kv_memory = cuda::DeviceBuffer();
    FP_ASSIGN_OR_RETURN(r.kv_memory,
                        cuda::DeviceBuffer::Allocate(
                            2 * array_bytes * static_cast<size_t>(c.num_layers), "KV cache"));
    // Zeros, so no row ever read (scratch rows included) holds a NaN pattern.
    FP_RETURN_IF_ERROR(
        CudaStatus(cudaMemsetAsync(r.kv_memory.data(), 0, r.kv_memory.size(), r.stream.get()),
                   "clear KV cache"));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      uint8_t* key = r.kv_memory.bytes() + static_cast<size_t>(2 * l) * array_bytes;
      r.caches.push_back({key, key + array_bytes, total_blocks, block_size, shard_.kv_heads,
                          static_cast<int32_t>(c.head_dim)});
    }
    return CudaStatus(cudaStreamSynchronize(r.stream.get()), "clear KV cache");
  }));
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return OkStatus();
}

Status CudaBackend::CopyCacheRows(const Rank& r, std::span<const int32_t> table, int32_t layer,
                                  int32_t begin, int32_t end, bool to_device, uint16_t* key,
                                  uint16_t* value) const {
  const size_t row_bytes = static_cast<size_t>(shard_.kv_dim) * 2;
  const kernels::CudaPagedKvCache& cache = r.caches[static_cast<size_t>(layer)];
  for (int32_t p = begin; p < end;) {
    const int32_t block = table[static_cast<size_t>(p / block_size_)];
    if (block < 0 || block >= num_blocks_) return InvalidArgumentError("cuda backend: bad block");
    const int32_t run = std::min(end, (p / block_size_ + 1) * block_size_) - p;
    const size_t cache_offset =
        (static_cast<size_t>(block) * block_size_ + p % block_size_) * row_bytes;
    const size_t host_offset = static_cast<size_t>(p - begin) * shard_.kv_dim;
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
  if (anchor_mode_ != AnchorMode::kPrefix || num_anchors_ == 0 || rank0().caches.empty()) {
    return FailedPreconditionError("cuda backend: no prefix-mode anchor set or KV cache");
  }
  if (static_cast<int64_t>(block_table.size()) * block_size_ < num_anchors_) {
    return InvalidArgumentError("cuda backend: block table too short for the anchor prefix");
  }
  FP_RETURN_IF_ERROR(Enter());
  // Each rank scatters its kv heads' columns of the anchor rows into its own cache shard.
  return OnRanks([&](Rank& r) -> Status {
    // The generation stream may still be writing other sequences' rows; these blocks are this
    // sequence's own, but the synchronous copies below must not overtake queued work on them.
    FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(r.stream.get()), "anchor prefix"));
    for (size_t l = 0; l < r.caches.size(); ++l) {
      FP_RETURN_IF_ERROR(CopyCacheRows(r, block_table, static_cast<int32_t>(l), 0, num_anchors_,
                                       true, r.prefix_key[l].data(), r.prefix_value[l].data()));
    }
    return OkStatus();
  });
}

Status CudaBackend::ReadKvRows(std::span<const int32_t> block_table, int32_t layer, int32_t begin,
                               int32_t end, Tensor* key, Tensor* value) {
  FP_CHECK(model_ != nullptr);
  const LlamaConfig& c = model_->config();
  if (rank0().caches.empty()) {
    return FailedPreconditionError("cuda backend: no KV cache allocated");
  }
  if (layer < 0 || layer >= c.num_layers || begin < 0 || end < begin ||
      end > static_cast<int64_t>(block_table.size()) * block_size_) {
    return InvalidArgumentError("cuda backend: KV rows out of range");
  }
  FP_RETURN_IF_ERROR(Enter());
  // Each rank reads its kv heads' columns; the host interleaves them into whole rows.
  const auto rows = static_cast<size_t>(end - begin);
  const auto local = static_cast<size_t>(shard_.kv_dim);
  std::vector<std::vector<uint16_t>> k(ranks_.size()), v(ranks_.size());
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) -> Status {
    FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(r.stream.get()), "read kv rows"));
    const auto i = static_cast<size_t>(r.index);
    k[i].resize(rows * local);
    v[i].resize(rows * local);
    return CopyCacheRows(r, block_table, layer, begin, end, false, k[i].data(), v[i].data());
  }));
  *key = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  *value = Tensor::Zeros(DType::kF32, {end - begin, c.num_kv_heads, c.head_dim});
  const size_t width = local * ranks_.size();
  for (size_t i = 0; i < ranks_.size(); ++i) {
    for (size_t row = 0; row < rows; ++row) {
      kernels::ConvertToF32(k[i].data() + row * local, DType::kBf16, local,
                            key->mutable_data_as<float>() + row * width + i * local);
      kernels::ConvertToF32(v[i].data() + row * local, DType::kBf16, local,
                            value->mutable_data_as<float>() + row * width + i * local);
    }
  }
  return OkStatus();
}

Status CudaBackend::Validate(std::span<const ForwardSequence> batch) const {
  FP_CHECK(model_ != nullptr);
  if (rank0().caches.empty()) {
    return FailedPreconditionError("cuda backend: no KV cache allocated");
  }
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

Status CudaBackend::AllocateStepBuffers(Rank& r, const Capacity& want) {
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(r.stream.get()), "grow step buffers"));
  r.graphs.clear();
  r.s = StepBuffers();
  const LlamaConfig& c = model_->config();
  const auto t = static_cast<size_t>(want.tokens);
  const auto e = static_cast<size_t>(r.index == 0 ? want.emits : 0);
  const auto hidden = static_cast<size_t>(c.hidden_size);
  const auto inter = static_cast<size_t>(shard_.intermediate);
  const auto vocab = static_cast<int32_t>(c.vocab_size);
  const size_t staging =
      StepLayout::For({want.tokens, want.seqs, want.emits, want.table_stride}).bytes;
  const size_t attention_ws = kernels::PagedAttentionDecodeWorkspaceBytes(
      want.seqs, shard_.q_heads, static_cast<int32_t>(c.head_dim), want.max_context);
  const int64_t sampler_ws = kernels::SamplerWorkspaceBytes(want.emits, vocab);
  if (attention_ws == 0 || sampler_ws < 0) {
    return InvalidArgumentError("cuda backend: batch beyond the kernels' workspace limits");
  }
  const size_t partials = ranks() > 1 ? static_cast<size_t>(ranks()) * t * hidden * 4 : 0;
  using cuda::DeviceBuffer;
  StepBuffers& s = r.s;
  FP_ASSIGN_OR_RETURN(s.staging, DeviceBuffer::Allocate(staging, "staging"));
  FP_ASSIGN_OR_RETURN(s.x, DeviceBuffer::Allocate(t * hidden * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s.h, DeviceBuffer::Allocate(t * hidden * 2, "activations"));
  FP_ASSIGN_OR_RETURN(
      s.qkv, DeviceBuffer::Allocate(t * static_cast<size_t>(shard_.qkv_dim()) * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s.attn, DeviceBuffer::Allocate(t * shard_.q_dim * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s.gate_up, DeviceBuffer::Allocate(t * inter * 4, "activations"));
  FP_ASSIGN_OR_RETURN(s.mlp, DeviceBuffer::Allocate(t * inter * 2, "activations"));
  FP_ASSIGN_OR_RETURN(s.partials, DeviceBuffer::Allocate(partials, "partial products"));
  FP_ASSIGN_OR_RETURN(s.gathered, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s.state, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s.canonical, DeviceBuffer::Allocate(e * hidden * 4, "final rows"));
  FP_ASSIGN_OR_RETURN(s.head_input, DeviceBuffer::Allocate(e * hidden * 2, "final rows"));
  FP_ASSIGN_OR_RETURN(s.logits,
                      DeviceBuffer::Allocate(e * static_cast<size_t>(vocab) * 4, "logits"));
  FP_ASSIGN_OR_RETURN(
      s.sampler_ws,
      DeviceBuffer::Allocate(r.index == 0 ? static_cast<size_t>(sampler_ws) : 0, "sampler"));
  FP_ASSIGN_OR_RETURN(s.attention_ws, DeviceBuffer::Allocate(attention_ws, "attention"));
  FP_ASSIGN_OR_RETURN(s.out, DeviceBuffer::Allocate(kOutHeaderBytes + e * 4, "tokens"));
  FP_ASSIGN_OR_RETURN(s.out_host, cuda::PinnedBuffer::Allocate(kOutHeaderBytes + e * 4, "tokens"));
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
  capacity_ = Capacity();
  staging_host_ = cuda::PinnedBuffer();
  const size_t staging =
      StepLayout::For({want.tokens, want.seqs, want.emits, want.table_stride}).bytes;
  // The previous step has finished on every rank (Forward waits for all), so no rank's copy
  // still reads the staging buffer being replaced.
  FP_ASSIGN_OR_RETURN(staging_host_, cuda::PinnedBuffer::Allocate(staging, "staging"));
  FP_RETURN_IF_ERROR(OnRanks([&](Rank& r) { return AllocateStepBuffers(r, want); }));
  capacity_ = want;
  return OkStatus();
}

Status CudaBackend::RowParallel(Rank& r, const void* input, const void* w, int64_t k_local,
                                int64_t tokens) {
  const int64_t hidden = model_->config().hidden_size;
  const cudaStream_t st = r.stream.get();
  void* x = r.s.x.data();
  // One rank: the residual add fused into the projection's epilogue, x = bf16(x + acc).
  if (ranks() == 1) {
    return kernels::LaunchGemm(input, w, x, x, DType::kBf16, tokens, hidden, k_local, st);
  }
  const auto count = static_cast<size_t>(tokens * hidden);
  auto* partials = static_cast<float*>(r.s.partials.data());
  if (options_.reduction == TpReduction::kGatherFixedOrder) {
    // This rank's partial lands in its own slot of the gather buffer (NCCL's in-place form).
    float* mine = partials + static_cast<size_t>(r.index) * count;
    FP_RETURN_IF_ERROR(
        kernels::LaunchGemm(input, w, nullptr, mine, DType::kF32, tokens, hidden, k_local, st));
    FP_RETURN_IF_ERROR(cuda::NcclStatus(ncclAllGather(mine, partials, count, ncclFloat, r.comm, st),
                                        "ncclAllGather"));
    return cuda::LaunchTpResidualSum(partials, ranks(), static_cast<int64_t>(count), x, st);
  }
  FP_RETURN_IF_ERROR(
      kernels::LaunchGemm(input, w, nullptr, partials, DType::kF32, tokens, hidden, k_local, st));
  FP_RETURN_IF_ERROR(cuda::NcclStatus(
      ncclAllReduce(partials, partials, count, ncclFloat, ncclSum, r.comm, st), "ncclAllReduce"));
  return cuda::LaunchTpResidualSum(partials, 1, static_cast<int64_t>(count), x, st);
}

Status CudaBackend::RunLayer(Rank& r, size_t layer, const StepShape& shape, int32_t max_context,
                             bool decode_attention) {
  const LlamaConfig& c = model_->config();
  const cuda::DeviceLayerWeights& w = r.weights.layers()[layer];
  const cudaStream_t st = r.stream.get();
  const StepLayout l = StepLayout::For(shape);
  const int64_t t = shape.tokens;
  const int64_t hidden = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  const auto head_dim = static_cast<int32_t>(c.head_dim);
  StepBuffers& s = r.s;
  auto* error = reinterpret_cast<uint32_t*>(s.out.data());
  FP_RETURN_IF_ERROR(
      kernels::LaunchRmsNorm(s.x.data(), w.input_norm, eps, s.h.data(), t, hidden, st));
  // One GEMM over this rank's q_proj, k_proj and v_proj rows stored back to back: each output
  // column is the same dot product as in a GEMM of its own projection (the GEMM's bits per element
  // depend only on its row, its weight row and k), and decode streams the weights with one grid.
  const int64_t qkv_dim = shard_.qkv_dim();
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(s.h.data(), w.qkv_proj, nullptr, s.qkv.data(),
                                         DType::kBf16, t, qkv_dim, hidden, st));
  auto* q = static_cast<uint16_t*>(s.qkv.data());
  uint16_t* k = q + shard_.q_dim;
  const uint16_t* v = k + shard_.kv_dim;
  const auto* positions = Staged<int32_t>(r, l.positions);
  const auto* seq_ids = Staged<int32_t>(r, l.seq_ids);
  FP_RETURN_IF_ERROR(kernels::LaunchRope(r.rope, q, qkv_dim, k, qkv_dim, positions, t,
                                         shard_.q_heads, shard_.kv_heads, head_dim, error, st));
  const kernels::CudaBlockTables tables{Staged<int32_t>(r, l.block_tables), shape.seqs,
                                        shape.table_stride};
  const kernels::CudaPagedKvCache& cache = r.caches[layer];
  FP_RETURN_IF_ERROR(kernels::LaunchWritePagedKvCuda(k, qkv_dim, v, qkv_dim, seq_ids, positions,
                                                     shape.tokens, tables, cache, st));
  if (decode_attention) {
    FP_RETURN_IF_ERROR(kernels::LaunchPagedAttentionDecodeCuda(
        q, qkv_dim, Staged<int32_t>(r, l.context_lens), max_context, shard_.q_heads, tables, cache,
        r.anchor_views[layer], attention_, s.attention_ws.data(), s.attention_ws.size(),
        s.attn.data(), st));
  } else {
    FP_RETURN_IF_ERROR(kernels::LaunchPagedAttentionPrefillCuda(
        q, qkv_dim, seq_ids, positions, shape.tokens, max_context, shard_.q_heads, tables, cache,
        r.anchor_views[layer], attention_, s.attn.data(), st));
  }
  FP_RETURN_IF_ERROR(RowParallel(r, s.attn.data(), w.o_proj, shard_.q_dim, t));
  FP_RETURN_IF_ERROR(
      kernels::LaunchRmsNorm(s.x.data(), w.post_norm, eps, s.h.data(), t, hidden, st));
  const int64_t inter = shard_.intermediate;
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(s.h.data(), w.gate_up_proj, nullptr, s.gate_up.data(),
                                         DType::kBf16, t, 2 * inter, hidden, st));
  FP_RETURN_IF_ERROR(kernels::LaunchSwiGluFused(s.gate_up.data(), s.mlp.data(), t, inter, st));
  return RowParallel(r, s.mlp.data(), w.down_proj, inter, t);
}

Status CudaBackend::RunBody(Rank& r, const StepShape& shape, int32_t max_context,
                            bool decode_attention) {
  const LlamaConfig& c = model_->config();
  const StepLayout l = StepLayout::For(shape);
  const cudaStream_t st = r.stream.get();
  auto* error = reinterpret_cast<uint32_t*>(r.s.out.data());
  FP_RETURN_IF_ERROR(kernels::LaunchEmbedding(Staged<int32_t>(r, l.tokens),
                                              r.weights.embed_tokens(), r.s.x.data(), shape.tokens,
                                              c.vocab_size, c.hidden_size, error, st));
  for (size_t layer = 0; layer < r.weights.layers().size(); ++layer) {
    FP_RETURN_IF_ERROR(RunLayer(r, layer, shape, max_context, decode_attention));
  }
  // Every rank holds the same residual stream; rank 0 alone goes on to the emitting tail.
  if (shape.emits == 0 || r.index != 0) return OkStatus();
  // The emitting rows of the residual stream, gathered by row index (an exact bf16 copy: the
  // embedding kernel with the residual stream as its table), then the final RMSNorm.
  FP_RETURN_IF_ERROR(kernels::LaunchEmbedding(Staged<int32_t>(r, l.emit_rows), r.s.x.data(),
                                              r.s.gathered.data(), shape.emits, shape.tokens,
                                              c.hidden_size, error, st));
  return kernels::LaunchRmsNorm(r.s.gathered.data(), r.weights.final_norm(),
                                static_cast<float>(c.rms_norm_eps), r.s.state.data(), shape.emits,
                                c.hidden_size, st);
}

Status CudaBackend::RunDecodeGraph(Rank& r, const StepShape& shape, int32_t max_context) {
  const auto key = std::make_pair(shape.seqs, shape.table_stride);
  auto found = r.graphs.find(key);
  if (found != r.graphs.end()) return found->second.Launch(r.stream.get());
  // First time for this shape: run it eagerly (the step's result; with several ranks this also
  // makes NCCL set up the connections this message size uses, which it cannot do inside a
  // capture), then capture the same work for later replays. Capture records without executing.
  FP_RETURN_IF_ERROR(RunBody(r, shape, max_context, /*decode_attention=*/true));
  if (r.graphs.size() >= kMaxDecodeGraphs) return OkStatus();
  const cudaStream_t st = r.stream.get();
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "begin capture"));
  const Status body = RunBody(r, shape, max_context, /*decode_attention=*/true);
  StatusOr<cuda::GraphExec> exec = cuda::GraphExec::EndCaptureAndInstantiate(st);
  FP_RETURN_IF_ERROR(body);
  FP_RETURN_IF_ERROR(exec.status());
  r.graphs.emplace(key, std::move(exec).value());
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
  return digest_.canonical_dtype == DType::kBf16 ? rank0().s.state.data()
                                                 : rank0().s.canonical.data();
}

Status CudaBackend::CheckErrorWords() const {
  uint32_t error = 0;
  for (const auto& r : ranks_) error |= *reinterpret_cast<const uint32_t*>(r->s.out_host.bytes());
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

Status CudaBackend::EnqueueTail(Rank& r, int32_t emits) {
  const LlamaConfig& c = model_->config();
  const cudaStream_t st = r.stream.get();
  const auto vocab = static_cast<int32_t>(c.vocab_size);
  const StepLayout layout = StepLayout::For(current_shape_);
  const void* head_input = r.s.state.data();
  if (digest_.canonical_dtype != DType::kBf16) {
    FP_RETURN_IF_ERROR(cuda::LaunchCanonicalState(r.s.state.data(), digest_.canonical_dtype, emits,
                                                  c.hidden_size, r.s.canonical.data(),
                                                  r.s.head_input.data(), st));
    if (digest_.canonical_dtype == DType::kF16) head_input = r.s.head_input.data();
  }
  if (digests_ != nullptr) {
    FP_ASSIGN_OR_RETURN(ticket_, digests_->Enqueue(Canonical(), emits, c.hidden_size, st));
  }
  FP_RETURN_IF_ERROR(kernels::LaunchGemm(head_input, r.weights.lm_head(), nullptr,
                                         r.s.logits.data(), DType::kF32, emits, vocab,
                                         c.hidden_size, st));
  return kernels::LaunchSampleTokens(
      static_cast<const float*>(r.s.logits.data()), emits, vocab,
      Staged<kernels::SamplingParams>(r, layout.sampling), Staged<uint64_t>(r, layout.steps),
      reinterpret_cast<int32_t*>(r.s.out.bytes() + kOutHeaderBytes), r.s.sampler_ws.data(),
      static_cast<int64_t>(r.s.sampler_ws.size()), reinterpret_cast<uint32_t*>(r.s.out.data()), st);
}

Status CudaBackend::WaitForStep(const Rank& r) const {
  for (;;) {
    const cudaError_t status = cudaEventQuery(r.step_done.get());
    if (status == cudaSuccess) return OkStatus();
    if (status != cudaErrorNotReady) return CudaStatus(status, "step");
    if (rank_failed_.load(std::memory_order_relaxed)) {
      return AbortedError("cuda backend: another tensor-parallel rank failed during the step");
    }
  }
}

Status CudaBackend::RunStep(Rank& r, const StepShape& shape, int32_t max_context, bool graph,
                            bool decode_attention, int32_t emits) {
  const cudaStream_t st = r.stream.get();
  const StepLayout layout = StepLayout::For(shape);
  FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(r.s.staging.data(), staging_host_.bytes(),
                                                layout.bytes, cudaMemcpyHostToDevice, st),
                                "stage step"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(r.s.out.data(), 0, 4, st), "reset error word"));
  if (graph) {
    FP_RETURN_IF_ERROR(RunDecodeGraph(r, shape, max_context));
  } else {
    FP_RETURN_IF_ERROR(RunBody(r, shape, max_context, decode_attention));
  }
  const size_t tokens_bytes = r.index == 0 ? static_cast<size_t>(emits) * 4 : 0;
  if (tokens_bytes > 0) FP_RETURN_IF_ERROR(EnqueueTail(r, emits));
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(r.s.out_host.bytes(), r.s.out.data(),
                                 kOutHeaderBytes + tokens_bytes, cudaMemcpyDeviceToHost, st),
                 "copy tokens"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(r.step_done.get(), st), "record"));
  return WaitForStep(r);
}

Status CudaBackend::FinishStep(int32_t emits, const ForwardOptions& options,
                               ForwardResult* result) {
  const LlamaConfig& c = model_->config();
  *result = ForwardResult();
  Status error = CheckErrorWords();
  std::vector<Hash> digests;
  if (ticket_.has_value()) {
    // Take the batch even after an error, so the ring stays in step.
    FP_ASSIGN_OR_RETURN(kernels::DigestBatch batch_digests, TakeDigests());
    FP_CHECK(batch_digests.ticket == *ticket_);
    digests = std::move(batch_digests.digests);
  }
  FP_RETURN_IF_ERROR(error);
  if (emits == 0) return OkStatus();
  const StepBuffers& s = rank0().s;
  const auto* tokens = reinterpret_cast<const int32_t*>(s.out_host.bytes() + kOutHeaderBytes);
  result->tokens.assign(tokens, tokens + emits);
  result->state_digests =
      ticket_.has_value() ? std::move(digests) : std::vector<Hash>(static_cast<size_t>(emits));
  if (options.return_hidden) {
    result->hidden = Tensor::Zeros(digest_.canonical_dtype, {emits, c.hidden_size});
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(result->hidden.mutable_data(), Canonical(),
                                             result->hidden.bytes_size(), cudaMemcpyDeviceToHost),
                                  "copy hidden"));
  }
  if (options.return_logits) {
    result->logits = Tensor::Zeros(DType::kF32, {emits, c.vocab_size});
    FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(result->logits.mutable_data(), s.logits.data(),
                                             result->logits.bytes_size(), cudaMemcpyDeviceToHost),
                                  "copy logits"));
  }
  return OkStatus();
}

Status CudaBackend::Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                            ForwardResult* result) {
  FP_RETURN_IF_ERROR(Enter());
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
  PackStep(batch, shape, num_blocks_, block_size_, staging_host_.bytes());
  ticket_.reset();
  FP_RETURN_IF_ERROR(OnRanks(
      [&](Rank& r) { return RunStep(r, shape, max_context, graph, x.decode_only, x.emits); },
      /*collectives=*/true));
  return FinishStep(x.emits, options, result);
}

}  // namespace

int CudaDeviceCount() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) return 0;
  return devices;
}

bool CudaDeviceAvailable() { return CudaDeviceCount() > 0; }

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace fp::node
