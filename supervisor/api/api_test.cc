// Tests of the pure HTTP handlers, without sockets: submissions become Admit records, reads and
// proofs are answered from a real state store, follows (events, completions) advance by Poll, and
// bad requests get 4xx JSON errors.
#include "supervisor/api/api.h"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "common/tlog/cosignature.h"
#include "common/tlog/proof_bundle.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_txn.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using boost::beast::http::verb;
using ::testing::HasSubstr;

constexpr std::string_view kOrigin = "fieldprint.test/api";
constexpr std::string_view kAdminToken = "0123456789abcdef-admin";

json::value ParseJson(const std::string& text) {
  boost::system::error_code error;
  json::value value = json::parse(text, error);
  FP_CHECK_MSG(!error, text);
  return value;
}

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_ = std::move(RocksLog::Open(dir_.Join("log"))).value();
    state_ = std::move(OpenStateStore(dir_.Join("state"))).value();
    applier_ = std::move(Applier::Open(state_.get(), ApplierOptions{})).value();
    auto signer = tlog::NoteSigner::FromSeed(kOrigin, Bytes(32, 3));
    FP_CHECK_OK(signer);
    auto cosigner = tlog::Cosigner::FromSeed("supervisor-0", Bytes(32, 4));
    FP_CHECK_OK(cosigner);
    api_ = std::make_unique<Api>(MakeContext(std::string(kAdminToken)));
    signer_ = std::make_unique<CheckpointSigner>(
        state_.get(), log_.get(), std::move(signer).value(), std::move(cosigner).value(), nullptr);
    FP_CHECK_OK(signer_->Join());
  }

  ApiContext MakeContext(std::string admin_token) {
    auto signer = tlog::NoteSigner::FromSeed(kOrigin, Bytes(32, 3));
    FP_CHECK_OK(signer);
    ApiContext context;
    context.admin_token = std::move(admin_token);
    context.state = state_.get();
    context.log = log_.get();
    context.origin = std::string(kOrigin);
    context.verifier = signer->Verifier();
    context.defaults.models["tiny"] = {std::string(32, 'n'), std::string(32, 'a')};
    context.defaults.models["untokenized"] = {std::string(32, 'n'), std::string(32, 'a')};
    context.new_session_id = [this]() -> StatusOr<SessionId> {
      SessionId id{};
      id[15] = static_cast<uint8_t>(++next_id_);
      return id;
    };
    context.applied = [this] { return applier_->applied(); };
    context.draining = &draining_;
    context.tokenizers["tiny"] = std::make_shared<tokenizer::ByteTokenizer>(260, 256, 257);
    return context;
  }

  ApiAction Call(verb method, std::string target, std::string body = "") {
    return api_->Handle(HttpRequest{method, std::move(target), std::move(body)});
  }

  void AppendAndApply(std::vector<pb::LogRecord> records) {
    FP_CHECK_OK(testing::AppendAll(*log_, records));
    FP_CHECK_OK(testing::CatchUp(*log_, *applier_, 100));
  }

  // Runs an admitted single-replica session to verification with `steps` tokens 7, 8, 9, ...
  void RunToVerified(const std::string& id, uint64_t steps) {
    pb::LogRecord worker;
    worker.mutable_worker_registered()->set_worker_id("w0");
    worker.mutable_worker_registered()->add_models("tiny");
    worker.mutable_worker_registered()->set_numerics_profile_hash(std::string(32, 'p'));
    worker.mutable_worker_registered()->set_max_replicas(4);
    pb::LogRecord assign;
    assign.mutable_assign()->set_session_id(id);
    assign.mutable_assign()->set_worker_id("w0");
    pb::LogRecord leaves;
    pb::LeafBatch* batch = leaves.mutable_leaf_batch();
    batch->set_worker_id("w0");
    batch->set_session_id(id);
    merkle::Frontier tree;
    for (uint64_t step = 0; step < steps; ++step) {
      leaf::StepLeaf leaf;
      std::copy(id.begin(), id.end(), leaf.session_id.begin());
      leaf.step = step;
      leaf.token_id = 7 + static_cast<uint32_t>(step);
      leaf.state_digest = Sha256(std::to_string(step));
      batch->add_token_ids(leaf.token_id);
      batch->mutable_state_digests()->append(HashString(leaf.state_digest));
      tree.Append(leaf::StepLeafHash(leaf), nullptr);
    }
    batch->set_last(true);
    batch->set_session_root(HashString(tree.Root()));
    pb::LogRecord checkpoint;
    checkpoint.mutable_checkpoint_request();
    AppendAndApply({worker, assign, leaves, checkpoint});
    SignAndCosign();
  }

  // Signs what the applier checkpointed (once the join is applied) and applies the cosignature
  // record the signer appends in the background.
  void SignAndCosign() {
    FP_CHECK_OK(signer_->AfterApply(Effects{}));
    FP_CHECK_OK(signer_->SignPending());
    while (log_->WaitBeyond(applier_->applied(), std::chrono::milliseconds(200)) >
           applier_->applied()) {
      FP_CHECK_OK(testing::CatchUp(*log_, *applier_, 100));
    }
  }

  // Submits a session through the API and applies its Admit; returns its 16-byte id.
  std::string Submit(uint64_t max_tokens) {
    ApiAction action = Call(verb::post, "/v1/sessions",
                            fmt::format(R"({{"model":"tiny","prompt_token_ids":[1,2,3],)"
                                        R"("max_tokens":{},"replicas":1}})",
                                        max_tokens));
    FP_CHECK_MSG(action.reply.status == 202, action.reply.body);
    FP_CHECK(action.append.has_value());
    AppendAndApply({*action.append});
    return action.append->admit().request().session_id();
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<RocksLog> log_;
  std::unique_ptr<RocksStore> state_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<CheckpointSigner> signer_;
  std::unique_ptr<Api> api_;
  std::atomic<bool> draining_{false};
  int next_id_ = 0;
};

