// `fieldprint worker` (and `bench worker`): flags, an optional TOML --config file (flags win),
// the fault injection guard, and running a Worker until SIGINT or SIGTERM.
//
// Fault options live in the option group "faults", which is the [faults] section of the config
// file. Fault injection is on only when that section is in the file AND --unsafe-fault-injection
// is on the command line (the flag cannot be set from a file); either alone refuses to start.
//
// Thread-safety: registration runs once on the main thread before parsing; the command runs on
// the main thread (the worker's own threads block SIGINT/SIGTERM, which the main thread takes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/base/status.h"
#include "node/worker/worker.h"

namespace fp {

// Everything `fieldprint worker` reads from flags or the config file.
struct WorkerFlags {
  std::string name;
  std::string certs_dir;
  std::vector<std::string> supervisors;  // [NAME@]HOST:PORT
  std::vector<std::string> models;       // NAME=DIR
  std::vector<std::string> anchors;      // NAME=FILE
  std::string anchor_mode = "mix";
  std::string data_dir;
  std::string metrics_address;
  std::string backend = "auto";  // auto, cpu or cuda
  int threads = 1;
  int tensor_parallel = 1;        // GPUs per engine (CUDA backend)
  std::vector<int> cuda_devices;  // their ordinals; empty: 0 .. tensor_parallel - 1
  int64_t kv_budget_mb = 256;
  int prefill_chunk = 512;
  int max_batch_sequences = 32;
  int quantize_bits = -1;
  uint32_t max_replicas = 32;
  uint32_t window_steps = 16;
  int64_t window_ms = 50;
  int64_t heartbeat_ms = 1'000;
  int64_t read_timeout_ms = 10'000;
  int64_t connect_timeout_ms = 3'000;
  int64_t reconnect_initial_ms = 100;
  int64_t reconnect_max_ms = 5'000;
  size_t outbox_max_batches = 4096;
  int64_t outbox_max_mb = 256;
  int64_t drain_ms = 2'000;
  std::string log_level = "info";
  std::string log_format = "text";
  bool unsafe_fault_injection = false;
  // [faults]
  std::string fault_kind;
  int64_t fault_session = node::worker::kAllSessions;
  uint64_t fault_step = 0;
  int32_t fault_bit = 6;
  int64_t fault_element = 0;
  int64_t fault_kv_row = 0;
  std::string fault_tensor = "model.layers.0.self_attn.q_proj.weight";
  int64_t fault_stall_ms = 100;
};

// Adds the worker's options, the "faults" group and --config to `command`, writing into `flags`
// (borrowed; both must outlive parsing).
void AddWorkerOptions(CLI::App* command, WorkerFlags* flags);

// The WorkerConfig that parsed flags describe, after the fault guard (node/worker/fault_plan.h).
// `command` is the parsed command (its --config value and the "faults" group are inspected).
// InvalidArgument for malformed values; FailedPrecondition (and InvalidArgument) from the guard;
// errors reading the config file again to look for its [faults] section.
StatusOr<node::worker::WorkerConfig> ResolveWorkerConfig(const CLI::App& command,
                                                         const WorkerFlags& flags);

// Registers `fieldprint worker` on `app`.
void AddWorkerCommand(CLI::App& app);
// Registers `bench worker` (verification overhead: tokens/s with leaves streamed to a loopback
// supervisor versus the bare engine) on `bench`.
void AddWorkerBench(CLI::App& bench);

}  // namespace fp
