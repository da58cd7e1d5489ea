// Tests of the offline audit: a ledger and a session tree are built here with a naive RFC 6962
// implementation (recursive MTH and PATH, independent of common/merkle) and the step leaf layout
// of docs/formats.md, the checkpoint is signed with a fresh key (and cosigned by fresh cosigner
// keys), and every check is shown to pass on honest material and to fail on each kind of
// tampering, including k-of-n cosigner policies that are not met and forged cosignatures.
#include "supervisor/client/audit.h"

#include <fstream>

#include <gtest/gtest.h>

#include "common/base/bytes.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/proof_bundle.h"
#include "supervisor/state/state.pb.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::client {
namespace {

// The ledger formats (supervisor/state/state.proto).
namespace record_pb = ::fieldprint::supervisor;

using fp::testing::StatusIs;

constexpr char kOrigin[] = "audit.test/ledger";
constexpr uint64_t kSteps = 5;
constexpr uint64_t kRecordIndex = 2;

Hash NaiveLeaf(ByteSpan data) {
  Bytes prefixed = {0x00};
  prefixed.insert(prefixed.end(), data.begin(), data.end());
  return Sha256(ByteSpan(prefixed));
}

Hash NaiveNode(const Hash& left, const Hash& right) {
  Bytes bytes = {0x01};
  bytes.insert(bytes.end(), left.begin(), left.end());
  bytes.insert(bytes.end(), right.begin(), right.end());
  return Sha256(ByteSpan(bytes));
}

// The largest power of two smaller than n (n >= 2).
size_t Split(size_t n) {
  size_t k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

// RFC 6962 section 2.1: MTH over leaf hashes.
Hash NaiveRoot(std::span<const Hash> leaves) {
  if (leaves.size() == 1) return leaves[0];
  const size_t k = Split(leaves.size());
  return NaiveNode(NaiveRoot(leaves.first(k)), NaiveRoot(leaves.subspan(k)));
}

// RFC 6962 section 2.1.1: PATH(m, D[n]).
std::vector<Hash> NaivePath(size_t m, std::span<const Hash> leaves) {
  if (leaves.size() == 1) return {};
  const size_t k = Split(leaves.size());
  std::vector<Hash> path;
  if (m < k) {
    path = NaivePath(m, leaves.first(k));
    path.push_back(NaiveRoot(leaves.subspan(k)));
  } else {
    path = NaivePath(m - k, leaves.subspan(k));
    path.push_back(NaiveRoot(leaves.first(k)));
  }
  return path;
}

// docs/formats.md: 0x01 || session id || step (BE64) || token (BE32) || state digest.
Hash NaiveStepLeaf(const std::string& session_id, uint64_t step, uint32_t token,
                   const Hash& digest) {
  Bytes bytes = {0x01};
  bytes.insert(bytes.end(), session_id.begin(), session_id.end());
  AppendU64(bytes, step);
  AppendU32(bytes, token);
  bytes.insert(bytes.end(), digest.begin(), digest.end());
  return NaiveLeaf(ByteSpan(bytes));
}

std::string HashBytes(const Hash& hash) { return std::string(hash.begin(), hash.end()); }

class AuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    session_id_ = std::string("0123456789abcdef");
    for (uint64_t step = 0; step < kSteps; ++step) {
      tokens_.push_back(static_cast<uint32_t>(65 + step));
      digests_.push_back(Sha256("digest " + std::to_string(step)));
    }
    auto signer = tlog::NoteSigner::Generate(kOrigin);
    FP_CHECK_OK(signer);
    key_ = signer->Verifier();
    signer_ = std::make_unique<tlog::NoteSigner>(std::move(*signer));
    Bytes output;
    for (uint32_t token : tokens_) AppendU32(output, token);
    output_hash_ = Sha256(ByteSpan(output));
    for (int i = 0; i < 3; ++i) {
      auto cosigner = tlog::Cosigner::Generate("supervisor-" + std::to_string(i));
      FP_CHECK_OK(cosigner);
      cosigner_keys_.push_back(cosigner->Verifier().ToString());
      cosigners_.push_back(std::move(cosigner).value());
    }
  }

  // The policy of pinning cosigners_[i] for each i in `pinned`, demanding `required` (default:
  // all pinned).
  CosignerPolicy Pin(std::vector<size_t> pinned, std::optional<size_t> required = {}) const {
    std::vector<std::string> keys;
    for (size_t i : pinned) keys.push_back(cosigner_keys_[i]);
    auto policy = MakeCosignerPolicy(keys, required);
    FP_CHECK_OK(policy);
    return std::move(policy).value();
  }

  AuditMaterial Cosigned(std::vector<size_t> cosigned) const {
    AuditMaterial material = Material();
    material.bundle = Bundle(Record(), std::move(cosigned));
    return material;
  }

