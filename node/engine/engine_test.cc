// Tests for the engine's scheduling and session life cycle: output lengths and stop tokens, the
// step/digest definition (checked against separate prefills on a second backend), KV admission
// control, rollback of running and finished sessions, anchors in both modes, the numerics
// profile, and every error the API promises.
#include "node/engine/engine.h"

#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/leaf/state_digest.h"
#include "node/backend/cpu_backend.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TinyModelOptions o;
    o.hidden_size = 64;
    o.intermediate_size = 96;
    o.max_positions = 128;
    ASSERT_OK(WriteTinyModel(dir_.path().string(), o));
    model_ = std::move(Model::Load(dir_.path().string()).value());
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {},
                                     const AnchorSet* anchors = nullptr) {
    auto backend = std::move(CpuBackend::Create({1}).value());
    auto engine = Engine::Create(*model_, std::move(backend), anchors, options);
    EXPECT_OK(engine);
    return engine.ok() ? std::move(engine).value() : nullptr;
  }

  static SessionRequest Request(uint8_t id, std::vector<int32_t> prompt, int32_t max_tokens) {
    SessionRequest r;
    r.id[0] = id;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    return r;
  }

  static std::vector<int32_t> Prompt(int seed, int length) {
    std::vector<int32_t> p;
    for (int i = 0; i < length; ++i) p.push_back((seed * 53 + i * 29 + 3) % kTinyVocabSize);
    return p;
  }

  // Runs until idle; returns every output in order.
  static std::vector<StepOutput> RunAll(Engine& engine) {
    std::vector<StepOutput> outputs;
    while (engine.HasWork()) EXPECT_OK(engine.Step(&outputs));
    return outputs;
  }

  // The anchor set used by the anchor tests: 5 rows of deterministic values per layer.
  std::unique_ptr<AnchorSet> Anchors(float gamma) {
    const LlamaConfig& c = model_->config();
    std::vector<AnchorLayer> layers;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      AnchorLayer layer{Tensor::Zeros(DType::kF32, {5, c.num_kv_heads, c.head_dim}),
                        Tensor::Zeros(DType::kF32, {5, c.num_kv_heads, c.head_dim}),
                        Tensor::Zeros(DType::kF32, {c.num_heads})};
      for (int64_t i = 0; i < layer.key.elements(); ++i) {
        layer.key.mutable_data_as<float>()[i] = std::sin(0.1f * float(i + l));
        layer.value.mutable_data_as<float>()[i] = std::cos(0.3f * float(i));
      }
      layers.push_back(std::move(layer));
    }
    auto set = std::move(AnchorSet::Create(std::move(layers)).value());
    return std::move(set->WithGamma(gamma).value());
  }

  testing::TempDir dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(EngineTest, GeneratesExactlyMaxTokensWithOrderedLeaves) {
  auto engine = MakeEngine();
  SessionRequest r = Request(1, Prompt(1, 9), 10);
  ASSERT_OK(engine->Submit(r));
  std::vector<StepOutput> out = RunAll(*engine);
  ASSERT_EQ(out.size(), 10u);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].leaf.session_id, r.id);
    EXPECT_EQ(out[i].leaf.step, i);
    EXPECT_EQ(out[i].leaf_hash, leaf::StepLeafHash(out[i].leaf));
    EXPECT_EQ(out[i].finish, i == 9 ? FinishReason::kLength : FinishReason::kNone);
  }
  ASSERT_OK_AND_ASSIGN(SessionSnapshot snap, engine->GetSession(r.id));
  EXPECT_EQ(snap.state, SessionState::kFinished);
  EXPECT_EQ(snap.outputs.size(), 10u);
  EXPECT_EQ(snap.outputs[3], static_cast<int32_t>(out[3].leaf.token_id));
  EXPECT_EQ(engine->stats().kv_free_blocks, engine->stats().kv_blocks);  // released
}

TEST_F(EngineTest, StopTokenEndsTheSessionAndIsKept) {
  auto engine = MakeEngine();
  ASSERT_OK(engine->Submit(Request(1, Prompt(2, 6), 8)));
  std::vector<StepOutput> free_run = RunAll(*engine);
  SessionRequest stopped = Request(2, Prompt(2, 6), 8);
  stopped.stop_tokens = {static_cast<int32_t>(free_run[2].leaf.token_id)};
  ASSERT_OK(engine->Submit(stopped));
  std::vector<StepOutput> out = RunAll(*engine);
  // The stop token may already occur earlier in the greedy output; the session ends at the first.
  size_t first = 0;
  while (free_run[first].leaf.token_id != free_run[2].leaf.token_id) ++first;
  ASSERT_EQ(out.size(), first + 1);
  EXPECT_EQ(out.back().finish, FinishReason::kStop);
}

