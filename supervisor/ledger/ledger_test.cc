// Tests of checkpoint signing, cosigning and membership, audit proofs and fsck over a state built
// by the seeded fleet simulation and a real RocksDB log, including tampering with stored leaves,
// nodes, checkpoint bodies and cosignatures, and supervisors whose keys the cluster refuses.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/merkle/merkle.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/proof_bundle.h"
#include "supervisor/fsck.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/ledger/proofs.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/state/trees.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

using ::fp::testing::StatusIs;

constexpr std::string_view kOrigin = "fieldprint.test/ledger";
constexpr uint8_t kLedgerSeed = 7;

tlog::NoteSigner LedgerKey(uint8_t seed) {
  auto key = tlog::NoteSigner::FromSeed(kOrigin, Bytes(32, seed));
  FP_CHECK_OK(key);
  return std::move(key).value();
}

tlog::Cosigner CosignerKey(const std::string& name, uint8_t seed) {
  auto key = tlog::Cosigner::FromSeed(name, Bytes(32, seed));
  FP_CHECK_OK(key);
  return std::move(key).value();
}

class LedgerTest : public ::testing::Test {
 protected:
  // One simulated run: a state with verified sessions and checkpoint bodies, and this
  // supervisor's signer, joined (its CosignerJoined record appended) but not applied yet.
  void SetUp() override {
    auto log = RocksLog::Open(dir_.Join("log"));
    FP_CHECK_OK(log);
    log_ = std::move(log).value();
    auto state = OpenStateStore(dir_.Join("state"));
    FP_CHECK_OK(state);
    state_ = std::move(state).value();
    auto applier = Applier::Open(state_.get(), ApplierOptions{});
    FP_CHECK_OK(applier);
    applier_ = std::move(applier).value();
    testing::SimOptions options;
    options.sessions = 4;
    testing::SimFleet fleet(11, options);
    auto summary = testing::RunSimulation(fleet, *log_, *applier_, *state_, 300);
    FP_CHECK_OK(summary);
    FP_CHECK(summary->done);
    session_ = fleet.SessionId(0);
    FP_CHECK_OK(testing::AppendAll(*log_, {CheckpointRequest()}));
    FP_CHECK_OK(testing::CatchUp(*log_, *applier_, 100));
    verifier_ = LedgerKey(kLedgerSeed).Verifier();
    signer_ = MakeSigner("supervisor-0", 21, kLedgerSeed);
    FP_CHECK_OK(signer_->Join());
  }

  std::unique_ptr<CheckpointSigner> MakeSigner(const std::string& name, uint8_t cosigner_seed,
                                               uint8_t ledger_seed) {
    return std::make_unique<CheckpointSigner>(state_.get(), log_.get(), LedgerKey(ledger_seed),
                                              CosignerKey(name, cosigner_seed), nullptr);
  }

  static pb::LogRecord CheckpointRequest() {
    pb::LogRecord request;
    request.mutable_checkpoint_request();
    return request;
  }

  // An Admit whose new anchor set is recorded in the ledger: the ledger grows by one entry.
  static pb::LogRecord GrowLedger(uint8_t n) {
    pb::LogRecord record;
    pb::SessionRequest* request = record.mutable_admit()->mutable_request();
    request->set_session_id(std::string(16, static_cast<char>(0xe0 + n)));
    request->set_model("m");
    request->set_numerics_profile(std::string(32, 'n'));
    request->set_anchor_set_hash(std::string(32, static_cast<char>(0xa0 + n)));
    request->add_prompt_token_ids(5);
    request->mutable_sampling()->set_max_tokens(8);
    request->set_replicas(1);
    request->set_digest_scope(::fieldprint::wire::DIGEST_SCOPE_HIDDEN);
    request->set_max_unverified_steps(8);
    return record;
  }

  // One supervisor's view: its applier (over its own state) and the signers acting on it.
  struct Node {
    Applier* applier;
    std::vector<CheckpointSigner*> signers;
  };

