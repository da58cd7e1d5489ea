// The side-stream digest pipeline; see digest_pipeline.h.
#include <cstring>
#include <string>

#include "common/leaf/quantize.h"
#include "kernels/base/cuda_status.h"
#include "kernels/digest/digest_pipeline.h"
#include "kernels/digest/state_digest.cuh"

namespace fp::kernels {
namespace {

// Slot buffers start on this boundary so every snapshot qualifies for the kernel's 16-byte loads.
constexpr size_t kSlotAlignment = 256;

size_t RoundUp(size_t size, size_t multiple) { return (size + multiple - 1) / multiple * multiple; }

Status ValidateOptions(const DigestPipelineOptions& options) {
  FP_RETURN_IF_ERROR(leaf::ValidateQuantizeBits(options.dtype, options.quantize_bits));
  if (options.max_rows < 1 || options.max_rows > kMaxStateDigestRows) {
    return InvalidArgumentError("max_rows " + std::to_string(options.max_rows) +
                                " is outside [1, " + std::to_string(kMaxStateDigestRows) + "]");
  }
  const int64_t max_width =
      kMaxStateDigestRowBytes / static_cast<int64_t>(DTypeSize(options.dtype));
  if (options.max_width < 1 || options.max_width > max_width) {
    return InvalidArgumentError("max_width " + std::to_string(options.max_width) +
                                " is outside [1, " + std::to_string(max_width) + "]");
  }
  if (options.depth < 1 || options.depth > kMaxDigestPipelineDepth) {
    return InvalidArgumentError("depth " + std::to_string(options.depth) + " is outside [1, " +
                                std::to_string(kMaxDigestPipelineDepth) + "]");
  }
  return OkStatus();
}

}  // namespace

DigestPipeline::DigestPipeline(const DigestPipelineOptions& options, int device)
    : options_(options), device_(device), slots_(static_cast<size_t>(options.depth)) {}

StatusOr<std::unique_ptr<DigestPipeline>> DigestPipeline::Create(
    const DigestPipelineOptions& options) {
  FP_RETURN_IF_ERROR(ValidateOptions(options));
  int device = 0;
  FP_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "current device"));
  std::unique_ptr<DigestPipeline> pipeline(new DigestPipeline(options, device));
  FP_RETURN_IF_ERROR(pipeline->Allocate());  // on error the destructor releases what was made
  return pipeline;
}

Status DigestPipeline::Allocate() {
  int least_priority = 0;
  int greatest_priority = 0;
  FP_RETURN_IF_ERROR(CudaStatus(
      cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority), "priority range"));
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithPriority(&side_stream_, cudaStreamNonBlocking, least_priority),
                 "side stream"));

  const size_t rows = static_cast<size_t>(options_.max_rows);
  const size_t snapshot_bytes = RoundUp(
      rows * static_cast<size_t>(options_.max_width) * DTypeSize(options_.dtype), kSlotAlignment);
  const size_t digest_bytes = RoundUp(rows * kStateDigestBytes, kSlotAlignment);
  const size_t depth = slots_.size();
  FP_RETURN_IF_ERROR(CudaStatus(cudaMalloc(reinterpret_cast<void**>(&device_memory_),
                                           depth * (snapshot_bytes + digest_bytes)),
                                "device slot buffers"));
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMallocHost(reinterpret_cast<void**>(&host_memory_), depth * digest_bytes),
                 "pinned digest buffers"));
  for (size_t i = 0; i < depth; ++i) {
    Slot& slot = slots_[i];
    slot.snapshot = device_memory_ + i * (snapshot_bytes + digest_bytes);
    slot.device_digests = slot.snapshot + snapshot_bytes;
    slot.host_digests = host_memory_ + i * digest_bytes;
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaEventCreateWithFlags(&slot.input_ready, cudaEventDisableTiming), "input event"));
    // Blocking sync: a consumer in Wait sleeps instead of spinning a core.
    FP_RETURN_IF_ERROR(CudaStatus(
        cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming | cudaEventBlockingSync),
        "done event"));
  }
  return OkStatus();
}

DigestPipeline::~DigestPipeline() {
  int previous_device = device_;
  const bool switch_device = cudaGetDevice(&previous_device) == cudaSuccess &&
                             previous_device != device_ && cudaSetDevice(device_) == cudaSuccess;
  // Teardown cannot report errors; a failed synchronize means the context is already lost, and
  // the frees below are then no-ops that also fail quietly.
  if (side_stream_ != nullptr) cudaStreamSynchronize(side_stream_);
  for (Slot& slot : slots_) {
    if (slot.input_ready != nullptr) cudaEventDestroy(slot.input_ready);
    if (slot.done != nullptr) cudaEventDestroy(slot.done);
  }
  if (host_memory_ != nullptr) cudaFreeHost(host_memory_);
  if (device_memory_ != nullptr) cudaFree(device_memory_);
  if (side_stream_ != nullptr) cudaStreamDestroy(side_stream_);
  if (switch_device) cudaSetDevice(previous_device);
}

