// A fixed-size pool of worker threads with one primitive, ParallelFor, that splits [0, n) into
// contiguous ranges by a static partition: range i always goes to thread i, and the ranges depend
// only on n and the pool size. Kernels split work across output rows or heads only, never across
// a reduction, so results do not depend on the pool size either; the static partition makes the
// schedule itself reproducible, which keeps profiles and races easy to reason about.
//
// Thread-safety: ParallelFor may be called from any thread; calls from several threads are
// serialised (one parallel region runs at a time). ParallelFor must not be called from inside
// `fn` of the same pool (that would deadlock; it is FP_CHECKed).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/base/status.h"

namespace fp::kernels {

class ThreadPool {
 public:
  static constexpr int kMaxThreads = 256;

  // A pool running ParallelFor on `num_threads` threads in total: the caller's thread plus
  // num_threads - 1 workers. A pool of 1 runs everything inline on the caller. InvalidArgument
  // unless 1 <= num_threads <= kMaxThreads. The caller owns the result.
  static StatusOr<std::unique_ptr<ThreadPool>> Create(int num_threads);

  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) on disjoint ranges that cover [0, n) exactly, and returns when all have
  // finished. Range i of min(n, num_threads) ranges is [n * i / parts, n * (i + 1) / parts) and
  // runs on thread i (thread 0 is the caller). n <= 0 calls nothing. `fn` must not throw.
  void ParallelFor(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  explicit ThreadPool(int num_threads);
  void WorkerLoop(int worker_index);
  static void RunPart(int64_t n, int parts, int index,
                      const std::function<void(int64_t, int64_t)>& fn);

  const int num_threads_;
  std::mutex call_mutex_;  // serialises ParallelFor calls
  std::mutex mutex_;       // guards the fields below
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  uint64_t generation_ = 0;  // GUARDED_BY(mutex_): bumped once per parallel region
  int pending_ = 0;          // GUARDED_BY(mutex_): workers still running the current region
  bool stopping_ = false;    // GUARDED_BY(mutex_)
  int64_t task_n_ = 0;       // GUARDED_BY(mutex_): the current region's n
  int task_parts_ = 0;       // GUARDED_BY(mutex_): ranges in the current region
  const std::function<void(int64_t, int64_t)>* task_fn_ = nullptr;  // GUARDED_BY(mutex_)
  std::vector<std::thread> workers_;
};

}  // namespace fp::kernels
