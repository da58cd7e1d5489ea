// Audit proofs served by the supervisor: a step leaf in a session root, a session record in a
// signed checkpoint, consistency between ledger sizes, and self-contained tlog-proof bundles.
//
// Every proof is verified (merkle::VerifyInclusion / VerifyConsistency, or the bundle's own
// verifier) against the root it claims before it is returned, so a corrupt node in storage turns
// into a DataLoss error instead of a wrong proof handed to an auditor.
//
// Error codes: NotFound for an unknown session or a session not in the ledger yet;
// FailedPrecondition for a step not verified yet or a record not covered by the checkpoint asked
// for; InvalidArgument for impossible sizes; DataLoss when storage gives a proof that does not
// verify; Unavailable from storage.
//
// Thread-safety: pure reads; safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/tlog/note.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/state_store.h"

namespace fp::supervisor {

struct StepProof {
  uint64_t step = 0;
  uint64_t size = 0;  // the session tree size the proof is for (the verified steps)
  Hash root{};        // the session root at that size
  bool session_verified = false;
  uint32_t replica = 0;  // the replica whose stored tree served the proof
  StoredLeaf leaf;
  std::vector<Hash> proof;
};

// Inclusion of step `step`'s leaf in the session tree of the verified prefix (the session root
// once the session is verified).
StatusOr<StepProof> ProveStep(const StateReader& reader, const std::string& session, uint64_t step);

struct LedgerProof {
  uint64_t index = 0;
  std::string entry;  // the ledger entry's bytes; its leaf hash is merkle::LeafHash(entry)
  SignedCheckpoint checkpoint;
  std::vector<Hash> proof;
};

// Inclusion of the session's record in the signed checkpoint of `size` leaves (the latest signed
// checkpoint when nullopt).
StatusOr<LedgerProof> ProveSessionRecord(const RocksStore& state, const std::string& session,
                                         std::optional<uint64_t> size);

struct ConsistencyProofResult {
  Hash from_root{};
  Hash to_root{};
  std::vector<Hash> proof;
};

// Consistency between ledger sizes `from` and `to`, 0 < from <= to <= the latest signed
// checkpoint's size.
StatusOr<ConsistencyProofResult> ProveConsistency(const RocksStore& state, uint64_t from,
                                                  uint64_t to);

// The session record's tlog-proof bundle (common/tlog/proof_bundle.h) against the latest signed
// checkpoint, with the ledger entry as the bundle's extra data. The bundle is verified with
// `verifier` and `origin` before it is returned.
StatusOr<std::string> SessionBundle(const RocksStore& state, const std::string& session,
                                    const tlog::NoteVerifier& verifier, std::string_view origin);

}  // namespace fp::supervisor
