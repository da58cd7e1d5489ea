// Owning CUDA runtime objects; see cuda_resources.h.
#include "node/backend/cuda_resources.h"

#include <string>

#include "kernels/base/cuda_status.h"

namespace fp::node::cuda {

using kernels::CudaStatus;

StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes, const char* what) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMalloc(&buffer.data_, bytes),
                 std::string("cudaMalloc ") + what + " (" + std::to_string(bytes) + " bytes)"));
  buffer.size_ = bytes;
  return buffer;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes, const char* what) {
  PinnedBuffer buffer;
  if (bytes == 0) return buffer;
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaMallocHost(&buffer.data_, bytes),
                 std::string("cudaMallocHost ") + what + " (" + std::to_string(bytes) + " bytes)"));
  buffer.size_ = bytes;
  return buffer;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

StatusOr<Stream> Stream::Create() {
  Stream stream;
  FP_RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithFlags(&stream.stream_, cudaStreamNonBlocking), "stream"));
  return stream;
}

Stream::~Stream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

StatusOr<Event> Event::Create(bool blocking_sync) {
  Event event;
  const unsigned flags = cudaEventDisableTiming | (blocking_sync ? cudaEventBlockingSync : 0u);
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&event.event_, flags), "event"));
  return event;
}

StatusOr<Event> Event::CreateTiming() {
  Event event;
  FP_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&event.event_), "timing event"));
  return event;
}

Event::~Event() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

StatusOr<GraphExec> GraphExec::EndCaptureAndInstantiate(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  FP_RETURN_IF_ERROR(CudaStatus(cudaStreamEndCapture(stream, &graph), "end graph capture"));
  GraphExec exec;
  const cudaError_t error = cudaGraphInstantiate(&exec.exec_, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph keeps what it needs
  FP_RETURN_IF_ERROR(CudaStatus(error, "instantiate graph"));
  return exec;
}

GraphExec::~GraphExec() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
}

GraphExec& GraphExec::operator=(GraphExec&& other) noexcept {
  if (this != &other) {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

Status GraphExec::Launch(cudaStream_t stream) const {
  return CudaStatus(cudaGraphLaunch(exec_, stream), "graph launch");
}

}  // namespace fp::node::cuda
