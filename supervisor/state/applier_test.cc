// Scenario tests of the applier: placement, verification, divergence handling (majority, R = 2,
// escalation, quarantine, re-placement and replay), the ledger and checkpoints, and rejected
// records. Expected roots and hashes come from a naive RFC 6962 implementation in this file.
#include "supervisor/state/applier.h"

#include <optional>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/bytes.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/note.h"
#include "supervisor/state/placement.h"
#include "supervisor/state/state_txn.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

using ::testing::ElementsAre;

// ---- Independent reference: canonical step leaf bytes and RFC 6962 roots, written out. ----

Hash NaiveLeafHash(const std::string& session, uint64_t step, uint32_t token,
                   const std::string& digest) {
  Bytes bytes = {0x00, 0x01};  // RFC 6962 leaf prefix, then the step leaf type
  bytes.insert(bytes.end(), session.begin(), session.end());
  AppendU64(bytes, step);
  AppendU32(bytes, token);
  bytes.insert(bytes.end(), digest.begin(), digest.end());
  return Sha256(bytes);
}

Hash NaiveRoot(std::span<const Hash> leaves) {
  if (leaves.size() == 1) return leaves[0];
  size_t split = 1;
  while (split * 2 < leaves.size()) split *= 2;
  Hash left = NaiveRoot(leaves.subspan(0, split));
  Hash right = NaiveRoot(leaves.subspan(split));
  Bytes bytes = {0x01};
  bytes.insert(bytes.end(), left.begin(), left.end());
  bytes.insert(bytes.end(), right.begin(), right.end());
  return Sha256(bytes);
}

std::string Str(const Hash& hash) { return std::string(hash.begin(), hash.end()); }

constexpr uint32_t kMaxTokens = 64;
constexpr std::string_view kOrigin = "applier.test/ledger";

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

// C2SP checkpoint text written out: origin, decimal size, base64 root, each ending in "\n".
std::string CheckpointText(uint64_t size, const Hash& root) {
  return std::string(kOrigin) + "\n" + std::to_string(size) + "\n" + Base64Encode(root) + "\n";
}

class ApplierTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(ApplierOptions{}); }

  void Open(const ApplierOptions& options) {
    applier_.reset();
    if (store_ == nullptr) {
      auto store = OpenStateStore(dir_.Join("state"));
      FP_CHECK_OK(store);
      store_ = std::move(store).value();
    }
    auto applier = Applier::Open(store_.get(), options);
    FP_CHECK_OK(applier);
    applier_ = std::move(applier).value();
  }

  Effects Apply(const pb::LogRecord& record) {
    history_.push_back(record);
    LogEntry entry{applier_->applied(), record};
    auto effects = applier_->Apply(std::span<const LogEntry>(&entry, 1));
    FP_CHECK_OK(effects);
    return std::move(effects).value();
  }

  static std::string Session(uint8_t n) { return std::string(16, static_cast<char>(n)); }
  static std::string Worker(uint32_t n) { return "w" + std::to_string(n); }
  static uint32_t Token(uint64_t step) { return 1000 + static_cast<uint32_t>(step); }
  static std::string Digest(uint64_t step, bool corrupt = false) {
    return Str(Sha256((corrupt ? "bad " : "good ") + std::to_string(step)));
  }

  void Register(uint32_t worker) {
    pb::LogRecord record;
    pb::WorkerRegistered* registered = record.mutable_worker_registered();
    registered->set_worker_id(Worker(worker));
    registered->add_models("m");
    registered->set_numerics_profile_hash(std::string(32, 'p'));
    registered->set_max_replicas(4);
    Apply(record);
  }

  pb::LogRecord AdmitRecord(const std::string& session, uint32_t replicas) {
    pb::LogRecord record;
    pb::SessionRequest* request = record.mutable_admit()->mutable_request();
    request->set_session_id(session);
    request->set_model("m");
    request->set_numerics_profile(std::string(32, 'n'));
    request->set_anchor_set_hash(std::string(32, 'a'));
    request->add_prompt_token_ids(5);
    request->add_prompt_token_ids(6);
    request->mutable_sampling()->set_max_tokens(kMaxTokens);
    request->set_replicas(replicas);
    request->set_digest_scope(::fieldprint::wire::DIGEST_SCOPE_HIDDEN);
    request->set_max_unverified_steps(32);
    return record;
  }

  // An Assign for the replica's current placement attempt (as the leader's placement writes it),
  // or for `attempt`.
  Effects Assign(const std::string& session, uint32_t replica, uint32_t worker, uint64_t epoch = 0,
                 std::optional<uint32_t> attempt = std::nullopt) {
    pb::LogRecord record;
    pb::Assign* assign = record.mutable_assign();
    assign->set_session_id(session);
    assign->set_replica(replica);
    assign->set_epoch(epoch);
    assign->set_worker_id(Worker(worker));
    assign->set_attempt(attempt.value_or(PlacementAttempts(session, replica)));
    return Apply(record);
  }

  uint32_t PlacementAttempts(const std::string& session, uint32_t replica) {
    DbStateReader reader(store_.get());
    auto state = reader.GetMessage<pb::SessionState>(kSessions, session);
    FP_CHECK_OK(state);
    if (!state->has_value() || replica >= static_cast<uint32_t>((*state)->replicas_size())) {
      return 0;
    }
    return (*state)->replicas(replica).placement_attempts();
  }

  // A running session with replica i on worker i.
  void Start(const std::string& session, uint32_t replicas) {
    for (uint32_t w = 0; w < replicas; ++w) Register(w);
    Apply(AdmitRecord(session, replicas));
    for (uint32_t r = 0; r < replicas; ++r) Assign(session, r, r);
  }

  // Leaves [first, first + count); `corrupt` lists steps with a wrong digest. With `last`, the
  // batch carries the root over steps [0, first + count) as this worker computed them.
  pb::LogRecord Leaves(const std::string& session, uint32_t replica, uint32_t worker,
                       uint64_t epoch, uint64_t first, uint64_t count,
                       std::vector<uint64_t> corrupt = {}, bool last = false) {
    pb::LogRecord record;
    pb::LeafBatch* batch = record.mutable_leaf_batch();
    batch->set_worker_id(Worker(worker));
    batch->set_session_id(session);
    batch->set_replica(replica);
    batch->set_epoch(epoch);
    batch->set_first_step(first);
    for (uint64_t step = first; step < first + count; ++step) {
      const bool bad = std::find(corrupt.begin(), corrupt.end(), step) != corrupt.end();
      batch->add_token_ids(Token(step));
      batch->mutable_state_digests()->append(Digest(step, bad));
    }
    if (last) {
      batch->set_last(true);
      batch->set_session_root(Str(HonestRoot(session, first + count)));
    }
    return record;
  }

  static Hash HonestRoot(const std::string& session, uint64_t steps) {
    std::vector<Hash> leaves;
    for (uint64_t step = 0; step < steps; ++step) {
      leaves.push_back(NaiveLeafHash(session, step, Token(step), Digest(step)));
    }
    return NaiveRoot(leaves);
  }

  pb::SessionState State(const std::string& session) {
    DbStateReader reader(store_.get());
    auto state = reader.GetMessage<pb::SessionState>(kSessions, session);
    FP_CHECK_OK(state);
    FP_CHECK(state->has_value());
    return **state;
  }

  template <typename Message>
  Message Read(Family family, const std::string& key) {
    DbStateReader reader(store_.get());
    auto value = reader.GetMessage<Message>(family, key);
    FP_CHECK_OK(value);
    FP_CHECK(value->has_value());
    return **value;
  }

  static pb::LogRecord Joined(const tlog::Cosigner& cosigner, const tlog::NoteSigner& ledger) {
    pb::LogRecord record;
    pb::CosignerJoined* joined = record.mutable_cosigner_joined();
    joined->set_name(cosigner.name());
    joined->set_cosigner_key(cosigner.Verifier().ToString());
    joined->set_ledger_key(ledger.Verifier().ToString());
    return record;
  }

  // `cosigner`'s cosignature of `text`, recorded as a cosignature of checkpoint `size`.
  static pb::LogRecord Cosigned(const tlog::Cosigner& cosigner, uint64_t size,
                                const std::string& text, uint64_t timestamp = 1700) {
    auto cosignature = cosigner.Cosign(text, timestamp);
    FP_CHECK_OK(cosignature);
    pb::LogRecord record;
    pb::Cosignature* out = record.mutable_cosignature();
    out->set_size(size);
    out->set_name(cosignature->name);
    out->set_timestamp(cosignature->timestamp);
    out->set_signature(std::string(cosignature->signature.begin(), cosignature->signature.end()));
    return record;
  }

  // A checkpoint of the empty ledger (size 0) and one of the anchor set's entry (size 1); returns
  // their roots, computed here.
  std::pair<Hash, Hash> TwoCheckpoints() {
    pb::LogRecord request;
    request.mutable_checkpoint_request();
    Apply(request);
    Register(0);
    Apply(AdmitRecord(Session(40), 1));
    Apply(request);
    const std::string entry = *DbStateReader(store_.get()).Get(kLedger, LedgerEntryKey(0)).value();
    Bytes leaf = {0x00};
    leaf.insert(leaf.end(), entry.begin(), entry.end());
    return {Sha256(Bytes{}), Sha256(leaf)};  // RFC 6962: MTH({}) and a one-leaf tree
  }

  pb::CosignerSet Cosigners() { return Read<pb::CosignerSet>(kMeta, std::string(kMetaCosigners)); }

  // Every key and value of every family, in order.
  static std::vector<std::string> Dump(const RocksStore& store) {
    std::vector<std::string> dump;
    for (size_t family = 0; family < kFamilyCount; ++family) {
      std::unique_ptr<rocksdb::Iterator> it = store.NewIterator(family);
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        dump.push_back(std::to_string(family) + ":" + it->key().ToString() + "=" +
                       it->value().ToString());
      }
    }
    return dump;
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<RocksStore> store_;
  std::unique_ptr<Applier> applier_;
  std::vector<pb::LogRecord> history_;  // every record Apply applied, in order
};

