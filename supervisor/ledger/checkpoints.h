// Ledger checkpoints: signing the checkpoint bodies the applier takes, cosigning them, joining the
// cluster's cosigners, and the two key files. Spec: docs/supervisor.md, "Ledger and checkpoints".
//
// Keys. The ledger key (DIR/checkpoint.key, a C2SP note key named after the origin) is the log's
// identity and is shared by every supervisor of a cluster, like its TLS files. Ed25519 signatures
// are deterministic, so every supervisor signs each checkpoint body itself and stores the same
// note bytes without a log record. The cosigner key (DIR/cosigner.key, named after the
// supervisor's TLS name) is this supervisor's own: with it, it vouches (C2SP tlog-cosignature)
// that a checkpoint is consistent with every one it signed before.
//
// Membership. Join appends a CosignerJoined record (this supervisor's name, cosigner key and
// ledger key). The applier registers it, or refuses it when its ledger key differs from the
// first one registered or its name is registered with another cosigner key; once the record is
// applied, this supervisor checks that it was registered and otherwise fails with
// FailedPrecondition, having signed nothing: a supervisor whose note would differ from the
// cluster's never serves one.
//
// Signing. The applier records a CheckpointBody (size, root) when it applies a CheckpointRequest;
// that part is deterministic. Signing happens here, after the body is committed: the signer
// recomputes the body's root from the stored ledger nodes and verifies a consistency proof from
// the previous signed checkpoint, so this supervisor never signs (or cosigns) a checkpoint that
// contradicts one it signed before. It then cosigns the body, with the body's leader clock in
// seconds as the timestamp (so a retry after a crash is the same record), and appends a
// Cosignature record; the applier verifies it against the body and stores it. It cosigns every
// body taken after its CosignerJoined record and the last one taken before it (so a new member
// vouches for the current checkpoint, not for the whole history).
//
// Serving. SignedCheckpointAt and LatestSignedCheckpoint return the signed note with every stored
// cosignature line appended, sorted by cosigner name: the same text from every supervisor that
// applied the same records.
//
// Thread-safety: a CheckpointSigner is used by one thread at a time (the runtime's start, then
// its applier thread, then its drain); the log's completion callbacks only touch a mutex-guarded
// retry queue. The free functions are safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/tlog/checkpoint.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/note.h"
#include "supervisor/log/log.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace prometheus {
class Counter;
class Registry;
}  // namespace prometheus

namespace fp::supervisor {

// Name of the ledger key file inside the data directory (the same file on every supervisor).
inline constexpr std::string_view kCheckpointKeyFile = "checkpoint.key";
// Name of this supervisor's cosigner key file inside the data directory.
inline constexpr std::string_view kCosignerKeyFile = "cosigner.key";
// Checkpoint bodies signed per SignPending call; the rest wait for the next call.
inline constexpr size_t kMaxSignPerCall = 64;
// Cosignature records whose append failed, kept to be appended again after the next applied
// group; more are dropped (a later checkpoint is cosigned anyway).
inline constexpr size_t kMaxCosignatureRetries = 64;

// Reads the ledger key from `path`, or creates one named `origin` (mode 0600) if the file does not
// exist. FailedPrecondition when the stored key's name is not `origin` (the log's identity would
// change); InvalidArgument for a malformed key file; Unavailable on I/O errors.
StatusOr<tlog::NoteSigner> LoadOrCreateSigner(const std::string& path, std::string_view origin);
// Reads the ledger key from `path` without creating it: NotFound when the file does not exist,
// otherwise as LoadOrCreateSigner.
StatusOr<tlog::NoteSigner> LoadSigner(const std::string& path, std::string_view origin);

// Reads the cosigner key from `path` (tlog::Cosigner::Parse format), or creates one named `name`
// (mode 0600) if the file does not exist. FailedPrecondition when the stored key's name is not
// `name` (the supervisor's TLS name changed); InvalidArgument for a malformed key file;
// Unavailable on I/O errors.
StatusOr<tlog::Cosigner> LoadOrCreateCosigner(const std::string& path, std::string_view name);
// Reads the cosigner key from `path` without creating it: NotFound when the file does not exist,
// otherwise as LoadOrCreateCosigner.
StatusOr<tlog::Cosigner> LoadCosigner(const std::string& path, std::string_view name);

struct SignedCheckpoint {
  tlog::Checkpoint checkpoint;
  // The signed note followed by every stored cosignature line, sorted by cosigner name.
  std::string note;
  std::vector<std::string> cosigners;  // names of the cosigners whose lines `note` carries
};

// The cluster's registered cosigners and ledger key as applied (empty when none joined yet).
// DataLoss when the stored value does not parse; Unavailable from storage.
StatusOr<pb::CosignerSet> RegisteredCosigners(const StateReader& reader);

class CheckpointSigner {
 public:
  // Borrows `state` and `log` (both must outlive the signer; the log's callbacks may outlive it)
  // and `registry` (nullable: no metrics); takes the keys. The origin is the ledger key's name.
  CheckpointSigner(RocksStore* state, Log* log, tlog::NoteSigner ledger_key,
                   tlog::Cosigner cosigner, prometheus::Registry* registry);
  CheckpointSigner(const CheckpointSigner&) = delete;
  CheckpointSigner& operator=(const CheckpointSigner&) = delete;

