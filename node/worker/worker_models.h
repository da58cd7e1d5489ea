// The models a worker serves: loading each into its own engine (with the fault decorator when
// fault injection is on), the catalog of what the worker can reproduce (model names and their
// numerics profile hashes), and the check that turns a wire Assign into an AssignOrder or the
// Error the supervisor gets instead (docs/formats.md, "Assign").
//
// Profiles: an engine's full numerics profile (leaf::NumericsProfile) covers the weights and the
// anchor set; Register carries only the session-independent part (WorkerProfileHash: the profile
// with the weights and anchor hashes zeroed and no rounding), so the supervisor can place any
// session on any worker whose device numerics match, and Assign carries the full hash, which the
// worker must reproduce exactly.
//
// Thread-safety: LoadModelSlot and the pure functions are called at startup or from one thread;
// a ModelCatalog is immutable once built and may be read from any thread. A ModelSlot belongs to
// the generation loop.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/leaf/numerics_profile.h"
#include "common/wire/envelope.h"
#include "node/anchors/anchor_set.h"
#include "node/engine/engine.h"
#include "node/model/model.h"
#include "node/worker/faulty_backend.h"
#include "node/worker/orders.h"

namespace fp::node::worker {

// One served model: `name` (what Assign.model says), its folder and optional anchor set file.
struct ModelSpec {
  std::string name;
  std::string dir;
  std::string anchors_file;  // empty: no anchors
};

// "NAME=DIR". InvalidArgument for a missing '=' or an empty or overlong name (wire::kMaxNameBytes)
// or directory.
StatusOr<ModelSpec> ParseModelSpec(std::string_view text);

// Which device runs a worker's engines.
enum class BackendKind : uint8_t {
  kAuto = 0,  // CUDA when this build has it and a device exists, else the CPU
  kCpu = 1,
  kCuda = 2,
};

// "auto", "cpu" or "cuda". InvalidArgument otherwise.
StatusOr<BackendKind> ParseBackendKind(std::string_view name);

struct EngineSettings {
  BackendKind backend = BackendKind::kAuto;
  int threads = 1;  // CPU backend
  // CUDA backend: GPUs per engine (tensor parallelism; its degree is part of the numerics
  // profile), and their ordinals (empty: 0 .. tensor_parallel - 1).
  int tensor_parallel = 1;
  std::vector<int> cuda_devices;
  int64_t kv_budget_bytes = int64_t{256} << 20;
  int32_t prefill_chunk_tokens = 512;
  int32_t max_batch_sequences = 32;
  int quantize_bits = -1;
  AnchorMode anchor_mode = AnchorMode::kMix;
};

// A loaded model and the engine that runs it. Members are declared so that the engine, which
// borrows the model and the anchors, is destroyed first.
struct ModelSlot {
  std::string name;
  std::unique_ptr<Model> model;
  std::unique_ptr<AnchorSet> anchors;  // null without anchors
  std::unique_ptr<Engine> engine;
  FaultyBackend* faults = nullptr;  // borrowed from the engine; null without fault injection
};

// Loads `spec` into an engine on the backend `settings` names (kAuto resolved by
// CudaDeviceAvailable); with `faults`, the backend is wrapped in a FaultyBackend. Errors of
// Model::Load, AnchorSet::Load/CheckCompatible, the backend (Unimplemented for kCuda in a build
// without CUDA, FailedPrecondition without a device or with fewer GPUs than tensor_parallel,
// InvalidArgument for tensor parallelism on the CPU backend) and Engine::Create. The caller owns
// the result.
StatusOr<std::unique_ptr<ModelSlot>> LoadModelSlot(
    const ModelSpec& spec, const EngineSettings& settings,
    const std::optional<FaultyBackendOptions>& faults);

// What the supervisor must match for a session to run on this worker.
struct CatalogEntry {
  std::string name;
  Hash profile_hash{};     // the full numerics profile (Assign.numerics_profile)
  Hash anchor_set_hash{};  // zeros without anchors
  int quantize_bits = 0;   // mantissa bits kept (the dtype's width: no rounding)
  DType dtype = DType::kBf16;
};

struct ModelCatalog {
  std::vector<CatalogEntry> entries;  // in slot order
  Hash worker_profile_hash{};         // Register.numerics_profile_hash

  // The index of the entry named `name`, or -1.
  int Find(std::string_view name) const;
};

// The session-independent part of `profile`, hashed (see the file comment). InvalidArgument if
// the profile does not validate.
StatusOr<Hash> WorkerProfileHash(const leaf::NumericsProfile& profile);

// The catalog of `slots` (borrowed for the call). InvalidArgument if two slots share a name or
// their session-independent profiles differ (Register carries only one).
StatusOr<ModelCatalog> BuildCatalog(const std::vector<std::unique_ptr<ModelSlot>>& slots);

// Checks `assign` against the catalog and converts it. FailedPrecondition for an unknown model
// or a profile, anchor set or rounding this worker cannot reproduce; Unimplemented for the
// hidden+kv digest scope or window mode; InvalidArgument for sampling values the engine cannot
// represent or max_unverified_steps of 0. Token ids are checked by the engine when it takes the
// session.
StatusOr<AssignOrder> ToAssignOrder(const wire::pb::Assign& assign, const ModelCatalog& catalog);

// The Rollback order a wire Rollback asks for.
RollbackOrder ToRollbackOrder(const wire::pb::Rollback& rollback);

}  // namespace fp::node::worker
