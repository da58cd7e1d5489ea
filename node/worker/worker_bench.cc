// The verification overhead benchmark; see worker_bench.h. Its CLI (`bench worker`) is at the
// end of this file.
#include "node/worker/worker_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <stdlib.h>
#include <sys/resource.h>

#include "common/base/log.h"
#include "common/base/temp_dir.h"
#include "common/cli.h"
#include "common/leaf/state_digest.h"
#include "common/leaf/step_leaf.h"
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
// How often an "on" run polls the worker's token counter for the end of generation.
constexpr std::chrono::milliseconds kTokenPoll{10};

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
  double seconds = 0;            // to the last generated token
  double delivered_seconds = 0;  // on: to the last leaf at the supervisor
  double cpu_seconds = 0;        // user + system time of the whole process
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
  backend->TEST_SkipStateDigests(true);  // plain generation
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
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return Measurement{seconds, seconds, ProcessCpuSeconds() - cpu_start, 0};
}

// The worker's generated-token counter, read through its registry.
double TokensGenerated(prometheus::Registry& registry) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name.rfind("fieldprint_worker_tokens_generated", 0) != 0) continue;
    return family.metric.empty() ? 0 : family.metric[0].counter.value;
  }
  return 0;
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
  const double tokens = static_cast<double>(o.sessions) * o.max_tokens;
  const Clock::time_point deadline = start + kRunLimit;
  while (TokensGenerated(registry) < tokens && Clock::now() < deadline) {
    std::this_thread::sleep_for(kTokenPoll);
  }
  Measurement measured;
  measured.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const bool done = supervisor->WaitUntil(
      [&] { return supervisor->finished_sessions() == static_cast<size_t>(o.sessions); },
      kRunLimit);
  measured.delivered_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  measured.cpu_seconds = ProcessCpuSeconds() - cpu_start;
  measured.batches = static_cast<int64_t>(supervisor->received().size());
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

Spread SpreadOf(const std::vector<double>& values) {
  return {Median(values), *std::min_element(values.begin(), values.end()),
          *std::max_element(values.begin(), values.end())};
}

// Host seconds for one step leaf hash (the engine computes it in off runs too).
double LeafHashCost() {
  constexpr int kLeaves = 1 << 16;
  leaf::StepLeaf step_leaf;
  Hash sink{};
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < kLeaves; ++i) {
    step_leaf.step = static_cast<uint64_t>(i);
    step_leaf.state_digest[0] = sink[0];  // a data dependency, so no call is elided
    sink = leaf::StepLeafHash(step_leaf);
  }
  return std::chrono::duration<double>(Clock::now() - start).count() / kLeaves;
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

Status RunRepetitions(const Model& model, const std::string& model_dir,
                      const ScopedTempDir& scratch, const WorkerBenchOptions& o,
                      WorkerBenchResult* result) {
  const double tokens = static_cast<double>(result->output_tokens);
  std::vector<double> off_rate, on_rate, delivered, overhead, noise_on, noise_off, off_cpu, on_cpu;
  for (int rep = 0; rep < o.repeats; ++rep) {
    FP_ASSIGN_OR_RETURN(Measurement off_a, RunOff(model, o));
    FP_ASSIGN_OR_RETURN(Measurement on_a,
                        RunOn(model_dir, model.config().vocab_size, scratch, o, 2 * rep));
    FP_ASSIGN_OR_RETURN(Measurement on_b,
                        RunOn(model_dir, model.config().vocab_size, scratch, o, 2 * rep + 1));
    FP_ASSIGN_OR_RETURN(Measurement off_b, RunOff(model, o));
    for (const Measurement* m : {&off_a, &off_b}) {
      off_rate.push_back(tokens / m->seconds);
      off_cpu.push_back(m->cpu_seconds);
    }
    for (const Measurement* m : {&on_a, &on_b}) {
      on_rate.push_back(tokens / m->seconds);
      delivered.push_back(m->delivered_seconds);
      on_cpu.push_back(m->cpu_seconds);
    }
    overhead.push_back(1.0 - (off_a.seconds + off_b.seconds) / (on_a.seconds + on_b.seconds));
    noise_on.push_back(1.0 - on_a.seconds / on_b.seconds);
    noise_off.push_back(1.0 - off_a.seconds / off_b.seconds);
    result->batches = on_b.batches;
  }
  result->off_tokens_per_second = SpreadOf(off_rate);
  result->on_tokens_per_second = SpreadOf(on_rate);
  result->on_delivered_seconds = SpreadOf(delivered);
  result->overhead = SpreadOf(overhead);
  result->noise_on = SpreadOf(noise_on);
  result->noise_off = SpreadOf(noise_off);
  result->off_cpu_seconds = Median(off_cpu);
  result->on_cpu_seconds = Median(on_cpu);
  return OkStatus();
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
    TinyModelOptions shape;
    shape.hidden_size = o.hidden_size;
    shape.num_layers = o.num_layers;
    shape.num_heads = o.num_heads;
    shape.num_kv_heads = o.num_kv_heads;
    shape.intermediate_size = o.intermediate_size;
    FP_RETURN_IF_ERROR(WriteTinyModel(model_dir, shape));
  }
  wire::CertsOptions certs;
  certs.names = {kSupervisorName, kWorkerName};
  FP_RETURN_IF_ERROR(wire::InitCerts(scratch.Join("certs"), certs));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(model_dir));
  WorkerBenchResult result;
  result.output_tokens = static_cast<int64_t>(o.sessions) * o.max_tokens;
  result.hidden_size = model->config().hidden_size;
  result.num_layers = model->config().num_layers;
  FP_RETURN_IF_ERROR(RunRepetitions(*model, model_dir, scratch, o, &result));
  FP_ASSIGN_OR_RETURN(result.digest_seconds_per_step, DigestCost(result.hidden_size));
  result.leaf_hash_seconds_per_step = LeafHashCost();
  return result;
}

}  // namespace fp::node::worker

