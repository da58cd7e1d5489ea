// Offline audit; see audit.h.
#include "supervisor/client/audit.h"

#include <fstream>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/leaf/session_id.h"
#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/proof_bundle.h"
#include "supervisor/state/state.pb.h"

namespace fp::client {
namespace {

// The ledger formats (supervisor/state/state.proto).
namespace record_pb = ::fieldprint::supervisor;

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

// A verifier key line is short; anything longer is not a key file.
constexpr size_t kMaxKeyFileBytes = 4096;
// How often the fetch retries while no signed checkpoint covers the record.
constexpr std::chrono::milliseconds kBundleRetryInterval{100};

std::string KeyLabel(const tlog::NoteVerifier& key) {
  return fmt::format("{}+{:08x}", key.name(), key.key_id());
}

std::string Short(const Hash& hash) { return HexEncode(hash).substr(0, 16); }

Hash HashOrZero(const std::string& bytes) {
  StatusOr<Hash> hash = HashFromBytes(AsBytes(bytes));
  return hash.ok() ? *hash : Hash{};
}

void Add(AuditReport& report, std::string name, bool ok, std::string detail) {
  report.checks.push_back(AuditCheck{std::move(name), ok, std::move(detail)});
}

// Opens the checkpoint note with the pinned key for `origin` and, with a cosigner policy, its
// pinned cosigners.
StatusOr<tlog::Checkpoint> OpenPinned(const std::string& note, const tlog::NoteVerifier& key,
                                      const CosignerPolicy& cosigners, AuditReport& report) {
  const std::span<const tlog::NoteVerifier> keys(&key, 1);
  if (cosigners.required == 0) {
    FP_ASSIGN_OR_RETURN(tlog::OpenedCheckpoint opened,
                        tlog::OpenCheckpoint(note, keys, report.origin));
    return opened.checkpoint;
  }
  tlog::CosignaturePolicy policy;
  policy.cosigners = cosigners.cosigners;
  policy.required = cosigners.required;
  FP_ASSIGN_OR_RETURN(tlog::CosignedCheckpoint opened,
                      tlog::OpenCosignedCheckpoint(note, keys, report.origin, policy));
  for (size_t index : opened.cosigned_by) {
    report.cosigned_by.push_back(cosigners.cosigners[index].name());
  }
  return opened.checkpoint;
}

std::string CosignedDetail(const AuditReport& report, const CosignerPolicy& cosigners) {
  if (cosigners.required == 0) return "";
  std::string names;
  for (const std::string& name : report.cosigned_by) names += (names.empty() ? "" : ", ") + name;
  return fmt::format("; cosigned by {} ({} of {} pinned cosigners, {} required)", names,
                     report.cosigned_by.size(), cosigners.cosigners.size(), cosigners.required);
}

// Check 1: the checkpoint note opens with the pinned key for `origin`, and enough pinned
// cosigners vouch for it.
bool CheckCheckpoint(const tlog::ProofBundle& bundle, const tlog::NoteVerifier& key,
                     const CosignerPolicy& cosigners, AuditReport& report) {
  report.cosigners_required = cosigners.required;
  StatusOr<tlog::Checkpoint> opened = OpenPinned(bundle.checkpoint_note, key, cosigners, report);
  if (!opened.ok()) {
    Add(report, "checkpoint", false, std::string(opened.status().message()));
    return false;
  }
  report.checkpoint_size = opened->size;
  report.checkpoint_root = opened->root;
  Add(report, "checkpoint", true,
      fmt::format("signed by {} for origin '{}': {} entries, root {}{}", report.key, report.origin,
                  report.checkpoint_size, HexEncode(report.checkpoint_root),
                  CosignedDetail(report, cosigners)));
  return true;
}

// Lines of pinned cosigners in the bundle's checkpoint note, by name and key ID (unverified: a
// fetch only waits for them; VerifyAudit checks them).
size_t PinnedLines(const std::string& bundle_text, const CosignerPolicy& cosigners) {
  StatusOr<tlog::ProofBundle> bundle = tlog::ParseProofBundle(bundle_text);
  if (!bundle.ok()) return 0;
  StatusOr<tlog::ParsedNote> note = tlog::ParseNote(bundle->checkpoint_note);
  if (!note.ok()) return 0;
  size_t count = 0;
  for (const tlog::CosignatureVerifier& cosigner : cosigners.cosigners) {
    for (const tlog::NoteSignature& line : note->signatures) {
      if (line.key_name == cosigner.name() && line.key_id == cosigner.key_id()) {
        ++count;
        break;
      }
    }
  }
  return count;
}

// Check 2: the leaf is at the bundle's index in the checkpoint's tree.
bool CheckInclusion(const tlog::ProofBundle& bundle, const Hash& leaf_hash,
                    const tlog::NoteVerifier& key, AuditReport& report) {
  report.ledger_index = bundle.index;
  report.entry_leaf_hash = leaf_hash;
  StatusOr<tlog::OpenedCheckpoint> verified = tlog::VerifyProofBundle(
      bundle, leaf_hash, std::span<const tlog::NoteVerifier>(&key, 1), report.origin);
  if (!verified.ok()) {
    Add(report, "inclusion", false, std::string(verified.status().message()));
    return false;
  }
  Add(report, "inclusion", true,
      fmt::format("ledger entry {} of {} (leaf hash {}) is in the checkpoint's tree", bundle.index,
                  report.checkpoint_size, HexEncode(leaf_hash)));
  return true;
}

// Check 3: the entry is a session record (of `session_id` unless empty).
std::optional<record_pb::SessionRecord> CheckRecord(const tlog::ProofBundle& bundle,
                                                    std::string_view session_id,
                                                    AuditReport& report) {
  record_pb::LedgerEntry entry;
  if (!entry.ParseFromArray(bundle.extra.data(), static_cast<int>(bundle.extra.size())) ||
      !entry.has_session()) {
    Add(report, "record", false, "the ledger entry is not a session record");
    return std::nullopt;
  }
  const record_pb::SessionRecord& record = entry.session();
  report.session_id = HexEncode(AsBytes(record.session_id()));
  report.model = record.model();
  report.steps = record.steps();
  report.replicas = static_cast<uint32_t>(record.replicas_size());
  report.divergences = record.divergences();
  report.session_root = HashOrZero(record.session_root());
  report.prompt_hash = HashOrZero(record.prompt_hash());
  report.output_hash = HashOrZero(record.output_hash());
  report.numerics_profile = HashOrZero(record.numerics_profile());
  const bool hashes_ok = record.session_root().size() == kHashSize &&
                         record.output_hash().size() == kHashSize &&
                         record.session_id().size() == kSessionIdSize;
  if (!hashes_ok) {
    Add(report, "record", false, "the session record's id or hashes have the wrong size");
    return std::nullopt;
  }
  if (!session_id.empty() && report.session_id != session_id) {
    Add(report, "record", false,
        fmt::format("the record is of session {}, not {}", report.session_id, session_id));
    return std::nullopt;
  }
  Add(report, "record", true,
      fmt::format("session {}: model '{}', {} steps, {} replicas, {} divergence(s), root {}",
                  report.session_id, report.model, report.steps, report.replicas,
                  report.divergences, HexEncode(report.session_root)));
  return record;
}

// Check 4: every step leaf is in the record's session tree.
bool CheckSteps(const std::vector<StepProofView>& steps, const record_pb::SessionRecord& record,
                AuditReport& report) {
  if (steps.size() != record.steps()) {
    Add(report, "steps", false,
        fmt::format("{} step proofs for a record of {} steps", steps.size(), record.steps()));
    return false;
  }
  leaf::StepLeaf leaf;
  std::copy(record.session_id().begin(), record.session_id().end(), leaf.session_id.begin());
  for (uint64_t step = 0; step < steps.size(); ++step) {
    const StepProofView& proof = steps[step];
    if (proof.step != step) {
      Add(report, "steps", false, fmt::format("proof {} is for step {}", step, proof.step));
      return false;
    }
    leaf.step = step;
    leaf.token_id = proof.token_id;
    leaf.state_digest = proof.state_digest;
    Status included = merkle::VerifyInclusion(leaf::StepLeafHash(leaf), step, record.steps(),
                                              proof.proof, report.session_root);
    if (!included.ok()) {
      Add(report, "steps", false,
          fmt::format("step {} (token {}, digest {}) is not in the session tree: {}", step,
                      proof.token_id, Short(proof.state_digest), included.message()));
      return false;
    }
    report.output_tokens.push_back(proof.token_id);
  }
  Add(report, "steps", true,
      fmt::format("{} step leaves (session, step, token, state digest) are in the tree of "
                  "session root {}",
                  steps.size(), HexEncode(report.session_root)));
  return true;
}

// Check 5: the tokens of the step leaves are the record's output.
void CheckOutput(AuditReport& report) {
  const Hash output = TokenHash(report.output_tokens);
  if (output != report.output_hash) {
    Add(report, "output", false,
        fmt::format("the step tokens hash to {}, the record says {}", HexEncode(output),
                    HexEncode(report.output_hash)));
    return;
  }
  Add(report, "output", true,
      fmt::format("{} output tokens hash to the record's output hash {}",
                  report.output_tokens.size(), HexEncode(report.output_hash)));
}

// Checks 1-3. Returns the record when all passed and the extra data is a session record.
std::optional<record_pb::SessionRecord> CheckBundle(
    std::string_view text, std::optional<Hash> leaf_hash, const tlog::NoteVerifier& key,
    const CosignerPolicy& cosigners, std::string_view session_id, AuditReport& report) {
  StatusOr<tlog::ProofBundle> bundle = tlog::ParseProofBundle(text);
  if (!bundle.ok()) {
    Add(report, "checkpoint", false,
        fmt::format("the bundle does not parse: {}", bundle.status().message()));
    return std::nullopt;
  }
  if (!CheckCheckpoint(*bundle, key, cosigners, report)) return std::nullopt;
  if (!leaf_hash.has_value() && bundle->extra.empty()) {
    Add(report, "inclusion", false, "the bundle carries no entry; give the leaf hash");
    return std::nullopt;
  }
  const Hash hash = leaf_hash.value_or(merkle::LeafHash(ByteSpan(bundle->extra)));
  if (!CheckInclusion(*bundle, hash, key, report)) return std::nullopt;
  // A leaf hash given by the caller says nothing about the extra data, which stays unchecked.
  if (leaf_hash.has_value()) return std::nullopt;
  return CheckRecord(*bundle, session_id, report);
}

std::string ReportOrigin(const tlog::NoteVerifier& key, std::string_view origin) {
  return origin.empty() ? key.name() : std::string(origin);
}

}  // namespace

bool AuditReport::ok() const { return status().ok(); }

Status AuditReport::status() const {
  if (checks.empty()) return DataLossError("nothing was checked");
  for (const AuditCheck& check : checks) {
    if (check.ok) continue;
    const std::string message = fmt::format("{}: {}", check.name, check.detail);
    return check.name == "checkpoint" ? UnauthenticatedError(message) : DataLossError(message);
  }
  return OkStatus();
}

StatusOr<CosignerPolicy> MakeCosignerPolicy(const std::vector<std::string>& keys,
                                            std::optional<size_t> min_cosigners) {
  CosignerPolicy policy;
  for (const std::string& text : keys) {
    StatusOr<tlog::CosignatureVerifier> key = tlog::CosignatureVerifier::Parse(text);
    if (!key.ok()) return key.status().WithContext("--cosigner " + text);
    for (const tlog::CosignatureVerifier& other : policy.cosigners) {
      if (other.name() == key->name() && other.key_id() == key->key_id()) {
        return InvalidArgumentError(fmt::format("--cosigner {} is given twice", text));
      }
    }
    policy.cosigners.push_back(*std::move(key));
  }
  policy.required = min_cosigners.value_or(policy.cosigners.size());
  if (policy.required > policy.cosigners.size()) {
    return InvalidArgumentError(
        fmt::format("--min-cosigners {} is more than the {} cosigner(s) pinned with --cosigner",
                    policy.required, policy.cosigners.size()));
  }
  if (policy.required == 0 && !policy.cosigners.empty()) {
    return InvalidArgumentError(
        "--min-cosigners 0 with pinned cosigners: pin none to demand no cosignature");
  }
  return policy;
}

StatusOr<AuditMaterial> FetchAuditMaterial(ApiClient& api, const std::string& session_id,
                                           bool with_steps, std::chrono::milliseconds timeout,
                                           const CosignerPolicy& cosigners) {
  FP_ASSIGN_OR_RETURN(SessionView session, api.Session(session_id));
  if (session.phase != "verified") {
    return FailedPreconditionError(
        fmt::format("session {} is {}, not verified: there is nothing to audit yet", session_id,
                    session.phase));
  }
  AuditMaterial material;
  material.session_id = session.session_id;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    StatusOr<std::string> bundle = api.Bundle(session_id);
    if (bundle.ok()) {
      const bool cosigned = PinnedLines(*bundle, cosigners) >= cosigners.required;
      material.bundle = std::move(*bundle);
      if (cosigned || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(kBundleRetryInterval);
      continue;
    }
    if (bundle.status().code() != StatusCode::kFailedPrecondition) return bundle.status();
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("no signed checkpoint covers session {} after {} ms: {}", session_id,
                      timeout.count(), bundle.status().message()));
    }
    std::this_thread::sleep_for(kBundleRetryInterval);
  }
  if (!with_steps) return material;
  // The step count comes from the unverified record here; VerifyAudit checks it against the
  // signed one, so a lie only makes the audit fail.
  FP_ASSIGN_OR_RETURN(tlog::ProofBundle bundle, tlog::ParseProofBundle(material.bundle));
  record_pb::LedgerEntry entry;
  if (!entry.ParseFromArray(bundle.extra.data(), static_cast<int>(bundle.extra.size())) ||
      !entry.has_session()) {
    return InvalidArgumentError("the bundle's entry is not a session record");
  }
  if (entry.session().steps() > kMaxAuditSteps) {
    return InvalidArgumentError(fmt::format("the session has {} steps; an audit checks at most {}",
                                            entry.session().steps(), kMaxAuditSteps));
  }
  std::vector<StepProofView> steps;
  for (uint64_t step = 0; step < entry.session().steps(); ++step) {
    FP_ASSIGN_OR_RETURN(StepProofView proof, api.StepProof(session_id, step));
    steps.push_back(std::move(proof));
  }
  material.steps = std::move(steps);
  return material;
}

