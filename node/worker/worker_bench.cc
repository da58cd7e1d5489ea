// The verification overhead benchmark; see worker_bench.h. Its CLI (`bench worker`) is at the
// end of this file.
#include "node/worker/worker_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include <stdlib.h>
#include <sys/resource.h>

#include "common/base/log.h"
#include "common/base/temp_dir.h"
#include "common/cli.h"
#include "common/leaf/state_digest.h"
#include "common/wire/certs.h"
#include "node/backend/cpu_backend.h"
#include "node/model/tiny_model.h"
#include "node/worker/loopback_supervisor.h"
#include "node/worker/worker.h"
#include "node/worker/worker_cli.h"

namespace fp::node::worker {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kSupervisorName[] = "supervisor-0";
constexpr char kWorkerName[] = "worker-bench";
constexpr std::chrono::seconds kRunLimit{60};
constexpr int kMaxBenchSessions = 256;

std::vector<int32_t> Prompt(int session, int length, int64_t vocab) {
  std::vector<int32_t> prompt;
  for (int i = 0; i < length; ++i) {
    prompt.push_back(
        static_cast<int32_t>((session * 53 + i * 29 + 3) % std::min<int64_t>(vocab, 256)));
  }
  return prompt;
}

SessionId BenchSessionId(int session) {
  SessionId id{};
  id[0] = 0xbe;
  id[1] = static_cast<uint8_t>(session);
  return id;
}

struct Measurement {
  double seconds = 0;
  double cpu_seconds = 0;  // user + system time of the whole process
  int64_t batches = 0;
};

double ProcessCpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

Status CheckOptions(const WorkerBenchOptions& o) {
  if (o.sessions < 1 || o.sessions > kMaxBenchSessions) {
    return InvalidArgumentError("sessions must be in [1, 256]");
  }
  if (o.prompt_tokens < 1 || o.max_tokens < 1 || o.repeats < 1 || o.threads < 1) {
    return InvalidArgumentError("prompt_tokens, max_tokens, repeats and threads must be >= 1");
  }
  return OkStatus();
}

// The bare engine: every session submitted, Step until idle.
StatusOr<Measurement> RunOff(const Model& model, const WorkerBenchOptions& o) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> backend, CpuBackend::Create({o.threads}));
  EngineOptions options;
  options.max_batch_sequences = std::max(32, o.sessions);
  options.max_batch_tokens = std::max(options.max_batch_tokens, options.max_batch_sequences);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(model, std::move(backend), nullptr, options));
  for (int i = 0; i < o.sessions; ++i) {
    SessionRequest request;
    request.id = BenchSessionId(i);
    request.prompt = Prompt(i, o.prompt_tokens, model.config().vocab_size);
    request.max_tokens = o.max_tokens;
    FP_RETURN_IF_ERROR(engine->Submit(request));
  }
  std::vector<StepOutput> outputs;
  const Clock::time_point start = Clock::now();
  const double cpu_start = ProcessCpuSeconds();
  while (engine->HasWork()) {
    outputs.clear();
    FP_RETURN_IF_ERROR(engine->Step(&outputs));
  }
  return Measurement{std::chrono::duration<double>(Clock::now() - start).count(),
                     ProcessCpuSeconds() - cpu_start, 0};
}

WorkerConfig OnConfig(const std::string& model_dir, const ScopedTempDir& scratch, uint16_t port,
                      const WorkerBenchOptions& o, int run) {
  WorkerConfig config;
  config.name = kWorkerName;
  config.certs_dir = scratch.Join("certs");
  config.supervisors = {{kSupervisorName, "127.0.0.1", port}};
  config.models = {{"bench", model_dir, ""}};
  config.engine.threads = o.threads;
  config.engine.max_batch_sequences = std::max(32, o.sessions);
  config.max_replicas = static_cast<uint32_t>(o.sessions);
  config.data_dir = scratch.Join("data-" + std::to_string(run));
  config.stream.window_steps = o.window_steps;
  config.stream.window_time = std::chrono::milliseconds(o.window_ms);
  config.heartbeat_interval = std::chrono::milliseconds(100);
  return config;
}

wire::pb::Assign BenchAssign(int session, const WorkerBenchOptions& o, const CatalogEntry& entry,
                             int64_t vocab) {
  wire::pb::Assign assign;
  const SessionId id = BenchSessionId(session);
  assign.set_session_id(std::string(id.begin(), id.end()));
  assign.set_model(entry.name);
  assign.set_numerics_profile(std::string(entry.profile_hash.begin(), entry.profile_hash.end()));
  assign.set_anchor_set_hash(std::string(kHashSize, '\0'));
  for (int32_t token : Prompt(session, o.prompt_tokens, vocab)) {
    assign.add_prompt_token_ids(static_cast<uint32_t>(token));
  }
  assign.mutable_sampling()->set_max_tokens(static_cast<uint32_t>(o.max_tokens));
  assign.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN);
  assign.set_max_unverified_steps(o.max_unverified_steps);
  return assign;
}

