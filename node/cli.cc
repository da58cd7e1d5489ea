// node's subcommands; see cli.h. Each command parses into a plain struct and runs a function
// that returns Status, so the logic stays testable without a process.
#include "node/cli.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <boost/json.hpp>
#include <unistd.h>

#include "common/base/bytes.h"
#include "common/base/temp_dir.h"
#include "common/cli.h"
#include "common/crypto/sha256.h"
#include "common/merkle/merkle.h"
#include "common/tokenizer/tokenizer.h"
#include "node/anchors/anchor_builder.h"
#include "node/backend/cpu_backend.h"
#include "node/campaign/detection_cli.h"
#include "node/engine/engine.h"
#include "node/engine/engine_bench.h"
#include "node/model/tiny_model.h"
#include "node/worker/worker_cli.h"

namespace fp {
namespace {

using node::Engine;
using node::Model;

struct GenerateArgs {
  std::string model_dir;
  std::string prompt;
  std::string prompt_ids;
  std::string session_hex;
  std::string anchors_path;
  std::string anchor_mode = "mix";
  float gamma = -1.0f;  // negative: keep the anchor file's gammas
  int max_tokens = 32;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool leaves = false;
  bool ignore_eos = false;
  int threads = 1;
  int chunk = 512;
  int64_t kv_budget_mb = 256;
  int max_context = 0;
  int quantize_bits = -1;
};

struct AnchorsArgs {
  std::string model_dir;
  std::string text;
  std::string ids;
  std::string out;
  int count = 16;
  float gamma = 0.5f;
  int threads = 1;
};

struct BenchArgs {
  std::string model_dir;  // empty: a fresh default tiny model
  int prompt_tokens = 32;
  int max_tokens = 128;
};

// Without --session-id a run is reproducible: the id is derived from the seed and the prompt.
SessionId DerivedSessionId(uint64_t seed, const std::vector<int32_t>& prompt) {
  Bytes input = Bytes(AsBytes("fieldprint generate session v1").begin(),
                      AsBytes("fieldprint generate session v1").end());
  AppendU64(input, seed);
  for (int32_t id : prompt) AppendU32(input, static_cast<uint32_t>(id));
  Hash hash = Sha256(input);
  SessionId id;
  std::copy_n(hash.begin(), id.size(), id.begin());
  return id;
}

StatusOr<std::vector<int32_t>> PromptIds(const GenerateArgs& a, const Model& model,
                                         const tokenizer::Tokenizer* tokenizer) {
  const int32_t vocab = static_cast<int32_t>(model.config().vocab_size);
  if (!a.prompt_ids.empty()) return tokenizer::ParseTokenIds(a.prompt_ids, vocab);
  if (tokenizer == nullptr) {
    return InvalidArgumentError(a.model_dir + " has no tokenizer; give --prompt-ids");
  }
  return tokenizer->Encode(a.prompt, /*add_bos=*/true);
}

StatusOr<std::unique_ptr<node::AnchorSet>> LoadAnchorsFor(const GenerateArgs& a,
                                                          const Model& model) {
  if (a.anchors_path.empty()) {
    if (a.gamma >= 0) return InvalidArgumentError("--gamma needs --anchors");
    return std::unique_ptr<node::AnchorSet>();
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<node::AnchorSet> anchors,
                      node::AnchorSet::Load(a.anchors_path));
  FP_RETURN_IF_ERROR(anchors->CheckCompatible(model.config()));
  if (a.gamma >= 0) return anchors->WithGamma(a.gamma);
  return anchors;
}

// The output as text. A model's vocabulary may be larger than its tokenizer's (padding rows);
// ids the tokenizer does not know are shown as <id> between the decoded runs.
StatusOr<std::string> OutputText(const tokenizer::Tokenizer* tokenizer,
                                 const std::vector<int32_t>& ids) {
  std::string text;
  if (tokenizer == nullptr) {
    for (size_t i = 0; i < ids.size(); ++i) text += (i ? "," : "") + std::to_string(ids[i]);
    return text;
  }
  std::vector<int32_t> run;
  for (size_t i = 0; i <= ids.size(); ++i) {
    bool known = i < ids.size() && ids[i] < tokenizer->vocab_size();
    if (known) {
      run.push_back(ids[i]);
      continue;
    }
    FP_ASSIGN_OR_RETURN(std::string decoded, tokenizer->Decode(run));
    text += decoded;
    run.clear();
    if (i < ids.size()) text += "<" + std::to_string(ids[i]) + ">";
  }
  return text;
}

Status RunGenerate(const GenerateArgs& a) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(a.model_dir));
  auto tokenizer =
      tokenizer::LoadTokenizer(a.model_dir, static_cast<int32_t>(model->config().vocab_size));
  if (!tokenizer.ok() && tokenizer.status().code() != StatusCode::kNotFound)
    return tokenizer.status();
  const tokenizer::Tokenizer* tok = tokenizer.ok() ? tokenizer->get() : nullptr;
  FP_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptIds(a, *model, tok));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<node::AnchorSet> anchors, LoadAnchorsFor(a, *model));
  node::EngineOptions options;
  FP_ASSIGN_OR_RETURN(options.anchor_mode, node::ParseAnchorMode(a.anchor_mode));
  options.kv_budget_bytes = a.kv_budget_mb << 20;
  options.prefill_chunk_tokens = a.chunk;
  options.quantize_bits = a.quantize_bits;
  options.max_context = a.max_context;
  FP_ASSIGN_OR_RETURN(auto backend, node::CpuBackend::Create({a.threads}));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(*model, std::move(backend), anchors.get(), options));
  node::SessionRequest request;
  if (a.session_hex.empty()) {
    request.id = DerivedSessionId(a.seed, prompt);
  } else {
    FP_ASSIGN_OR_RETURN(request.id, SessionIdFromHex(a.session_hex));
  }
  request.prompt = prompt;
  request.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  request.max_tokens = a.max_tokens;
  if (!a.ignore_eos) request.stop_tokens = model->config().eos_token_ids;
  FP_RETURN_IF_ERROR(engine->Submit(request));
  std::vector<node::StepOutput> outputs;
  while (engine->HasWork()) FP_RETURN_IF_ERROR(engine->Step(&outputs));
  std::vector<int32_t> tokens;
  merkle::Frontier tree;
  for (const node::StepOutput& o : outputs) {
    tokens.push_back(static_cast<int32_t>(o.leaf.token_id));
    tree.Append(o.leaf_hash, nullptr);
  }
  FP_ASSIGN_OR_RETURN(std::string text, OutputText(tok, tokens));
  std::printf("%s\n", text.c_str());
  if (a.leaves) {
    std::printf("step token state_digest leaf_hash\n");
    for (const node::StepOutput& o : outputs) {
      std::printf("%llu %u %s %s\n", static_cast<unsigned long long>(o.leaf.step), o.leaf.token_id,
                  HexEncode(o.leaf.state_digest).c_str(), HexEncode(o.leaf_hash).c_str());
    }
  }
  FP_ASSIGN_OR_RETURN(Hash profile, leaf::NumericsProfileHash(engine->numerics_profile()));
  std::printf("session_id %s\nnumerics_profile %s\nsteps %llu\nsession_root %s\n",
              SessionIdToHex(request.id).c_str(), HexEncode(profile).c_str(),
              static_cast<unsigned long long>(tree.size()), HexEncode(tree.Root()).c_str());
  return OkStatus();
}