AuditReport VerifyAudit(const AuditMaterial& material, const tlog::NoteVerifier& key,
                        std::string_view origin, const CosignerPolicy& cosigners) {
  AuditReport report;
  report.origin = ReportOrigin(key, origin);
  report.key = KeyLabel(key);
  std::optional<record_pb::SessionRecord> record =
      CheckBundle(material.bundle, std::nullopt, key, cosigners, material.session_id, report);
  if (!record.has_value() || !material.steps.has_value()) return report;
  if (CheckSteps(*material.steps, *record, report)) CheckOutput(report);
  return report;
}

AuditReport VerifyBundle(std::string_view bundle_text, std::optional<Hash> leaf_hash,
                         const tlog::NoteVerifier& key, std::string_view origin,
                         const CosignerPolicy& cosigners) {
  AuditReport report;
  report.origin = ReportOrigin(key, origin);
  report.key = KeyLabel(key);
  CheckBundle(bundle_text, leaf_hash, key, cosigners, "", report);
  return report;
}

std::string FormatAuditReport(const AuditReport& report) {
  std::string text;
  for (const AuditCheck& check : report.checks) {
    text += fmt::format("  {:<4} {:<10} {}\n", check.ok ? "ok" : "FAIL", check.name, check.detail);
  }
  const Status status = report.status();
  const std::string cosigned =
      report.cosigners_required == 0
          ? ""
          : fmt::format(" and {} pinned cosigner(s)", report.cosigned_by.size());
  text += status.ok() ? fmt::format("  VERIFIED offline against the pinned key{}\n", cosigned)
                      : fmt::format("  NOT VERIFIED: {}\n", status.message());
  return text;
}