  // An honest record, or one with the given changes.
  record_pb::SessionRecord Record() const {
    std::vector<Hash> leaves;
    for (uint64_t step = 0; step < kSteps; ++step) {
      leaves.push_back(NaiveStepLeaf(session_id_, step, tokens_[step], digests_[step]));
    }
    record_pb::SessionRecord record;
    record.set_session_id(session_id_);
    record.set_model("tiny");
    record.set_session_root(HashBytes(NaiveRoot(leaves)));
    record.set_output_hash(HashBytes(output_hash_));
    record.set_prompt_hash(HashBytes(Sha256("prompt")));
    record.set_steps(kSteps);
    record.set_divergences(1);
    return record;
  }

  static std::string EntryBytes(const record_pb::SessionRecord& record) {
    record_pb::LedgerEntry entry;
    *entry.mutable_session() = record;
    return entry.SerializeAsString();
  }

  // The bundle of `record` as entry kRecordIndex of a four-entry ledger, signed by `signer_` and
  // cosigned by cosigners_[i] for each i in `cosigned`.
  std::string Bundle(const record_pb::SessionRecord& record,
                     std::vector<size_t> cosigned = {}) const {
    const std::string bytes = EntryBytes(record);
    std::vector<Hash> ledger = {NaiveLeaf(AsBytes("entry 0")), NaiveLeaf(AsBytes("entry 1")),
                                NaiveLeaf(AsBytes(bytes)), NaiveLeaf(AsBytes("entry 3"))};
    tlog::Checkpoint checkpoint{kOrigin, ledger.size(), NaiveRoot(ledger), {}};
    auto note =
        tlog::SignCheckpoint(checkpoint, std::span<const tlog::NoteSigner>(signer_.get(), 1));
    FP_CHECK_OK(note);
    for (size_t i : cosigned) {
      auto line = cosigners_[i].CosignatureLine(*tlog::FormatCheckpoint(checkpoint), 1700000000);
      FP_CHECK_OK(line);
      *note += *line;
    }
    tlog::ProofBundle bundle;
    bundle.extra.assign(bytes.begin(), bytes.end());
    bundle.index = kRecordIndex;
    bundle.proof = NaivePath(kRecordIndex, ledger);
    bundle.checkpoint_note = *note;
    auto text = tlog::FormatProofBundle(bundle);
    FP_CHECK_OK(text);
    return *text;
  }

  std::vector<StepProofView> Steps() const {
    std::vector<Hash> leaves;
    for (uint64_t step = 0; step < kSteps; ++step) {
      leaves.push_back(NaiveStepLeaf(session_id_, step, tokens_[step], digests_[step]));
    }
    std::vector<StepProofView> steps;
    for (uint64_t step = 0; step < kSteps; ++step) {
      StepProofView view;
      view.step = step;
      view.tree_size = kSteps;
      view.root = NaiveRoot(leaves);
      view.token_id = tokens_[step];
      view.state_digest = digests_[step];
      view.leaf_hash = leaves[step];
      view.proof = NaivePath(step, leaves);
      steps.push_back(view);
    }
    return steps;
  }

  AuditMaterial Material() const {
    return AuditMaterial{HexEncode(AsBytes(session_id_)), Bundle(Record()), Steps()};
  }

  static std::vector<std::string> CheckNames(const AuditReport& report) {
    std::vector<std::string> names;
    for (const AuditCheck& check : report.checks) names.push_back(check.name);
    return names;
  }

  std::string session_id_;
  std::vector<uint32_t> tokens_;
  std::vector<Hash> digests_;
  Hash output_hash_{};
  std::unique_ptr<tlog::NoteSigner> signer_;
  std::optional<tlog::NoteVerifier> key_;
  std::vector<tlog::Cosigner> cosigners_;  // "supervisor-0" .. "supervisor-2"
  std::vector<std::string> cosigner_keys_;
  fp::testing::TempDir dir_;
};

TEST_F(AuditTest, HonestMaterialPassesEveryCheck) {
  const AuditReport report = VerifyAudit(Material(), *key_, "");
  EXPECT_OK(report.status());
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(CheckNames(report),
            (std::vector<std::string>{"checkpoint", "inclusion", "record", "steps", "output"}));
  EXPECT_EQ(report.origin, kOrigin);
  EXPECT_EQ(report.checkpoint_size, 4u);
  EXPECT_EQ(report.ledger_index, kRecordIndex);
  EXPECT_EQ(report.steps, kSteps);
  EXPECT_EQ(report.divergences, 1u);
  EXPECT_EQ(report.output_tokens, tokens_);
  EXPECT_EQ(report.output_hash, output_hash_);
}

