// Checkpoint signing; see checkpoints.h.
#include "supervisor/ledger/checkpoints.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base/log.h"
#include "common/merkle/merkle.h"
#include "common/metrics/metrics.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

// Upper bound of a key file ("PRIVATE+KEY+" + name + key id + base64 seed).
constexpr size_t kMaxKeyFileBytes = 4096;

Status WriteNewFile(const std::string& path, std::string_view text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return UnavailableError(fmt::format("create {}: {}", path, std::strerror(errno)));
  const ssize_t written = ::write(fd, text.data(), text.size());
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (written != static_cast<ssize_t>(text.size()) || !synced) {
    return UnavailableError(fmt::format("write {}: {}", path, std::strerror(errno)));
  }
  return OkStatus();
}

// The key string in a key file (one line), without its line end. NotFound when the file does not
// exist; InvalidArgument when it is too large to be a key; Unavailable when it cannot be read.
StatusOr<std::string> ReadKeyFile(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return NotFoundError(
        fmt::format("{} does not exist (a supervisor creates it on its first start)", path));
  }
  if (std::filesystem::file_size(path, error) > kMaxKeyFileBytes || error) {
    return InvalidArgumentError(fmt::format("{} is not a key file", path));
  }
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  if (!file) return UnavailableError(fmt::format("cannot read {}", path));
  std::string key = text.str();
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  return key;
}

}  // namespace

StatusOr<tlog::NoteSigner> LoadOrCreateSigner(const std::string& path, std::string_view origin) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    FP_ASSIGN_OR_RETURN(tlog::NoteSigner signer, tlog::NoteSigner::Generate(origin));
    FP_RETURN_IF_ERROR(WriteNewFile(path, signer.ToString() + "\n"));
    return signer;
  }
  return LoadSigner(path, origin);
}

StatusOr<tlog::NoteSigner> LoadSigner(const std::string& path, std::string_view origin) {
  FP_ASSIGN_OR_RETURN(std::string key, ReadKeyFile(path));
  StatusOr<tlog::NoteSigner> signer = tlog::NoteSigner::Parse(key);
  if (!signer.ok()) return signer.status().WithContext(path);
  if (signer->name() != origin) {
    return FailedPreconditionError(
        fmt::format("{} signs for origin '{}', but the configured origin is '{}'", path,
                    signer->name(), origin));
  }
  return signer;
}

StatusOr<tlog::Cosigner> LoadOrCreateCosigner(const std::string& path, std::string_view name) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    FP_ASSIGN_OR_RETURN(tlog::Cosigner cosigner, tlog::Cosigner::Generate(name));
    FP_RETURN_IF_ERROR(WriteNewFile(path, cosigner.ToString() + "\n"));
    return cosigner;
  }
  return LoadCosigner(path, name);
}

StatusOr<tlog::Cosigner> LoadCosigner(const std::string& path, std::string_view name) {
  FP_ASSIGN_OR_RETURN(std::string key, ReadKeyFile(path));
  StatusOr<tlog::Cosigner> cosigner = tlog::Cosigner::Parse(key);
  if (!cosigner.ok()) return cosigner.status().WithContext(path);
  if (cosigner->name() != name) {
    return FailedPreconditionError(
        fmt::format("{} is the cosigner key of '{}', but this supervisor is '{}' (its tls-name)",
                    path, cosigner->name(), name));
  }
  return cosigner;
}

StatusOr<pb::CosignerSet> RegisteredCosigners(const StateReader& reader) {
  FP_ASSIGN_OR_RETURN(std::optional<pb::CosignerSet> set,
                      reader.GetMessage<pb::CosignerSet>(kMeta, kMetaCosigners));
  return set.value_or(pb::CosignerSet());
}

namespace {

// Appends the stored cosignature lines of checkpoint `size` to `note`, and their names to `names`.
Status AppendCosignatureLines(const StateReader& reader, uint64_t size, std::string& note,
                              std::vector<std::string>& names) {
  FP_ASSIGN_OR_RETURN(std::optional<pb::CheckpointCosignatures> stored,
                      reader.GetMessage<pb::CheckpointCosignatures>(kCosignatures, U64Key(size)));
  if (!stored.has_value()) return OkStatus();
  for (const pb::StoredCosignature& entry : stored->cosignatures()) {
    // The applier stored only verified lines: anything else here is corrupt storage.
    if (!tlog::IsValidKeyName(entry.name()) || entry.signature().size() != kEd25519SignatureSize) {
      return DataLossError(fmt::format("stored cosignature of checkpoint {} is malformed", size));
    }
    tlog::Cosignature cosignature;
    cosignature.name = entry.name();
    cosignature.key_id = entry.key_id();
    cosignature.timestamp = entry.timestamp();
    std::copy(entry.signature().begin(), entry.signature().end(), cosignature.signature.begin());
    note += tlog::FormatCosignatureLine(cosignature);
    names.push_back(entry.name());
  }
  return OkStatus();
}

StatusOr<uint64_t> AppliedPosition(const RocksStore& state) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> applied, state.Get(kMeta, kMetaApplied));
  if (!applied.has_value()) return uint64_t{0};
  return ParseU64(*applied);
}

