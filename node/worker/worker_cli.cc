// `fieldprint worker` and `bench worker`; see worker_cli.h.
#include "node/worker/worker_cli.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include <signal.h>

#include "common/base/config.h"
#include "common/base/log.h"
#include "common/cli.h"
#include "node/worker/worker_bench.h"

namespace fp {
namespace {

using node::worker::FaultPlan;
using node::worker::WorkerConfig;

constexpr char kFaultsGroup[] = "faults";

// True if the TOML file at `path` has a [faults] section (keys or not).
StatusOr<bool> FileHasFaultsSection(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return NotFoundError("cannot read config file " + path);
  std::ostringstream text;
  text << file.rdbuf();
  if (text.str().size() > kMaxConfigFileBytes) {
    return InvalidArgumentError("config file " + path + " is too large");
  }
  std::istringstream stream(text.str());
  try {
    for (const CLI::ConfigItem& item : CLI::ConfigTOML().from_config(stream)) {
      if (!item.parents.empty() && item.parents.front() == kFaultsGroup) return true;
    }
  } catch (const CLI::ParseError& error) {
    return InvalidArgumentError("config file " + path + ": " + error.what());
  }
  return false;
}

bool AnyFaultOptionSet(const CLI::App& command, bool* kind_set) {
  *kind_set = false;
  bool any = false;
  for (const CLI::App* group : command.get_subcommands([](const CLI::App*) { return true; })) {
    if (group->get_name().empty() && group->get_group() == kFaultsGroup) {
      for (const CLI::Option* option : group->get_options()) {
        if (option->count() == 0) continue;
        any = true;
        if (option->get_name() == "--kind") *kind_set = true;
      }
    }
  }
  return any;
}

StatusOr<std::optional<FaultPlan>> ResolveFaults(const CLI::App& command,
                                                 const WorkerFlags& flags) {
  bool section = false;
  const CLI::Option* config = command.get_option_no_throw("--config");
  if (config != nullptr && config->count() > 0) {
    FP_ASSIGN_OR_RETURN(section, FileHasFaultsSection(config->as<std::string>()));
  }
  bool kind_set = false;
  const bool options_set = AnyFaultOptionSet(command, &kind_set);
  FP_ASSIGN_OR_RETURN(bool enabled,
                      node::worker::FaultInjectionEnabled(section, flags.unsafe_fault_injection,
                                                          options_set, kind_set));
  if (!enabled) return std::optional<FaultPlan>();
  FaultPlan plan;
  FP_ASSIGN_OR_RETURN(plan.kind, node::worker::ParseFaultKind(flags.fault_kind));
  plan.session = flags.fault_session;
  plan.step = flags.fault_step;
  plan.bit = flags.fault_bit;
  plan.element = flags.fault_element;
  plan.kv_row = flags.fault_kv_row;
  plan.tensor = flags.fault_tensor;
  plan.stall_ms = flags.fault_stall_ms;
  FP_RETURN_IF_ERROR(node::worker::ValidateFaultPlan(plan));
  return std::optional<FaultPlan>(plan);
}

Status ApplyModels(const WorkerFlags& flags, WorkerConfig& config) {
  for (const std::string& text : flags.models) {
    FP_ASSIGN_OR_RETURN(node::worker::ModelSpec spec, node::worker::ParseModelSpec(text));
    config.models.push_back(spec);
  }
  for (const std::string& text : flags.anchors) {
    const size_t equals = text.find('=');
    if (equals == std::string::npos) {
      return InvalidArgumentError("--anchors '" + text + "' is not NAME=FILE");
    }
    const std::string name = text.substr(0, equals);
    auto it = std::find_if(config.models.begin(), config.models.end(),
                           [&](const node::worker::ModelSpec& m) { return m.name == name; });
    if (it == config.models.end()) {
      return InvalidArgumentError("--anchors names model '" + name + "', which no --model has");
    }
    it->anchors_file = text.substr(equals + 1);
  }
  return OkStatus();
}

// The limit is the CUDA backend's (kMaxTensorParallel), which this file cannot include in a build
// without CUDA; the backend checks it again.
constexpr int kMaxTensorParallelFlag = 8;

Status ApplyTensorParallel(const WorkerFlags& flags, WorkerConfig& config) {
  if (flags.tensor_parallel < 1 || flags.tensor_parallel > kMaxTensorParallelFlag) {
    return InvalidArgumentError("--tensor-parallel must be in [1, 8]");
  }
  if (!flags.cuda_devices.empty() &&
      flags.cuda_devices.size() != static_cast<size_t>(flags.tensor_parallel)) {
    return InvalidArgumentError("--cuda-devices must name one GPU per --tensor-parallel rank");
  }
  if (flags.tensor_parallel > 1 && config.engine.backend == node::worker::BackendKind::kCpu) {
    return InvalidArgumentError("--tensor-parallel needs the CUDA backend");
  }
  config.engine.tensor_parallel = flags.tensor_parallel;
  config.engine.cuda_devices = flags.cuda_devices;
  return OkStatus();
}

Status RunWorker(const WorkerConfig& config, LogLevel level, LogFormat format) {
  InitLogging(level, format);
  // Block the signals in every thread; this thread takes them with sigtimedwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  prometheus::Registry registry;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<node::worker::Worker> worker,
                      node::worker::Worker::Create(config, registry));
  FP_RETURN_IF_ERROR(worker->Start());
  // Profiles and ports go to stdout for scripts: the supervisor's --model takes these hashes.
  for (const node::worker::CatalogEntry& entry : worker->catalog().entries) {
    std::printf("model=%s profile=%s anchors=%s\n", entry.name.c_str(),
                HexEncode(entry.profile_hash).c_str(), HexEncode(entry.anchor_set_hash).c_str());
  }
  std::printf("worker_profile=%s metrics_port=%u\n",
              HexEncode(worker->catalog().worker_profile_hash).c_str(), worker->metrics_port());
  std::fflush(stdout);
  const int signal = sigwaitinfo(&signals, nullptr);
  LogInfo("worker", "signal received", {{"signal", signal}});
  worker->Stop();
  return OkStatus();
}

void AddFaultOptions(CLI::App* command, WorkerFlags* f) {
  CLI::Option_group* faults = command->add_option_group(
      kFaultsGroup,
      "Fault injection, for tests and demos: read from the [faults] section of "
      "--config, and only with --unsafe-fault-injection");
  faults->add_option("--kind", f->fault_kind,
                     "hidden-bit, kv-row, weight-bit, stall, crash or wrong-digest");
  faults->add_option("--session", f->fault_session,
                     "Ordinal of the targeted session on this worker (0 = first), -1 = all");
  faults->add_option("--step", f->fault_step, "Step at which the fault fires");
  faults->add_option("--bit", f->fault_bit, "Bit to flip (in the element, or in the digest)");
  faults->add_option("--element", f->fault_element, "Element of the hidden state or weight");
  faults->add_option("--kv-row", f->fault_kv_row,
                     "kv-row: the session token whose K/V rows go bad");
  faults->add_option("--tensor", f->fault_tensor, "weight-bit: the weight tensor's name");
  faults->add_option("--stall-ms", f->fault_stall_ms, "stall: milliseconds to sleep");
}

}  // namespace