TEST_F(AuditTest, WithoutStepProofsOnlyTheBundleIsChecked) {
  AuditMaterial material = Material();
  material.steps.reset();
  const AuditReport report = VerifyAudit(material, *key_, kOrigin);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(CheckNames(report), (std::vector<std::string>{"checkpoint", "inclusion", "record"}));
}

TEST_F(AuditTest, BundleWithAGivenLeafHashSkipsTheRecord) {
  const Hash leaf_hash = NaiveLeaf(AsBytes(EntryBytes(Record())));
  const AuditReport report = VerifyBundle(Bundle(Record()), leaf_hash, *key_, "");
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(CheckNames(report), (std::vector<std::string>{"checkpoint", "inclusion"}));
  EXPECT_FALSE(VerifyBundle(Bundle(Record()), Sha256("another leaf"), *key_, "").ok());
}

TEST_F(AuditTest, ReportJsonCarriesTheVerdictAndRecord) {
  const boost::json::object json = AuditReportJson(VerifyAudit(Material(), *key_, ""));
  EXPECT_TRUE(json.at("verified").as_bool());
  EXPECT_EQ(json.at("checks").as_array().size(), 5u);
  EXPECT_EQ(json.at("session").at("session_id").as_string(), HexEncode(AsBytes(session_id_)));
  EXPECT_EQ(json.at("output_token_ids").as_array().size(), kSteps);
}

TEST_F(AuditTest, LoadsAKeyFromTextOrFile) {
  ASSERT_OK_AND_ASSIGN(tlog::NoteVerifier from_text, LoadVerifierKey(key_->ToString(), ""));
  EXPECT_EQ(from_text.ToString(), key_->ToString());
  const std::string path = dir_.Join("key");
  std::ofstream(path) << "  " << key_->ToString() << "\n";
  ASSERT_OK_AND_ASSIGN(tlog::NoteVerifier from_file, LoadVerifierKey("", path));
  EXPECT_EQ(from_file.ToString(), key_->ToString());
}

TEST_F(AuditTest, OneOfOnePinnedCosignerPasses) {
  const AuditReport report = VerifyAudit(Cosigned({0}), *key_, "", Pin({0}));
  EXPECT_OK(report.status());
  EXPECT_EQ(report.cosigners_required, 1u);
  EXPECT_EQ(report.cosigned_by, std::vector<std::string>{"supervisor-0"});
  EXPECT_NE(report.checks[0].detail.find("cosigned by supervisor-0"), std::string::npos);
  EXPECT_NE(FormatAuditReport(report).find("and 1 pinned cosigner(s)"), std::string::npos);
  const boost::json::object json = AuditReportJson(report);
  EXPECT_EQ(json.at("cosigned_by").as_array().size(), 1u);
  // Unpinned cosignature lines change nothing for an auditor who pins none.
  EXPECT_OK(VerifyAudit(Cosigned({0, 1}), *key_, "").status());
}

TEST_F(AuditTest, TwoOfThreeWithOneMissingPasses) {
  const AuditReport report = VerifyAudit(Cosigned({0, 2}), *key_, "", Pin({0, 1, 2}, 2));
  EXPECT_OK(report.status());
  EXPECT_EQ(report.cosigned_by, (std::vector<std::string>{"supervisor-0", "supervisor-2"}));
  EXPECT_OK(
      VerifyBundle(Bundle(Record(), {1, 2}), std::nullopt, *key_, "", Pin({0, 1, 2}, 2)).status());
}