Status LedgerKeyDiffers(const std::string& cluster_key, const tlog::NoteVerifier& ours) {
  return FailedPreconditionError(fmt::format(
      "this supervisor's ledger key {} differs from the cluster's {}: every supervisor of a "
      "cluster signs with the same {} (copy it from a running supervisor before the first start)",
      ours.ToString(), cluster_key, kCheckpointKeyFile));
}

}  // namespace

StatusOr<SignedCheckpoint> SignedCheckpointAt(const StateReader& reader, uint64_t size) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> note, reader.Get(kSigned, U64Key(size)));
  if (!note.has_value()) return NotFoundError(fmt::format("no signed checkpoint of size {}", size));
  StatusOr<tlog::ParsedNote> parsed = tlog::ParseNote(*note);
  if (!parsed.ok()) return DataLossError("stored checkpoint note: " + parsed.status().ToString());
  StatusOr<tlog::Checkpoint> checkpoint = tlog::ParseCheckpoint(parsed->text);
  if (!checkpoint.ok())
    return DataLossError("stored checkpoint: " + checkpoint.status().ToString());
  SignedCheckpoint result{std::move(*checkpoint), std::move(*note), {}};
  FP_RETURN_IF_ERROR(AppendCosignatureLines(reader, size, result.note, result.cosigners));
  return result;
}

StatusOr<SignedCheckpoint> LatestSignedCheckpoint(const RocksStore& state) {
  std::unique_ptr<rocksdb::Iterator> it = state.NewIterator(kSigned);
  it->SeekToLast();
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan signed checkpoints"));
  if (!it->Valid()) return NotFoundError("no checkpoint is signed yet");
  FP_ASSIGN_OR_RETURN(uint64_t size, ParseU64(ToView(it->key())));
  return SignedCheckpointAt(DbStateReader(&state), size);
}

// Cosignature records whose append failed, filled by the log's callbacks.
struct CheckpointSigner::Retries {
  std::mutex mutex;
  std::vector<pb::LogRecord> records;  // guarded by mutex; at most kMaxCosignatureRetries
};

CheckpointSigner::CheckpointSigner(RocksStore* state, Log* log, tlog::NoteSigner ledger_key,
                                   tlog::Cosigner cosigner, prometheus::Registry* registry)
    : state_(state),
      log_(log),
      origin_(ledger_key.name()),
      signer_(std::move(ledger_key)),
      verifier_(signer_.Verifier()),
      cosigner_(std::move(cosigner)),
      cosigner_verifier_(cosigner_.Verifier()),
      retries_(std::make_shared<Retries>()) {
  FP_CHECK(state_ != nullptr);
  FP_CHECK(log_ != nullptr);
  if (registry != nullptr) {
    auto& family = metrics::RegisterCounter(
        *registry, "fieldprint_supervisor_cosignatures_total",
        "Checkpoint cosignatures the applier verified and stored, or rejected");
    cosignatures_applied_ = &family.Add({{"result", "applied"}});
    cosignatures_rejected_ = &family.Add({{"result", "rejected"}});
  }
}

Status CheckpointSigner::Join() {
  FP_CHECK(!join_position_.has_value());
  DbStateReader reader(state_);
  FP_ASSIGN_OR_RETURN(pb::CosignerSet set, RegisteredCosigners(reader));
  // Refused before anything is appended when the state already knows the cluster's key.
  if (!set.ledger_key().empty() && set.ledger_key() != verifier_.ToString()) {
    return LedgerKeyDiffers(set.ledger_key(), verifier_);
  }
  pb::LogRecord record;
  pb::CosignerJoined* joined = record.mutable_cosigner_joined();
  joined->set_name(cosigner_.name());
  joined->set_cosigner_key(cosigner_verifier_.ToString());
  joined->set_ledger_key(verifier_.ToString());
  StatusOr<uint64_t> position = AppendAndWait(*log_, std::move(record));
  if (position.status().code() == StatusCode::kFailedPrecondition) {
    return FailedPreconditionError(fmt::format(
        "cosigner '{}' joined this cluster with another key than {}: restore this supervisor's {} "
        "or run it under another tls-name",
        cosigner_.name(), cosigner_verifier_.ToString(), kCosignerKeyFile));
  }
  if (!position.ok()) return position.status().WithContext("append CosignerJoined");
  join_position_ = *position;
  return CheckMembership();
}

