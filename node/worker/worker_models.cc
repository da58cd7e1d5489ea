// Model slots, the catalog and Assign checks; see worker_models.h.
#include "node/worker/worker_models.h"

#include <algorithm>
#include <limits>

#include "node/backend/cpu_backend.h"
#include "node/backend/cuda_backend.h"

namespace fp::node::worker {
namespace {

SessionId SessionFromWire(const std::string& bytes) {
  FP_CHECK(bytes.size() == kSessionIdSize);  // ValidateEnvelope guarantees it
  SessionId id;
  std::copy_n(bytes.begin(), kSessionIdSize, id.begin());
  return id;
}

Hash HashFromWire(const std::string& bytes) {
  FP_CHECK(bytes.size() == kHashSize);
  Hash hash;
  std::copy_n(bytes.begin(), kHashSize, hash.begin());
  return hash;
}

StatusOr<kernels::SamplingParams> ToSampling(const wire::pb::SamplingParams& s) {
  if (s.top_k() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    return InvalidArgumentError("sampling.top_k is too large");
  }
  return kernels::SamplingParams{s.temperature(), static_cast<int32_t>(s.top_k()),
                                 s.has_top_p() ? s.top_p() : 1.0f, s.seed()};
}

std::vector<int32_t> ToTokens(const google::protobuf::RepeatedField<uint32_t>& ids) {
  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(ids.size()));
  // Ids above INT32_MAX become negative, which the engine rejects as outside the vocabulary.
  for (uint32_t id : ids) tokens.push_back(static_cast<int32_t>(id));
  return tokens;
}

Status CheckReproducible(const wire::pb::Assign& assign, const CatalogEntry& entry) {
  const std::string model = "model " + entry.name + ": ";
  if (assign.digest_scope() != wire::pb::DIGEST_SCOPE_HIDDEN) {
    return UnimplementedError("this worker digests the hidden state only (digest_scope hidden)");
  }
  if (assign.window_steps() > 1) {
    return UnimplementedError("this worker sends one leaf per step (no window mode)");
  }
  if (HashFromWire(assign.anchor_set_hash()) != entry.anchor_set_hash) {
    return FailedPreconditionError(model + "the worker does not hold anchor set " +
                                   HexEncode(AsBytes(assign.anchor_set_hash())));
  }
  const int bits = assign.has_quantize_bits() ? static_cast<int>(assign.quantize_bits())
                                              : DTypeMantissaBits(entry.dtype);
  if (bits != entry.quantize_bits) {
    return FailedPreconditionError(model + "digests keep " + std::to_string(entry.quantize_bits) +
                                   " mantissa bits, the session asks for " + std::to_string(bits));
  }
  if (HashFromWire(assign.numerics_profile()) != entry.profile_hash) {
    return FailedPreconditionError(model + "numerics profile " +
                                   HexEncode(AsBytes(assign.numerics_profile())) +
                                   " differs from this worker's " + HexEncode(entry.profile_hash));
  }
  if (assign.max_unverified_steps() == 0) {
    return InvalidArgumentError("max_unverified_steps must be >= 1");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const EngineSettings& settings) {
  const bool cuda = settings.backend == BackendKind::kCuda ||
                    (settings.backend == BackendKind::kAuto && CudaDeviceAvailable());
  if (cuda) {
    CudaBackendOptions options;
    options.tensor_parallel = settings.tensor_parallel;
    options.devices = settings.cuda_devices;
    return CreateCudaBackend(options);
  }
  if (settings.tensor_parallel != 1) {
    return InvalidArgumentError("tensor parallelism needs the CUDA backend");
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> cpu, CpuBackend::Create({settings.threads}));
  return std::unique_ptr<Backend>(std::move(cpu));
}

}  // namespace

StatusOr<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return InvalidArgumentError("backend '" + std::string(name) + "' is not auto, cpu or cuda");
}

StatusOr<ModelSpec> ParseModelSpec(std::string_view text) {
  const size_t equals = text.find('=');
  if (equals == std::string_view::npos) {
    return InvalidArgumentError("model '" + std::string(text) + "' is not NAME=DIR");
  }
  ModelSpec spec{std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)), ""};
  if (spec.name.empty() || spec.name.size() > wire::kMaxNameBytes) {
    return InvalidArgumentError("model name in '" + std::string(text) + "' must have 1.." +
                                std::to_string(wire::kMaxNameBytes) + " bytes");
  }
  if (spec.dir.empty()) return InvalidArgumentError("model '" + spec.name + "' has no folder");
  return spec;
}

