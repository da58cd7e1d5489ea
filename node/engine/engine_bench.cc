// The CPU engine benchmark; see engine_bench.h.
#include "node/engine/engine_bench.h"

#include <chrono>
#include <vector>

#include "kernels/base/thread_pool.h"
#include "kernels/gemm/gemm.h"
#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"

namespace fp::node {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Tokens per second of `steps` decode steps of `batch` rows through every linear layer.
StatusOr<double> LinearOnlyTokensPerSecond(const Model& model, int batch, int threads, int steps) {
  FP_ASSIGN_OR_RETURN(auto pool, kernels::ThreadPool::Create(threads));
  std::vector<const Tensor*> weights;
  for (const LayerWeights& l : model.layers()) {
    for (const Tensor* w :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      weights.push_back(w);
    }
  }
  weights.push_back(&model.lm_head());
  int64_t widest = 0;
  for (const Tensor* w : weights) widest = std::max({widest, w->dim(0), w->dim(1)});
  std::vector<float> x(static_cast<size_t>(batch * widest), 0.5f);
  std::vector<float> y(static_cast<size_t>(batch * widest));
  auto start = Clock::now();
  for (int s = 0; s < steps; ++s) {
    for (const Tensor* w : weights) {
      FP_RETURN_IF_ERROR(kernels::Gemm(x.data(), w->data(), w->dtype(), y.data(), batch, w->dim(0),
                                       w->dim(1), *pool));
    }
  }
  double seconds = SecondsSince(start);
  return seconds > 0 ? double(batch) * steps / seconds : 0.0;
}

}  // namespace

StatusOr<EngineBenchResult> RunEngineBench(const Model& model, int batch, int threads,
                                           int prompt_tokens, int max_tokens) {
  if (batch < 1 || batch > kMaxBatchSequences || prompt_tokens < 1 || max_tokens < 1) {
    return InvalidArgumentError("bench: batch in [1, 256], prompt and output tokens >= 1");
  }
  FP_ASSIGN_OR_RETURN(auto backend, CpuBackend::Create({threads}));
  EngineOptions options;
  options.max_batch_sequences = batch;
  options.max_batch_tokens = std::max(batch, 2048);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(model, std::move(backend), nullptr, options));
  const int64_t vocab = model.config().vocab_size;
  for (int b = 0; b < batch; ++b) {
    SessionRequest request;
    request.id[0] = static_cast<uint8_t>(b);
    request.id[1] = static_cast<uint8_t>(b >> 8);
    for (int i = 0; i < prompt_tokens; ++i) {
      request.prompt.push_back(static_cast<int32_t>((b * 131 + i * 7 + 1) % vocab));
    }
    request.max_tokens = max_tokens;
    FP_RETURN_IF_ERROR(engine->Submit(std::move(request)));
  }
  std::vector<StepOutput> outputs;
  auto start = Clock::now();
  while (engine->HasWork()) FP_RETURN_IF_ERROR(engine->Step(&outputs));
  EngineBenchResult r;
  r.seconds = SecondsSince(start);
  r.batch = batch;
  r.threads = threads;
  r.output_tokens = static_cast<int64_t>(outputs.size());
  r.prompt_tokens = int64_t{batch} * prompt_tokens;
  r.output_tokens_per_second = r.seconds > 0 ? double(r.output_tokens) / r.seconds : 0;
  FP_ASSIGN_OR_RETURN(r.linear_only_tokens_per_second,
                      LinearOnlyTokensPerSecond(model, batch, threads, max_tokens));
  return r;
}

}  // namespace fp::node