  // Applies the log group by group on each node, as the runtime's applier thread does, letting
  // the node's signers act after each group, until no record arrives for a while (cosignatures
  // are appended in the background). The first signer error is returned.
  Status Settle(const std::vector<Node>& nodes) {
    while (true) {
      for (const Node& node : nodes) {
        while (node.applier->applied() < log_->End()) {
          FP_ASSIGN_OR_RETURN(std::vector<LogEntry> entries,
                              log_->Read(node.applier->applied(), 64));
          FP_ASSIGN_OR_RETURN(Effects effects, node.applier->Apply(entries));
          if (node.applier == applier_.get()) rejected_ += effects.rejected;
          for (CheckpointSigner* signer : node.signers) {
            FP_RETURN_IF_ERROR(signer->AfterApply(effects));
          }
        }
      }
      const uint64_t end = log_->End();
      const bool behind = std::any_of(nodes.begin(), nodes.end(), [&](const Node& node) {
        return node.applier->applied() < end;
      });
      if (!behind && log_->WaitBeyond(end, std::chrono::milliseconds(100)) <= end) {
        return OkStatus();
      }
    }
  }
  Status Settle() { return Settle({Node{applier_.get(), {signer_.get()}}}); }

  // Sizes of every checkpoint body, ascending.
  std::vector<uint64_t> BodySizes() const {
    std::vector<uint64_t> sizes;
    std::unique_ptr<rocksdb::Iterator> it = state_->NewIterator(kCheckpoints);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      sizes.push_back(ParseU64(ToView(it->key())).value());
    }
    return sizes;
  }

  void Corrupt(Family family, const std::string& key, std::string value) {
    FP_CHECK(state_->db()->Put({}, state_->handle(family), key, value).ok());
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<RocksLog> log_;
  std::unique_ptr<RocksStore> state_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<CheckpointSigner> signer_;
  std::optional<tlog::NoteVerifier> verifier_;
  std::string session_;
  uint64_t rejected_ = 0;  // records the applier rejected in Settle
};

TEST_F(LedgerTest, NothingIsSignedUntilTheJoinIsApplied) {
  EXPECT_FALSE(signer_->member());
  ASSERT_OK_AND_ASSIGN(size_t early, signer_->SignPending());
  EXPECT_EQ(early, 0u);
  EXPECT_THAT(LatestSignedCheckpoint(*state_), StatusIs(StatusCode::kNotFound));
  ASSERT_OK(Settle());
  EXPECT_TRUE(signer_->member());
  EXPECT_EQ(rejected_, 0u);
  ASSERT_OK_AND_ASSIGN(pb::CosignerSet set, RegisteredCosigners(DbStateReader(state_.get())));
  EXPECT_EQ(set.ledger_key(), verifier_->ToString());
  ASSERT_EQ(set.members_size(), 1);
  EXPECT_EQ(set.members(0).cosigner_key(), signer_->cosigner_verifier().ToString());
}

TEST_F(LedgerTest, SignedCheckpointsOpenWithTheVerifierAndMatchTheLedger) {
  ASSERT_OK(Settle());
  // Every body is signed, and nothing is left to sign.
  for (uint64_t size : BodySizes()) {
    EXPECT_OK(SignedCheckpointAt(DbStateReader(state_.get()), size).status()) << size;
  }
  EXPECT_GT(BodySizes().size(), 1u);
  ASSERT_OK_AND_ASSIGN(size_t again, signer_->SignPending());
  EXPECT_EQ(again, 0u);
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(latest.checkpoint.size, applier_->ledger_size());
  ASSERT_OK_AND_ASSIGN(tlog::OpenedCheckpoint opened,
                       tlog::OpenCheckpoint(latest.note, std::span(&*verifier_, 1), kOrigin));
  EXPECT_EQ(opened.checkpoint.root, latest.checkpoint.root);
  // Independent root: hash every stored entry into a fresh frontier.
  merkle::Frontier tree;
  DbStateReader reader(state_.get());
  for (uint64_t i = 0; i < latest.checkpoint.size; ++i) {
    ASSERT_OK_AND_ASSIGN(std::optional<std::string> entry, reader.Get(kLedger, LedgerEntryKey(i)));
    ASSERT_TRUE(entry.has_value());
    tree.Append(merkle::LeafHash(AsBytes(*entry)), nullptr);
  }
  EXPECT_EQ(tree.Root(), latest.checkpoint.root);
}