Status CheckpointSigner::CheckMembership() {
  FP_CHECK(join_position_.has_value());
  if (confirmed_) return OkStatus();
  FP_ASSIGN_OR_RETURN(uint64_t applied, AppliedPosition(*state_));
  if (applied <= *join_position_) return OkStatus();
  DbStateReader reader(state_);
  FP_ASSIGN_OR_RETURN(pb::CosignerSet set, RegisteredCosigners(reader));
  if (set.ledger_key() != verifier_.ToString()) {
    return LedgerKeyDiffers(set.ledger_key(), verifier_);
  }
  const auto member =
      std::find_if(set.members().begin(), set.members().end(),
                   [&](const pb::CosignerState& m) { return m.name() == cosigner_.name(); });
  if (member == set.members().end() || member->cosigner_key() != cosigner_verifier_.ToString()) {
    return FailedPreconditionError(fmt::format(
        "the cluster did not register cosigner '{}' with key {} (registered: {}); see the "
        "supervisor's rejected records",
        cosigner_.name(), cosigner_verifier_.ToString(),
        member == set.members().end() ? "no such name" : member->cosigner_key()));
  }
  FP_ASSIGN_OR_RETURN(anchor_size_, AnchorSize());
  confirmed_ = true;
  LogInfo("supervisor", "cosigner registered",
          {{"name", cosigner_.name()}, {"cosigners", set.members_size()}});
  return CosignLatest();
}

StatusOr<std::optional<uint64_t>> CheckpointSigner::AnchorSize() const {
  std::unique_ptr<rocksdb::Iterator> it = state_->NewIterator(kCheckpoints);
  // Bodies are taken in log order and the ledger only grows, so positions grow with sizes: the
  // bodies after the join are the last ones, and few.
  for (it->SeekToLast(); it->Valid(); it->Prev()) {
    pb::CheckpointBody body;
    if (!body.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError("stored checkpoint body does not parse");
    }
    if (body.position() < *join_position_) return std::optional<uint64_t>(body.size());
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan checkpoints"));
  return std::optional<uint64_t>();
}

bool CheckpointSigner::ShouldCosign(const pb::CheckpointBody& body) const {
  return body.position() > *join_position_ || body.size() == anchor_size_;
}

Status CheckpointSigner::Cosign(const pb::CheckpointBody& body) {
  FP_ASSIGN_OR_RETURN(Hash root, ParseHash(body.root()));
  FP_ASSIGN_OR_RETURN(std::string text, tlog::FormatCheckpoint({origin_, body.size(), root, {}}));
  FP_ASSIGN_OR_RETURN(tlog::Cosignature cosignature, cosigner_.Cosign(text, body.unix_ms() / 1000));
  pb::LogRecord record;
  pb::Cosignature* out = record.mutable_cosignature();
  out->set_size(body.size());
  out->set_name(cosignature.name);
  out->set_timestamp(cosignature.timestamp);
  out->set_signature(std::string(cosignature.signature.begin(), cosignature.signature.end()));
  Append(std::move(record));
  return OkStatus();
}

Status CheckpointSigner::CosignLatest() {
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(*state_);
  if (latest.status().code() == StatusCode::kNotFound) return OkStatus();
  FP_RETURN_IF_ERROR(latest.status());
  const auto& names = latest->cosigners;
  if (std::find(names.begin(), names.end(), cosigner_.name()) != names.end()) return OkStatus();
  DbStateReader reader(state_);
  FP_ASSIGN_OR_RETURN(
      std::optional<pb::CheckpointBody> body,
      reader.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(latest->checkpoint.size)));
  // After a crash the state (no WAL) can be behind the signed notes (synced): the body comes back
  // when the applier replays it, and the next AfterApply tries again.
  recosign_pending_ = !body.has_value();
  if (recosign_pending_) return OkStatus();
  return ShouldCosign(*body) ? Cosign(*body) : OkStatus();
}

