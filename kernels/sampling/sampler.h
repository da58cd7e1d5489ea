// Token sampling from f32 logits that gives the same token for the same (logits, parameters,
// seed, step) on every machine: only exactly-rounded IEEE operations, ExpF32, a total order on
// candidates and a counter-based draw (Philox, kernels/sampling/philox.h).
//
// Algorithm (the specification; a change here changes tokens):
//   0. Logits must not be NaN or +inf; -inf marks a banned token; at least one must be finite.
//   1. Greedy when temperature == 0 or top_k == 1: the index of the largest logit, lowest index
//      on ties.
//   2. Otherwise candidates are the finite logits, ordered by (logit descending, index
//      ascending) (a total order, so every sort gives the same sequence); with top_k > 0 only the
//      first top_k are kept.
//   3. z_i = logit_i / temperature (f32), p_i = ExpF32(z_i - z_0) (f32), in candidate order
//      (z_0 must be finite: a temperature so small that it overflows is rejected).
//   4. Totals are double sums in candidate order: S = sum p_i. With top_p < 1 the kept prefix is
//      the shortest one whose running sum reaches top_p * S (at least one candidate): candidate
//      i is kept while the sum of p before it is < top_p * S.
//   5. u = PhiloxUniform(seed, step); target = u * S' (S' the kept prefix's sum); the token is the
//      first kept candidate whose running double sum exceeds target (the last kept one if
//      rounding leaves none).
//
// Thread-safety: reentrant.
#pragma once

#include <cstdint>

#include "common/base/status.h"
#include "kernels/base/thread_pool.h"

namespace fp::kernels {

inline constexpr int32_t kSamplerMaxVocab = 1 << 24;

struct SamplingParams {
  float temperature;  // >= 0 and finite; 0 means greedy
  int32_t top_k;      // >= 0; 0 means no top-k cut
  float top_p;        // in (0, 1]; 1 means no nucleus cut
  uint64_t seed;      // the session's seed (Philox key)
};

// The token for one row of logits at generation step `step`.
//   logits: [vocab_size] f32.
// InvalidArgument on a null pointer, vocab_size outside [1, kSamplerMaxVocab], parameters out of
// range, or logits that break rule 0.
StatusOr<int32_t> SampleToken(const float* logits, int32_t vocab_size, const SamplingParams& params,
                              uint64_t step);

// SampleToken for each of num_seqs rows, in parallel over rows.
//   logits: [num_seqs, vocab_size] f32, row-major.
//   params: [num_seqs]; steps: [num_seqs]; tokens: [num_seqs] int32 output.
// Fails with the first failing row's Status (by row index, prefixed "row N: "); tokens is then
// unspecified.
Status SampleTokens(const float* logits, int32_t num_seqs, int32_t vocab_size,
                    const SamplingParams* params, const uint64_t* steps, int32_t* tokens,
                    ThreadPool& pool);

}  // namespace fp::kernels
