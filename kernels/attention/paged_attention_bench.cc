// paged_attention_bench: times PagedFieldprintAttention decode (one query per sequence) on
// LLaMA-like shapes, plain (prefix mode) and mixed with 64 anchors, for a range of thread counts,
// and prints the best call's time and K/V bytes read per second. Usage:
// kernels_paged_attention_bench [max_threads]. Not a test; run by hand.
//
// Thread-safety: single-threaded driver.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/attention/paged_attention.h"

namespace fp::kernels {
namespace {

struct Shape {
  int32_t num_seqs;
  int32_t context;
  int32_t q_heads;
  int32_t kv_heads;
  int32_t head_dim;
};

double SecondsPerCall(const Shape& shape, bool mix, ThreadPool& pool) {
  const int32_t block_size = 16;
  const int32_t blocks_per_seq = (shape.context + block_size - 1) / block_size;
  const int32_t num_blocks = blocks_per_seq * shape.num_seqs;
  const int64_t row = int64_t{shape.kv_heads} * shape.head_dim;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> key(static_cast<size_t>(int64_t{num_blocks} * block_size * row));
  for (float& value : key) value = uniform(rng);
  std::vector<float> value = key;
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  for (int32_t b = 0; b < num_blocks; ++b) table[static_cast<size_t>(b)] = num_blocks - 1 - b;
  const int32_t anchors = mix ? 64 : 0;
  std::vector<float> anchor_rows(static_cast<size_t>(anchors * row), 0.5f);
  std::vector<float> gamma(static_cast<size_t>(shape.q_heads), 0.25f);
  std::vector<float> query(static_cast<size_t>(shape.num_seqs) * shape.q_heads * shape.head_dim,
                           0.1f);
  std::vector<float> out(query.size());
  std::vector<int32_t> context_lens(static_cast<size_t>(shape.num_seqs), shape.context);
  const PagedKvCache cache = {key.data(), value.data(),   num_blocks,
                              block_size, shape.kv_heads, shape.head_dim};
  const BlockTables tables = {table.data(), shape.num_seqs, blocks_per_seq};
  const AnchorSet anchor_set = {anchor_rows.data(), anchor_rows.data(),
                                mix ? gamma.data() : nullptr, anchors};
  const AttentionOptions options = {mix ? AttentionMode::kMix : AttentionMode::kPrefix,
                                    DefaultSoftmaxScale(shape.head_dim)};
  auto call = [&] {
    FP_CHECK_OK(PagedFieldprintAttentionDecode(query.data(), context_lens.data(), shape.q_heads,
                                               tables, cache, anchor_set, options, out.data(),
                                               pool));
  };
  call();
  // The best call: on a shared machine the minimum is the least disturbed measurement.
  int calls = 0;
  double best = 1e30;
  const auto start = std::chrono::steady_clock::now();
  while (calls < 5 || std::chrono::steady_clock::now() - start < std::chrono::seconds(1)) {
    const auto call_start = std::chrono::steady_clock::now();
    call();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - call_start).count());
    ++calls;
  }
  return best;
}

int Run(int max_threads) {
  const Shape shapes[] = {
      {1, 512, 32, 4, 64}, {1, 4096, 32, 4, 64}, {8, 1024, 32, 8, 128}, {1, 4096, 32, 8, 128}};
  for (int threads = 1; threads <= max_threads; threads *= 2) {
    StatusOr<std::unique_ptr<ThreadPool>> pool = ThreadPool::Create(threads);
    FP_CHECK_OK(pool);
    for (const Shape& shape : shapes) {
      for (bool mix : {false, true}) {
        const double seconds = SecondsPerCall(shape, mix, **pool);
        const double kv_bytes =
            2.0 * shape.num_seqs * shape.context * shape.kv_heads * shape.head_dim * sizeof(float);
        std::printf(
            "threads %2d  seqs %2d context %5d heads %2d/%d head_dim %3d  %-6s  %8.3f ms  "
            "%6.2f KV GB/s\n",
            threads, shape.num_seqs, shape.context, shape.q_heads, shape.kv_heads, shape.head_dim,
            mix ? "mix" : "prefix", seconds * 1e3, kv_bytes / seconds * 1e-9);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace fp::kernels

int main(int argc, char** argv) {
  const int max_threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (max_threads < 1 || max_threads > fp::kernels::ThreadPool::kMaxThreads) {
    std::fprintf(stderr, "usage: kernels_paged_attention_bench [max_threads]\n");
    return 2;
  }
  return fp::kernels::Run(max_threads);
}