TEST_F(ApiTest, SubmissionBecomesAnAdmitRecordWithModelDefaults) {
  ApiAction action = Call(verb::post, "/v1/sessions",
                          R"({"model":"tiny","prompt_token_ids":[5,6],"max_tokens":9,)"
                          R"("seed":42,"replicas":2,"digest_scope":"hidden+kv"})");
  ASSERT_EQ(action.reply.status, 202u) << action.reply.body;
  ASSERT_TRUE(action.append.has_value());
  const pb::SessionRequest& request = action.append->admit().request();
  EXPECT_EQ(request.session_id(), std::string(15, '\0') + "\x01");
  EXPECT_EQ(request.numerics_profile(), std::string(32, 'n'));
  EXPECT_EQ(request.anchor_set_hash(), std::string(32, 'a'));
  EXPECT_EQ(request.sampling().max_tokens(), 9u);
  EXPECT_EQ(request.sampling().seed(), 42u);
  EXPECT_EQ(request.replicas(), 2u);
  EXPECT_EQ(request.digest_scope(), ::fieldprint::wire::DIGEST_SCOPE_HIDDEN_KV);
  EXPECT_EQ(ParseJson(action.reply.body).at("session_id").as_string(),
            "00000000000000000000000000000001");
}

TEST_F(ApiTest, SessionStateFollowsTheApplier) {
  const std::string id = Submit(4);
  const std::string target = "/v1/sessions/" + HexEncode(AsBytes(id));
  json::value waiting = ParseJson(Call(verb::get, target).reply.body);
  EXPECT_EQ(waiting.at("phase").as_string(), "waiting");
  RunToVerified(id, 4);
  json::value verified = ParseJson(Call(verb::get, target).reply.body);
  EXPECT_EQ(verified.at("phase").as_string(), "verified");
  EXPECT_EQ(verified.at("verified_steps").as_int64(), 4);
}

