// SampleToken and SampleTokens: the algorithm of sampler.h, step by step.
//
// Thread-safety: reentrant.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/base/fixed_math.h"
#include "kernels/sampling/philox.h"
#include "kernels/sampling/sampler.h"

namespace fp::kernels {
namespace {

Status ValidateParams(const SamplingParams& params) {
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    return InvalidArgumentError("sampler: temperature must be finite and >= 0");
  }
  if (params.top_k < 0) return InvalidArgumentError("sampler: top_k must be >= 0");
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return InvalidArgumentError("sampler: top_p must be in (0, 1]");
  }
  return OkStatus();
}

// Rule 0 of sampler.h.
Status ValidateLogits(const float* logits, int32_t vocab_size) {
  bool any_finite = false;
  for (int32_t i = 0; i < vocab_size; ++i) {
    const float logit = logits[i];
    if (std::isnan(logit) || logit == std::numeric_limits<float>::infinity()) {
      return InvalidArgumentError("sampler: logit " + std::to_string(i) + " is NaN or +inf");
    }
    any_finite = any_finite || std::isfinite(logit);
  }
  if (!any_finite) return InvalidArgumentError("sampler: every logit is -inf");
  return OkStatus();
}

int32_t Argmax(const float* logits, int32_t vocab_size) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab_size; ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: the lowest index wins ties
  }
  return best;
}

// Rule 2: finite logits ordered by (logit desc, index asc), cut to top_k when top_k > 0.
std::vector<int32_t> Candidates(const float* logits, int32_t vocab_size, int32_t top_k) {
  std::vector<int32_t> order;
  order.reserve(static_cast<size_t>(vocab_size));
  for (int32_t i = 0; i < vocab_size; ++i) {
    if (std::isfinite(logits[i])) order.push_back(i);
  }
  const auto before = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (top_k > 0 && static_cast<size_t>(top_k) < order.size()) {
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), before);
    order.resize(static_cast<size_t>(top_k));
  } else {
    std::sort(order.begin(), order.end(), before);
  }
  return order;
}

}  // namespace

StatusOr<int32_t> SampleToken(const float* logits, int32_t vocab_size, const SamplingParams& params,
                              uint64_t step) {
  if (logits == nullptr) return InvalidArgumentError("sampler: logits is null");
  if (vocab_size < 1 || vocab_size > kSamplerMaxVocab) {
    return InvalidArgumentError("sampler: vocab_size " + std::to_string(vocab_size) +
                                " is outside [1, " + std::to_string(kSamplerMaxVocab) + "]");
  }
  FP_RETURN_IF_ERROR(ValidateParams(params));
  FP_RETURN_IF_ERROR(ValidateLogits(logits, vocab_size));
  if (params.temperature == 0.0f || params.top_k == 1) return Argmax(logits, vocab_size);

  const std::vector<int32_t> order = Candidates(logits, vocab_size, params.top_k);
  std::vector<float> weights(order.size());
  const float z0 = logits[order[0]] / params.temperature;
  if (!std::isfinite(z0)) {
    return InvalidArgumentError("sampler: temperature " + std::to_string(params.temperature) +
                                " overflows the largest logit");
  }
  double total = 0.0;
  for (size_t i = 0; i < order.size(); ++i) {
    weights[i] = ExpF32(logits[order[i]] / params.temperature - z0);
    total += weights[i];
  }
  size_t kept = order.size();
  double kept_total = total;
  if (params.top_p < 1.0f) {
    const double threshold = static_cast<double>(params.top_p) * total;
    double before = 0.0;
    kept = 0;
    while (kept < order.size() && (kept == 0 || before < threshold)) {
      before += weights[kept];
      ++kept;
    }
    kept_total = before;
  }
  const double target = PhiloxUniform(params.seed, step) * kept_total;
  double running = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    running += weights[i];
    if (running > target) return order[i];
  }
  return order[kept - 1];
}

Status SampleTokens(const float* logits, int32_t num_seqs, int32_t vocab_size,
                    const SamplingParams* params, const uint64_t* steps, int32_t* tokens,
                    ThreadPool& pool) {
  if (num_seqs < 0) return InvalidArgumentError("sampler: num_seqs is negative");
  if (num_seqs == 0) return OkStatus();
  if (logits == nullptr || params == nullptr || steps == nullptr || tokens == nullptr) {
    return InvalidArgumentError("sampler: null logits, params, steps or tokens");
  }
  std::vector<Status> statuses(static_cast<size_t>(num_seqs));
  pool.ParallelFor(num_seqs, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      StatusOr<int32_t> token =
          SampleToken(logits + s * vocab_size, vocab_size, params[s], steps[s]);
      if (token.ok()) {
        tokens[s] = *token;
      } else {
        statuses[static_cast<size_t>(s)] = token.status();
      }
    }
  });
  for (int32_t s = 0; s < num_seqs; ++s) {
    const Status& status = statuses[static_cast<size_t>(s)];
    if (!status.ok()) return status.WithContext("row " + std::to_string(s));
  }
  return OkStatus();
}

}  // namespace fp::kernels
