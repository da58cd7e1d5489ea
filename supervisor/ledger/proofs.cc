// Audit proofs; see proofs.h.
#include "supervisor/ledger/proofs.h"

#include <fmt/format.h>

#include "common/merkle/merkle.h"
#include "common/tlog/proof_bundle.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

Status AsDataLoss(const Status& status, std::string_view what) {
  if (status.ok()) return status;
  return DataLossError(fmt::format("{} does not verify: {}", what, status.ToString()));
}

}  // namespace

StatusOr<StepProof> ProveStep(const StateReader& reader, const std::string& session,
                              uint64_t step) {
  FP_ASSIGN_OR_RETURN(std::optional<pb::SessionState> state,
                      reader.GetMessage<pb::SessionState>(kSessions, session));
  if (!state.has_value()) return NotFoundError("no such session");
  StepProof result;
  result.step = step;
  result.size = state->verified_steps();
  result.session_verified = state->phase() == pb::SESSION_PHASE_VERIFIED;
  if (step >= result.size) {
    return FailedPreconditionError(
        fmt::format("step {} is not verified yet ({} steps are)", step, result.size));
  }
  // Every replica that stores the whole verified prefix stores the same verified leaves.
  std::optional<uint32_t> source;
  for (uint32_t r = 0; r < static_cast<uint32_t>(state->replicas_size()); ++r) {
    if (state->replicas(r).stored() >= result.size) {
      source = r;
      break;
    }
  }
  if (!source.has_value()) return DataLossError("no replica stores the verified prefix");
  result.replica = *source;
  ReplicaNodeReader nodes(&reader, session, *source);
  if (result.session_verified) {
    // The recorded session root; the proof below is checked against it, which catches any
    // stored node that no longer leads there.
    FP_ASSIGN_OR_RETURN(result.root, ParseHash(state->session_root()));
  } else {
    FP_ASSIGN_OR_RETURN(result.root, merkle::RootAt(nodes, result.size));
  }
  StatusOr<StoredLeaf> leaf = nodes.ReadLeaf(step);
  if (!leaf.ok()) return DataLossError("verified leaf missing: " + leaf.status().ToString());
  result.leaf = *leaf;
  FP_ASSIGN_OR_RETURN(result.proof, merkle::InclusionProof(nodes, step, result.size));
  FP_RETURN_IF_ERROR(AsDataLoss(
      merkle::VerifyInclusion(result.leaf.leaf_hash, step, result.size, result.proof, result.root),
      "step inclusion proof"));
  return result;
}

StatusOr<LedgerProof> ProveSessionRecord(const RocksStore& state, const std::string& session,
                                         std::optional<uint64_t> size) {
  DbStateReader reader(&state);
  FP_ASSIGN_OR_RETURN(std::optional<std::string> index_bytes,
                      reader.Get(kLedger, LedgerSessionKey(session)));
  if (!index_bytes.has_value()) return NotFoundError("the session is not in the ledger yet");
  LedgerProof result;
  FP_ASSIGN_OR_RETURN(result.index, ParseU64(*index_bytes));
  if (size.has_value()) {
    FP_ASSIGN_OR_RETURN(result.checkpoint, SignedCheckpointAt(reader, *size));
  } else {
    FP_ASSIGN_OR_RETURN(result.checkpoint, LatestSignedCheckpoint(state));
  }
  const tlog::Checkpoint& checkpoint = result.checkpoint.checkpoint;
  if (result.index >= checkpoint.size) {
    return FailedPreconditionError(fmt::format(
        "the session record (index {}) is not in the checkpoint of size {} yet; retry after the "
        "next checkpoint",
        result.index, checkpoint.size));
  }
  FP_ASSIGN_OR_RETURN(std::optional<std::string> entry,
                      reader.Get(kLedger, LedgerEntryKey(result.index)));
  if (!entry.has_value()) return DataLossError("ledger entry missing");
  result.entry = std::move(*entry);
  LedgerNodeReader nodes(&reader);
  FP_ASSIGN_OR_RETURN(result.proof, merkle::InclusionProof(nodes, result.index, checkpoint.size));
  FP_RETURN_IF_ERROR(
      AsDataLoss(merkle::VerifyInclusion(merkle::LeafHash(AsBytes(result.entry)), result.index,
                                         checkpoint.size, result.proof, checkpoint.root),
                 "ledger inclusion proof"));
  return result;
}

StatusOr<ConsistencyProofResult> ProveConsistency(const RocksStore& state, uint64_t from,
                                                  uint64_t to) {
  FP_ASSIGN_OR_RETURN(SignedCheckpoint latest, LatestSignedCheckpoint(state));
  if (from == 0 || from > to || to > latest.checkpoint.size) {
    return InvalidArgumentError(
        fmt::format("need 0 < from <= to <= {} (the latest checkpoint)", latest.checkpoint.size));
  }
  DbStateReader reader(&state);
  LedgerNodeReader nodes(&reader);
  ConsistencyProofResult result;
  FP_ASSIGN_OR_RETURN(result.from_root, merkle::RootAt(nodes, from));
  FP_ASSIGN_OR_RETURN(result.to_root, merkle::RootAt(nodes, to));
  FP_ASSIGN_OR_RETURN(result.proof, merkle::ConsistencyProof(nodes, from, to));
  FP_RETURN_IF_ERROR(AsDataLoss(
      merkle::VerifyConsistency(from, to, result.proof, result.from_root, result.to_root),
      "consistency proof"));
  if (to == latest.checkpoint.size && result.to_root != latest.checkpoint.root) {
    return DataLossError("the ledger's root differs from its latest signed checkpoint");
  }
  return result;
}

StatusOr<std::string> SessionBundle(const RocksStore& state, const std::string& session,
                                    const tlog::NoteVerifier& verifier, std::string_view origin) {
  FP_ASSIGN_OR_RETURN(LedgerProof proof, ProveSessionRecord(state, session, std::nullopt));
  tlog::ProofBundle bundle;
  bundle.extra.assign(proof.entry.begin(), proof.entry.end());
  bundle.index = proof.index;
  bundle.proof = proof.proof;
  bundle.checkpoint_note = proof.checkpoint.note;
  FP_ASSIGN_OR_RETURN(std::string text, tlog::FormatProofBundle(bundle));
  FP_RETURN_IF_ERROR(
      AsDataLoss(tlog::VerifyProofBundle(bundle, merkle::LeafHash(AsBytes(proof.entry)),
                                         std::span<const tlog::NoteVerifier>(&verifier, 1), origin)
                     .status(),
                 "proof bundle"));
  return text;
}

}  // namespace fp::supervisor