json::object AuditReportJson(const AuditReport& report) {
  json::array checks;
  for (const AuditCheck& check : report.checks) {
    checks.push_back(
        json::object{{"name", check.name}, {"ok", check.ok}, {"detail", check.detail}});
  }
  json::object body;
  body["verified"] = report.ok();
  body["checks"] = std::move(checks);
  body["origin"] = report.origin;
  body["key"] = report.key;
  json::array cosigned_by;
  for (const std::string& name : report.cosigned_by) cosigned_by.emplace_back(name);
  body["cosigners_required"] = report.cosigners_required;
  body["cosigned_by"] = std::move(cosigned_by);
  body["checkpoint"] =
      json::object{{"size", report.checkpoint_size}, {"root", HexEncode(report.checkpoint_root)}};
  body["ledger_index"] = report.ledger_index;
  body["entry_leaf_hash"] = HexEncode(report.entry_leaf_hash);
  if (!report.session_id.empty()) {
    body["session"] = json::object{{"session_id", report.session_id},
                                   {"model", report.model},
                                   {"steps", report.steps},
                                   {"replicas", report.replicas},
                                   {"divergences", report.divergences},
                                   {"session_root", HexEncode(report.session_root)},
                                   {"prompt_hash", HexEncode(report.prompt_hash)},
                                   {"output_hash", HexEncode(report.output_hash)},
                                   {"numerics_profile", HexEncode(report.numerics_profile)}};
  }
  if (!report.output_tokens.empty()) {
    json::array tokens;
    for (uint32_t token : report.output_tokens) tokens.emplace_back(token);
    body["output_token_ids"] = std::move(tokens);
  }
  return body;
}

StatusOr<tlog::NoteVerifier> LoadVerifierKey(std::string_view key_text, const std::string& path) {
  if (key_text.empty() == path.empty()) {
    return InvalidArgumentError("give the supervisor's verifier key with --key or --key-file");
  }
  std::string text(key_text);
  if (!path.empty()) {
    std::ifstream file(path, std::ios::binary);
    if (!file) return NotFoundError(fmt::format("cannot read key file {}", path));
    std::ostringstream contents;
    contents << file.rdbuf();
    if (contents.str().size() > kMaxKeyFileBytes) {
      return InvalidArgumentError(fmt::format("{} is too large to be a verifier key", path));
    }
    text = contents.str();
  }
  const size_t first = text.find_first_not_of(" \t\r\n");
  const size_t last = text.find_last_not_of(" \t\r\n");
  text = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  if (text.starts_with("PRIVATE+KEY+")) {
    return InvalidArgumentError(
        "that is a signer (private) key; an auditor pins the supervisor's public verifier key");
  }
  StatusOr<tlog::NoteVerifier> key = tlog::NoteVerifier::Parse(text);
  if (!key.ok()) return key.status().WithContext("verifier key");
  return key;
}

}  // namespace fp::client