TEST_F(ApplierTest, AgreeingReplicasVerifyTheSessionAndLedgerIt) {
  const std::string s = Session(1);
  Start(s, 3);
  EXPECT_EQ(State(s).phase(), pb::SESSION_PHASE_RUNNING);
  for (uint32_t r = 0; r < 3; ++r) {
    Apply(Leaves(s, r, r, 0, 0, 6));
    Apply(Leaves(s, r, r, 0, 6, 4, {}, /*last=*/true));
  }
  pb::SessionState state = State(s);
  EXPECT_EQ(state.phase(), pb::SESSION_PHASE_VERIFIED);
  EXPECT_EQ(state.verified_steps(), 10u);
  EXPECT_EQ(state.session_root(), Str(HonestRoot(s, 10)));
  // Ledger: the anchor set first, then the session record.
  EXPECT_EQ(state.ledger_index(), 1u);
  auto anchor = Read<pb::LedgerEntry>(kLedger, LedgerEntryKey(0));
  EXPECT_EQ(anchor.anchor_set().anchor_set_hash(), std::string(32, 'a'));
  auto entry = Read<pb::LedgerEntry>(kLedger, LedgerEntryKey(1));
  const pb::SessionRecord& record = entry.session();
  EXPECT_EQ(record.session_root(), Str(HonestRoot(s, 10)));
  EXPECT_EQ(record.steps(), 10u);
  Bytes output;
  for (uint64_t step = 0; step < 10; ++step) AppendU32(output, Token(step));
  EXPECT_EQ(record.output_hash(), Str(Sha256(output)));
  EXPECT_EQ(record.prompt_hash(), Str(Sha256(Bytes{0, 0, 0, 5, 0, 0, 0, 6})));
  EXPECT_EQ(record.replicas_size(), 3);
  EXPECT_EQ(record.divergences(), 0u);
  // Workers no longer hold the replicas.
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(0)).replicas_size(), 0);
  EXPECT_EQ(applier_->phases().verified(), 1u);
  EXPECT_EQ(applier_->phases().running(), 0u);
  EXPECT_EQ(applier_->phases().waiting(), 0u);
}

TEST_F(ApplierTest, VerifiedPrefixAdvancesOnlyWhereEveryReplicaAgrees) {
  const std::string s = Session(2);
  Start(s, 3);
  Apply(Leaves(s, 0, 0, 0, 0, 6));
  Apply(Leaves(s, 1, 1, 0, 0, 6));
  EXPECT_EQ(State(s).verified_steps(), 0u);
  Effects effects = Apply(Leaves(s, 2, 2, 0, 0, 3));
  EXPECT_EQ(State(s).verified_steps(), 3u);
  EXPECT_THAT(effects.progressed, ElementsAre(s));
}

TEST_F(ApplierTest, MinorityDivergenceOrdersATruncatingRollback) {
  const std::string s = Session(3);
  Start(s, 3);
  Apply(Leaves(s, 0, 0, 0, 0, 8));
  Apply(Leaves(s, 1, 1, 0, 0, 8));
  Effects effects = Apply(Leaves(s, 2, 2, 0, 0, 8, {4}));
  ASSERT_EQ(effects.orders.size(), 1u);
  const pb::Order& order = effects.orders[0];
  EXPECT_EQ(order.replica(), 2u);
  EXPECT_EQ(order.kind(), pb::ORDER_KIND_TRUNCATE);
  EXPECT_EQ(order.to_step(), 4u);
  EXPECT_EQ(order.new_epoch(), 1u);
  pb::SessionState state = State(s);
  EXPECT_EQ(state.verified_steps(), 4u);
  EXPECT_EQ(state.replicas(2).stored(), 4u);
  EXPECT_EQ(state.replicas(2).next_step(), 4u);
  auto divergence = Read<pb::Divergence>(kDivergences, DivergenceKey(s, 0));
  EXPECT_EQ(divergence.step(), 4u);
  EXPECT_THAT(divergence.minority(), ElementsAre(2));
  EXPECT_EQ(divergence.majority_leaf_hash(), Str(NaiveLeafHash(s, 4, Token(4), Digest(4))));
  EXPECT_EQ(divergence.leaves_size(), 3);
  // The stale epoch is refused; the regenerated leaves verify.
  EXPECT_EQ(Apply(Leaves(s, 2, 2, 0, 8, 1)).rejected, 1u);
  Apply(Leaves(s, 2, 2, 1, 4, 4));
  EXPECT_EQ(State(s).verified_steps(), 8u);
}

TEST_F(ApplierTest, RepeatedDivergenceAtOneStepEscalatesToRebuildThenQuarantine) {
  const std::string s = Session(4);
  Start(s, 3);
  Register(3);
  Apply(Leaves(s, 0, 0, 0, 0, 6));
  Apply(Leaves(s, 1, 1, 0, 0, 6));
  EXPECT_EQ(Apply(Leaves(s, 2, 2, 0, 0, 6, {2})).orders[0].kind(), pb::ORDER_KIND_TRUNCATE);
  EXPECT_EQ(Apply(Leaves(s, 2, 2, 1, 2, 4, {2})).orders[0].kind(), pb::ORDER_KIND_REBUILD);
  Effects third = Apply(Leaves(s, 2, 2, 2, 2, 4, {2}));
  EXPECT_THAT(third.quarantined, ElementsAre(Worker(2)));
  ASSERT_EQ(third.orders.size(), 1u);
  EXPECT_EQ(third.orders[0].kind(), pb::ORDER_KIND_REPLACE);
  pb::SessionState state = State(s);
  EXPECT_EQ(state.phase(), pb::SESSION_PHASE_WAITING);
  EXPECT_TRUE(state.replicas(2).worker_id().empty());
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(2)).phase(), pb::WorkerState::PHASE_QUARANTINED);
  // Placement now picks the spare worker; the new replica replays the verified prefix.
  ASSERT_OK_AND_ASSIGN(std::vector<pb::LogRecord> plan, PlanPlacement(*store_, 10));
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].assign().worker_id(), Worker(3));
  EXPECT_EQ(plan[0].assign().epoch(), 3u);
  Apply(plan[0]);
  Apply(Leaves(s, 2, 3, 3, 0, 6));
  EXPECT_EQ(State(s).verified_steps(), 6u);
}