TEST_F(AuditTest, MakeCosignerPolicyDefaultsToEveryPinnedCosigner) {
  EXPECT_EQ(Pin({0, 1, 2}).required, 3u);
  ASSERT_OK_AND_ASSIGN(CosignerPolicy none, MakeCosignerPolicy({}, std::nullopt));
  EXPECT_EQ(none.required, 0u);
  EXPECT_TRUE(none.cosigners.empty());
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(AuditTest, PinnedCosignerThatNeverSignedFailsTheCheckpointWhenRequired) {
  const AuditReport report = VerifyAudit(Cosigned({0}), *key_, "", Pin({0, 1}));
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_EQ(CheckNames(report), (std::vector<std::string>{"checkpoint"}));
  EXPECT_NE(report.checks[0].detail.find("1 of the 2"), std::string::npos);
  EXPECT_THAT(VerifyAudit(Material(), *key_, "", Pin({0})).status(),
              StatusIs(StatusCode::kUnauthenticated));  // no cosignature at all
  EXPECT_OK(VerifyAudit(Cosigned({0}), *key_, "", Pin({0, 1}, 1)).status());
}

TEST_F(AuditTest, ForgedCosignatureLineFailsEvenWithEnoughValidOnes) {
  AuditMaterial material = Cosigned({1, 0});  // supervisor-0's line last
  auto bundle = tlog::ParseProofBundle(material.bundle);
  ASSERT_OK(bundle);
  std::string& note = bundle->checkpoint_note;
  const size_t at = note.size() - 10;  // inside the last line's base64 signature
  note[at] = note[at] == 'A' ? 'B' : 'A';
  auto text = tlog::FormatProofBundle(*bundle);
  ASSERT_OK(text);
  material.bundle = *text;
  const AuditReport report = VerifyAudit(material, *key_, "", Pin({0, 1}, 1));
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_NE(report.checks[0].detail.find("supervisor-0"), std::string::npos);
}

TEST_F(AuditTest, BadCosignerPoliciesAreRefused) {
  EXPECT_THAT(MakeCosignerPolicy({"not a key"}, std::nullopt),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCosignerPolicy({key_->ToString()}, std::nullopt),  // a note key, not 0x04
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCosignerPolicy({cosigner_keys_[0], cosigner_keys_[0]}, std::nullopt),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCosignerPolicy({cosigner_keys_[0]}, 2), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCosignerPolicy({}, 1), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCosignerPolicy({cosigner_keys_[0]}, 0), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(AuditTest, AnotherKeyFailsTheCheckpoint) {
  auto other = tlog::NoteSigner::Generate(kOrigin);
  ASSERT_OK(other);
  const AuditReport report = VerifyAudit(Material(), other->Verifier(), "");
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_EQ(CheckNames(report), (std::vector<std::string>{"checkpoint"}));
}

TEST_F(AuditTest, AnotherOriginFailsTheCheckpoint) {
  EXPECT_THAT(VerifyAudit(Material(), *key_, "other.test/ledger").status(),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(AuditTest, TamperedRecordFailsInclusion) {
  AuditMaterial material = Material();
  auto bundle = tlog::ParseProofBundle(material.bundle);
  ASSERT_OK(bundle);
  record_pb::LedgerEntry entry;
  ASSERT_TRUE(entry.ParseFromArray(bundle->extra.data(), static_cast<int>(bundle->extra.size())));
  entry.mutable_session()->set_divergences(0);  // hide the divergence
  const std::string bytes = entry.SerializeAsString();
  bundle->extra.assign(bytes.begin(), bytes.end());
  auto text = tlog::FormatProofBundle(*bundle);
  ASSERT_OK(text);
  material.bundle = *text;
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(CheckNames(report), (std::vector<std::string>{"checkpoint", "inclusion"}));
}

TEST_F(AuditTest, RecordOfAnotherSessionFailsTheRecordCheck) {
  AuditMaterial material = Material();
  material.session_id = std::string(32, 'f');
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kDataLoss));
  EXPECT_FALSE(report.checks.back().ok);
  EXPECT_EQ(report.checks.back().name, "record");
}

TEST_F(AuditTest, TamperedStepTokenFailsTheSteps) {
  AuditMaterial material = Material();
  (*material.steps)[3].token_id ^= 1;
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(report.checks.back().name, "steps");
  EXPECT_NE(report.checks.back().detail.find("step 3"), std::string::npos);
}

TEST_F(AuditTest, TamperedStepDigestFailsTheSteps) {
  AuditMaterial material = Material();
  (*material.steps)[0].state_digest[31] ^= 0x80;
  EXPECT_EQ(VerifyAudit(material, *key_, "").checks.back().name, "steps");
}

TEST_F(AuditTest, MissingStepFailsTheSteps) {
  AuditMaterial material = Material();
  material.steps->pop_back();
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.checks.back().name, "steps");
}

TEST_F(AuditTest, RecordWhoseOutputHashLiesFailsTheOutput) {
  record_pb::SessionRecord record = Record();
  record.set_output_hash(HashBytes(Sha256("another output")));
  AuditMaterial material = Material();
  material.bundle = Bundle(record);
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_THAT(report.status(), StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(report.checks.back().name, "output");
}

TEST_F(AuditTest, GarbageBundleFailsAtOnce) {
  AuditMaterial material = Material();
  material.bundle = "c2sp.org/tlog-proof@v1\nindex x\n";
  const AuditReport report = VerifyAudit(material, *key_, "");
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.checks.size(), 1u);
}

TEST_F(AuditTest, KeyArgumentsAreRefusedWhenWrong) {
  EXPECT_THAT(LoadVerifierKey("", ""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadVerifierKey(key_->ToString(), "/some/file"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadVerifierKey(signer_->ToString(), ""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadVerifierKey("not a key", ""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadVerifierKey("", dir_.Join("missing")), StatusIs(StatusCode::kNotFound));
}

}  // namespace
}  // namespace fp::client