Status RunAnchorsBuild(const AnchorsArgs& a) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(a.model_dir));
  std::vector<int32_t> ids;
  if (!a.ids.empty()) {
    FP_ASSIGN_OR_RETURN(
        ids, tokenizer::ParseTokenIds(a.ids, static_cast<int32_t>(model->config().vocab_size)));
  } else {
    FP_ASSIGN_OR_RETURN(
        auto tokenizer,
        tokenizer::LoadTokenizer(a.model_dir, static_cast<int32_t>(model->config().vocab_size)));
    FP_ASSIGN_OR_RETURN(ids, tokenizer->Encode(a.text, /*add_bos=*/true));
  }
  FP_ASSIGN_OR_RETURN(auto backend, node::CpuBackend::Create({a.threads}));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<node::AnchorSet> anchors,
                      node::BuildAnchorSet(*model, *backend, ids, a.count, a.gamma));
  FP_RETURN_IF_ERROR(anchors->Save(a.out));
  std::printf("anchor_set %s\nanchors %lld\nlayers %lld\nfile %s\n",
              HexEncode(anchors->hash()).c_str(), static_cast<long long>(anchors->num_anchors()),
              static_cast<long long>(anchors->num_layers()), a.out.c_str());
  return OkStatus();
}

void AddGenerateCommand(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Run one session locally (no supervisor)");
  cmd->add_option("--model", a->model_dir, "Model folder (Hugging Face layout)")->required();
  auto* text = cmd->add_option("--prompt", a->prompt, "Prompt text (tokenized, BOS added)");
  auto* ids = cmd->add_option("--prompt-ids", a->prompt_ids, "Prompt as token ids: 1,2,3");
  text->excludes(ids);
  cmd->add_option("--max-tokens", a->max_tokens, "Maximum output tokens")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", a->temperature, "0 = greedy");
  cmd->add_option("--top-k", a->top_k, "0 = no top-k cut");
  cmd->add_option("--top-p", a->top_p, "1 = no nucleus cut");
  cmd->add_option("--seed", a->seed, "Sampling seed (Philox key)");
  cmd->add_option("--session-id", a->session_hex,
                  "32 hex chars (default: derived from seed and prompt)");
  cmd->add_flag("--leaves", a->leaves, "Print every step leaf");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at the model's EOS");
  cmd->add_option("--anchors", a->anchors_path, "Anchor set file (safetensors)");
  cmd->add_option("--gamma", a->gamma, "Override every head's gamma (0..1)");
  cmd->add_option("--anchor-mode", a->anchor_mode, "mix or prefix");
  cmd->add_option("--threads", a->threads, "CPU threads")->check(CLI::Range(1, 256));
  cmd->add_option("--chunk", a->chunk, "Prefill chunk tokens")->check(CLI::Range(1, 65536));
  cmd->add_option("--kv-budget-mb", a->kv_budget_mb, "KV cache budget (MiB)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--max-context", a->max_context, "Tokens per session (0: the model's)")
      ->check(CLI::Range(0, 1 << 22));
  cmd->add_option("--quantize-bits", a->quantize_bits, "Digest rounding (mantissa bits); -1 none");
  SetAction(cmd, [a] {
    if (a->prompt.empty() && a->prompt_ids.empty()) {
      return InvalidArgumentError("give --prompt or --prompt-ids");
    }
    return RunGenerate(*a);
  });
}