TEST_F(ApiTest, EventsStreamVerifiedTokensThenAReceipt) {
  const std::string id = Submit(3);
  ApiAction action = Call(verb::get, "/v1/sessions/" + HexEncode(AsBytes(id)) + "/events");
  ASSERT_EQ(action.follow.kind, Follow::Kind::kEvents);
  EXPECT_EQ(action.reply.content_type, "text/event-stream");
  PollResult nothing = api_->Poll(action.follow);
  EXPECT_TRUE(nothing.chunk.empty());
  EXPECT_FALSE(nothing.done);
  RunToVerified(id, 3);
  PollResult all = api_->Poll(action.follow);
  EXPECT_TRUE(all.done);
  EXPECT_THAT(all.chunk, HasSubstr("event: token\ndata: {\"step\":0,\"token_id\":7}\n\n"));
  EXPECT_THAT(all.chunk, HasSubstr("{\"step\":2,\"token_id\":9}"));
  EXPECT_THAT(all.chunk, HasSubstr("event: verified\ndata: "));
  EXPECT_THAT(all.chunk, HasSubstr("\"checkpoint\":\"fieldprint.test/api\\n"));
}

TEST_F(ApiTest, CompletionWaitsForVerificationAndCarriesAReceipt) {
  ApiAction action = Call(verb::post, "/v1/completions",
                          R"({"model":"tiny","prompt":[[1,2]],"max_tokens":2,"replicas":1})");
  ASSERT_TRUE(action.append.has_value()) << action.reply.body;
  ASSERT_EQ(action.follow.kind, Follow::Kind::kCompletion);
  EXPECT_FALSE(api_->Poll(action.follow).reply.has_value());  // not even applied yet
  AppendAndApply({*action.append});
  EXPECT_FALSE(api_->Poll(action.follow).reply.has_value());
  RunToVerified(action.follow.session_id, 2);
  PollResult result = api_->Poll(action.follow);
  ASSERT_TRUE(result.reply.has_value());
  json::value body = ParseJson(result.reply->body);
  const json::value& choice = body.at("choices").as_array()[0];
  EXPECT_EQ(choice.at("token_ids").as_array(), (json::array{7, 8}));
  EXPECT_EQ(choice.at("finish_reason").as_string(), "length");
  EXPECT_EQ(body.at("usage").at("completion_tokens").as_int64(), 2);
  const json::value& receipt = body.at("fieldprint_receipt");
  EXPECT_EQ(receipt.at("steps").as_int64(), 2);
  // The receipt's output hash is SHA-256 over the big-endian token ids.
  EXPECT_EQ(receipt.at("output_hash").as_string(),
            HexEncode(Sha256(Bytes{0, 0, 0, 7, 0, 0, 0, 8})));
}

TEST_F(ApiTest, StreamingCompletionEndsWithDone) {
  ApiAction action = Call(verb::post, "/v1/completions",
                          R"({"model":"tiny","prompt":[1],"max_tokens":5,"stream":true,)"
                          R"("replicas":1})");
  ASSERT_EQ(action.follow.kind, Follow::Kind::kCompletionStream);
  AppendAndApply({*action.append});
  RunToVerified(action.follow.session_id, 3);
  PollResult result = api_->Poll(action.follow);
  EXPECT_TRUE(result.done);
  EXPECT_THAT(result.chunk, HasSubstr("\"token_ids\":[7,8,9]"));
  EXPECT_THAT(result.chunk, HasSubstr("\"finish_reason\":\"stop\""));
  EXPECT_THAT(result.chunk, HasSubstr("data: [DONE]\n\n"));
}

