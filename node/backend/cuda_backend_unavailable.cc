// CreateCudaBackend in a build without CUDA (FP_WITH_CUDA off): there is no device code to run,
// so the worker reports that plainly and falls back to (or is told to use) the CPU backend.
//
// Thread-safety: pure functions.
#include "node/backend/cuda_backend.h"

namespace fp::node {

bool CudaDeviceAvailable() { return false; }

int CudaDeviceCount() { return 0; }

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions&) {
  return UnimplementedError("this fieldprint was built without CUDA (configure with -DFP_CUDA=ON)");
}

}  // namespace fp::node