TEST_F(ApplierTest, TwoReplicasRollBackTogetherThenRecruitAThird) {
  const std::string s = Session(5);
  Start(s, 2);
  Register(2);
  Apply(Leaves(s, 0, 0, 0, 0, 5));
  Effects first = Apply(Leaves(s, 1, 1, 0, 0, 5, {3}));
  ASSERT_EQ(first.orders.size(), 2u);
  EXPECT_EQ(State(s).verified_steps(), 3u);
  Apply(Leaves(s, 0, 0, 1, 3, 2));
  Effects second = Apply(Leaves(s, 1, 1, 1, 3, 2, {3}));
  EXPECT_TRUE(second.orders.empty());
  pb::SessionState state = State(s);
  ASSERT_EQ(state.replicas_size(), 3);
  EXPECT_EQ(state.phase(), pb::SESSION_PHASE_WAITING);
  EXPECT_EQ(state.disagreements(), 2u);
  Assign(s, 2, 2);
  // The recruit replays steps 0..2 against the verified leaves, then votes at step 3.
  Effects third = Apply(Leaves(s, 2, 2, 0, 0, 5));
  ASSERT_EQ(third.orders.size(), 1u);
  EXPECT_EQ(third.orders[0].replica(), 1u);
  EXPECT_EQ(third.orders[0].kind(), pb::ORDER_KIND_REBUILD);  // second time at step 3
  EXPECT_EQ(State(s).verified_steps(), 3u);
  Apply(Leaves(s, 1, 1, 2, 3, 2));
  EXPECT_EQ(State(s).verified_steps(), 5u);
}

TEST_F(ApplierTest, WorkerPastTheThresholdIsQuarantinedAndItsReplicasReplaced) {
  Open(ApplierOptions{.quarantine_divergences = 1});
  const std::string s = Session(6);
  Start(s, 3);
  Register(3);
  Apply(Leaves(s, 0, 0, 0, 0, 6));
  Apply(Leaves(s, 1, 1, 0, 0, 6));
  Effects effects = Apply(Leaves(s, 2, 2, 0, 0, 6, {4}));
  EXPECT_THAT(effects.quarantined, ElementsAre(Worker(2)));
  pb::SessionState state = State(s);
  EXPECT_EQ(state.replicas(2).stored(), 4u);  // verified leaves stay
  EXPECT_EQ(state.replicas(2).next_step(), 0u);
  Assign(s, 2, 3, 1);
  Apply(Leaves(s, 2, 3, 1, 0, 6));
  EXPECT_EQ(State(s).verified_steps(), 6u);
}

TEST_F(ApplierTest, ReleasedWorkerIsLostUntilItRegistersAgainThenGetsWork) {
  Open(ApplierOptions{.quarantine_divergences = 1});
  const std::string s = Session(20);
  Start(s, 3);
  Apply(Leaves(s, 0, 0, 0, 0, 4));
  Apply(Leaves(s, 1, 1, 0, 0, 4));
  ASSERT_THAT(Apply(Leaves(s, 2, 2, 0, 0, 4, {1})).quarantined, ElementsAre(Worker(2)));
  // Reconnecting does not clear a quarantine.
  Register(2);
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(2)).phase(), pb::WorkerState::PHASE_QUARANTINED);
  pb::LogRecord release;
  release.mutable_worker_released()->set_worker_id(Worker(2));
  release.mutable_worker_released()->set_reason("disk replaced");
  Effects effects = Apply(release);
  EXPECT_EQ(effects.rejected, 0u);
  EXPECT_THAT(effects.released, ElementsAre(Worker(2)));
  pb::WorkerState worker = Read<pb::WorkerState>(kWorkers, Worker(2));
  EXPECT_EQ(worker.phase(), pb::WorkerState::PHASE_LOST);
  EXPECT_EQ(worker.divergences(), 0u);
  EXPECT_EQ(worker.quarantine_reason(), "");
  EXPECT_EQ(worker.releases(), 1u);
  EXPECT_EQ(worker.release_reason(), "disk replaced");
  // Lost: nothing is placed on it until it registers again.
  EXPECT_EQ(Assign(s, 2, 2, 1).rejected, 1u);
  Register(2);
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(2)).phase(), pb::WorkerState::PHASE_ACTIVE);
  EXPECT_EQ(Assign(s, 2, 2, 1).rejected, 0u);
  Apply(Leaves(s, 2, 2, 1, 0, 4));
  EXPECT_EQ(State(s).verified_steps(), 4u);
}