TEST_F(ApiTest, TextPromptIsTokenisedAndVerifiedTokensComeBackAsText) {
  ApiAction action = Call(verb::post, "/v1/completions",
                          R"({"model":"tiny","prompt":"Hi","max_tokens":2,"replicas":1})");
  ASSERT_TRUE(action.append.has_value()) << action.reply.body;
  // Byte-level: BOS (256), then the bytes of "Hi".
  EXPECT_THAT(action.append->admit().request().prompt_token_ids(),
              ::testing::ElementsAre(256, 72, 105));
  AppendAndApply({*action.append});
  RunToVerified(action.follow.session_id, 2);
  PollResult result = api_->Poll(action.follow);
  ASSERT_TRUE(result.reply.has_value());
  json::value body = ParseJson(result.reply->body);
  const json::value& choice = body.at("choices").as_array()[0];
  EXPECT_EQ(choice.at("token_ids").as_array(), (json::array{7, 8}));
  EXPECT_EQ(std::string(choice.at("text").as_string()), std::string("\x07\x08"));
  EXPECT_EQ(body.at("usage").at("prompt_tokens").as_int64(), 3);
  EXPECT_TRUE(body.at("fieldprint_receipt").is_object());
  // Prompt hash in the receipt: SHA-256 over the tokenised prompt, 4 bytes big-endian each.
  EXPECT_EQ(body.at("fieldprint_receipt").at("prompt_hash").as_string(),
            HexEncode(Sha256(Bytes{0, 0, 1, 0, 0, 0, 0, 72, 0, 0, 0, 105})));
}

TEST_F(ApiTest, StreamedTextIsTheGrowthOfTheWholeOutput) {
  ApiAction action = Call(verb::post, "/v1/completions",
                          R"({"model":"tiny","prompt":["Hi"],"max_tokens":5,"stream":true,)"
                          R"("replicas":1})");
  ASSERT_TRUE(action.append.has_value()) << action.reply.body;
  AppendAndApply({*action.append});
  RunToVerified(action.follow.session_id, 3);
  PollResult result = api_->Poll(action.follow);
  EXPECT_TRUE(result.done);
  EXPECT_THAT(result.chunk, HasSubstr("\"text\":\"\\u0007\\b\\t\""));
  EXPECT_THAT(result.chunk, HasSubstr("\"token_ids\":[7,8,9]"));
  EXPECT_THAT(result.chunk, HasSubstr("data: [DONE]"));
}

TEST_F(ApiTest, TokenIdPromptsStillWorkForAModelWithATokenizer) {
  ApiAction action = Call(verb::post, "/v1/completions",
                          R"({"model":"tiny","prompt":[65,66],"max_tokens":1,"replicas":1})");
  ASSERT_TRUE(action.append.has_value()) << action.reply.body;
  EXPECT_THAT(action.append->admit().request().prompt_token_ids(), ::testing::ElementsAre(65, 66));
}

TEST_F(ApiTest, ProofsVerifyWithIndependentChecks) {
  const std::string id = Submit(5);
  RunToVerified(id, 5);
  const std::string hex = HexEncode(AsBytes(id));
  json::value step = ParseJson(Call(verb::get, "/v1/sessions/" + hex + "/proof/step/3").reply.body);
  std::vector<Hash> path;
  for (const json::value& h : step.at("proof").as_array()) {
    path.push_back(HashFromHex(h.as_string()).value());
  }
  Hash leaf = HashFromHex(step.at("leaf").at("leaf_hash").as_string()).value();
  Hash root = HashFromHex(step.at("root").as_string()).value();
  EXPECT_OK(merkle::VerifyInclusion(leaf, 3, 5, path, root));
  EXPECT_EQ(step.at("leaf").at("token_id").as_int64(), 10);

  ApiAction checkpoint = Call(verb::get, "/v1/checkpoint");
  ASSERT_EQ(checkpoint.reply.status, 200u);
  tlog::NoteVerifier verifier = signer_->verifier();
  ASSERT_OK(tlog::OpenCheckpoint(checkpoint.reply.body, std::span(&verifier, 1), kOrigin));

  ApiAction bundle = Call(verb::get, "/v1/sessions/" + hex + "/bundle");
  ASSERT_EQ(bundle.reply.status, 200u) << bundle.reply.body;
  ASSERT_OK_AND_ASSIGN(tlog::ProofBundle parsed, tlog::ParseProofBundle(bundle.reply.body));
  EXPECT_OK(tlog::VerifyProofBundle(parsed, merkle::LeafHash(parsed.extra), std::span(&verifier, 1),
                                    kOrigin)
                .status());

  json::value record = ParseJson(Call(verb::get, "/v1/ledger/proof/session/" + hex).reply.body);
  EXPECT_EQ(record.at("index").as_int64(), 1);  // after the anchor set's record
  json::value consistency =
      ParseJson(Call(verb::get, "/v1/ledger/consistency?from=1&to=2").reply.body);
  EXPECT_EQ(consistency.at("to_root").as_string(), record.at("root").as_string());
}

