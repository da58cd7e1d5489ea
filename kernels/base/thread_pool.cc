// ThreadPool: workers sleep on a condition variable between parallel regions; each region is a
// generation number, and worker i runs range i of it.
//
// Thread-safety: see thread_pool.h.
#include "kernels/base/thread_pool.h"

#include <algorithm>
#include <string>

namespace fp::kernels {
namespace {

// The pool whose region the current thread is running, to catch nested ParallelFor calls.
thread_local const ThreadPool* current_pool = nullptr;

class ScopedCurrentPool {
 public:
  explicit ScopedCurrentPool(const ThreadPool* pool) : previous_(current_pool) {
    current_pool = pool;
  }
  ~ScopedCurrentPool() { current_pool = previous_; }
  ScopedCurrentPool(const ScopedCurrentPool&) = delete;
  ScopedCurrentPool& operator=(const ScopedCurrentPool&) = delete;

 private:
  const ThreadPool* previous_;
};

}  // namespace

StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::Create(int num_threads) {
  if (num_threads < 1 || num_threads > kMaxThreads) {
    return InvalidArgumentError("thread pool size " + std::to_string(num_threads) +
                                " is outside [1, " + std::to_string(kMaxThreads) + "]");
  }
  return std::unique_ptr<ThreadPool>(new ThreadPool(num_threads));
}

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads) {
  workers_.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::RunPart(int64_t n, int parts, int index,
                         const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t begin = n * index / parts;
  const int64_t end = n * (index + 1) / parts;
  if (begin < end) fn(begin, end);
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn) {
  FP_CHECK_MSG(current_pool != this, "nested ParallelFor on the same pool");
  if (n <= 0) return;
  const int parts = static_cast<int>(std::min<int64_t>(n, num_threads_));
  ScopedCurrentPool scope(this);
  if (parts == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_n_ = n;
    task_parts_ = parts;
    task_fn_ = &fn;
    pending_ = num_threads_ - 1;
    ++generation_;
  }
  work_ready_.notify_all();
  RunPart(n, parts, 0, fn);
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [this] { return pending_ == 0; });
  task_fn_ = nullptr;
}

void ThreadPool::WorkerLoop(int worker_index) {
  ScopedCurrentPool scope(this);
  uint64_t seen_generation = 0;
  while (true) {
    int64_t n = 0;
    int parts = 0;
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
      n = task_n_;
      parts = task_parts_;
      fn = task_fn_;
    }
    if (worker_index < parts) RunPart(n, parts, worker_index, *fn);
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last = --pending_ == 0;
    }
    if (last) work_done_.notify_one();
  }
}

}  // namespace fp::kernels
