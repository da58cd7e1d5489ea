// The deterministic applier: consumes the replicated log in order and derives the supervisor's
// state in RocksDB. Spec: docs/supervisor.md, "Applier rules" and "Comparator decisions".
//
// Determinism: the state after applying positions [0, n) depends only on those records and on
// ApplierOptions (which every supervisor of a cluster shares). The applier reads no clock (time
// is the largest Tick applied), no randomness and no local configuration beyond its options, and
// it serializes every value deterministically. Same log in, same bytes out.
//
// Atomicity: Apply writes one RocksDB WriteBatch holding every change of its records together with
// the applied position, so after a crash the state is exactly that after some prefix of the log,
// and applying resumes from the stored position.
//
// Invalid records (a stale epoch, a gap in steps, an unknown session, a bad request) change
// nothing but are reported in Effects::rejections; storage errors abort the whole Apply and
// commit nothing.
//
// Thread-safety: one thread applies; applied() may be read from any thread. Readers of the state
// use DbStateReader concurrently and see whole applied groups only.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/merkle/merkle.h"
#include "common/tlog/note.h"
#include "supervisor/log/log.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

// Rejection reasons kept per Apply for logs; the count is always exact.
inline constexpr size_t kMaxReportedRejections = 16;
// Bytes of an operator's release note kept in the worker's state.
inline constexpr size_t kMaxReleaseReasonBytes = 256;
// Registered cosigners: a served checkpoint carries the ledger's signature and one line per
// cosigner, and a note holds at most tlog::kMaxNoteSignatures lines.
inline constexpr size_t kMaxCosigners = 15;
static_assert(kMaxCosigners + 1 <= tlog::kMaxNoteSignatures);

struct ApplierOptions {
  // A worker whose divergences (all sessions) reach this many is quarantined.
  uint32_t quarantine_divergences = 8;
  // A session waiting for placement this long (leader clock) fails when the leader proposes it
  // (PlacementExpired); 0 never fails one.
  uint64_t placement_timeout_ms = 600'000;
};

// What an Apply changed that the rest of the supervisor must act on. Derived from the records
// and the state, never stored: after a crash the runtime resends from the state instead.
struct Effects {
  std::vector<std::string> progressed;   // sessions whose verified prefix or phase changed
  std::vector<pb::Order> orders;         // new orders (rollbacks, rebuilds, replacements)
  std::vector<pb::Assign> assignments;   // new placements to deliver
  std::vector<std::string> quarantined;  // workers quarantined
  std::vector<std::string> released;     // workers released from quarantine
  // Replicas of sessions that failed, as (worker, session): the workers must drop them.
  std::vector<std::pair<std::string, std::string>> aborted;
  uint64_t placement_timeouts = 0;      // sessions failed because they could not be placed
  std::vector<std::string> rejections;  // up to kMaxReportedRejections reasons
  uint64_t rejected = 0;
  uint64_t leaves = 0;  // leaves appended to session trees
  uint64_t divergences = 0;
  uint64_t verified_sessions = 0;
  bool checkpoint = false;             // a checkpoint body was taken
  uint64_t cosignatures_applied = 0;   // Cosignature records verified and stored
  uint64_t cosignatures_rejected = 0;  // Cosignature records rejected (also in `rejected`)
};

class Applier {
 public:
  // Loads the applied position, clock and ledger frontier from `state` (borrowed; must outlive
  // the applier). DataLoss when they do not parse. The caller owns the applier.
  static StatusOr<std::unique_ptr<Applier>> Open(RocksStore* state, const ApplierOptions& options);
  ~Applier();
  Applier(const Applier&) = delete;
  Applier& operator=(const Applier&) = delete;

  // Applies `entries`, whose positions must run contiguously from applied() (FP_CHECKed), as one
  // atomic write. On error nothing is written and applied() is unchanged.
  StatusOr<Effects> Apply(std::span<const LogEntry> entries);

  // The next position to apply.
  uint64_t applied() const { return applied_.load(std::memory_order_acquire); }
  // Entries in the ledger and sessions per phase, as of the last Apply; any thread.
  uint64_t ledger_size() const;
  pb::PhaseCounts phases() const;

 private:
  class Run;
  Applier(RocksStore* state, const ApplierOptions& options);

  RocksStore* state_;  // borrowed
  ApplierOptions options_;
  std::atomic<uint64_t> applied_{0};
  uint64_t clock_ms_ = 0;
  merkle::Frontier ledger_;
  uint64_t last_checkpoint_size_ = 0;
  bool has_checkpoint_ = false;
  mutable std::mutex mutex_;
  pb::PhaseCounts phases_;    // guarded by mutex_
  uint64_t ledger_size_ = 0;  // guarded by mutex_
};

// Reads the applier's bookkeeping from a state store (for tools such as fsck and tests).
struct AppliedMeta {
  uint64_t applied = 0;
  uint64_t clock_ms = 0;
  pb::LedgerFrontier ledger;
  std::optional<uint64_t> last_checkpoint_size;
  pb::PhaseCounts phases;
};
StatusOr<AppliedMeta> ReadAppliedMeta(const StateReader& reader);

}  // namespace fp::supervisor
