// Owning wrappers for the CUDA runtime objects the CUDA backend holds: device memory, pinned host
// memory, streams, events and instantiated graphs. Each is move-only, frees its object in the
// destructor and reports creation failures as Status (kernels/base/cuda_status.h), so the
// backend's members release themselves in any order of failure.
//
// Only CUDA builds compile this header (it includes the CUDA runtime API).
//
// Thread-safety: none; an object belongs to one owner (the backend, driven by one thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::node::cuda {

// Device memory from cudaMalloc (256-byte aligned), or empty.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // ResourceExhausted (naming `what`) when the device cannot give `bytes`; `bytes` == 0 gives an
  // empty buffer. The caller owns the result.
  static StatusOr<DeviceBuffer> Allocate(size_t bytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  uint8_t* bytes() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Page-locked host memory from cudaMallocHost (so copies are true DMA and may run
// asynchronously), or empty.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  // As DeviceBuffer::Allocate, in pinned host memory.
  static StatusOr<PinnedBuffer> Allocate(size_t bytes, const char* what);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept { *this = std::move(other); }
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  uint8_t* bytes() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// A non-blocking stream (no implicit ordering against the legacy default stream).
class Stream {
 public:
  Stream() = default;
  // Internal on a CUDA failure. The caller owns the result.
  static StatusOr<Stream> Create();
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// An event, by default without timing (the cheapest kind), for ordering and host waits.
class Event {
 public:
  Event() = default;
  // `blocking_sync`: a host wait sleeps instead of spinning. Internal on a CUDA failure.
  static StatusOr<Event> Create(bool blocking_sync);
  // An event that records timestamps (cudaEventElapsedTime), for benchmarks. Internal on a CUDA
  // failure.
  static StatusOr<Event> CreateTiming();
  ~Event();
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// An instantiated CUDA graph, ready to launch.
class GraphExec {
 public:
  GraphExec() = default;
  // Ends the capture running on `stream` and instantiates it. Internal when the capture was
  // invalidated (an illegal operation inside it) or instantiation fails; the capture is ended
  // either way.
  static StatusOr<GraphExec> EndCaptureAndInstantiate(cudaStream_t stream);
  ~GraphExec();
  GraphExec(GraphExec&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  GraphExec& operator=(GraphExec&& other) noexcept;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;

  // Enqueues one replay on `stream`. Internal on a CUDA failure.
  Status Launch(cudaStream_t stream) const;

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace fp::node::cuda
