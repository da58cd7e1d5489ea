// Ledger checkpoints: signing the checkpoint bodies the applier takes, and the signing key file.
//
// The applier records a CheckpointBody (size, root) when it applies a CheckpointRequest; that
// part is deterministic. Signing happens here, after the body is committed, because the signature
// depends on this supervisor's key. Before signing a body the signer recomputes its root from the
// stored ledger nodes and verifies a consistency proof from the previous signed checkpoint, so
// this supervisor never signs a checkpoint that contradicts one it signed before. Signed notes
// are C2SP signed notes (common/tlog/checkpoint.h) stored in the `signed` family.
//
// Thread-safety: SignPending runs on one thread (the applier's, after each commit); Latest and
// the free functions are safe from any thread.
#pragma once

#include <cstdint>
#include <string>

#include "common/tlog/checkpoint.h"
#include "common/tlog/note.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

// Name of the signer key file inside the data directory.
inline constexpr std::string_view kCheckpointKeyFile = "checkpoint.key";
// Checkpoint bodies signed per SignPending call; the rest wait for the next call.
inline constexpr size_t kMaxSignPerCall = 64;

// Reads the signer key from `path`, or creates one named `origin` (mode 0600) if the file does not
// exist. FailedPrecondition when the stored key's name is not `origin` (the log's identity would
// change); InvalidArgument for a malformed key file; Unavailable on I/O errors.
StatusOr<tlog::NoteSigner> LoadOrCreateSigner(const std::string& path, std::string_view origin);
// Reads the signer key from `path` without creating it: NotFound when the file does not exist,
// otherwise as LoadOrCreateSigner.
StatusOr<tlog::NoteSigner> LoadSigner(const std::string& path, std::string_view origin);

struct SignedCheckpoint {
  tlog::Checkpoint checkpoint;
  std::string note;  // the signed note text
};

class CheckpointSigner {
 public:
  // Borrows `state` (must outlive the signer); takes the key.
  CheckpointSigner(RocksStore* state, std::string origin, tlog::NoteSigner signer);

  // Signs every stored checkpoint body newer than the last signed checkpoint, oldest first, up to
  // kMaxSignPerCall. Returns how many were signed. DataLoss, and nothing more signed, when a
  // body's root does not match the stored nodes or is not consistent with the previous signed
  // checkpoint; Unavailable from storage.
  StatusOr<size_t> SignPending();

  const std::string& origin() const { return origin_; }
  const tlog::NoteVerifier& verifier() const { return verifier_; }

 private:
  RocksStore* state_;  // borrowed
  std::string origin_;
  tlog::NoteSigner signer_;
  tlog::NoteVerifier verifier_;
};

// The latest signed checkpoint, or NotFound when none is signed yet.
StatusOr<SignedCheckpoint> LatestSignedCheckpoint(const RocksStore& state);
// The signed checkpoint of exactly `size` leaves, or NotFound.
StatusOr<SignedCheckpoint> SignedCheckpointAt(const StateReader& reader, uint64_t size);

}  // namespace fp::supervisor