TEST_F(ApiTest, WorkersHealthAndReadiness) {
  const std::string id = Submit(1);
  RunToVerified(id, 1);
  json::value workers = ParseJson(Call(verb::get, "/v1/workers").reply.body);
  EXPECT_EQ(workers.at("workers").as_array()[0].at("worker_id").as_string(), "w0");
  EXPECT_EQ(Call(verb::get, "/healthz").reply.status, 200u);
  EXPECT_EQ(Call(verb::get, "/readyz").reply.status, 200u);
  draining_ = true;
  EXPECT_EQ(Call(verb::get, "/readyz").reply.status, 503u);
}

TEST_F(ApiTest, SessionStateListsDivergenceRecordsAndRollbacks) {
  ApiAction submit = Call(verb::post, "/v1/sessions",
                          R"({"model":"tiny","prompt_token_ids":[1],"max_tokens":4,"replicas":2})");
  ASSERT_TRUE(submit.append.has_value());
  const std::string id = submit.append->admit().request().session_id();
  std::vector<pb::LogRecord> records = {*submit.append};
  for (int w = 0; w < 2; ++w) {
    pb::LogRecord worker;
    worker.mutable_worker_registered()->set_worker_id("w" + std::to_string(w));
    worker.mutable_worker_registered()->add_models("tiny");
    worker.mutable_worker_registered()->set_numerics_profile_hash(std::string(32, 'p'));
    worker.mutable_worker_registered()->set_max_replicas(4);
    pb::LogRecord assign;
    assign.mutable_assign()->set_session_id(id);
    assign.mutable_assign()->set_replica(w);
    assign.mutable_assign()->set_worker_id("w" + std::to_string(w));
    records.push_back(worker);
    records.push_back(assign);
  }
  // The replicas disagree on step 0's digest: no majority, both roll back.
  std::vector<Hash> expected;
  for (int w = 0; w < 2; ++w) {
    pb::LogRecord leaves;
    pb::LeafBatch* batch = leaves.mutable_leaf_batch();
    batch->set_worker_id("w" + std::to_string(w));
    batch->set_session_id(id);
    batch->set_replica(w);
    leaf::StepLeaf leaf;
    std::copy(id.begin(), id.end(), leaf.session_id.begin());
    leaf.token_id = 7;
    leaf.state_digest = Sha256("digest of replica " + std::to_string(w));
    batch->add_token_ids(leaf.token_id);
    batch->mutable_state_digests()->append(HashString(leaf.state_digest));
    expected.push_back(leaf::StepLeafHash(leaf));
    records.push_back(leaves);
  }
  AppendAndApply(records);
  json::value body =
      ParseJson(Call(verb::get, "/v1/sessions/" + HexEncode(AsBytes(id))).reply.body);
  EXPECT_EQ(body.at("divergences").as_int64(), 1);
  const json::array& divergences = body.at("divergence_records").as_array();
  ASSERT_EQ(divergences.size(), 1u);
  const json::value& divergence = divergences[0];
  EXPECT_EQ(divergence.at("step").as_int64(), 0);
  EXPECT_TRUE(divergence.at("majority_leaf_hash").is_null());
  const json::array& replicas = divergence.at("replicas").as_array();
  ASSERT_EQ(replicas.size(), 2u);
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(replicas[r].at("worker_id").as_string(), "w" + std::to_string(r));
    EXPECT_EQ(replicas[r].at("leaf_hash").as_string(), HexEncode(expected[r]));
  }
  EXPECT_EQ(divergence.at("orders").as_array().size(), 2u);
  EXPECT_EQ(divergence.at("orders").as_array()[1].at("kind").as_string(), "truncate");
  const json::array& rollbacks = body.at("rollbacks").as_array();
  ASSERT_EQ(rollbacks.size(), 2u);
  EXPECT_EQ(rollbacks[0].at("kind").as_string(), "truncate");
  EXPECT_EQ(rollbacks[0].at("to_step").as_int64(), 0);
  EXPECT_EQ(rollbacks[0].at("new_epoch").as_int64(), 1);
  EXPECT_FALSE(body.at("divergence_records_truncated").as_bool());
}

