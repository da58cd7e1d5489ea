// What the CUDA backend's benchmarks share: a TinyLlama-1.1B-shaped model (hidden 2048, 22 layers,
// 32 query / 4 KV heads, head_dim 64, intermediate 5632, vocabulary 32000) with random bf16
// weights written to disk, and the timing of greedy sessions through the engine. The benchmarks
// (cuda_backend_gpu_bench.cc, cuda_tp_gpu_bench.cc) print JSON on stdout and a table on stderr;
// any error here ends the program (CheckOk), as a benchmark has no caller to hand it to.
//
// Thread-safety: single-threaded helpers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "node/engine/engine.h"
#include "node/model/config.h"

namespace fp::node::bench {

inline constexpr int kPromptTokens = 16;
inline constexpr int kOutputTokens = 256;

// Prints `what` and the status to stderr and exits 1 unless `status` is OK.
void CheckOk(const Status& status, const char* what);

LlamaConfig TinyLlamaConfig();

// Writes config.json and model.safetensors of `c` with random bf16 weights (uniform, scaled by
// 1/sqrt(fan-in); norms all ones) into `dir`. Errors of the file writes.
Status WriteRandomModel(const std::string& dir, const LlamaConfig& c);

struct RunTimes {
  double total_seconds = 0;
  double decode_seconds = 0;  // steps after the first (the first step holds every prefill)
};

// The greedy session number `id` (its prompt derives from the id): kPromptTokens prompt tokens,
// exactly kOutputTokens outputs.
SessionRequest BenchSession(uint32_t id);

// Runs sessions first_id .. first_id + batch - 1 on `engine`, start to finish (wall clock,
// steady_clock), and removes them afterwards. With `leaves` (borrowed), appends the leaf hashes of
// session `first_id` in step order.
RunTimes RunSessions(Engine& engine, int batch, uint32_t first_id, std::vector<Hash>* leaves);

double Median(std::vector<double> values);

}  // namespace fp::node::bench