TEST_F(LedgerTest, NewMemberCosignsTheCurrentCheckpointAndEveryLaterOne) {
  ASSERT_OK(Settle());
  const tlog::CosignatureVerifier cosigner = signer_->cosigner_verifier();
  tlog::CosignaturePolicy policy;
  policy.cosigners = std::span(&cosigner, 1);
  policy.required = 1;
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint current, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(current.cosigners, std::vector<std::string>{"supervisor-0"});
  ASSERT_OK_AND_ASSIGN(
      tlog::CosignedCheckpoint opened,
      tlog::OpenCosignedCheckpoint(current.note, std::span(&*verifier_, 1), kOrigin, policy));
  EXPECT_EQ(opened.cosigned_by, std::vector<size_t>{0});
  // The checkpoints taken before the join stay signed only.
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint older,
                       SignedCheckpointAt(DbStateReader(state_.get()), BodySizes().front()));
  EXPECT_TRUE(older.cosigners.empty());
  EXPECT_THAT(tlog::OpenCosignedCheckpoint(older.note, std::span(&*verifier_, 1), kOrigin, policy),
              StatusIs(StatusCode::kUnauthenticated));
  // A checkpoint taken after the join is cosigned.
  ASSERT_OK(testing::AppendAll(*log_, {GrowLedger(1), CheckpointRequest()}));
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint later, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(later.checkpoint.size, current.checkpoint.size + 1);
  EXPECT_OK(tlog::OpenCosignedCheckpoint(later.note, std::span(&*verifier_, 1), kOrigin, policy)
                .status());
  EXPECT_EQ(rejected_, 0u);
}

TEST_F(LedgerTest, TwoMembersServeOneTextWithBothCosignaturesSortedByName) {
  // A second supervisor: its own state, rebuilt from the same log, and its own cosigner key.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> other_state,
                       OpenStateStore(dir_.Join("state-1")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Applier> other_applier,
                       Applier::Open(other_state.get(), ApplierOptions{}));
  auto second =
      std::make_unique<CheckpointSigner>(other_state.get(), log_.get(), LedgerKey(kLedgerSeed),
                                         CosignerKey("supervisor-1", 22), nullptr);
  ASSERT_OK(second->Join());
  const std::vector<Node> nodes = {Node{other_applier.get(), {second.get()}},
                                   Node{applier_.get(), {signer_.get()}}};
  ASSERT_OK(Settle(nodes));
  ASSERT_OK(testing::AppendAll(*log_, {GrowLedger(2), CheckpointRequest()}));
  ASSERT_OK(Settle(nodes));
  // Both supervisors serve the same text.
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint theirs, LatestSignedCheckpoint(*other_state));
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(latest.note, theirs.note);
  EXPECT_EQ(latest.cosigners, (std::vector<std::string>{"supervisor-0", "supervisor-1"}));
  const size_t first_line = latest.note.find("\u2014 supervisor-0 ");
  const size_t second_line = latest.note.find("\u2014 supervisor-1 ");
  ASSERT_NE(first_line, std::string::npos);
  ASSERT_NE(second_line, std::string::npos);
  EXPECT_LT(first_line, second_line);
  const std::vector<tlog::CosignatureVerifier> both = {signer_->cosigner_verifier(),
                                                       second->cosigner_verifier()};
  tlog::CosignaturePolicy policy;
  policy.cosigners = both;
  policy.required = 2;
  ASSERT_OK_AND_ASSIGN(
      tlog::CosignedCheckpoint opened,
      tlog::OpenCosignedCheckpoint(latest.note, std::span(&*verifier_, 1), kOrigin, policy));
  EXPECT_EQ(opened.cosigned_by, (std::vector<size_t>{0, 1}));
  // The cosignature's timestamp is the checkpoint body's leader clock, in seconds.
  DbStateReader reader(state_.get());
  ASSERT_OK_AND_ASSIGN(
      std::optional<pb::CheckpointBody> body,
      reader.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(latest.checkpoint.size)));
  EXPECT_EQ(opened.timestamps[0], body->unix_ms() / 1000);
  EXPECT_EQ(rejected_, 0u);
}