// The whole worker against a loopback supervisor.
StatusOr<Measurement> RunOn(const std::string& model_dir, int64_t vocab,
                            const ScopedTempDir& scratch, const WorkerBenchOptions& o, int run) {
  LoopbackOptions loopback;
  loopback.certs_dir = scratch.Join("certs");
  loopback.server_name = kSupervisorName;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<LoopbackSupervisor> supervisor,
                      LoopbackSupervisor::Start(loopback));
  prometheus::Registry registry;
  FP_ASSIGN_OR_RETURN(
      std::unique_ptr<Worker> worker,
      Worker::Create(OnConfig(model_dir, scratch, supervisor->port(), o, run), registry));
  FP_RETURN_IF_ERROR(worker->Start());
  if (!supervisor->WaitUntil([&] { return worker->accepted_generation() != 0; }, kRunLimit)) {
    return DeadlineExceededError("the worker did not connect to the loopback supervisor");
  }
  const CatalogEntry& entry = worker->catalog().entries[0];
  const Clock::time_point start = Clock::now();
  const double cpu_start = ProcessCpuSeconds();
  for (int i = 0; i < o.sessions; ++i) {
    FP_RETURN_IF_ERROR(supervisor->Assign(BenchAssign(i, o, entry, vocab)));
  }
  const bool done = supervisor->WaitUntil(
      [&] { return supervisor->finished_sessions() == static_cast<size_t>(o.sessions); },
      kRunLimit);
  const Measurement measured{std::chrono::duration<double>(Clock::now() - start).count(),
                             ProcessCpuSeconds() - cpu_start,
                             static_cast<int64_t>(supervisor->received().size())};
  worker->Stop();
  if (!done) return DeadlineExceededError("the worker did not finish within a minute");
  if (!supervisor->rejections().empty()) {
    return InternalError("the loopback supervisor refused a batch: " +
                         supervisor->rejections().front());
  }
  return measured;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Host seconds to digest one bf16 hidden row of `hidden` elements.
StatusOr<double> DigestCost(int64_t hidden) {
  constexpr int kRows = 256;
  std::vector<uint8_t> rows(static_cast<size_t>(kRows * hidden) * 2);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<uint8_t>(i * 31 + 7);
  const Clock::time_point start = Clock::now();
  FP_ASSIGN_OR_RETURN(std::vector<Hash> digests,
                      leaf::RowStateDigests(DType::kBf16, DTypeMantissaBits(DType::kBf16), rows,
                                            kRows, static_cast<size_t>(hidden)));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return seconds / static_cast<double>(digests.size());
}

}  // namespace

StatusOr<WorkerBenchResult> RunWorkerBench(const WorkerBenchOptions& o) {
  FP_RETURN_IF_ERROR(CheckOptions(o));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ScopedTempDir> temp,
                      ScopedTempDir::Create("fieldprint-wbench"));
  const ScopedTempDir& scratch = *temp;
  std::string model_dir = o.model_dir;
  if (model_dir.empty()) {
    model_dir = scratch.Join("model");
    FP_RETURN_IF_ERROR(WriteTinyModel(model_dir, TinyModelOptions{}));
  }
  wire::CertsOptions certs;
  certs.names = {kSupervisorName, kWorkerName};
  FP_RETURN_IF_ERROR(wire::InitCerts(scratch.Join("certs"), certs));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(model_dir));
  const int64_t vocab = model->config().vocab_size;
  WorkerBenchResult result;
  result.output_tokens = static_cast<int64_t>(o.sessions) * o.max_tokens;
  result.hidden_size = model->config().hidden_size;
  std::vector<double> off_seconds;
  std::vector<double> on_seconds;
  std::vector<double> ratios;  // on / off seconds of adjacent runs, which share the machine's load
  std::vector<double> off_cpu;
  std::vector<double> on_cpu;
  for (int run = 0; run < o.repeats; ++run) {
    FP_ASSIGN_OR_RETURN(Measurement off, RunOff(*model, o));
    FP_ASSIGN_OR_RETURN(Measurement on, RunOn(model_dir, vocab, scratch, o, run));
    off_seconds.push_back(off.seconds);
    on_seconds.push_back(on.seconds);
    ratios.push_back(on.seconds / off.seconds);
    off_cpu.push_back(off.cpu_seconds);
    on_cpu.push_back(on.cpu_seconds);
    result.batches = on.batches;
  }
  result.off_seconds = Median(off_seconds);
  result.on_seconds = Median(on_seconds);
  result.off_cpu_seconds = Median(off_cpu);
  result.on_cpu_seconds = Median(on_cpu);
  result.off_tokens_per_second = static_cast<double>(result.output_tokens) / result.off_seconds;
  result.on_tokens_per_second = static_cast<double>(result.output_tokens) / result.on_seconds;
  result.overhead = 1.0 - 1.0 / Median(ratios);
  FP_ASSIGN_OR_RETURN(result.digest_seconds_per_step, DigestCost(result.hidden_size));
  return result;
}

}  // namespace fp::node::worker