void AddWorkerOptions(CLI::App* command, WorkerFlags* f) {
  command->add_option("--name", f->name, "Worker name: its certificate's name")->required();
  command->add_option("--certs-dir", f->certs_dir, "ca.pem, NAME.pem, NAME.key")->required();
  command
      ->add_option("--supervisor", f->supervisors,
                   "Supervisor [NAME@]HOST:PORT; repeat to fail over in order")
      ->required();
  command->add_option("--model", f->models, "Served model NAME=DIR (repeatable)")->required();
  command->add_option("--anchors", f->anchors, "Anchor set NAME=FILE for model NAME");
  command->add_option("--anchor-mode", f->anchor_mode, "mix or prefix");
  command->add_option("--data-dir", f->data_dir, "Durable outbox directory")->required();
  command->add_option("--metrics-address", f->metrics_address, "HOST:PORT for /metrics");
  command->add_option("--backend", f->backend,
                      "cpu, cuda or auto (cuda when a CUDA device exists, else cpu)");
  command->add_option("--threads", f->threads, "CPU threads per engine");
  command->add_option("--tensor-parallel", f->tensor_parallel,
                      "GPUs per engine (CUDA backend): 1 to 8, dividing the model's KV heads");
  command
      ->add_option("--cuda-devices", f->cuda_devices,
                   "GPU ordinals of the ranks, e.g. 2,3 (default 0 .. tensor-parallel - 1)")
      ->delimiter(',');
  command->add_option("--kv-budget-mb", f->kv_budget_mb, "KV cache budget per model (MiB)");
  command->add_option("--prefill-chunk", f->prefill_chunk, "Prefill chunk tokens");
  command->add_option("--max-batch-sequences", f->max_batch_sequences, "Sequences per step");
  command->add_option("--quantize-bits", f->quantize_bits, "Digest rounding; -1 none");
  command->add_option("--max-replicas", f->max_replicas, "Replicas run at once");
  command->add_option("--window-steps", f->window_steps, "W: a LeafBatch every W steps");
  command->add_option("--window-ms", f->window_ms, "T: or once a leaf has waited T ms");
  command->add_option("--heartbeat-ms", f->heartbeat_ms, "Heartbeat interval");
  command->add_option("--read-timeout-ms", f->read_timeout_ms, "Longest silence from the peer");
  command->add_option("--connect-timeout-ms", f->connect_timeout_ms,
                      "Longest TCP connect, and TLS handshake, with a supervisor before the next "
                      "one is tried");
  command->add_option("--reconnect-initial-ms", f->reconnect_initial_ms, "First retry delay");
  command->add_option("--reconnect-max-ms", f->reconnect_max_ms, "Largest retry delay");
  command->add_option("--outbox-max-batches", f->outbox_max_batches, "Outbox bound (batches)");
  command->add_option("--outbox-max-mb", f->outbox_max_mb, "Outbox bound (MiB)");
  command->add_option("--drain-ms", f->drain_ms, "Wait for acks on shutdown");
  command->add_option("--log-level", f->log_level, "debug, info, warn or error");
  command->add_option("--log-format", f->log_format, "text or json");
  command
      ->add_flag("--unsafe-fault-injection", f->unsafe_fault_injection,
                 "Allow the config file's [faults] section (tests and demos only)")
      ->configurable(false);
  AddFaultOptions(command, f);
  AddConfigOption(*command);
}