TEST_F(ApiTest, CheckpointKeyOpensTheServedCheckpoint) {
  const std::string id = Submit(2);
  RunToVerified(id, 2);
  ApiAction key = Call(verb::get, "/v1/checkpoint/key");
  ASSERT_EQ(key.reply.status, 200u) << key.reply.body;
  EXPECT_EQ(key.reply.body, signer_->verifier().ToString() + "\n");
  std::string text = key.reply.body;
  text.pop_back();
  ASSERT_OK_AND_ASSIGN(tlog::NoteVerifier verifier, tlog::NoteVerifier::Parse(text));
  ApiAction checkpoint = Call(verb::get, "/v1/checkpoint");
  EXPECT_OK(tlog::OpenCheckpoint(checkpoint.reply.body, std::span(&verifier, 1), kOrigin));
}

TEST_F(ApiTest, ServedCheckpointsCarryTheCosignatureOfTheListedCosigner) {
  EXPECT_EQ(Call(verb::get, "/v1/checkpoint/cosigners").reply.body, "");  // join not applied
  const std::string id = Submit(2);
  RunToVerified(id, 2);
  ApiAction cosigners = Call(verb::get, "/v1/checkpoint/cosigners");
  ASSERT_EQ(cosigners.reply.status, 200u) << cosigners.reply.body;
  EXPECT_EQ(cosigners.reply.body, signer_->cosigner_verifier().ToString() + "\n");
  std::string text = cosigners.reply.body;
  text.pop_back();
  ASSERT_OK_AND_ASSIGN(tlog::CosignatureVerifier cosigner, tlog::CosignatureVerifier::Parse(text));
  const tlog::NoteVerifier verifier = signer_->verifier();
  tlog::CosignaturePolicy policy;
  policy.cosigners = std::span(&cosigner, 1);
  policy.required = 1;
  // The latest checkpoint, the ledger proof's checkpoint and the bundle's all carry the line.
  const std::string hex = HexEncode(AsBytes(id));
  ASSERT_OK_AND_ASSIGN(
      tlog::ProofBundle bundle,
      tlog::ParseProofBundle(Call(verb::get, "/v1/sessions/" + hex + "/bundle").reply.body));
  json::value proof = ParseJson(Call(verb::get, "/v1/ledger/proof/session/" + hex).reply.body);
  for (const std::string& note :
       {Call(verb::get, "/v1/checkpoint").reply.body, bundle.checkpoint_note,
        std::string(proof.at("checkpoint").as_string())}) {
    EXPECT_OK(tlog::OpenCosignedCheckpoint(note, std::span(&verifier, 1), kOrigin, policy).status())
        << note;
  }
}

