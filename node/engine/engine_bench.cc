// The CPU engine benchmark; see engine_bench.h.
#include "node/engine/engine_bench.h"

#include <chrono>
#include <vector>

#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"

namespace fp::node {

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
  auto start = std::chrono::steady_clock::now();
  while (engine->HasWork()) FP_RETURN_IF_ERROR(engine->Step(&outputs));
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  EngineBenchResult r;
  r.batch = batch;
  r.threads = threads;
  r.output_tokens = static_cast<int64_t>(outputs.size());
  r.prompt_tokens = int64_t{batch} * prompt_tokens;
  r.seconds = elapsed.count();
  r.output_tokens_per_second = r.seconds > 0 ? static_cast<double>(r.output_tokens) / r.seconds : 0;
  return r;
}

}  // namespace fp::node