StatusOr<uint64_t> DigestPipeline::Enqueue(const void* hidden, int64_t rows, int64_t width,
                                           cudaStream_t producer) {
  if (hidden == nullptr) return InvalidArgumentError("hidden state is null");
  if (rows < 1 || rows > options_.max_rows || width < 1 || width > options_.max_width) {
    return InvalidArgumentError("shape [" + std::to_string(rows) + ", " + std::to_string(width) +
                                "] is outside [1.." + std::to_string(options_.max_rows) + ", 1.." +
                                std::to_string(options_.max_width) + "]");
  }
  int device = 0;
  FP_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "current device"));
  if (device != device_) {
    return FailedPreconditionError("current device " + std::to_string(device) +
                                   " is not the pipeline's device " + std::to_string(device_));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (in_flight_ == static_cast<int>(slots_.size())) {
    return ResourceExhaustedError("all " + std::to_string(slots_.size()) +
                                  " digest slots are in flight; take results first");
  }
  Slot& slot = slots_[static_cast<size_t>(head_ + in_flight_) % slots_.size()];
  FP_RETURN_IF_ERROR(EnqueueOnStreams(slot, hidden, rows, width, producer));
  slot.rows = rows;
  slot.ticket = next_ticket_++;
  ++in_flight_;
  return slot.ticket;
}

Status DigestPipeline::EnqueueOnStreams(const Slot& slot, const void* hidden, int64_t rows,
                                        int64_t width, cudaStream_t producer) {
  const size_t bytes =
      static_cast<size_t>(rows) * static_cast<size_t>(width) * DTypeSize(options_.dtype);
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(slot.snapshot, hidden, bytes, cudaMemcpyDeviceToDevice, producer),
                 "hidden state snapshot"));
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(slot.input_ready, producer), "input event"));
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamWaitEvent(side_stream_, slot.input_ready, 0), "side stream wait"));
  FP_RETURN_IF_ERROR(LaunchRowStateDigests(slot.snapshot, options_.dtype, options_.quantize_bits,
                                           rows, width, slot.device_digests, side_stream_));
  FP_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(slot.host_digests, slot.device_digests,
                                                static_cast<size_t>(rows) * kStateDigestBytes,
                                                cudaMemcpyDeviceToHost, side_stream_),
                                "digests to host"));
  return CudaStatus(cudaEventRecord(slot.done, side_stream_), "done event");
}

StatusOr<std::vector<DigestBatch>> DigestPipeline::Poll() {
  std::vector<DigestBatch> batches;
  std::lock_guard<std::mutex> lock(mutex_);
  while (in_flight_ > 0) {
    const cudaError_t state = cudaEventQuery(slots_[static_cast<size_t>(head_)].done);
    if (state == cudaErrorNotReady) break;
    FP_RETURN_IF_ERROR(CudaStatus(state, "digest completion"));
    batches.push_back(TakeOldestLocked());
  }
  return batches;
}

StatusOr<DigestBatch> DigestPipeline::Wait() {
  cudaEvent_t done = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (in_flight_ == 0) return FailedPreconditionError("no digest batch is in flight");
    done = slots_[static_cast<size_t>(head_)].done;
  }
  // Only this (the consumer) thread advances head_, and the producer never reuses a slot in
  // flight, so the slot cannot change while we sleep without the lock.
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(done), "waiting for digests"));
  std::lock_guard<std::mutex> lock(mutex_);
  return TakeOldestLocked();
}

int DigestPipeline::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return in_flight_;
}

DigestBatch DigestPipeline::TakeOldestLocked() {
  FP_CHECK(in_flight_ > 0);
  const Slot& slot = slots_[static_cast<size_t>(head_)];
  DigestBatch batch{slot.ticket, std::vector<Hash>(static_cast<size_t>(slot.rows))};
  for (size_t r = 0; r < batch.digests.size(); ++r) {
    std::memcpy(batch.digests[r].data(), slot.host_digests + r * kStateDigestBytes,
                kStateDigestBytes);
  }
  head_ = (head_ + 1) % static_cast<int>(slots_.size());
  --in_flight_;
  return batch;
}

}  // namespace fp::kernels