TEST_F(LedgerTest, RestartAppendsNothingAndRecosignsALostCosignatureIdempotently) {
  ASSERT_OK(Settle());
  // A checkpoint is signed and cosigned, but the process stops before the cosignature record is
  // applied: the record is in the log, the state lacks it.
  ASSERT_OK(testing::AppendAll(*log_, {GrowLedger(3), CheckpointRequest()}));
  const uint64_t before = log_->End();
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log_->Read(applier_->applied(), 64));
  ASSERT_OK_AND_ASSIGN(Effects effects, applier_->Apply(entries));
  ASSERT_OK(signer_->AfterApply(effects));
  EXPECT_EQ(log_->WaitBeyond(before, std::chrono::seconds(5)), before + 1);
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint unapplied, LatestSignedCheckpoint(*state_));
  EXPECT_TRUE(unapplied.cosigners.empty());
  // The restarted signer joins without a new record and cosigns again: the same bytes, so the
  // log keeps one record.
  signer_ = MakeSigner("supervisor-0", 21, kLedgerSeed);
  ASSERT_OK(signer_->Join());
  EXPECT_TRUE(signer_->member());
  EXPECT_EQ(log_->WaitBeyond(before + 1, std::chrono::milliseconds(300)), before + 1);
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(latest.cosigners, std::vector<std::string>{"supervisor-0"});
  EXPECT_EQ(rejected_, 0u);
}