TEST_F(EngineTest, StepStatesAreTheHiddenStatesThatChoseTheTokens) {
  auto engine = MakeEngine();
  std::vector<int32_t> prompt = Prompt(3, 12);
  ASSERT_OK(engine->Submit(Request(1, prompt, 3)));
  std::vector<StepOutput> out = RunAll(*engine);
  // Step s's state is the final hidden state at the position of token P + s - 1; recompute each
  // with a plain prefill of prompt ++ outputs[0, s) on a separate backend.
  auto backend = std::move(CpuBackend::Create({1}).value());
  ASSERT_OK(backend->LoadModel(*model_, {DType::kBf16, -1}));
  ASSERT_OK(backend->LoadAnchors(nullptr, AnchorMode::kMix));
  ASSERT_OK(backend->AllocateKvCache(4, 16));
  std::vector<int32_t> table = {0, 1, 2, 3};
  std::vector<int32_t> tokens = prompt;
  for (size_t s = 0; s < out.size(); ++s) {
    ForwardSequence seq{tokens, 0, table, true, {0, 0, 1, 0}, s};
    ForwardResult r;
    ASSERT_OK(backend->Forward({&seq, 1}, {true, false}, &r));
    ASSERT_OK_AND_ASSIGN(Hash expected, leaf::TensorStateDigest(DType::kBf16, 7, r.hidden.bytes()));
    EXPECT_EQ(out[s].leaf.state_digest, expected) << s;
    EXPECT_EQ(static_cast<int32_t>(out[s].leaf.token_id), r.tokens[0]) << s;
    tokens.push_back(r.tokens[0]);
  }
}

TEST_F(EngineTest, SessionThatDoesNotFitWaitsAndNothingIsKilled) {
  // Each session needs ceil((20 + 12 - 1) / 16) = 2 blocks; the budget holds 3.
  EngineOptions options;
  auto probe = MakeEngine();
  options.kv_budget_bytes = 3 * probe->backend().KvBytesPerBlock(kKvBlockSize);
  auto engine = MakeEngine(options);
  ASSERT_EQ(engine->stats().kv_blocks, 3);
  ASSERT_OK(engine->Submit(Request(1, Prompt(1, 20), 12)));
  ASSERT_OK(engine->Submit(Request(2, Prompt(2, 20), 12)));
  std::vector<StepOutput> out;
  ASSERT_OK(engine->Step(&out));
  EXPECT_EQ(engine->stats().running, 1u);
  EXPECT_EQ(engine->stats().waiting, 1u);
  while (engine->HasWork()) ASSERT_OK(engine->Step(&out));
  EXPECT_EQ(out.size(), 24u);
  // Waiting changed nothing: each matches a run on its own.
  for (uint8_t id : {1, 2}) {
    auto solo = MakeEngine();
    ASSERT_OK(solo->Submit(Request(id, Prompt(id, 20), 12)));
    std::vector<StepOutput> alone = RunAll(*solo);
    std::vector<StepOutput> mine;
    for (const StepOutput& o : out) {
      if (o.leaf.session_id[0] == id) mine.push_back(o);
    }
    ASSERT_EQ(mine.size(), alone.size());
    for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i].leaf_hash, alone[i].leaf_hash);
  }
}

TEST_F(EngineTest, TruncatedFinishedSessionIsRegenerated) {
  auto engine = MakeEngine();
  SessionRequest r = Request(1, Prompt(4, 7), 9);
  ASSERT_OK(engine->Submit(r));
  std::vector<StepOutput> first = RunAll(*engine);
  ASSERT_OK(engine->Truncate(r.id, 4, RollbackMode::kKeepCache));
  ASSERT_OK_AND_ASSIGN(SessionSnapshot snap, engine->GetSession(r.id));
  EXPECT_EQ(snap.state, SessionState::kWaiting);
  EXPECT_EQ(snap.outputs.size(), 4u);
  std::vector<StepOutput> again = RunAll(*engine);
  ASSERT_EQ(again.size(), 5u);
  for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].leaf_hash, first[i + 4].leaf_hash);
}

