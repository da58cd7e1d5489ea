// SimNode: one simulated supervisor's durable half: the real state store (RocksStore on a
// directory of its own), the real Applier and the real CheckpointSigner, with crashes.
//
// The signer writes through the Log it is given (a SimLog, so its CosignerJoined and Cosignature
// records travel like every other append). Every node signs with the cluster's one ledger key and
// cosigns with a key of its own, as the runtime does.
//
// A crash behaves like kill -9: the state store has no WAL, so whatever the applier wrote since
// the last flush is lost, while signed checkpoints (written through the WAL, synced) survive.
// Crash() builds that image with a RocksDB checkpoint that does not flush (the files on disk at
// that instant, WAL included), then destroys the objects and puts the image in place; Start()
// reopens it and the applier continues from the stored applied position.
//
// Thread-safety: none; one thread drives a node.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/base/bytes.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/note.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/sim/log_model.h"
#include "supervisor/state/applier.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor::sim {

// A deliberately wrong supervisor, for tests of the checker.
enum class NodeBug {
  kNone,
  // After a restart, the first read starts one record early and applies the last applied record
  // again at the next position (as a supervisor would that stored its position before applying).
  kReapplyAfterRestart,
};

// Creates an empty state store in `dir` (which must not exist) for SimNode to copy. Errors from
// RocksDB.
Status CreateStoreTemplate(const std::string& dir);

class SimNode {
 public:
  // The node keeps its state in `dir` (created on Start), signs checkpoints of `origin` with the
  // ledger key derived from `ledger_seed` and cosigns them as `name` with the key derived from
  // `cosigner_seed` (32 bytes each). Nothing is opened yet.
  // `store_template` (may be empty) is an empty state store (CreateStoreTemplate) copied to `dir`
  // on the first Start, which is several times cheaper than creating the column families.
  SimNode(std::string dir, std::string store_template, std::string origin, Bytes ledger_seed,
          std::string name, Bytes cosigner_seed, const ApplierOptions& options, NodeBug bug);
  ~SimNode();
  SimNode(const SimNode&) = delete;
  SimNode& operator=(const SimNode&) = delete;

  // Opens the store, the applier and the signer, which joins the cosigners through `log`
  // (borrowed; must outlive the node's next Crash or Stop, and must answer that append before it
  // returns: CheckpointSigner::Join waits for it). FP_CHECKs that the node is down. Errors from
  // RocksDB, Applier::Open and Join; the node is down after an error.
  Status Start(Log* log);
  // Takes the crash image and closes everything (FP_CHECKs that the node is up). Unavailable
  // when the image cannot be made; the node is down either way.
  Status Crash();
  // Closes cleanly (the store flushes), for the end of a run.
  void Stop();
  bool up() const { return store_ != nullptr; }

  // Applies the next records of `model`, at most `max_records` in one Apply, then lets the signer
  // sign and cosign (CheckpointSigner::AfterApply). Returns how many records were applied (0 when
  // caught up). OutOfRange when the records it needs were trimmed; the applier's and the signer's
  // errors otherwise.
  StatusOr<size_t> ApplyNext(const LogModel& model, size_t max_records);
  // Flushes the state, so that a crash keeps everything applied so far. Returns that position.
  StatusOr<uint64_t> Flush();

  uint64_t applied() const;
  // The applied position at the last flush or start: a crash never loses more.
  uint64_t durable_applied() const { return durable_applied_; }
  uint64_t ledger_size() const;
  // The open store (FP_CHECKs up()). Borrowed.
  const RocksStore& store() const;
  const tlog::NoteVerifier& verifier() const { return verifier_; }
  const std::string& dir() const { return dir_; }

 private:
  const std::string dir_;
  const std::string store_template_;
  const std::string origin_;
  const Bytes ledger_seed_;
  const std::string name_;
  const Bytes cosigner_seed_;
  const ApplierOptions options_;
  const NodeBug bug_;
  tlog::NoteVerifier verifier_;
  std::unique_ptr<RocksStore> store_;
  std::unique_ptr<Applier> applier_;          // borrows store_
  std::unique_ptr<CheckpointSigner> signer_;  // borrows store_
  uint64_t durable_applied_ = 0;
  bool restarted_ = false;  // kReapplyAfterRestart: the next ApplyNext is the first after a crash
};

}  // namespace fp::supervisor::sim