TEST_F(LedgerTest, SignedNoteAheadOfACrashedStateIsCosignedOnceItsBodyIsReplayed) {
  ASSERT_OK(Settle());
  ASSERT_OK(testing::AppendAll(*log_, {GrowLedger(4), CheckpointRequest()}));
  const uint64_t before = log_->End();
  ASSERT_OK_AND_ASSIGN(std::vector<LogEntry> entries, log_->Read(applier_->applied(), 64));
  ASSERT_OK_AND_ASSIGN(Effects effects, applier_->Apply(entries));
  ASSERT_OK(signer_->AfterApply(effects));
  EXPECT_EQ(log_->WaitBeyond(before, std::chrono::seconds(5)), before + 1);
  // The crash: the signed note (synced) survives, the state (no WAL) lost the body.
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  const std::string key = U64Key(latest.checkpoint.size);
  ASSERT_OK_AND_ASSIGN(std::optional<std::string> body, state_->Get(kCheckpoints, key));
  ASSERT_TRUE(body.has_value());
  ASSERT_TRUE(state_->db()->Delete({}, state_->handle(kCheckpoints), key).ok());
  signer_ = MakeSigner("supervisor-0", 21, kLedgerSeed);
  ASSERT_OK(signer_->Join());         // no DataLoss: the body is simply not replayed yet
  Corrupt(kCheckpoints, key, *body);  // the replay brings it back
  ASSERT_OK(signer_->AfterApply(Effects{}));
  EXPECT_EQ(log_->WaitBeyond(before + 1, std::chrono::milliseconds(300)), before + 1);
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(latest, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(latest.cosigners, std::vector<std::string>{"supervisor-0"});
  EXPECT_EQ(rejected_, 0u);
}

TEST_F(LedgerTest, StepProofsVerifyAgainstTheSessionRoot) {
  DbStateReader reader(state_.get());
  ASSERT_OK_AND_ASSIGN(StepProof first, ProveStep(reader, session_, 0));
  EXPECT_TRUE(first.session_verified);
  for (uint64_t step = 0; step < first.size; ++step) {
    ASSERT_OK_AND_ASSIGN(StepProof proof, ProveStep(reader, session_, step));
    EXPECT_OK(
        merkle::VerifyInclusion(proof.leaf.leaf_hash, step, proof.size, proof.proof, proof.root));
  }
  EXPECT_THAT(ProveStep(reader, session_, first.size), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(ProveStep(reader, std::string(16, 'z'), 0), StatusIs(StatusCode::kNotFound));
}

TEST_F(LedgerTest, SessionRecordProofAndBundleVerifyOffline) {
  EXPECT_THAT(ProveSessionRecord(*state_, session_, std::nullopt),
              StatusIs(StatusCode::kNotFound));  // nothing signed yet
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(LedgerProof proof, ProveSessionRecord(*state_, session_, std::nullopt));
  pb::LedgerEntry entry;
  ASSERT_TRUE(entry.ParseFromString(proof.entry));
  EXPECT_EQ(entry.session().session_id(), session_);
  ASSERT_OK_AND_ASSIGN(std::string text, SessionBundle(*state_, session_, *verifier_, kOrigin));
  ASSERT_OK_AND_ASSIGN(tlog::ProofBundle bundle, tlog::ParseProofBundle(text));
  EXPECT_OK(tlog::VerifyProofBundle(bundle, merkle::LeafHash(bundle.extra),
                                    std::span(&*verifier_, 1), kOrigin)
                .status());
  // Tampering with the bundle's entry breaks it.
  bundle.extra.back() ^= 1;
  EXPECT_FALSE(tlog::VerifyProofBundle(bundle, merkle::LeafHash(bundle.extra),
                                       std::span(&*verifier_, 1), kOrigin)
                   .ok());
}

TEST_F(LedgerTest, ConsistencyProofsBetweenSignedSizesVerify) {
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  const uint64_t to = latest.checkpoint.size;
  for (uint64_t from = 1; from <= to; ++from) {
    ASSERT_OK_AND_ASSIGN(ConsistencyProofResult proof, ProveConsistency(*state_, from, to));
    EXPECT_EQ(proof.to_root, latest.checkpoint.root);
    EXPECT_OK(merkle::VerifyConsistency(from, to, proof.proof, proof.from_root, proof.to_root));
  }
  EXPECT_THAT(ProveConsistency(*state_, 0, to), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ProveConsistency(*state_, 2, 1), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ProveConsistency(*state_, 1, to + 1), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(LedgerTest, FsckIsCleanOnAnHonestStore) {
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(FsckReport report, Fsck(*state_));
  EXPECT_TRUE(report.clean()) << (report.problems.empty() ? "" : report.problems[0]);
  EXPECT_EQ(report.sessions, 4u);
  EXPECT_GT(report.leaves, 0u);
  EXPECT_GT(report.checkpoints, 1u);
  EXPECT_EQ(report.signed_checkpoints, report.checkpoints);
}

// ---- Error paths: tampering. ----

TEST_F(LedgerTest, TamperedLeafIsFoundByFsckAndBreaksItsProof) {
  DbStateReader reader(state_.get());
  ASSERT_OK_AND_ASSIGN(StepProof proof, ProveStep(reader, session_, 1));
  // Rewrite step 1 inside its chunk (a 16-leaf value).
  const std::string key = LeafChunkKey(session_, proof.replica, LeafChunkIndex(1));
  ASSERT_OK_AND_ASSIGN(std::optional<std::string> chunk, reader.Get(kLeaves, key));
  ASSERT_TRUE(chunk.has_value());
  StoredLeaf leaf = proof.leaf;
  leaf.state_digest[0] ^= 1;
  leaf.leaf_hash[0] ^= 1;
  chunk->replace(1 * kLeafValueSize, kLeafValueSize, EncodeStoredLeaf(leaf));
  Corrupt(kLeaves, key, *chunk);
  ASSERT_OK_AND_ASSIGN(FsckReport report, Fsck(*state_));
  EXPECT_FALSE(report.clean());
  EXPECT_THAT(ProveStep(reader, session_, 1), StatusIs(StatusCode::kDataLoss));
}

TEST_F(LedgerTest, TamperedLedgerNodeIsFoundByFsck) {
  Corrupt(kLedger, LedgerNodeKey(1, 0), std::string(32, 'x'));
  ASSERT_OK_AND_ASSIGN(FsckReport report, Fsck(*state_));
  EXPECT_FALSE(report.clean());
}

TEST_F(LedgerTest, SignerRefusesACheckpointInconsistentWithTheLastSigned) {
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  // A later body over a rewritten history: replace the node that covers the signed tree, then
  // take a checkpoint whose root follows the stored nodes (so only the consistency check fails).
  ASSERT_EQ(latest.checkpoint.size, 16u) << "the forged node below assumes a 16-entry ledger";
  Corrupt(kLedger, LedgerNodeKey(4, 0), std::string(32, 'y'));
  pb::CheckpointBody forged;
  forged.set_size(latest.checkpoint.size + 1);
  Corrupt(kLedger, LedgerNodeKey(0, latest.checkpoint.size), std::string(32, 'q'));
  DbStateReader reader(state_.get());
  LedgerNodeReader nodes(&reader);
  ASSERT_OK_AND_ASSIGN(Hash root, merkle::RootAt(nodes, forged.size()));
  forged.set_root(HashString(root));
  Corrupt(kCheckpoints, U64Key(forged.size()), forged.SerializeAsString());
  EXPECT_THAT(signer_->SignPending(), StatusIs(StatusCode::kDataLoss));
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint still, LatestSignedCheckpoint(*state_));
  EXPECT_EQ(still.checkpoint.size, latest.checkpoint.size);
}

TEST_F(LedgerTest, SignerKeyFileIsCreatedOnceAndBoundToItsOrigin) {
  const std::string path = dir_.Join("checkpoint.key");
  ASSERT_OK_AND_ASSIGN(tlog::NoteSigner created, LoadOrCreateSigner(path, kOrigin));
  ASSERT_OK_AND_ASSIGN(tlog::NoteSigner loaded, LoadOrCreateSigner(path, kOrigin));
  EXPECT_EQ(loaded.Verifier().ToString(), created.Verifier().ToString());
  EXPECT_THAT(LoadOrCreateSigner(path, "another.origin"),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(LedgerTest, CosignerKeyFileIsCreatedOncePrivateAndBoundToItsName) {
  const std::string path = dir_.Join("cosigner.key");
  EXPECT_THAT(LoadCosigner(path, "supervisor-0"), StatusIs(StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(tlog::Cosigner created, LoadOrCreateCosigner(path, "supervisor-0"));
  EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  ASSERT_OK_AND_ASSIGN(tlog::Cosigner loaded, LoadOrCreateCosigner(path, "supervisor-0"));
  EXPECT_EQ(loaded.Verifier().ToString(), created.Verifier().ToString());
  ASSERT_OK_AND_ASSIGN(tlog::Cosigner again, LoadCosigner(path, "supervisor-0"));
  EXPECT_EQ(again.Verifier().ToString(), created.Verifier().ToString());
  EXPECT_THAT(LoadCosigner(path, "supervisor-1"), StatusIs(StatusCode::kFailedPrecondition));
  std::ofstream(dir_.Join("garbage.key")) << "PRIVATE+KEY+x+00000000+AAAA\n";
  EXPECT_THAT(LoadCosigner(dir_.Join("garbage.key"), "x"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(LedgerTest, SupervisorWithAnotherLedgerKeyIsRefusedAtJoin) {
  ASSERT_OK(Settle());
  const uint64_t end = log_->End();
  std::unique_ptr<CheckpointSigner> stranger = MakeSigner("supervisor-2", 23, kLedgerSeed + 1);
  const Status refused = stranger->Join();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("checkpoint.key"));
  EXPECT_EQ(log_->End(), end);  // refused before appending anything
}

TEST_F(LedgerTest, SupervisorWithAnotherLedgerKeyIsRefusedOnceItsJoinIsApplied) {
  // It joins before the state knows the cluster's key: the applier refuses its record.
  std::unique_ptr<CheckpointSigner> stranger = MakeSigner("supervisor-2", 23, kLedgerSeed + 1);
  ASSERT_OK(stranger->Join());
  ASSERT_OK(Settle());
  EXPECT_EQ(rejected_, 1u);
  EXPECT_THAT(stranger->AfterApply(Effects{}), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_FALSE(stranger->member());
  ASSERT_OK_AND_ASSIGN(size_t signed_count, stranger->SignPending());
  EXPECT_EQ(signed_count, 0u);
  ASSERT_OK_AND_ASSIGN(pb::CosignerSet set, RegisteredCosigners(DbStateReader(state_.get())));
  EXPECT_EQ(set.members_size(), 1);
}

TEST_F(LedgerTest, SameNameWithAnotherCosignerKeyIsRefusedByTheLog) {
  ASSERT_OK(Settle());
  std::unique_ptr<CheckpointSigner> impostor = MakeSigner("supervisor-0", 99, kLedgerSeed);
  const Status refused = impostor->Join();
  EXPECT_THAT(refused, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("cosigner.key"));
}

TEST_F(LedgerTest, MalformedStoredCosignatureIsDataLoss) {
  ASSERT_OK(Settle());
  ASSERT_OK_AND_ASSIGN(SignedCheckpoint latest, LatestSignedCheckpoint(*state_));
  pb::CheckpointCosignatures stored;
  pb::StoredCosignature* bad = stored.add_cosignatures();
  bad->set_name("has space");
  bad->set_signature(std::string(64, 's'));
  Corrupt(kCosignatures, U64Key(latest.checkpoint.size), stored.SerializeAsString());
  EXPECT_THAT(LatestSignedCheckpoint(*state_), StatusIs(StatusCode::kDataLoss));
}

}  // namespace
}  // namespace fp::supervisor