namespace fp {

void AddWorkerBench(CLI::App& bench) {
  auto o = std::make_shared<node::worker::WorkerBenchOptions>();
  CLI::App* command = bench.add_subcommand(
      "worker", "Verification overhead: worker tokens/s with leaves streamed vs the bare engine");
  command->add_option("--model", o->model_dir, "Model folder (default: a fresh tiny model)");
  command->add_option("--sessions", o->sessions, "Concurrent sessions")->check(CLI::Range(1, 256));
  command->add_option("--prompt-tokens", o->prompt_tokens, "Prompt tokens per session")
      ->check(CLI::Range(1, 4096));
  command->add_option("--max-tokens", o->max_tokens, "Output tokens per session")
      ->check(CLI::Range(1, 4096));
  command->add_option("--threads", o->threads, "CPU threads")->check(CLI::Range(1, 256));
  command->add_option("--window-steps", o->window_steps, "W")->check(CLI::Range(1, 4096));
  command->add_option("--window-ms", o->window_ms, "T")->check(CLI::Range(0, 60'000));
  command->add_option("--max-unverified", o->max_unverified_steps, "Backpressure window")
      ->check(CLI::Range(1, 1 << 20));
  command->add_option("--repeats", o->repeats, "Alternating runs of each; medians count")
      ->check(CLI::Range(1, 20));
  SetAction(command, [o]() -> Status {
    InitLogging(LogLevel::kWarn, LogFormat::kText);
    FP_ASSIGN_OR_RETURN(node::worker::WorkerBenchResult r, node::worker::RunWorkerBench(*o));
    const double tokens = static_cast<double>(r.output_tokens);
    std::fprintf(stderr, "%-14s %-10s %-14s %-14s\n", "verification", "seconds", "out tokens/s",
                 "cpu us/token");
    std::fprintf(stderr, "%-14s %-10.3f %-14.1f %-14.2f\n", "off", r.off_seconds,
                 r.off_tokens_per_second, 1e6 * r.off_cpu_seconds / tokens);
    std::fprintf(stderr, "%-14s %-10.3f %-14.1f %-14.2f\n", "on", r.on_seconds,
                 r.on_tokens_per_second, 1e6 * r.on_cpu_seconds / tokens);
    std::fprintf(stderr, "overhead %.1f%%, %lld batches, digest %.2f us/step (hidden %lld)\n",
                 100.0 * r.overhead, static_cast<long long>(r.batches),
                 1e6 * r.digest_seconds_per_step, static_cast<long long>(r.hidden_size));
    std::printf(
        "{\"bench\":\"worker\",\"backend\":\"cpu\",\"sessions\":%d,\"prompt_tokens\":%d,"
        "\"max_tokens\":%d,\"threads\":%d,\"window_steps\":%u,\"window_ms\":%lld,"
        "\"output_tokens\":%lld,\"off\":{\"seconds\":%.4f,\"output_tokens_per_second\":%.1f},"
        "\"on\":{\"seconds\":%.4f,\"output_tokens_per_second\":%.1f,\"batches\":%lld},"
        "\"overhead\":%.4f,\"off_cpu_seconds\":%.4f,\"on_cpu_seconds\":%.4f,"
        "\"digest_seconds_per_step\":%.9f,\"hidden_size\":%lld}\n",
        o->sessions, o->prompt_tokens, o->max_tokens, o->threads, o->window_steps,
        static_cast<long long>(o->window_ms), static_cast<long long>(r.output_tokens),
        r.off_seconds, r.off_tokens_per_second, r.on_seconds, r.on_tokens_per_second,
        static_cast<long long>(r.batches), r.overhead, r.off_cpu_seconds, r.on_cpu_seconds,
        r.digest_seconds_per_step, static_cast<long long>(r.hidden_size));
    return OkStatus();
  });
}

}  // namespace fp