StatusOr<WorkerConfig> ResolveWorkerConfig(const CLI::App& command, const WorkerFlags& f) {
  WorkerConfig config;
  config.name = f.name;
  config.certs_dir = f.certs_dir;
  config.data_dir = f.data_dir;
  config.metrics_address = f.metrics_address;
  for (const std::string& text : f.supervisors) {
    FP_ASSIGN_OR_RETURN(node::worker::SupervisorAddress address,
                        node::worker::ParseSupervisorAddress(text));
    config.supervisors.push_back(address);
  }
  FP_RETURN_IF_ERROR(ApplyModels(f, config));
  FP_ASSIGN_OR_RETURN(config.engine.anchor_mode, node::ParseAnchorMode(f.anchor_mode));
  FP_ASSIGN_OR_RETURN(config.engine.backend, node::worker::ParseBackendKind(f.backend));
  config.engine.threads = f.threads;
  FP_RETURN_IF_ERROR(ApplyTensorParallel(f, config));
  if (f.kv_budget_mb < 1 || f.kv_budget_mb > (int64_t{1} << 20)) {
    return InvalidArgumentError("--kv-budget-mb must be in [1, 1048576]");
  }
  config.engine.kv_budget_bytes = f.kv_budget_mb << 20;
  config.engine.prefill_chunk_tokens = f.prefill_chunk;
  config.engine.max_batch_sequences = f.max_batch_sequences;
  config.engine.quantize_bits = f.quantize_bits;
  config.max_replicas = f.max_replicas;
  config.stream.window_steps = f.window_steps;
  config.stream.window_time = std::chrono::milliseconds(f.window_ms);
  config.heartbeat_interval = std::chrono::milliseconds(f.heartbeat_ms);
  config.connection.read_timeout = std::chrono::milliseconds(f.read_timeout_ms);
  // A supervisor that accepts TCP but does not answer (a paused process) stalls the handshake.
  config.connection.connect_timeout = std::chrono::milliseconds(f.connect_timeout_ms);
  config.connection.handshake_timeout = config.connection.connect_timeout;
  config.reconnect.initial_delay = std::chrono::milliseconds(f.reconnect_initial_ms);
  config.reconnect.max_delay = std::chrono::milliseconds(f.reconnect_max_ms);
  config.outbox.max_batches = f.outbox_max_batches;
  if (f.outbox_max_mb < 1 || f.outbox_max_mb > 1024) {
    return InvalidArgumentError("--outbox-max-mb must be in [1, 1024]");
  }
  config.outbox.max_bytes = static_cast<uint64_t>(f.outbox_max_mb) << 20;
  config.drain_timeout = std::chrono::milliseconds(f.drain_ms);
  FP_ASSIGN_OR_RETURN(config.faults, ResolveFaults(command, f));
  FP_RETURN_IF_ERROR(node::worker::ValidateWorkerConfig(config));
  return config;
}

void AddWorkerCommand(CLI::App& app) {
  auto flags = std::make_shared<WorkerFlags>();
  CLI::App* command =
      app.add_subcommand("worker", "Run replicas for a supervisor and stream their step leaves");
  AddWorkerOptions(command, flags.get());
  SetAction(command, [command, flags]() -> Status {
    FP_ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(flags->log_level));
    FP_ASSIGN_OR_RETURN(LogFormat format, ParseLogFormat(flags->log_format));
    FP_ASSIGN_OR_RETURN(WorkerConfig config, ResolveWorkerConfig(*command, *flags));
    return RunWorker(config, level, format);
  });
}

}  // namespace fp
