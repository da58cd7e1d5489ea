// FaultyBackend; see faulty_backend.h.
#include "node/worker/faulty_backend.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/base/log.h"
#include "common/leaf/state_digest.h"
#include "node/model/safetensors.h"

namespace fp::node::worker {
namespace {

constexpr char kComponent[] = "worker.faults";

Status CheckWeightFault(const SafetensorsEntry& entry, const FaultPlan& plan) {
  const int64_t elements = ShapeElements(entry.shape);
  if (plan.element >= elements) {
    return InvalidArgumentError("faults.element " + std::to_string(plan.element) +
                                " is outside tensor " + plan.tensor + " of " +
                                std::to_string(elements) + " elements");
  }
  if (plan.bit >= static_cast<int32_t>(8 * DTypeSize(entry.dtype))) {
    return InvalidArgumentError("faults.bit " + std::to_string(plan.bit) + " is outside a " +
                                std::string(DTypeName(entry.dtype)) + " element");
  }
  return OkStatus();
}

// Copies the model folder into `dir` and flips the planned bit in the copy. The caller loads it.
Status WriteCorruptedCopy(const std::string& model_dir, const FaultPlan& plan,
                          const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  uint64_t total = 0;
  for (const fs::directory_entry& file : fs::directory_iterator(model_dir, error)) {
    if (file.is_regular_file()) total += file.file_size();
  }
  if (error) return InternalError("cannot list " + model_dir + ": " + error.message());
  if (total > kMaxFaultModelBytes) {
    return InvalidArgumentError("a weight-bit fault copies the model, and " + model_dir +
                                " is larger than " + std::to_string(kMaxFaultModelBytes) +
                                " bytes");
  }
  fs::remove_all(dir, error);
  fs::create_directories(dir, error);
  if (error) return InternalError("cannot create " + dir + ": " + error.message());
  std::string patched_file;
  uint64_t patched_offset = 0;
  for (const fs::directory_entry& file : fs::directory_iterator(model_dir)) {
    if (!file.is_regular_file()) continue;
    const fs::path target = fs::path(dir) / file.path().filename();
    fs::copy_file(file.path(), target, fs::copy_options::overwrite_existing, error);
    if (error) return InternalError("cannot copy " + file.path().string() + ": " + error.message());
    if (target.extension() != ".safetensors" || !patched_file.empty()) continue;
    FP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> tensors,
                        SafetensorsFile::Open(target.string()));
    const SafetensorsEntry* entry = tensors->Find(plan.tensor);
    if (entry == nullptr) continue;
    FP_RETURN_IF_ERROR(CheckWeightFault(*entry, plan));
    patched_file = target.string();
    patched_offset = tensors->header().data_start + entry->begin +
                     static_cast<uint64_t>(plan.element) * DTypeSize(entry->dtype) +
                     static_cast<uint64_t>(plan.bit / 8);
  }
  if (patched_file.empty()) {
    return InvalidArgumentError("faults.tensor " + plan.tensor + " is not in " + model_dir);
  }
  std::fstream stream(patched_file, std::ios::in | std::ios::out | std::ios::binary);
  char byte = 0;
  stream.seekg(static_cast<std::streamoff>(patched_offset));
  stream.read(&byte, 1);
  byte = static_cast<char>(byte ^ (1 << (plan.bit % 8)));
  stream.seekp(static_cast<std::streamoff>(patched_offset));
  stream.write(&byte, 1);
  stream.close();
  if (!stream) return InternalError("cannot patch " + patched_file);
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<FaultyBackend>> FaultyBackend::Create(
    std::unique_ptr<Backend> inner, const FaultyBackendOptions& options) {
  FP_CHECK(inner != nullptr);
  FP_RETURN_IF_ERROR(ValidateFaultPlan(options.plan));
  if (options.plan.kind == FaultKind::kWeightBit && options.scratch_dir.empty()) {
    return InvalidArgumentError("a weight-bit fault needs a scratch directory");
  }
  return std::unique_ptr<FaultyBackend>(new FaultyBackend(std::move(inner), options));
}

void FaultyBackend::WatchSession(uint64_t ordinal, const std::vector<int32_t>& prompt) {
  if (!options_.plan.Targets(ordinal)) return;
  if (watched_.size() >= kMaxWatchedSessions) watched_.erase(watched_.begin());
  watched_[ordinal] = prompt;
}

void FaultyBackend::UnwatchSession(uint64_t ordinal) { watched_.erase(ordinal); }

Status FaultyBackend::LoadModel(const Model& model, const DigestOptions& digest) {
  model_ = &model;
  canonical_dtype_ = digest.canonical_dtype;
  quantize_bits_ =
      digest.quantize_bits < 0 ? DTypeMantissaBits(digest.canonical_dtype) : digest.quantize_bits;
  const FaultPlan& plan = options_.plan;
  if (plan.kind == FaultKind::kHiddenBit) {
    if (plan.element >= model.config().hidden_size ||
        plan.bit >= static_cast<int32_t>(8 * DTypeSize(canonical_dtype_))) {
      return InvalidArgumentError("faults.element/bit are outside the model's hidden state");
    }
  }
  if (plan.kind != FaultKind::kWeightBit) return inner_->LoadModel(model, digest);
  const std::string dir = (std::filesystem::path(options_.scratch_dir) / "fault-model").string();
  FP_RETURN_IF_ERROR(WriteCorruptedCopy(model.dir(), plan, dir));
  FP_ASSIGN_OR_RETURN(corrupted_model_, Model::Load(dir));
  ++fired_count_;
  LogWarn(kComponent, "fault injected: weight bit flipped",
          {{"tensor", plan.tensor}, {"element", plan.element}, {"bit", plan.bit}});
  return inner_->LoadModel(*corrupted_model_, digest);
}

Status FaultyBackend::LoadAnchors(const AnchorSet* anchors, AnchorMode mode) {
  prefix_rows_ = anchors != nullptr && mode == AnchorMode::kPrefix ? anchors->num_anchors() : 0;
  return inner_->LoadAnchors(anchors, mode);
}

int64_t FaultyBackend::MatchPrompt(std::span<const int32_t> chunk) const {
  int64_t best = -1;
  size_t best_length = 0;
  for (const auto& [ordinal, prompt] : watched_) {
    const size_t n = std::min(prompt.size(), chunk.size());
    if (n == 0 ||
        !std::equal(chunk.begin(), chunk.begin() + static_cast<ptrdiff_t>(n), prompt.begin())) {
      continue;
    }
    if (best < 0 || prompt.size() > best_length) {
      best = static_cast<int64_t>(ordinal);
      best_length = prompt.size();
    }
  }
  return best;
}

int64_t FaultyBackend::Identify(const ForwardSequence& sequence) {
  if (sequence.block_table.empty()) return -1;
  const int32_t key = sequence.block_table[0];
  if (sequence.start_row == prefix_rows_) tracked_[key] = {MatchPrompt(sequence.tokens), -1};
  auto it = tracked_.find(key);
  if (it == tracked_.end()) return -1;
  const int64_t row = prefix_rows_ + options_.plan.kv_row;
  const int64_t begin = sequence.start_row;
  if (row >= begin && row < begin + static_cast<int64_t>(sequence.tokens.size())) {
    it->second.kv_token = sequence.tokens[static_cast<size_t>(row - begin)];
  }
  return it->second.ordinal;
}

bool FaultyBackend::Fires(const ForwardSequence& sequence, int64_t ordinal) {
  const FaultPlan& plan = options_.plan;
  // weight-bit fired at load; wrong-digest belongs to the streaming thread.
  if (plan.kind == FaultKind::kWeightBit || plan.kind == FaultKind::kWrongDigest) return false;
  if (ordinal < 0 || !sequence.emit || sequence.step != plan.step) return false;
  if (!plan.Targets(static_cast<uint64_t>(ordinal))) return false;
  if (!fired_ordinals_.insert(static_cast<uint64_t>(ordinal)).second) return false;
  ++fired_count_;
  LogWarn(kComponent, "fault injected",
          {{"kind", FaultKindName(plan.kind)}, {"session", ordinal}, {"step", sequence.step}});
  return true;
}

Status FaultyBackend::RewriteKvRow(const ForwardSequence& sequence, const Tracked& tracked) {
  const int64_t row = prefix_rows_ + options_.plan.kv_row;
  if (tracked.kv_token < 0 || row >= sequence.start_row) {
    LogWarn(kComponent, "kv-row fault skipped: the row is not cached yet",
            {{"row", options_.plan.kv_row}, {"step", sequence.step}});
    return OkStatus();
  }
  const int32_t vocab = static_cast<int32_t>(model_->config().vocab_size);
  const int32_t token = static_cast<int32_t>((tracked.kv_token + 1) % vocab);
  ForwardSequence rewrite;
  rewrite.tokens = std::span<const int32_t>(&token, 1);
  rewrite.start_row = static_cast<int32_t>(row);
  rewrite.block_table = sequence.block_table;
  rewrite.emit = false;
  ForwardResult unused;
  return inner_->Forward(std::span<const ForwardSequence>(&rewrite, 1), ForwardOptions{}, &unused);
}

Status FaultyBackend::FlipHidden(const std::vector<size_t>& rows, const ForwardOptions& options,
                                 ForwardResult* result) {
  Tensor hidden = result->hidden.Clone();
  const size_t width = static_cast<size_t>(hidden.dim(1));
  const size_t element_bytes = DTypeSize(hidden.dtype());
  const size_t byte = static_cast<size_t>(options_.plan.element) * element_bytes +
                      static_cast<size_t>(options_.plan.bit / 8);
  for (size_t row : rows) {
    uint8_t* row_bytes = static_cast<uint8_t*>(hidden.mutable_data()) + row * width * element_bytes;
    row_bytes[byte] ^= static_cast<uint8_t>(1 << (options_.plan.bit % 8));
    FP_ASSIGN_OR_RETURN(result->state_digests[row],
                        leaf::TensorStateDigest(hidden.dtype(), quantize_bits_,
                                                ByteSpan(row_bytes, width * element_bytes)));
  }
  result->hidden = options.return_hidden ? std::move(hidden) : Tensor();
  return OkStatus();
}

Status FaultyBackend::Forward(std::span<const ForwardSequence> batch, const ForwardOptions& options,
                              ForwardResult* result) {
  std::vector<size_t> flip_rows;
  size_t emit_row = 0;
  for (const ForwardSequence& sequence : batch) {
    const int64_t ordinal = Identify(sequence);
    if (Fires(sequence, ordinal)) {
      switch (options_.plan.kind) {
        case FaultKind::kHiddenBit:
          flip_rows.push_back(emit_row);
          break;
        case FaultKind::kKvRow:
          FP_RETURN_IF_ERROR(RewriteKvRow(sequence, tracked_.at(sequence.block_table[0])));
          break;
        case FaultKind::kStall:
          std::this_thread::sleep_for(std::chrono::milliseconds(options_.plan.stall_ms));
          break;
        case FaultKind::kCrash:
          LogError(kComponent, "fault injected: aborting the process", {{"step", sequence.step}});
          std::abort();
        case FaultKind::kWeightBit:
        case FaultKind::kWrongDigest:
          break;
      }
    }
    if (sequence.emit) ++emit_row;
  }
  ForwardOptions inner_options = options;
  inner_options.return_hidden = options.return_hidden || !flip_rows.empty();
  FP_RETURN_IF_ERROR(inner_->Forward(batch, inner_options, result));
  if (flip_rows.empty()) return OkStatus();
  return FlipHidden(flip_rows, options, result);
}

}  // namespace fp::node::worker
