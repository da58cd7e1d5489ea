// Checkpoint signing; see checkpoints.h.
#include "supervisor/ledger/checkpoints.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/merkle/merkle.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

// Upper bound of a signer key file ("PRIVATE+KEY+" + name + key id + base64 seed).
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
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return NotFoundError(
        fmt::format("{} does not exist (a supervisor creates it on its first start)", path));
  }
  if (std::filesystem::file_size(path, error) > kMaxKeyFileBytes || error) {
    return InvalidArgumentError(fmt::format("{} is not a signer key file", path));
  }
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  if (!file) return UnavailableError(fmt::format("cannot read {}", path));
  std::string key = text.str();
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  StatusOr<tlog::NoteSigner> signer = tlog::NoteSigner::Parse(key);
  if (!signer.ok()) return signer.status().WithContext(path);
  if (signer->name() != origin) {
    return FailedPreconditionError(
        fmt::format("{} signs for origin '{}', but the configured origin is '{}'", path,
                    signer->name(), origin));
  }
  return signer;
}

CheckpointSigner::CheckpointSigner(RocksStore* state, std::string origin, tlog::NoteSigner signer)
    : state_(state),
      origin_(std::move(origin)),
      signer_(std::move(signer)),
      verifier_(signer_.Verifier()) {}

StatusOr<SignedCheckpoint> SignedCheckpointAt(const StateReader& reader, uint64_t size) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> note, reader.Get(kSigned, U64Key(size)));
  if (!note.has_value()) return NotFoundError(fmt::format("no signed checkpoint of size {}", size));
  StatusOr<tlog::ParsedNote> parsed = tlog::ParseNote(*note);
  if (!parsed.ok()) return DataLossError("stored checkpoint note: " + parsed.status().ToString());
  StatusOr<tlog::Checkpoint> checkpoint = tlog::ParseCheckpoint(parsed->text);
  if (!checkpoint.ok())
    return DataLossError("stored checkpoint: " + checkpoint.status().ToString());
  return SignedCheckpoint{std::move(*checkpoint), std::move(*note)};
}

StatusOr<SignedCheckpoint> LatestSignedCheckpoint(const RocksStore& state) {
  std::unique_ptr<rocksdb::Iterator> it = state.NewIterator(kSigned);
  it->SeekToLast();
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan signed checkpoints"));
  if (!it->Valid()) return NotFoundError("no checkpoint is signed yet");
  FP_ASSIGN_OR_RETURN(uint64_t size, ParseU64(ToView(it->key())));
  return SignedCheckpointAt(DbStateReader(&state), size);
}

StatusOr<size_t> CheckpointSigner::SignPending() {
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
            fmt::format("checkpoint {} is not consistent with signed checkpoint "
                        "{}: {}",
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
    previous = SignedCheckpoint{std::move(checkpoint), std::move(note)};
    ++signed_count;
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan checkpoints"));
  return signed_count;
}

}  // namespace fp::supervisor
