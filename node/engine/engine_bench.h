// The CPU engine benchmark behind `fieldprint bench engine`: tokens per second of a full
// continuous-batching run (prefill included) at a given batch size and thread count, next to a
// baseline measured in the same call: the same number of tokens through the model's linear
// layers alone (every GEMM of a decode step, batch rows at a time, on a pool of the same size),
// the ceiling the engine would reach if attention, norms, sampling, digests and scheduling were
// free.
//
// Thread-safety: a call uses only its arguments.
#pragma once

#include <cstdint>

#include "common/base/status.h"
#include "node/model/model.h"

namespace fp::node {

struct EngineBenchResult {
  int batch = 0;
  int threads = 0;
  int64_t output_tokens = 0;  // generated tokens across the batch
  int64_t prompt_tokens = 0;  // prefilled tokens across the batch
  double seconds = 0;         // wall clock of the engine run
  double output_tokens_per_second = 0;
  double linear_only_tokens_per_second = 0;  // the baseline
};

// Runs `batch` greedy sessions of `prompt_tokens` prompt tokens and exactly `max_tokens`
// outputs each (no stop token) on a fresh CPU engine with `threads` threads, timing the run from
// the first Step to the last (wall clock: several threads work at once), then the baseline.
// InvalidArgument for sizes out of range; the engine's errors otherwise.
StatusOr<EngineBenchResult> RunEngineBench(const Model& model, int batch, int threads,
                                           int prompt_tokens, int max_tokens);

}  // namespace fp::node