TEST_F(ApiTest, IdempotencyKeyGivesARetryTheSameSessionAcrossRestarts) {
  const std::string body = R"({"model":"tiny","prompt_token_ids":[1,2],"replicas":1})";
  HttpRequest request{verb::post, "/v1/sessions", body};
  request.idempotency_key = "order-17";
  ApiAction first = api_->Handle(request);
  ApiAction retry = api_->Handle(request);
  ASSERT_EQ(first.reply.status, 202u) << first.reply.body;
  EXPECT_EQ(first.reply.body, retry.reply.body);
  // The id is SHA-256("fieldprint idempotency key" 0x00 key), first 16 bytes.
  std::string input = "fieldprint idempotency key";
  input.push_back('\0');
  input += "order-17";
  const Hash hash = Sha256(AsBytes(input));
  EXPECT_EQ(first.append->admit().request().session_id(),
            std::string(reinterpret_cast<const char*>(hash.data()), 16));
  ASSERT_OK_AND_ASSIGN(uint64_t position, AppendAndWait(*log_, *first.append));
  log_.reset();
  log_ = std::move(RocksLog::Open(dir_.Join("log"))).value();
  api_ = std::make_unique<Api>(MakeContext(std::string(kAdminToken)));
  ASSERT_OK_AND_ASSIGN(uint64_t again, AppendAndWait(*log_, *retry.append));
  EXPECT_EQ(again, position);
  // The completions route with the same key and the same request reaches the same session.
  HttpRequest completion{verb::post, "/v1/completions",
                         R"({"model":"tiny","prompt":[1,2],"replicas":1})"};
  completion.idempotency_key = "order-17";
  ApiAction follow = api_->Handle(completion);
  EXPECT_EQ(follow.follow.session_id, first.append->admit().request().session_id());
  EXPECT_EQ(AppendAndWait(*log_, *follow.append).value(), position);
  // The same key with a different request: the log refuses it, the client gets a 409 reason.
  request.body = R"({"model":"tiny","prompt_token_ids":[1,3],"replicas":1})";
  ApiAction different = api_->Handle(request);
  StatusOr<uint64_t> conflict = AppendAndWait(*log_, *different.append);
  ASSERT_FALSE(conflict.ok());
  HttpReply reply = api_->AppendFailed(conflict.status());
  EXPECT_EQ(reply.status, 409u);
  EXPECT_THAT(ParseJson(reply.body).at("error").at("message").as_string().c_str(),
              HasSubstr("Idempotency-Key was already used for a different request"));
}

TEST_F(ApiTest, ReleaseOfAQuarantinedWorkerAppendsARecordForTheAdmin) {
  pb::LogRecord worker;
  worker.mutable_worker_registered()->set_worker_id("w9");
  worker.mutable_worker_registered()->add_models("tiny");
  worker.mutable_worker_registered()->set_numerics_profile_hash(std::string(32, 'p'));
  worker.mutable_worker_registered()->set_max_replicas(1);
  AppendAndApply({worker});
  HttpRequest request{verb::post, "/v1/admin/workers/w9/release", R"({"reason":"fixed"})"};
  request.authorization = "Bearer " + std::string(kAdminToken);
  // Not quarantined: nothing to release.
  EXPECT_EQ(api_->Handle(request).reply.status, 409u);
  // Quarantine it through the state, as the applier would have.
  pb::WorkerState state =
      DbStateReader(state_.get()).GetMessage<pb::WorkerState>(kWorkers, "w9").value().value();
  state.set_phase(pb::WorkerState::PHASE_QUARANTINED);
  StateTxn txn(state_.get());
  txn.PutMessage(kWorkers, "w9", state);
  ASSERT_OK(txn.Commit());
  ApiAction action = api_->Handle(request);
  ASSERT_EQ(action.reply.status, 202u) << action.reply.body;
  ASSERT_TRUE(action.append.has_value());
  EXPECT_EQ(action.append->worker_released().worker_id(), "w9");
  EXPECT_EQ(action.append->worker_released().reason(), "fixed");
  request.target = "/v1/admin/workers/nobody/release";
  EXPECT_EQ(api_->Handle(request).reply.status, 404u);
}

// ---- Error paths ----

