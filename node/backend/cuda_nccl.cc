// NCCL clique; see cuda_nccl.h.
#include "node/backend/cuda_nccl.h"

#include <algorithm>
#include <string>

namespace fp::node::cuda {

Status NcclStatus(ncclResult_t result, std::string_view what, std::source_location location) {
  if (result == ncclSuccess) return OkStatus();
  std::string message = std::string(what) + ": " + ncclGetErrorString(result);
  const StatusCode code = (result == ncclRemoteError || result == ncclSystemError)
                              ? StatusCode::kUnavailable
                              : StatusCode::kInternal;
  return Status(code, std::move(message), location);
}

int NcclRuntimeVersion() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) return 0;
  return version;
}

StatusOr<std::unique_ptr<NcclClique>> NcclClique::Create(std::span<const int> devices) {
  if (devices.empty() || devices.size() > static_cast<size_t>(kMaxTensorParallel)) {
    return InvalidArgumentError("nccl: a clique spans 1 to " + std::to_string(kMaxTensorParallel) +
                                " devices");
  }
  std::vector<int> sorted(devices.begin(), devices.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end() || sorted.front() < 0) {
    return InvalidArgumentError("nccl: the clique's devices must be distinct ordinals");
  }
  std::unique_ptr<NcclClique> clique(new NcclClique());
  clique->comms_.assign(devices.size(), nullptr);
  const ncclResult_t result =
      ncclCommInitAll(clique->comms_.data(), static_cast<int>(devices.size()), devices.data());
  if (result != ncclSuccess) {
    // ncclCommInitAll leaves no communicator behind on failure.
    clique->comms_.clear();
    return NcclStatus(result, "ncclCommInitAll");
  }
  return clique;
}

NcclClique::~NcclClique() {
  if (aborted_) return;
  for (ncclComm_t comm : comms_) ncclCommDestroy(comm);
}

ncclComm_t NcclClique::comm(int rank) const {
  FP_CHECK(!aborted_);
  FP_CHECK(rank >= 0 && rank < size());
  return comms_[static_cast<size_t>(rank)];
}

void NcclClique::Abort() {
  if (aborted_) return;
  aborted_ = true;
  for (ncclComm_t comm : comms_) ncclCommAbort(comm);
}

}  // namespace fp::node::cuda
