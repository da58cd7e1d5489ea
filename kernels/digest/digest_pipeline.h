// DigestPipeline: per-step state digests computed on a side stream and delivered to pinned host
// memory, 32 bytes per row, without the generation (producer) stream ever waiting for them.
//
// Per Enqueue, in this order:
//   producer stream: copy the [rows, width] hidden state into a slot the pipeline owns (the
//                    producer may overwrite its own buffer as soon as the next kernel runs), then
//                    record the slot's input event;
//   side stream:     wait for that event, run LaunchRowStateDigests (state_digest.cuh) on the
//                    copy, copy rows * 32 bytes to the slot's pinned host buffer, record the
//                    slot's done event.
// Nothing is ever enqueued on the producer stream that depends on the side stream, and the host
// call never blocks on either stream: the producer pays one device-to-device copy of the hidden
// state, no more. The side stream is non-blocking (no implicit ordering against the legacy
// default stream) and has the lowest priority. A fixed ring of `depth` slots bounds the batches
// in flight; a full ring is refused (ResourceExhausted), never waited on. Results come back in
// Enqueue order through Poll (non-blocking) or Wait (blocking, sleeping rather than spinning).
//
// Thread-safety: Enqueue is called by one producer thread at a time and Poll/Wait by one consumer
// thread at a time; producer and consumer may be different threads (the ring indices are guarded
// by a mutex that is never held while blocking on the GPU). Enqueue must run with the pipeline's
// device current (the device current at Create).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::kernels {

// Batches in flight at once; a deeper ring only hides a consumer that has stopped polling.
inline constexpr int kMaxDigestPipelineDepth = 64;

struct DigestPipelineOptions {
  DType dtype;        // the hidden state's canonical dtype
  int quantize_bits;  // 0..DTypeMantissaBits(dtype); the native width means no rounding
  int64_t max_rows;   // rows per Enqueue, 1..kMaxStateDigestRows
  int64_t max_width;  // elements per row, at least 1, a row at most kMaxStateDigestRowBytes
  int depth;          // slots (batches in flight), 1..kMaxDigestPipelineDepth
};

// The digests of one Enqueue.
struct DigestBatch {
  uint64_t ticket;            // as returned by Enqueue
  std::vector<Hash> digests;  // [rows]: row r's state digest
};

class DigestPipeline {
 public:
  // Creates the side stream, the events, and the device and pinned host buffers for `depth`
  // slots of [max_rows, max_width] on the calling thread's current device. Returns the sole
  // owner. InvalidArgument for out-of-range options; ResourceExhausted if memory is short;
  // Internal for other CUDA failures (everything made so far is released).
  static StatusOr<std::unique_ptr<DigestPipeline>> Create(const DigestPipelineOptions& options);

  // Waits for the side stream (so no copy or kernel still touches the buffers), then releases
  // everything. Results not yet taken are dropped.
  ~DigestPipeline();
  DigestPipeline(const DigestPipeline&) = delete;
  DigestPipeline& operator=(const DigestPipeline&) = delete;

  // Enqueues the digest of `hidden` ([rows, width] of options.dtype, row-major, device memory,
  // borrowed only until the snapshot copy enqueued here on `producer` has run) and returns its
  // ticket: 0 for the first Enqueue, then consecutive. Never blocks on the GPU.
  // InvalidArgument for a null `hidden` or rows/width outside [1, max_rows] / [1, max_width];
  // ResourceExhausted when `depth` batches are in flight (take results, then retry);
  // FailedPrecondition if the calling thread's current device is not the pipeline's; Internal
  // for a CUDA failure. On error no ticket is issued and the slot stays free; whatever part of the
  // batch's work was already enqueued touches only that slot and is overwritten by the next use.
  StatusOr<uint64_t> Enqueue(const void* hidden, int64_t rows, int64_t width,
                             cudaStream_t producer);

  // Takes every finished batch, oldest first, without blocking; empty when the oldest is still
  // running. Internal if the GPU reports a failure (the context is then unusable).
  StatusOr<std::vector<DigestBatch>> Poll();

  // Blocks (sleeping) until the oldest batch in flight finishes and takes it. FailedPrecondition
  // when nothing is in flight; Internal on a GPU failure.
  StatusOr<DigestBatch> Wait();

  // Batches enqueued and not yet taken.
  int in_flight() const;

  // The side stream, so tests can put work in front of the digests.
  cudaStream_t TEST_side_stream() const { return side_stream_; }

 private:
  struct Slot {
    uint8_t* snapshot = nullptr;        // device [max_rows, max_width] dtype; in device_memory_
    uint8_t* device_digests = nullptr;  // device [max_rows, 32]; in device_memory_
    uint8_t* host_digests = nullptr;    // pinned [max_rows, 32]; in host_memory_
    cudaEvent_t input_ready = nullptr;  // owned; recorded on the producer stream
    cudaEvent_t done = nullptr;         // owned; recorded on the side stream
    int64_t rows = 0;
    uint64_t ticket = 0;
  };

  DigestPipeline(const DigestPipelineOptions& options, int device);
  Status Allocate();
  Status EnqueueOnStreams(const Slot& slot, const void* hidden, int64_t rows, int64_t width,
                          cudaStream_t producer);
  DigestBatch TakeOldestLocked();  // requires mutex_ held and in_flight_ > 0

  const DigestPipelineOptions options_;
  const int device_;
  cudaStream_t side_stream_ = nullptr;  // owned
  uint8_t* device_memory_ = nullptr;    // owned (cudaMalloc): every slot's device buffers
  uint8_t* host_memory_ = nullptr;      // owned (cudaMallocHost): every slot's host buffer
  std::vector<Slot> slots_;             // [depth]; fixed after Create

  mutable std::mutex mutex_;
  int head_ = 0;              // GUARDED_BY(mutex_): slot of the oldest batch in flight
  int in_flight_ = 0;         // GUARDED_BY(mutex_)
  uint64_t next_ticket_ = 0;  // GUARDED_BY(mutex_)
};

}  // namespace fp::kernels