  // Appends this supervisor's CosignerJoined record and waits until it is durable (a restart's
  // append is a no-op), then checks membership if the state has applied the record already.
  // FailedPrecondition when the applied state holds another ledger key, when the log or the state
  // registers this name with another cosigner key, or when the applier refused the record;
  // Unavailable (retryable) or DeadlineExceeded from the log. Call once, before the others.
  Status Join();

  // Called after each applied group: counts the group's cosignatures, appends again the
  // Cosignature records whose append failed, confirms membership once the CosignerJoined record is
  // applied (FailedPrecondition when the applier refused it), and then signs and cosigns pending
  // checkpoints. DataLoss or Unavailable as SignPending.
  Status AfterApply(const Effects& effects);

  // Once membership is confirmed: signs every stored checkpoint body newer than the last signed
  // checkpoint, oldest first, up to kMaxSignPerCall, and cosigns those described at the top.
  // Returns how many were signed (0 before membership is confirmed). DataLoss, and nothing more
  // signed, when a body's root does not match the stored nodes or is not consistent with the
  // previous signed checkpoint; Unavailable from storage. A failed Cosignature append is retried
  // by AfterApply, not reported here.
  StatusOr<size_t> SignPending();

  // True once the applied state registered this supervisor with its keys.
  bool member() const { return confirmed_; }
  const std::string& origin() const { return origin_; }
  const tlog::NoteVerifier& verifier() const { return verifier_; }
  const tlog::CosignatureVerifier& cosigner_verifier() const { return cosigner_verifier_; }

 private:
  struct Retries;
  Status CheckMembership();
  // Whether this supervisor cosigns `body` (see the top of this file).
  bool ShouldCosign(const pb::CheckpointBody& body) const;
  // Cosigns `body` and appends the record in the background.
  Status Cosign(const pb::CheckpointBody& body);
  // Cosigns the latest signed checkpoint when it should and the state lacks this cosigner's line
  // (an append lost in a crash); sets recosign_pending_ while the state lacks its body.
  Status CosignLatest();
  void Append(pb::LogRecord record);
  // The last body taken before the CosignerJoined record, if any.
  StatusOr<std::optional<uint64_t>> AnchorSize() const;

  RocksStore* state_;  // borrowed
  Log* log_;           // borrowed
  std::string origin_;
  tlog::NoteSigner signer_;
  tlog::NoteVerifier verifier_;
  tlog::Cosigner cosigner_;
  tlog::CosignatureVerifier cosigner_verifier_;
  prometheus::Counter* cosignatures_applied_ = nullptr;   // borrowed from the registry; nullable
  prometheus::Counter* cosignatures_rejected_ = nullptr;  // borrowed from the registry; nullable
  std::shared_ptr<Retries> retries_;                      // shared with the log's callbacks
  std::optional<uint64_t> join_position_;
  std::optional<uint64_t> anchor_size_;
  bool confirmed_ = false;
  bool backlog_ = false;           // the last SignPending stopped at kMaxSignPerCall
  bool recosign_pending_ = false;  // CosignLatest waits for the applier to replay a body
};

// The latest signed checkpoint, or NotFound when none is signed yet.
StatusOr<SignedCheckpoint> LatestSignedCheckpoint(const RocksStore& state);
// The signed checkpoint of exactly `size` leaves, or NotFound.
StatusOr<SignedCheckpoint> SignedCheckpointAt(const StateReader& reader, uint64_t size);

}  // namespace fp::supervisor