namespace fp {
namespace {

void PrintSpread(const char* name, const node::worker::Spread& s, double scale) {
  std::fprintf(stderr, "%-30s %10.2f %10.2f %10.2f\n", name, scale * s.median, scale * s.min,
               scale * s.max);
}

std::string SpreadJson(const node::worker::Spread& s) {
  char text[128];
  std::snprintf(text, sizeof(text), "{\"median\":%.5f,\"min\":%.5f,\"max\":%.5f}", s.median, s.min,
                s.max);
  return text;
}

void PrintWorkerBench(const node::worker::WorkerBenchOptions& o,
                      const node::worker::WorkerBenchResult& r) {
  std::fprintf(stderr, "%-30s %10s %10s %10s\n", "", "median", "min", "max");
  PrintSpread("off tokens/s (no digests)", r.off_tokens_per_second, 1);
  PrintSpread("on tokens/s (generation)", r.on_tokens_per_second, 1);
  PrintSpread("on: seconds to last leaf acked", r.on_delivered_seconds, 1);
  PrintSpread("overhead % (1 - off/on time)", r.overhead, 100);
  PrintSpread("noise on vs on %", r.noise_on, 100);
  PrintSpread("noise off vs off %", r.noise_off, 100);
  const double tokens = static_cast<double>(r.output_tokens);
  std::fprintf(stderr,
               "cpu us/token: off %.1f, on %.1f (incl. loopback supervisor); digest %.2f us/step, "
               "leaf hash %.2f us/step (hidden %lld, %lld layers), %lld batches\n",
               1e6 * r.off_cpu_seconds / tokens, 1e6 * r.on_cpu_seconds / tokens,
               1e6 * r.digest_seconds_per_step, 1e6 * r.leaf_hash_seconds_per_step,
               static_cast<long long>(r.hidden_size), static_cast<long long>(r.num_layers),
               static_cast<long long>(r.batches));
  std::printf(
      "{\"bench\":\"worker\",\"backend\":\"cpu\",\"hidden_size\":%lld,\"num_layers\":%lld,"
      "\"sessions\":%d,\"prompt_tokens\":%d,\"max_tokens\":%d,\"threads\":%d,"
      "\"window_steps\":%u,\"window_ms\":%lld,\"repeats\":%d,\"output_tokens\":%lld,"
      "\"off_tokens_per_second\":%s,\"on_tokens_per_second\":%s,\"on_delivered_seconds\":%s,"
      "\"overhead\":%s,\"noise_on\":%s,\"noise_off\":%s,\"off_cpu_seconds\":%.4f,"
      "\"on_cpu_seconds\":%.4f,\"batches\":%lld,\"digest_seconds_per_step\":%.9f,"
      "\"leaf_hash_seconds_per_step\":%.9f}\n",
      static_cast<long long>(r.hidden_size), static_cast<long long>(r.num_layers), o.sessions,
      o.prompt_tokens, o.max_tokens, o.threads, o.window_steps, static_cast<long long>(o.window_ms),
      o.repeats, static_cast<long long>(r.output_tokens),
      SpreadJson(r.off_tokens_per_second).c_str(), SpreadJson(r.on_tokens_per_second).c_str(),
      SpreadJson(r.on_delivered_seconds).c_str(), SpreadJson(r.overhead).c_str(),
      SpreadJson(r.noise_on).c_str(), SpreadJson(r.noise_off).c_str(), r.off_cpu_seconds,
      r.on_cpu_seconds, static_cast<long long>(r.batches), r.digest_seconds_per_step,
      r.leaf_hash_seconds_per_step);
}

}  // namespace

void AddWorkerBench(CLI::App& bench) {
  auto o = std::make_shared<node::worker::WorkerBenchOptions>();
  CLI::App* command = bench.add_subcommand(
      "worker", "Verification overhead: worker tokens/s with leaves streamed vs plain generation");
  command->add_option("--model", o->model_dir,
                      "Model folder (default: a fresh random-weight model of the shape below)");
  command->add_option("--hidden-size", o->hidden_size, "Generated model: hidden size")
      ->check(CLI::Range(64, 8192));
  command->add_option("--layers", o->num_layers, "Generated model: layers")
      ->check(CLI::Range(1, 128));
  command->add_option("--heads", o->num_heads, "Generated model: query heads")
      ->check(CLI::Range(1, 128));
  command->add_option("--kv-heads", o->num_kv_heads, "Generated model: KV heads")
      ->check(CLI::Range(1, 128));
  command->add_option("--intermediate", o->intermediate_size, "Generated model: MLP width")
      ->check(CLI::Range(1, 65536));
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
  command->add_option("--repeats", o->repeats, "Repetitions of (off, on, on, off)")
      ->check(CLI::Range(1, 20));
  SetAction(command, [o]() -> Status {
    InitLogging(LogLevel::kWarn, LogFormat::kText);
    FP_ASSIGN_OR_RETURN(node::worker::WorkerBenchResult r, node::worker::RunWorkerBench(*o));
    PrintWorkerBench(*o, r);
    return OkStatus();
  });
}

}  // namespace fp