TEST_F(EngineTest, RollbackFreesBlocks) {
  auto engine = MakeEngine();
  SessionRequest r = Request(1, Prompt(5, 30), 40);
  ASSERT_OK(engine->Submit(r));
  std::vector<StepOutput> out;
  while (out.size() < 20) ASSERT_OK(engine->Step(&out));
  int32_t free_before = engine->stats().kv_free_blocks;
  ASSERT_OK(engine->Truncate(r.id, 1, RollbackMode::kKeepCache));
  ASSERT_OK_AND_ASSIGN(SessionSnapshot snap, engine->GetSession(r.id));
  EXPECT_EQ(snap.cached_rows, 30);  // prompt rows; output 0 is the next input
  EXPECT_EQ(engine->stats().kv_free_blocks, free_before + 2);  // 49 rows (4 blocks) -> 30 (2)
  ASSERT_OK(engine->Truncate(r.id, 1, RollbackMode::kRebuild));
  EXPECT_EQ(engine->GetSession(r.id)->cached_rows, 0);
  EXPECT_EQ(engine->stats().kv_free_blocks, engine->stats().kv_blocks);
}

TEST_F(EngineTest, MixGammaZeroKeepsLeavesButNotTheProfile) {
  auto anchors = Anchors(0.0f);
  auto plain = MakeEngine();
  auto mixed = MakeEngine({}, anchors.get());
  ASSERT_OK(plain->Submit(Request(1, Prompt(6, 10), 6)));
  ASSERT_OK(mixed->Submit(Request(1, Prompt(6, 10), 6)));
  std::vector<StepOutput> a = RunAll(*plain), b = RunAll(*mixed);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].leaf_hash, b[i].leaf_hash);
  EXPECT_EQ(mixed->numerics_profile().anchor_set_hash, anchors->hash());
  EXPECT_NE(plain->numerics_profile(), mixed->numerics_profile());
}

TEST_F(EngineTest, PrefixAnchorsOccupyTheFirstRowsAndChangeTheLeaves) {
  auto anchors = Anchors(0.5f);
  EngineOptions options;
  options.anchor_mode = AnchorMode::kPrefix;
  auto prefix = MakeEngine(options, anchors.get());
  auto plain = MakeEngine();
  EXPECT_EQ(prefix->prefix_rows(), 5);
  EXPECT_EQ(prefix->context_tokens(), 128 - 5);
  EXPECT_EQ(prefix->numerics_profile().determinism_mode, "batch_invariant+anchor_prefix");
  ASSERT_OK(prefix->Submit(Request(1, Prompt(7, 10), 6)));
  ASSERT_OK(plain->Submit(Request(1, Prompt(7, 10), 6)));
  std::vector<StepOutput> a = RunAll(*prefix), b = RunAll(*plain);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_NE(a[0].leaf.state_digest, b[0].leaf.state_digest);
  // A rebuild rewrites the anchor rows and regenerates the same leaves.
  ASSERT_OK(prefix->Truncate(a[0].leaf.session_id, 2, RollbackMode::kRebuild));
  std::vector<StepOutput> again = RunAll(*prefix);
  ASSERT_EQ(again.size(), 4u);
  for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].leaf_hash, a[i + 2].leaf_hash);
}

TEST_F(EngineTest, NumericsProfileDescribesTheRun) {
  auto engine = MakeEngine();
  const leaf::NumericsProfile& p = engine->numerics_profile();
  EXPECT_EQ(p.device_kind, "cpu");
  EXPECT_EQ(p.dtype, DType::kBf16);
  EXPECT_EQ(p.model_weights_hash, model_->weights_hash());
  EXPECT_EQ(p.anchor_set_hash, Hash{});
  EXPECT_EQ(p.quantize_bits, 7);
  EXPECT_OK(leaf::ValidateNumericsProfile(p));
}

TEST_F(EngineTest, RemoveForgetsFinishedSessions) {
  auto engine = MakeEngine();
  SessionRequest r = Request(1, Prompt(1, 3), 2);
  ASSERT_OK(engine->Submit(r));
  EXPECT_THAT(engine->Remove(r.id), StatusIs(StatusCode::kFailedPrecondition));
  RunAll(*engine);
  ASSERT_OK(engine->Remove(r.id));
  EXPECT_THAT(engine->GetSession(r.id), StatusIs(StatusCode::kNotFound));
  ASSERT_OK(engine->Submit(r));  // the id is free again
}

// Error paths.

