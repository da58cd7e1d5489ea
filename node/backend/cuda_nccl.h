// NCCL for the tensor-parallel CUDA backend: one communicator per GPU of a clique that lives in
// this process (ncclCommInitAll), the conversion of NCCL results to Status, and the abort that
// frees ranks stuck waiting for a peer that failed.
//
// Why abort exists. A collective's kernel waits on the GPU until every peer has contributed; a
// rank whose host thread failed before enqueueing its part would leave the others spinning
// forever. The backend then aborts the clique (ncclCommAbort ends the waiting kernels) and refuses
// further work: a tensor-parallel worker that lost a rank must be rebuilt.
//
// Only CUDA builds compile this header (it includes nccl.h, which includes the CUDA runtime).
//
// Thread-safety: Create, Abort and the destructor run on one thread with no collective being
// enqueued concurrently; comm(rank) may be read from any thread, and each communicator is used by
// one thread at a time (its rank's).
#pragma once

#include <memory>
#include <source_location>
#include <span>
#include <string_view>
#include <vector>

#include <nccl.h>

#include "common/base/status.h"

namespace fp::node::cuda {

// The most GPUs one tensor-parallel worker spans (one host).
inline constexpr int kMaxTensorParallel = 8;

// OK for ncclSuccess; otherwise "what: NCCL error text": Unavailable for a remote or system error
// (a peer or the interconnect went away), Internal for everything else.
Status NcclStatus(ncclResult_t result, std::string_view what,
                  std::source_location location = std::source_location::current());

// The version of the NCCL library loaded at run time, e.g. 22809 for 2.28.9 (0 if unknown).
int NcclRuntimeVersion();

class NcclClique {
 public:
  // Communicators for `devices` (distinct CUDA ordinals, 1..kMaxTensorParallel of them); rank i
  // runs on devices[i]. InvalidArgument for a bad device list; Internal or Unavailable from NCCL.
  // Changes the calling thread's current device. The caller owns the result.
  static StatusOr<std::unique_ptr<NcclClique>> Create(std::span<const int> devices);

  // Destroys the communicators (nothing to destroy once aborted).
  ~NcclClique();
  NcclClique(const NcclClique&) = delete;
  NcclClique& operator=(const NcclClique&) = delete;

  int size() const { return static_cast<int>(comms_.size()); }
  // Rank `rank`'s communicator; FP_CHECKs the rank and that the clique was not aborted.
  ncclComm_t comm(int rank) const;

  // Aborts every communicator: collectives in flight end (with garbage results) instead of
  // waiting for a peer. Afterwards comm() must not be called. Idempotent.
  void Abort();
  bool aborted() const { return aborted_; }

 private:
  NcclClique() = default;

  std::vector<ncclComm_t> comms_;  // [ranks], owned
  bool aborted_ = false;
};

}  // namespace fp::node::cuda