TEST_F(ApiTest, AdminRoutesRefuseCallersWithoutTheToken) {
  HttpRequest request{verb::post, "/v1/admin/workers/w0/release", ""};
  auto refused = [&](const Api& api, std::string authorization) {
    request.authorization = std::move(authorization);
    ApiAction action = api.Handle(request);
    EXPECT_FALSE(action.append.has_value());
    return action.reply.status;
  };
  EXPECT_EQ(refused(*api_, ""), 401u);
  EXPECT_EQ(refused(*api_, "Bearer wrong-token-of-some-length"), 401u);
  EXPECT_EQ(refused(*api_, std::string(kAdminToken)), 401u);  // the scheme is required
  EXPECT_EQ(refused(*api_, "Bearer " + std::string(kAdminToken) + "x"), 401u);
  // Without a configured token the routes are off for everyone.
  Api disabled(MakeContext(""));
  EXPECT_EQ(refused(disabled, "Bearer "), 403u);
  EXPECT_EQ(refused(disabled, "Bearer " + std::string(kAdminToken)), 403u);
  // GET is not a release.
  request.method = verb::get;
  EXPECT_EQ(refused(*api_, "Bearer " + std::string(kAdminToken)), 404u);
}

TEST_F(ApiTest, MalformedIdempotencyKeysAreRefused) {
  HttpRequest request{verb::post, "/v1/sessions",
                      R"({"model":"tiny","prompt_token_ids":[1],"replicas":1})"};
  request.idempotency_key = std::string(kMaxIdempotencyKeyBytes + 1, 'k');
  EXPECT_EQ(api_->Handle(request).reply.status, 400u);
  request.idempotency_key = "tab\there";
  EXPECT_EQ(api_->Handle(request).reply.status, 400u);
}

TEST_F(ApiTest, BadSubmissionsGet400WithAReason) {
  auto status_of = [&](std::string target, std::string body) {
    ApiAction action = Call(verb::post, std::move(target), std::move(body));
    EXPECT_FALSE(action.append.has_value());
    EXPECT_EQ(ParseJson(action.reply.body).at("error").at("code").as_string(),
              action.reply.status == 400 ? "INVALID_ARGUMENT" : "?");
    return action.reply.status;
  };
  EXPECT_EQ(status_of("/v1/sessions", "not json"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", "[1]"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"model":"tiny","prompt_token_ids":[1],"x":1})"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"prompt_token_ids":[1]})"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"model":"unknown","prompt_token_ids":[1]})"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"model":"tiny","prompt_token_ids":[]})"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"model":"tiny","prompt_token_ids":[-1]})"), 400u);
  EXPECT_EQ(status_of("/v1/sessions", R"({"model":"tiny","prompt_token_ids":[1],"replicas":0})"),
            400u);
  // A text prompt for a model without a tokenizer.
  EXPECT_EQ(status_of("/v1/completions", R"({"model":"untokenized","prompt":"hello"})"), 400u);
  EXPECT_EQ(status_of("/v1/completions", R"({"model":"tiny","prompt":[1],"n":2})"), 400u);
}

TEST_F(ApiTest, BadReadsGet4xx) {
  EXPECT_EQ(Call(verb::get, "/v2/x").reply.status, 404u);
  EXPECT_EQ(Call(verb::get, "/v1/sessions/xyz").reply.status, 400u);
  const std::string unknown = "/v1/sessions/" + std::string(32, 'a');
  EXPECT_EQ(Call(verb::get, unknown).reply.status, 404u);
  EXPECT_EQ(Call(verb::get, unknown + "/events").reply.status, 404u);
  EXPECT_EQ(Call(verb::delete_, unknown).reply.status, 400u);
  EXPECT_EQ(Call(verb::get, unknown + "/proof/step/abc").reply.status, 400u);
  EXPECT_EQ(Call(verb::get, "/v1/checkpoint").reply.status, 404u);  // none signed yet
  EXPECT_EQ(Call(verb::get, "/v1/ledger/consistency?from=1").reply.status, 400u);
  EXPECT_EQ(Call(verb::get, "/" + std::string(kMaxRequestTargetBytes, 'a')).reply.status, 400u);
  const std::string id = Submit(3);
  // Not verified yet: 409 with the reason.
  ApiAction early = Call(verb::get, "/v1/sessions/" + HexEncode(AsBytes(id)) + "/proof/step/0");
  EXPECT_EQ(early.reply.status, 409u);
  EXPECT_THAT(early.reply.body, HasSubstr("not verified yet"));
}

}  // namespace
}  // namespace fp::supervisor