void CheckpointSigner::Append(pb::LogRecord record) {
  std::weak_ptr<Retries> retries = retries_;
  pb::LogRecord copy = record;
  log_->Append(std::move(record), [retries, copy = std::move(copy)](StatusOr<uint64_t> position) {
    if (position.ok()) return;
    const StatusCode code = position.status().code();
    std::shared_ptr<Retries> queue = retries.lock();
    if (queue == nullptr ||
        (code != StatusCode::kUnavailable && code != StatusCode::kDeadlineExceeded)) {
      LogWarn("supervisor", "cosignature not appended",
              {{"size", copy.cosignature().size()}, {"status", position.status()}});
      return;
    }
    std::lock_guard lock(queue->mutex);
    if (queue->records.size() < kMaxCosignatureRetries) queue->records.push_back(copy);
  });
}

Status CheckpointSigner::AfterApply(const Effects& effects) {
  if (cosignatures_applied_ != nullptr) {
    cosignatures_applied_->Increment(static_cast<double>(effects.cosignatures_applied));
    cosignatures_rejected_->Increment(static_cast<double>(effects.cosignatures_rejected));
  }
  std::vector<pb::LogRecord> retry;
  {
    std::lock_guard lock(retries_->mutex);
    retry.swap(retries_->records);
  }
  for (pb::LogRecord& record : retry) Append(std::move(record));
  const bool was_member = confirmed_;
  FP_RETURN_IF_ERROR(CheckMembership());
  if (confirmed_ && was_member && recosign_pending_) FP_RETURN_IF_ERROR(CosignLatest());
  if (confirmed_ && (effects.checkpoint || !was_member || backlog_)) {
    FP_RETURN_IF_ERROR(SignPending().status());
  }
  return OkStatus();
}

StatusOr<size_t> CheckpointSigner::SignPending() {
  if (!confirmed_) return size_t{0};
  std::optional<SignedCheckpoint> previous;
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(*state_);
  if (latest.ok()) {
    previous = std::move(*latest);
  } else if (latest.status().code() != StatusCode::kNotFound) {
    return latest.status();
  }
  DbStateReader reader(state_);
  LedgerNodeReader nodes(&reader);
  std::unique_ptr<rocksdb::Iterator> it = state_->NewIterator(kCheckpoints);
  if (previous.has_value()) {
    it->Seek(ToSlice(U64Key(previous->checkpoint.size + 1)));
  } else {
    it->SeekToFirst();
  }
  size_t signed_count = 0;
  for (; it->Valid() && signed_count < kMaxSignPerCall; it->Next()) {
    pb::CheckpointBody body;
    if (!body.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError("stored checkpoint body does not parse");
    }
    FP_ASSIGN_OR_RETURN(Hash root, ParseHash(body.root()));
    // Pair the checks: the body's root must be what the stored nodes give ...
    FP_ASSIGN_OR_RETURN(Hash recomputed, merkle::RootAt(nodes, body.size()));
    if (recomputed != root) {
      return DataLossError(
          fmt::format("checkpoint {} root differs from the stored ledger", body.size()));
    }
    // ... and it must extend the previous signed checkpoint (every tree extends the empty one).
    if (previous.has_value() && previous->checkpoint.size > 0) {
      const tlog::Checkpoint& before = previous->checkpoint;
      FP_ASSIGN_OR_RETURN(std::vector<Hash> proof,
                          merkle::ConsistencyProof(nodes, before.size, body.size()));
      Status consistent =
          merkle::VerifyConsistency(before.size, body.size(), proof, before.root, root);
      if (!consistent.ok()) {
        return DataLossError(
            fmt::format("checkpoint {} is not consistent with signed checkpoint {}: {}",
                        body.size(), before.size, consistent.ToString()));
      }
    }
    tlog::Checkpoint checkpoint{origin_, body.size(), root, {}};
    FP_ASSIGN_OR_RETURN(
        std::string note,
        tlog::SignCheckpoint(checkpoint, std::span<const tlog::NoteSigner>(&signer_, 1)));
    rocksdb::WriteBatch batch;
    batch.Put(state_->handle(kSigned), U64Key(body.size()), note);
    rocksdb::WriteOptions synced;
    synced.sync = true;
    FP_RETURN_IF_ERROR(FromRocks(state_->db()->Write(synced, &batch), "write signed checkpoint"));
    if (ShouldCosign(body)) FP_RETURN_IF_ERROR(Cosign(body));
    previous = SignedCheckpoint{std::move(checkpoint), std::move(note), {}};
    ++signed_count;
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan checkpoints"));
  backlog_ = signed_count == kMaxSignPerCall;
  return signed_count;
}

}  // namespace fp::supervisor