TEST_F(EngineTest, ZeroKvBudgetIsRejected) {
  EngineOptions options;
  options.kv_budget_bytes = 0;
  auto backend = std::move(CpuBackend::Create({1}).value());
  EXPECT_THAT(Engine::Create(*model_, std::move(backend), nullptr, options),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EngineTest, BadOptionsAreRejected) {
  for (auto edit : std::vector<std::function<void(EngineOptions&)>>{
           [](EngineOptions& o) { o.prefill_chunk_tokens = 0; },
           [](EngineOptions& o) { o.max_batch_sequences = 0; },
           [](EngineOptions& o) { o.max_batch_sequences = 300; },
           [](EngineOptions& o) { o.max_batch_tokens = 4; },
           [](EngineOptions& o) { o.max_context = 1; },
           [](EngineOptions& o) { o.quantize_bits = 9; }}) {
    EngineOptions options;
    edit(options);
    auto backend = std::move(CpuBackend::Create({1}).value());
    EXPECT_THAT(Engine::Create(*model_, std::move(backend), nullptr, options),
                StatusIs(StatusCode::kInvalidArgument));
  }
}

TEST_F(EngineTest, IncompatibleAnchorsAreRejected) {
  std::vector<AnchorLayer> layers;
  layers.push_back({Tensor::Zeros(DType::kF32, {2, 1, 8}), Tensor::Zeros(DType::kF32, {2, 1, 8}),
                    Tensor::Zeros(DType::kF32, {4})});
  auto anchors = std::move(AnchorSet::Create(std::move(layers)).value());
  auto backend = std::move(CpuBackend::Create({1}).value());
  EXPECT_THAT(Engine::Create(*model_, std::move(backend), anchors.get(), {}),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EngineTest, BadSessionsAreRejected) {
  auto engine = MakeEngine();
  ASSERT_OK(engine->Submit(Request(1, {1, 2}, 4)));
  EXPECT_THAT(engine->Submit(Request(1, {1, 2}, 4)), StatusIs(StatusCode::kAlreadyExists));
  EXPECT_THAT(engine->Submit(Request(2, {}, 4)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(engine->Submit(Request(3, Prompt(1, 128), 4)),
              StatusIs(StatusCode::kInvalidArgument));  // prompt as long as the context
  EXPECT_THAT(engine->Submit(Request(4, {1, kTinyVocabSize}, 4)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(engine->Submit(Request(5, {1}, 0)), StatusIs(StatusCode::kInvalidArgument));
  SessionRequest hot = Request(6, {1}, 4);
  hot.sampling.temperature = -1;
  EXPECT_THAT(engine->Submit(hot), StatusIs(StatusCode::kInvalidArgument));
  SessionRequest nucleus = Request(7, {1}, 4);
  nucleus.sampling.top_p = 0;
  EXPECT_THAT(engine->Submit(nucleus), StatusIs(StatusCode::kInvalidArgument));
  SessionRequest stop = Request(8, {1}, 4);
  stop.stop_tokens = {-1};
  EXPECT_THAT(engine->Submit(stop), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EngineTest, SessionLargerThanTheBudgetIsResourceExhausted) {
  EngineOptions options;
  auto probe = MakeEngine();
  options.kv_budget_bytes = 2 * probe->backend().KvBytesPerBlock(kKvBlockSize);
  auto engine = MakeEngine(options);
  EXPECT_THAT(engine->Submit(Request(1, Prompt(1, 30), 10)),
              StatusIs(StatusCode::kResourceExhausted));
  EXPECT_OK(engine->Submit(Request(2, Prompt(1, 30), 3)));  // 32 rows: fits exactly
}

TEST_F(EngineTest, BadRollbacksAreRejected) {
  auto engine = MakeEngine();
  SessionRequest r = Request(1, Prompt(1, 3), 3);
  SessionId unknown{};
  unknown[0] = 99;
  EXPECT_THAT(engine->Truncate(unknown, 0, RollbackMode::kKeepCache),
              StatusIs(StatusCode::kNotFound));
  ASSERT_OK(engine->Submit(r));
  EXPECT_THAT(engine->Truncate(r.id, 1, RollbackMode::kKeepCache),
              StatusIs(StatusCode::kOutOfRange));
  RunAll(*engine);
  EXPECT_THAT(engine->Truncate(r.id, 3, RollbackMode::kKeepCache),
              StatusIs(StatusCode::kOutOfRange));  // finished: nothing past step 2 to redo
}

}  // namespace
}  // namespace fp::node
