// Device memory for GPU tests: an owning buffer and typed host <-> device copies. Allocation and
// copy failures abort (FP_CHECK): they mean a broken test machine, not a result to assert on.
//
// Thread-safety: a DeviceBuffer is owned by one test; the copies synchronise with the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::testing {

class DeviceBuffer {
 public:
  // `bytes` of zeroed device memory (at least one byte is allocated).
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    FP_CHECK(cudaMalloc(&data_, bytes == 0 ? 1 : bytes) == cudaSuccess);
    FP_CHECK(cudaMemset(data_, 0, bytes == 0 ? 1 : bytes) == cudaSuccess);
  }
  // A device copy of `host`.
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    FP_CHECK(cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = uint8_t>
  T* get() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // The whole buffer as host values, after every queued device operation finished.
  template <typename T>
  std::vector<T> Download() const {
    FP_CHECK(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> host(bytes_ / sizeof(T));
    FP_CHECK(cudaMemcpy(host.data(), data_, host.size() * sizeof(T), cudaMemcpyDeviceToHost) ==
             cudaSuccess);
    return host;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

// Copies `host` to device memory at `device` (which holds at least host.size() values).
template <typename T>
void Upload(T* device, const std::vector<T>& host) {
  FP_CHECK(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) ==
           cudaSuccess);
}

// `count` values from `device`, after every queued device operation finished.
template <typename T>
std::vector<T> Download(const T* device, size_t count) {
  FP_CHECK(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<T> host(count);
  FP_CHECK(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost) ==
           cudaSuccess);
  return host;
}

}  // namespace fp::testing