StatusOr<std::unique_ptr<ModelSlot>> LoadModelSlot(
    const ModelSpec& spec, const EngineSettings& settings,
    const std::optional<FaultyBackendOptions>& faults) {
  auto slot = std::make_unique<ModelSlot>();
  slot->name = spec.name;
  FP_ASSIGN_OR_RETURN(slot->model, Model::Load(spec.dir));
  if (!spec.anchors_file.empty()) {
    FP_ASSIGN_OR_RETURN(slot->anchors, AnchorSet::Load(spec.anchors_file));
    FP_RETURN_IF_ERROR(slot->anchors->CheckCompatible(slot->model->config()));
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(settings));
  if (faults.has_value()) {
    FP_ASSIGN_OR_RETURN(std::unique_ptr<FaultyBackend> faulty,
                        FaultyBackend::Create(std::move(backend), *faults));
    slot->faults = faulty.get();
    backend = std::move(faulty);
  }
  EngineOptions options;
  options.kv_budget_bytes = settings.kv_budget_bytes;
  options.prefill_chunk_tokens = settings.prefill_chunk_tokens;
  options.max_batch_sequences = settings.max_batch_sequences;
  options.max_batch_tokens = std::max(options.max_batch_tokens, settings.max_batch_sequences);
  options.anchor_mode = settings.anchor_mode;
  options.quantize_bits = settings.quantize_bits;
  FP_ASSIGN_OR_RETURN(
      slot->engine, Engine::Create(*slot->model, std::move(backend), slot->anchors.get(), options));
  return slot;
}

int ModelCatalog::Find(std::string_view name) const {
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

StatusOr<Hash> WorkerProfileHash(const leaf::NumericsProfile& profile) {
  leaf::NumericsProfile device = profile;
  device.model_weights_hash = Hash{};
  device.anchor_set_hash = Hash{};
  device.quantize_bits = DTypeMantissaBits(device.dtype);
  device.digest_scope = leaf::DigestScope::kHidden;
  return leaf::NumericsProfileHash(device);
}

StatusOr<ModelCatalog> BuildCatalog(const std::vector<std::unique_ptr<ModelSlot>>& slots) {
  ModelCatalog catalog;
  for (const std::unique_ptr<ModelSlot>& slot : slots) {
    if (catalog.Find(slot->name) >= 0) {
      return InvalidArgumentError("model name " + slot->name + " is used twice");
    }
    const leaf::NumericsProfile& profile = slot->engine->numerics_profile();
    CatalogEntry entry;
    entry.name = slot->name;
    FP_ASSIGN_OR_RETURN(entry.profile_hash, leaf::NumericsProfileHash(profile));
    entry.anchor_set_hash = profile.anchor_set_hash;
    entry.quantize_bits = profile.quantize_bits;
    entry.dtype = profile.dtype;
    FP_ASSIGN_OR_RETURN(Hash device, WorkerProfileHash(profile));
    if (catalog.entries.empty()) {
      catalog.worker_profile_hash = device;
    } else if (device != catalog.worker_profile_hash) {
      return InvalidArgumentError("model " + slot->name +
                                  " has other device numerics (dtype or "
                                  "anchor mode) than " +
                                  catalog.entries[0].name + "; one worker registers one profile");
    }
    catalog.entries.push_back(std::move(entry));
  }
  return catalog;
}

StatusOr<AssignOrder> ToAssignOrder(const wire::pb::Assign& assign, const ModelCatalog& catalog) {
  const int index = catalog.Find(assign.model());
  if (index < 0) {
    return FailedPreconditionError("this worker does not serve model '" + assign.model() + "'");
  }
  FP_RETURN_IF_ERROR(CheckReproducible(assign, catalog.entries[static_cast<size_t>(index)]));
  AssignOrder order;
  order.model_index = static_cast<size_t>(index);
  order.request.id = SessionFromWire(assign.session_id());
  order.request.prompt = ToTokens(assign.prompt_token_ids());
  FP_ASSIGN_OR_RETURN(order.request.sampling, ToSampling(assign.sampling()));
  order.request.max_tokens = static_cast<int32_t>(
      std::min<uint32_t>(assign.sampling().max_tokens(), wire::kMaxSessionTokens));
  order.request.stop_tokens = ToTokens(assign.sampling().stop_token_ids());
  order.replica = assign.replica();
  order.epoch = assign.epoch();
  order.max_unverified_steps = assign.max_unverified_steps();
  order.verified_steps = static_cast<uint64_t>(assign.replay_token_ids_size());
  return order;
}

RollbackOrder ToRollbackOrder(const wire::pb::Rollback& rollback) {
  RollbackOrder order;
  order.session = SessionFromWire(rollback.session_id());
  order.replica = rollback.replica();
  order.to_step = rollback.to_step();
  order.new_epoch = rollback.new_epoch();
  order.mode = rollback.kind() == wire::pb::ROLLBACK_KIND_REBUILD ? RollbackMode::kRebuild
                                                                  : RollbackMode::kKeepCache;
  return order;
}

}  // namespace fp::node::worker
