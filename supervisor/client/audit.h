// Offline audit of a verified session: what `fieldprint audit`, `fieldprint verify` and the demo
// check, against a supervisor key the auditor pinned beforehand.
//
// Fetching and checking are separate. FetchAuditMaterial gathers the session's tlog-proof bundle
// (common/tlog/proof_bundle.h; its extra data is the ledger entry, supervisor/state/state.proto
// LedgerEntry) and, optionally, the inclusion proof of every step leaf. VerifyAudit then trusts
// none of it and checks, with no network:
//   1. checkpoint   the bundle's checkpoint note is signed by the pinned key, for the expected
//                   origin (tlog::OpenCheckpoint), and, when the auditor pinned cosigners (the
//                   supervisors' C2SP cosignature/v1 keys), cosigned by at least k of them
//                   (tlog::OpenCosignedCheckpoint: a pinned cosigner's line that does not verify
//                   fails the check too);
//   2. inclusion    the ledger entry's RFC 6962 leaf hash is at the bundle's index in that
//                   checkpoint's tree (tlog::VerifyProofBundle);
//   3. record       the entry is a session record of the audited session;
//   4. steps        every step leaf, rebuilt from (session, step, token, state digest) with
//                   leaf::StepLeafHash, is at its step in the tree of the record's `steps` leaves
//                   whose root is the record's session root (proofs come from the server, roots
//                   and sizes from the signed record, never from the server's claims);
//   5. output       SHA-256 of the step leaves' tokens equals the record's output hash, so the
//                   output the client saw is the one the ledger vouches for.
// Checks 4 and 5 run only when step proofs were fetched.
//
// Thread-safety: value types and pure functions, except FetchAuditMaterial (network, one client).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/note.h"
#include "supervisor/client/api_client.h"

namespace fp::client {

// Step proofs one audit fetches and checks (the wire bound on a session's tokens).
inline constexpr uint64_t kMaxAuditSteps = 256 * 1024;

// The cosigners an auditor pinned and how many of them must vouch for the checkpoint.
struct CosignerPolicy {
  std::vector<tlog::CosignatureVerifier> cosigners;  // n, distinct
  size_t required = 0;                               // k: 0 with no cosigners, else 1..n
};

// The policy of `--cosigner VKEY` (each of `keys`) and `--min-cosigners K` (`min_cosigners`;
// default: every pinned cosigner, so 0 when none is pinned). InvalidArgument for a bad or
// repeated key, K above the number pinned, or K = 0 with cosigners pinned (pin none to demand
// none).
StatusOr<CosignerPolicy> MakeCosignerPolicy(const std::vector<std::string>& keys,
                                            std::optional<size_t> min_cosigners);

struct AuditMaterial {
  std::string session_id;                           // 32 hex characters
  std::string bundle;                               // tlog-proof bundle text
  std::optional<std::vector<StepProofView>> steps;  // proofs of steps 0..steps-1, if fetched
};

// Fetches the bundle (retrying while no signed checkpoint covers the record yet, and while its
// checkpoint carries lines of fewer than `cosigners.required` pinned cosigners, until `timeout`:
// cosignatures reach a supervisor a moment after its signature) and, when `with_steps`, the proof
// of every step the bundle's record names (at most kMaxAuditSteps). Errors of the API;
// DeadlineExceeded when no checkpoint covers the record in time (a bundle still short of
// cosignatures at the deadline is returned, for VerifyAudit to report); InvalidArgument when the
// bundle does not carry a session record to read the step count from.
StatusOr<AuditMaterial> FetchAuditMaterial(ApiClient& api, const std::string& session_id,
                                           bool with_steps, std::chrono::milliseconds timeout,
                                           const CosignerPolicy& cosigners = {});

struct AuditCheck {
  std::string name;  // "checkpoint", "inclusion", "record", "steps", "output"
  bool ok = false;
  std::string detail;  // what was checked, or why it failed
};

struct AuditReport {
  std::vector<AuditCheck> checks;  // in order; checks after a failed prerequisite are absent
  // From the verified material (set as far as the checks got).
  std::string origin;
  std::string key;                       // the pinned verifier key's name and ID: "name+hexid"
  size_t cosigners_required = 0;         // k of the cosigner policy
  std::vector<std::string> cosigned_by;  // pinned cosigners whose valid lines the note carries
  uint64_t checkpoint_size = 0;
  Hash checkpoint_root{};
  uint64_t ledger_index = 0;
  Hash entry_leaf_hash{};
  std::string session_id;
  std::string model;
  uint64_t steps = 0;
  uint32_t replicas = 0;
  uint32_t divergences = 0;
  Hash session_root{};
  Hash prompt_hash{};
  Hash output_hash{};
  Hash numerics_profile{};
  std::vector<uint32_t> output_tokens;  // when the steps were checked

  // True when every check ran and passed.
  bool ok() const;
  // The first failed check as a Status (DataLoss, or Unauthenticated for the checkpoint); OK
  // when ok().
  Status status() const;
};

// Runs the checks above. `origin` empty means the key's name (a supervisor signs checkpoints
// with a key named after its origin); `cosigners` is the cosigner policy of check 1 (none by
// default). Never fails as a function: failures are in the report (a cosigner shortfall or a
// forged cosignature fails the checkpoint check, Unauthenticated).
AuditReport VerifyAudit(const AuditMaterial& material, const tlog::NoteVerifier& key,
                        std::string_view origin, const CosignerPolicy& cosigners = {});

// Checks 1-3 for a bundle on its own (`fieldprint verify`): `leaf_hash` overrides the hash of the
// bundle's extra data; `session_id` empty skips the session check of a session record. A bundle
// whose extra data is not a session record passes check 3 only when `leaf_hash` is given.
AuditReport VerifyBundle(std::string_view bundle_text, std::optional<Hash> leaf_hash,
                         const tlog::NoteVerifier& key, std::string_view origin,
                         const CosignerPolicy& cosigners = {});

// The human report (one line per check, then the record) and its JSON form.
std::string FormatAuditReport(const AuditReport& report);
boost::json::object AuditReportJson(const AuditReport& report);

// Parses a verifier key given as text, or read from `path` (one line; surrounding whitespace is
// ignored). Exactly one of the two must be non-empty. InvalidArgument otherwise or for a bad key;
// NotFound for an unreadable file.
StatusOr<tlog::NoteVerifier> LoadVerifierKey(std::string_view key_text, const std::string& path);

}  // namespace fp::client