TEST_F(ApplierTest, ReleaseOfAWorkerThatIsNotQuarantinedChangesNothing) {
  Register(0);
  pb::LogRecord release;
  release.mutable_worker_released()->set_worker_id(Worker(0));
  EXPECT_EQ(Apply(release).rejected, 1u);
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(0)).phase(), pb::WorkerState::PHASE_ACTIVE);
  release.mutable_worker_released()->set_worker_id("nobody");
  EXPECT_EQ(Apply(release).rejected, 1u);
}

pb::LogRecord Tick(uint64_t unix_ms) {
  pb::LogRecord record;
  record.mutable_tick()->set_unix_ms(unix_ms);
  return record;
}

pb::LogRecord Expired(const std::string& session, uint64_t since) {
  pb::LogRecord record;
  record.mutable_placement_expired()->set_session_id(session);
  record.mutable_placement_expired()->set_waiting_since_unix_ms(since);
  return record;
}

TEST_F(ApplierTest, SessionThatCannotBePlacedFailsAfterThePlacementTimeout) {
  Open(ApplierOptions{.placement_timeout_ms = 5'000});
  const std::string s = Session(21);
  Register(0);
  Apply(Tick(100'000));
  Apply(AdmitRecord(s, 2));
  Assign(s, 0, 0);  // one of two replicas placed; no second worker
  EXPECT_EQ(State(s).waiting_since_unix_ms(), 100'000u);
  // Too early by the applier's clock: a proposal changes nothing.
  Apply(Tick(104'999));
  EXPECT_EQ(Apply(Expired(s, 100'000)).rejected, 1u);
  Apply(Tick(105'000));
  // A proposal about an earlier wait (stale) changes nothing either.
  EXPECT_EQ(Apply(Expired(s, 99'000)).rejected, 1u);
  Effects effects = Apply(Expired(s, 100'000));
  EXPECT_EQ(effects.rejected, 0u);
  EXPECT_EQ(effects.placement_timeouts, 1u);
  EXPECT_THAT(effects.aborted, ElementsAre(std::make_pair(Worker(0), s)));
  pb::SessionState state = State(s);
  EXPECT_EQ(state.phase(), pb::SESSION_PHASE_FAILED);
  EXPECT_THAT(state.failure(), ::testing::HasSubstr("placement timeout: 1 of 2 replicas placed"));
  // The worker's slot is free again, and the failed session takes no more records.
  EXPECT_EQ(Read<pb::WorkerState>(kWorkers, Worker(0)).replicas_size(), 0);
  EXPECT_EQ(Apply(Expired(s, 100'000)).rejected, 1u);
  EXPECT_EQ(applier_->phases().failed(), 1u);
  EXPECT_EQ(applier_->phases().waiting(), 0u);
}

TEST_F(ApplierTest, ReplacedReplicaRestartsThePlacementWait) {
  Open(ApplierOptions{.placement_timeout_ms = 5'000});
  const std::string s = Session(22);
  Apply(Tick(1'000));
  Start(s, 1);
  EXPECT_EQ(State(s).phase(), pb::SESSION_PHASE_RUNNING);
  Apply(Tick(50'000));
  pb::LogRecord lost;
  lost.mutable_worker_lost()->set_worker_id(Worker(0));
  Apply(lost);
  EXPECT_EQ(State(s).phase(), pb::SESSION_PHASE_WAITING);
  EXPECT_EQ(State(s).waiting_since_unix_ms(), 50'000u);
  Apply(Tick(54'000));
  EXPECT_EQ(Apply(Expired(s, 50'000)).rejected, 1u);  // waiting 4 s, not 5
  // With the timeout disabled nothing ever expires.
  Open(ApplierOptions{.placement_timeout_ms = 0});
  Apply(Tick(90'000));
  EXPECT_EQ(Apply(Expired(s, 50'000)).rejected, 1u);
}

TEST_F(ApplierTest, ReplayingReplicaThatDiffersInsideThePrefixIsRolledBackThere) {
  const std::string s = Session(13);
  Start(s, 3);
  Register(3);
  Apply(Leaves(s, 0, 0, 0, 0, 6));
  Apply(Leaves(s, 1, 1, 0, 0, 6));
  Apply(Leaves(s, 2, 2, 0, 0, 4));
  pb::LogRecord deadline;
  deadline.mutable_deadline()->set_session_id(s);
  deadline.mutable_deadline()->set_replica(2);
  deadline.mutable_deadline()->set_epoch(0);
  EXPECT_EQ(Apply(deadline).orders[0].kind(), pb::ORDER_KIND_REPLACE);
  EXPECT_EQ(Apply(deadline).rejected, 1u);  // the epoch moved on
  Assign(s, 2, 3, 1);
  Effects replay = Apply(Leaves(s, 2, 3, 1, 0, 3, {1}));
  ASSERT_EQ(replay.orders.size(), 1u);
  EXPECT_EQ(replay.orders[0].kind(), pb::ORDER_KIND_TRUNCATE);
  EXPECT_EQ(replay.orders[0].to_step(), 1u);
  EXPECT_EQ(State(s).replicas(2).stored(), 4u);  // the verified leaves stay
  EXPECT_EQ(State(s).replicas(2).next_step(), 1u);
  Apply(Leaves(s, 2, 3, 2, 1, 5));
  EXPECT_EQ(State(s).verified_steps(), 6u);
}

TEST_F(ApplierTest, ClaimedRootThatDoesNotMatchTheLeavesIsRolledBack) {
  const std::string s = Session(7);
  Start(s, 3);
  Apply(Leaves(s, 0, 0, 0, 0, 4, {}, true));
  Apply(Leaves(s, 1, 1, 0, 0, 4, {}, true));
  pb::LogRecord bad = Leaves(s, 2, 2, 0, 0, 4, {}, true);
  bad.mutable_leaf_batch()->set_session_root(std::string(32, 'x'));
  Effects effects = Apply(bad);
  ASSERT_EQ(effects.orders.size(), 1u);
  EXPECT_EQ(effects.orders[0].replica(), 2u);
  EXPECT_EQ(effects.orders[0].to_step(), 4u);
  auto divergence = Read<pb::Divergence>(kDivergences, DivergenceKey(s, 0));
  EXPECT_TRUE(divergence.leaves(2).bad_root());
  EXPECT_EQ(State(s).phase(), pb::SESSION_PHASE_RUNNING);
}

TEST_F(ApplierTest, CheckpointIsTakenOnlyWhenTheLedgerGrew) {
  pb::LogRecord request;
  request.mutable_checkpoint_request();
  EXPECT_TRUE(Apply(request).checkpoint);  // the empty tree gets one checkpoint
  EXPECT_FALSE(Apply(request).checkpoint);
  Register(0);
  Apply(AdmitRecord(Session(8), 1));  // records the anchor set
  EXPECT_TRUE(Apply(request).checkpoint);
  auto body = Read<pb::CheckpointBody>(kCheckpoints, U64Key(1));
  Hash anchor_leaf = merkle::LeafHash(
      AsBytes(*DbStateReader(store_.get()).Get(kLedger, LedgerEntryKey(0)).value()));
  EXPECT_EQ(body.root(), Str(anchor_leaf));  // a one-leaf tree's root is its leaf hash
}

TEST_F(ApplierTest, StateAndPositionSurviveReopen) {
  const std::string s = Session(9);
  Start(s, 2);
  Apply(Leaves(s, 0, 0, 0, 0, 3));
  const uint64_t applied = applier_->applied();
  Open(ApplierOptions{});
  EXPECT_EQ(applier_->applied(), applied);
  Apply(Leaves(s, 1, 1, 0, 0, 3));
  EXPECT_EQ(State(s).verified_steps(), 3u);
}

TEST_F(ApplierTest, CosignersJoinSortedByNameUnderTheFirstLedgerKey) {
  const tlog::NoteSigner ledger = LedgerKey(1);
  const tlog::Cosigner b = CosignerKey("supervisor-b", 2);
  const tlog::Cosigner a = CosignerKey("supervisor-a", 3);
  EXPECT_EQ(Apply(Joined(b, ledger)).rejected, 0u);
  EXPECT_EQ(Apply(Joined(a, ledger)).rejected, 0u);
  // A restart whose idempotency key was trimmed appends the same join again: nothing changes.
  EXPECT_EQ(Apply(Joined(a, ledger)).rejected, 0u);
  const pb::CosignerSet set = Cosigners();
  EXPECT_EQ(set.ledger_key(), ledger.Verifier().ToString());
  ASSERT_EQ(set.members_size(), 2);
  EXPECT_EQ(set.members(0).name(), "supervisor-a");
  EXPECT_EQ(set.members(0).cosigner_key(), a.Verifier().ToString());
  EXPECT_EQ(set.members(1).name(), "supervisor-b");
  EXPECT_EQ(set.members(1).position(), 0u);
}

TEST_F(ApplierTest, ValidCosignatureIsStoredAgainstTheRecordedBody) {
  const auto [empty_root, one_root] = TwoCheckpoints();
  const tlog::NoteSigner ledger = LedgerKey(1);
  const tlog::Cosigner a = CosignerKey("supervisor-a", 3);
  const tlog::Cosigner b = CosignerKey("supervisor-b", 2);
  Apply(Joined(a, ledger));
  Apply(Joined(b, ledger));
  // Applied in the order b, a: stored sorted by name.
  Effects first = Apply(Cosigned(b, 1, CheckpointText(1, one_root), 1700));
  EXPECT_EQ(first.cosignatures_applied, 1u);
  EXPECT_EQ(first.rejected, 0u);
  EXPECT_EQ(Apply(Cosigned(a, 1, CheckpointText(1, one_root), 1800)).cosignatures_applied, 1u);
  EXPECT_EQ(Apply(Cosigned(a, 0, CheckpointText(0, empty_root))).cosignatures_applied, 1u);
  const auto stored = Read<pb::CheckpointCosignatures>(kCosignatures, U64Key(1));
  ASSERT_EQ(stored.cosignatures_size(), 2);
  EXPECT_EQ(stored.cosignatures(0).name(), "supervisor-a");
  EXPECT_EQ(stored.cosignatures(0).timestamp(), 1800u);
  EXPECT_EQ(stored.cosignatures(0).key_id(), a.Verifier().key_id());
  EXPECT_EQ(stored.cosignatures(1).name(), "supervisor-b");
  // The stored signature is the spec's message signed by b's key, checked with a raw key.
  const std::string message = "cosignature/v1\ntime 1700\n" + CheckpointText(1, one_root);
  auto raw = Ed25519PublicKey::FromRaw(b.Verifier().public_key());
  ASSERT_OK(raw);
  EXPECT_TRUE(raw->Verify(AsBytes(message), AsBytes(stored.cosignatures(1).signature())));
}

TEST_F(ApplierTest, TwoAppliersFedTheSameRecordsStoreTheSameBytes) {
  fp::testing::TempDir other_dir;
  auto other_store = OpenStateStore(other_dir.Join("state"));
  ASSERT_OK(other_store);
  auto other = Applier::Open(other_store->get(), ApplierOptions{});
  ASSERT_OK(other);
  const auto [empty_root, one_root] = TwoCheckpoints();
  const tlog::NoteSigner ledger = LedgerKey(1);
  const tlog::Cosigner a = CosignerKey("supervisor-a", 3);
  const tlog::Cosigner stranger = CosignerKey("stranger", 9);
  std::vector<pb::LogRecord> records = {Joined(a, ledger),
                                        Joined(CosignerKey("other-ledger", 4), LedgerKey(5)),
                                        Cosigned(a, 1, CheckpointText(1, one_root)),
                                        Cosigned(a, 1, CheckpointText(1, one_root)),
                                        Cosigned(stranger, 1, CheckpointText(1, one_root)),
                                        Cosigned(a, 0, CheckpointText(1, one_root))};
  uint64_t rejected = 0;
  for (const pb::LogRecord& record : records) rejected += Apply(record).rejected;
  EXPECT_EQ(rejected, 4u);
  // The second applier gets the same log in one group.
  std::vector<LogEntry> log;
  for (const pb::LogRecord& record : history_) log.push_back(LogEntry{log.size(), record});
  ASSERT_OK_AND_ASSIGN(Effects effects, (*other)->Apply(log));
  EXPECT_EQ(effects.rejected, 4u);
  EXPECT_EQ(effects.cosignatures_applied, 1u);
  EXPECT_EQ(effects.cosignatures_rejected, 3u);
  EXPECT_EQ(Dump(*store_), Dump(**other_store));
}

// ---- Error paths: rejected records change nothing. ----

TEST_F(ApplierTest, JoinsWithAnotherLedgerKeyOrCosignerKeyAreRejected) {
  const tlog::NoteSigner ledger = LedgerKey(1);
  const tlog::Cosigner a = CosignerKey("supervisor-a", 3);
  Apply(Joined(a, ledger));
  EXPECT_EQ(Apply(Joined(CosignerKey("supervisor-b", 2), LedgerKey(7))).rejected, 1u);
  EXPECT_EQ(Apply(Joined(CosignerKey("supervisor-a", 8), ledger)).rejected, 1u);
  pb::LogRecord misnamed = Joined(a, ledger);
  misnamed.mutable_cosigner_joined()->set_name("supervisor-c");
  EXPECT_EQ(Apply(misnamed).rejected, 1u);
  pb::LogRecord garbled = Joined(CosignerKey("supervisor-d", 4), ledger);
  garbled.mutable_cosigner_joined()->set_cosigner_key("supervisor-d+00000000+AAAA");
  EXPECT_EQ(Apply(garbled).rejected, 1u);
  pb::LogRecord no_ledger = Joined(CosignerKey("supervisor-e", 5), ledger);
  no_ledger.mutable_cosigner_joined()->set_ledger_key(a.Verifier().ToString());
  EXPECT_EQ(Apply(no_ledger).rejected, 1u);
  const pb::CosignerSet set = Cosigners();
  ASSERT_EQ(set.members_size(), 1);
  EXPECT_EQ(set.members(0).cosigner_key(), a.Verifier().ToString());
}

TEST_F(ApplierTest, JoinsBeyondTheCosignerLimitAreRejected) {
  const tlog::NoteSigner ledger = LedgerKey(1);
  for (size_t i = 0; i < kMaxCosigners; ++i) {
    ASSERT_EQ(
        Apply(Joined(CosignerKey("s" + std::to_string(i), static_cast<uint8_t>(10 + i)), ledger))
            .rejected,
        0u);
  }
  EXPECT_EQ(Apply(Joined(CosignerKey("one-too-many", 99), ledger)).rejected, 1u);
  EXPECT_EQ(Cosigners().members_size(), static_cast<int>(kMaxCosigners));
}

TEST_F(ApplierTest, BadUnknownMisplacedAndDuplicateCosignaturesAreRejectedAndCounted) {
  const auto [empty_root, one_root] = TwoCheckpoints();
  const tlog::NoteSigner ledger = LedgerKey(1);
  const tlog::Cosigner a = CosignerKey("supervisor-a", 3);
  Apply(Joined(a, ledger));
  const std::string text = CheckpointText(1, one_root);
  auto rejected = [&](const pb::LogRecord& record) {
    const Effects effects = Apply(record);
    return effects.rejected == 1 && effects.cosignatures_rejected == 1 &&
           effects.cosignatures_applied == 0;
  };
  pb::LogRecord forged = Cosigned(a, 1, text);
  (*forged.mutable_cosignature()->mutable_signature())[5] ^= 1;
  EXPECT_TRUE(rejected(forged));
  pb::LogRecord retimed = Cosigned(a, 1, text, 1700);
  retimed.mutable_cosignature()->set_timestamp(1701);  // the signature covers the time
  EXPECT_TRUE(rejected(retimed));
  EXPECT_TRUE(rejected(Cosigned(CosignerKey("stranger", 9), 1, text)));  // never joined
  EXPECT_TRUE(rejected(Cosigned(a, 0, text)));  // size 1's cosignature, filed as size 0's
  EXPECT_TRUE(rejected(Cosigned(a, 7, CheckpointText(7, one_root))));  // no such checkpoint
  pb::LogRecord short_signature = Cosigned(a, 1, text);
  short_signature.mutable_cosignature()->mutable_signature()->pop_back();
  EXPECT_TRUE(rejected(short_signature));
  DbStateReader reader(store_.get());
  EXPECT_FALSE(reader.Get(kCosignatures, U64Key(1)).value().has_value());
  EXPECT_FALSE(reader.Get(kCosignatures, U64Key(0)).value().has_value());
  EXPECT_EQ(Apply(Cosigned(a, 1, text)).cosignatures_applied, 1u);
  EXPECT_TRUE(rejected(Cosigned(a, 1, text, 1900)));  // a second one of the same cosigner
  EXPECT_EQ(Read<pb::CheckpointCosignatures>(kCosignatures, U64Key(1)).cosignatures_size(), 1);
}

TEST_F(ApplierTest, LeavesForAnUnknownSessionAreRejected) {
  Register(0);
  Effects effects = Apply(Leaves(Session(10), 0, 0, 0, 0, 2));
  EXPECT_EQ(effects.rejected, 1u);
  EXPECT_EQ(effects.rejections.size(), 1u);
}

TEST_F(ApplierTest, GapsWrongWorkersAndOverrunsAreRejected) {
  const std::string s = Session(11);
  Start(s, 2);
  EXPECT_EQ(Apply(Leaves(s, 0, 0, 0, 1, 2)).rejected, 1u);   // gap: step 0 missing
  EXPECT_EQ(Apply(Leaves(s, 0, 1, 0, 0, 2)).rejected, 1u);   // not this replica's worker
  EXPECT_EQ(Apply(Leaves(s, 0, 0, 0, 0, 33)).rejected, 1u);  // beyond max_unverified_steps
  pb::LogRecord windowed = Leaves(s, 0, 0, 0, 0, 2);
  windowed.mutable_leaf_batch()->set_window_steps(2);
  EXPECT_EQ(Apply(windowed).rejected, 1u);
  EXPECT_EQ(State(s).replicas(0).stored(), 0u);
}

TEST_F(ApplierTest, BadAdmitsAndAssignsAreRejected) {
  Register(0);
  pb::LogRecord bad = AdmitRecord(Session(12), 1);
  bad.mutable_admit()->mutable_request()->set_replicas(0);
  EXPECT_EQ(Apply(bad).rejected, 1u);
  Apply(AdmitRecord(Session(12), 1));
  EXPECT_EQ(Apply(AdmitRecord(Session(12), 1)).rejected, 1u);  // exists
  EXPECT_EQ(Assign(Session(12), 0, 7).rejected, 1u);           // unknown worker
  EXPECT_EQ(Assign(Session(12), 1, 0).rejected, 1u);           // no such replica
  EXPECT_EQ(Assign(Session(12), 0, 0, 5).rejected, 1u);        // wrong epoch
  EXPECT_EQ(Assign(Session(12), 0, 0, 0, 0).rejected, 1u);     // a past attempt
  EXPECT_EQ(Assign(Session(12), 0, 0).rejected, 0u);
  EXPECT_EQ(Assign(Session(12), 0, 0).rejected, 1u);  // already placed
}

TEST_F(ApplierTest, RejectedAssignMovesTheReplicaToAFreshlyKeyedAttempt) {
  Register(0);
  Register(1);
  Apply(AdmitRecord(Session(13), 2));
  ASSERT_EQ(Assign(Session(13), 0, 0).rejected, 0u);
  // The leader's view had worker 0 free for replica 1 too; the applied state says otherwise.
  pb::LogRecord rejected;
  *rejected.mutable_assign() = pb::Assign();
  rejected.mutable_assign()->set_session_id(Session(13));
  rejected.mutable_assign()->set_replica(1);
  rejected.mutable_assign()->set_worker_id(Worker(0));
  EXPECT_EQ(Apply(rejected).rejected, 1u);
  EXPECT_EQ(State(Session(13)).replicas(1).placement_attempts(), 1u);

  pb::LogRecord next = rejected;
  next.mutable_assign()->set_worker_id(Worker(1));
  next.mutable_assign()->set_attempt(1);
  EXPECT_NE(IdempotencyKey(rejected), IdempotencyKey(next));
  EXPECT_EQ(Apply(next).rejected, 0u);
  const pb::SessionState state = State(Session(13));
  EXPECT_EQ(state.replicas(1).worker_id(), Worker(1));
  EXPECT_EQ(state.phase(), pb::SESSION_PHASE_RUNNING);
}

}  // namespace
}  // namespace fp::supervisor