void AddModelCommands(CLI::App& app) {
  CLI::App* model = app.add_subcommand("model", "Model tools");
  model->require_subcommand(1);
  auto dir = std::make_shared<std::string>();
  auto options = std::make_shared<node::TinyModelOptions>();
  CLI::App* tiny = model->add_subcommand("mk-tiny", "Write a small seeded LLaMA (byte-level)");
  tiny->add_option("dir", *dir, "Output folder")->required();
  tiny->add_option("--seed", options->seed, "Weight seed");
  SetAction(tiny, [dir, options]() -> Status {
    FP_RETURN_IF_ERROR(node::WriteTinyModel(*dir, *options));
    FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded, Model::Load(*dir));
    std::printf("model %s\nweights_hash %s\n", dir->c_str(),
                HexEncode(loaded->weights_hash()).c_str());
    return OkStatus();
  });
}

void AddAnchorsCommands(CLI::App& app) {
  CLI::App* anchors = app.add_subcommand("anchors", "Anchor set tools");
  anchors->require_subcommand(1);
  auto a = std::make_shared<AnchorsArgs>();
  CLI::App* build = anchors->add_subcommand("build", "Build an anchor set from a prefill of text");
  build->add_option("--model", a->model_dir, "Model folder")->required();
  auto* text = build->add_option("--text", a->text, "Text to prefill (tokenized, BOS added)");
  auto* ids = build->add_option("--ids", a->ids, "Token ids to prefill: 1,2,3");
  text->excludes(ids);
  build->add_option("--count", a->count, "Anchors: the last A positions")
      ->check(CLI::Range(1, 65536));
  build->add_option("--gamma", a->gamma, "Gamma of every query head (0..1)");
  build->add_option("--threads", a->threads, "CPU threads")->check(CLI::Range(1, 256));
  build->add_option("out", a->out, "Output file (safetensors)")->required();
  SetAction(build, [a] {
    if (a->text.empty() && a->ids.empty()) return InvalidArgumentError("give --text or --ids");
    return RunAnchorsBuild(*a);
  });
}

