// Tests of checkpoint signing, audit proofs and fsck over a state built by the seeded fleet
// simulation, including tampering with stored leaves, nodes and checkpoint bodies.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/merkle/merkle.h"
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

class LedgerTest : public ::testing::Test {
 protected:
  // One simulated run shared by the fixture: a state with verified sessions and checkpoints.
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
    pb::LogRecord request;
    request.mutable_checkpoint_request();
    FP_CHECK_OK(testing::AppendAll(*log_, {request}));
    FP_CHECK_OK(testing::CatchUp(*log_, *applier_, 100));
    auto signer = tlog::NoteSigner::FromSeed(kOrigin, Bytes(32, 7));
    FP_CHECK_OK(signer);
    verifier_ = signer->Verifier();
    signer_ = std::make_unique<CheckpointSigner>(state_.get(), std::string(kOrigin),
                                                 std::move(signer).value());
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
};

TEST_F(LedgerTest, SignedCheckpointsOpenWithTheVerifierAndMatchTheLedger) {
  ASSERT_OK_AND_ASSIGN(size_t signed_count, signer_->SignPending());
  EXPECT_GT(signed_count, 1u);
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
  ASSERT_OK(signer_->SignPending());
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
  ASSERT_OK(signer_->SignPending());
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
  ASSERT_OK(signer_->SignPending());
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
  ASSERT_OK(signer_->SignPending());
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

}  // namespace
}  // namespace fp::supervisor
