// Conversion of CUDA runtime errors into fp::Status for the host code of every CUDA kernel.
//
// Thread-safety: pure functions.
#pragma once

#include <source_location>
#include <string>
#include <string_view>

#include <cuda_runtime_api.h>

#include "common/base/status.h"

namespace fp::kernels {

// OK for cudaSuccess. Otherwise "what: cudaErrorName: description" with the caller's file and
// line: ResourceExhausted for an allocation failure (the caller may free memory and retry),
// Internal for everything else (a broken launch configuration, a faulted context).
inline Status CudaStatus(cudaError_t error, std::string_view what,
                         std::source_location location = std::source_location::current()) {
  if (error == cudaSuccess) return OkStatus();
  std::string message =
      std::string(what) + ": " + cudaGetErrorName(error) + ": " + cudaGetErrorString(error);
  const StatusCode code =
      error == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code, std::move(message), location);
}

}  // namespace fp::kernels