std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown";
}

// What docs/performance.md records about the host: a busy, shared host shows in the load.
boost::json::object HostRecord() {
  double load = -1;
  std::ifstream("/proc/loadavg") >> load;
  char date[64];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"cpu", CpuModelName()},
          {"cpus_online", ::sysconf(_SC_NPROCESSORS_ONLN)},
          {"load_average_1m", load},
          {"date_utc", date}};
}

StatusOr<std::unique_ptr<Model>> BenchModel(const std::string& model_dir) {
  if (!model_dir.empty()) return Model::Load(model_dir);
  // The folder goes when this returns; the memory mapping keeps the weights alive.
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ScopedTempDir> temp,
                      ScopedTempDir::Create("fieldprint-bench"));
  FP_RETURN_IF_ERROR(node::WriteTinyModel(temp->path().string(), node::TinyModelOptions{}));
  return Model::Load(temp->path().string());
}

Status RunBenchEngine(const BenchArgs& a) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, BenchModel(a.model_dir));
  boost::json::object record = HostRecord();
  const node::LlamaConfig& c = model->config();
  record["bench"] = "engine";
  record["backend"] = "cpu";
  record["model"] = {{"hidden", c.hidden_size},
                     {"layers", c.num_layers},
                     {"vocab", c.vocab_size},
                     {"dtype", DTypeName(c.dtype)}};
  record["prompt_tokens"] = a.prompt_tokens;
  record["max_tokens"] = a.max_tokens;
  boost::json::array results;
  std::fprintf(stderr, "%-6s %-8s %-16s %-20s %-7s\n", "batch", "threads", "engine tokens/s",
               "linear-only tokens/s", "ratio");
  for (int batch : {1, 16}) {
    for (int threads : {1, 2}) {
      FP_ASSIGN_OR_RETURN(
          node::EngineBenchResult r,
          node::RunEngineBench(*model, batch, threads, a.prompt_tokens, a.max_tokens));
      double ratio = r.output_tokens_per_second / r.linear_only_tokens_per_second;
      std::fprintf(stderr, "%-6d %-8d %-16.1f %-20.1f %-7.2f\n", batch, threads,
                   r.output_tokens_per_second, r.linear_only_tokens_per_second, ratio);
      results.push_back(
          {{"batch", batch},
           {"threads", threads},
           {"output_tokens", r.output_tokens},
           {"seconds", r.seconds},
           {"output_tokens_per_second", r.output_tokens_per_second},
           {"baseline_linear_only_tokens_per_second", r.linear_only_tokens_per_second}});
    }
  }
  record["results"] = std::move(results);
  std::printf("%s\n", boost::json::serialize(record).c_str());
  return OkStatus();
}

void AddBenchCommands(CLI::App& bench) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd =
      bench.add_subcommand("engine", "CPU engine tokens/s (batch 1 and 16, 1 and 2 threads)");
  cmd->add_option("--model", a->model_dir, "Model folder (default: a fresh tiny model)");
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "Prompt tokens per session")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-tokens", a->max_tokens, "Output tokens per session")
      ->check(CLI::Range(1, 1024));
  SetAction(cmd, [a] { return RunBenchEngine(*a); });
}

}  // namespace

void AddNodeCommands(CLI::App& app, CLI::App& bench) {
  AddModelCommands(app);
  AddAnchorsCommands(app);
  AddGenerateCommand(app);
  AddBenchCommands(bench);
  AddWorkerCommand(app);
  AddWorkerBench(bench);
  AddDetectionBench(bench);
}

}  // namespace fp
