// Tests of the fault-injecting backend decorator: without a firing fault a run equals a plain
// engine's bit for bit; a hidden-state bit flip changes exactly that step's digest (to the
// digest of the flipped state, recomputed from a separate forward pass); a rewritten KV row
// changes every digest from its step on, survives a keep-cache rollback and is repaired by a
// rebuild; a weight bit changes every step (the copy differs from the model in exactly that
// bit) while the engine still reports the honest profile; a stall delays, a crash aborts.
#include "node/worker/faulty_backend.h"

#include <bit>
#include <chrono>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/leaf/state_digest.h"
#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

using ::fp::testing::StatusIs;
using ::fp::testing::TempDir;
using Outputs = std::map<SessionId, std::vector<StepOutput>>;

constexpr int32_t kMaxTokens = 12;

class FaultyBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TinyModelOptions o;
    o.hidden_size = 64;
    o.intermediate_size = 96;
    o.max_positions = 128;
    ASSERT_OK(WriteTinyModel(dir_.Join("model"), o));
    model_ = std::move(Model::Load(dir_.Join("model")).value());
    for (uint8_t i = 0; i < 2; ++i) {
      SessionRequest request;
      request.id[0] = static_cast<uint8_t>(i + 1);
      for (int t = 0; t < 9; ++t) request.prompt.push_back((i * 53 + t * 29 + 3) % 256);
      request.max_tokens = kMaxTokens;
      requests_.push_back(request);
    }
  }

  std::unique_ptr<Engine> PlainEngine() {
    return std::move(Engine::Create(*model_, std::move(CpuBackend::Create({1}).value()), nullptr,
                                    EngineOptions{})
                         .value());
  }

  // An engine over a FaultyBackend with `plan`; every request is watched (ordinal = index).
  StatusOr<std::unique_ptr<Engine>> FaultyEngine(const FaultPlan& plan, FaultyBackend** faulty) {
    FP_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> cpu, CpuBackend::Create({1}));
    FP_ASSIGN_OR_RETURN(std::unique_ptr<FaultyBackend> backend,
                        FaultyBackend::Create(std::move(cpu), {plan, dir_.Join("scratch")}));
    *faulty = backend.get();
    for (size_t i = 0; i < requests_.size(); ++i) backend->WatchSession(i, requests_[i].prompt);
    return Engine::Create(*model_, std::move(backend), nullptr, EngineOptions{});
  }

  Outputs Run(Engine& engine) {
    for (const SessionRequest& request : requests_) EXPECT_OK(engine.Submit(request));
    return Drain(engine);
  }
  static Outputs Drain(Engine& engine) {
    Outputs outputs;
    std::vector<StepOutput> step;
    while (engine.HasWork()) {
      step.clear();
      EXPECT_OK(engine.Step(&step));
      for (const StepOutput& o : step) outputs[o.leaf.session_id].push_back(o);
    }
    return outputs;
  }

  // The digest of step `step` of `request` with `plan`'s bit flipped in the final hidden state,
  // from one separate forward pass over the prompt and the first `step` outputs.
  Hash FlippedDigest(const SessionRequest& request, const std::vector<StepOutput>& outputs,
                     uint64_t step, const FaultPlan& plan) {
    auto backend = std::move(CpuBackend::Create({1}).value());
    EXPECT_OK(backend->LoadModel(*model_, {model_->config().dtype, -1}));
    EXPECT_OK(backend->LoadAnchors(nullptr, AnchorMode::kMix));
    EXPECT_OK(backend->AllocateKvCache(8, 16));
    std::vector<int32_t> tokens = request.prompt;
    for (uint64_t s = 0; s < step; ++s)
      tokens.push_back(static_cast<int32_t>(outputs[s].leaf.token_id));
    const std::vector<int32_t> table = {0, 1, 2, 3, 4, 5, 6, 7};
    ForwardSequence sequence;
    sequence.tokens = tokens;
    sequence.block_table = table;
    sequence.emit = true;
    sequence.step = step;
    ForwardResult result;
    EXPECT_OK(backend->Forward({&sequence, 1}, ForwardOptions{true, false}, &result));
    Tensor hidden = result.hidden.Clone();
    auto* bytes = static_cast<uint8_t*>(hidden.mutable_data());
    bytes[plan.element * 2 + plan.bit / 8] ^= static_cast<uint8_t>(1 << (plan.bit % 8));
    return leaf::TensorStateDigest(hidden.dtype(), 7, hidden.bytes()).value();
  }

  TempDir dir_;
  std::unique_ptr<Model> model_;
  std::vector<SessionRequest> requests_;
};

TEST_F(FaultyBackendTest, WithoutAFiringFaultItMatchesAPlainEngine) {
  FaultPlan plan;
  plan.kind = FaultKind::kHiddenBit;
  plan.session = 7;  // no such session
  FaultyBackend* faulty = nullptr;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, FaultyEngine(plan, &faulty));
  const Outputs got = Run(*engine);
  const Outputs want = Run(*PlainEngine());
  ASSERT_EQ(got.size(), 2u);
  for (const auto& [id, outputs] : want) {
    ASSERT_EQ(got.at(id).size(), outputs.size());
    for (size_t s = 0; s < outputs.size(); ++s) EXPECT_EQ(got.at(id)[s].leaf, outputs[s].leaf);
  }
  EXPECT_EQ(faulty->fired(), 0u);
}

TEST_F(FaultyBackendTest, HiddenBitFlipChangesExactlyThatStepsDigest) {
  FaultPlan plan;
  plan.kind = FaultKind::kHiddenBit;
  plan.session = 1;
  plan.step = 4;
  plan.element = 5;
  plan.bit = 6;
  FaultyBackend* faulty = nullptr;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, FaultyEngine(plan, &faulty));
  const Outputs got = Run(*engine);
  const Outputs want = Run(*PlainEngine());
  EXPECT_EQ(faulty->fired(), 1u);
  for (size_t s = 0; s < kMaxTokens; ++s) {
    EXPECT_EQ(got.at(requests_[0].id)[s].leaf, want.at(requests_[0].id)[s].leaf);
    const leaf::StepLeaf& g = got.at(requests_[1].id)[s].leaf;
    const leaf::StepLeaf& w = want.at(requests_[1].id)[s].leaf;
    EXPECT_EQ(g.token_id, w.token_id) << "step " << s;
    if (s == plan.step) {
      EXPECT_NE(g.state_digest, w.state_digest);
      EXPECT_EQ(g.state_digest, FlippedDigest(requests_[1], want.at(requests_[1].id), s, plan));
    } else {
      EXPECT_EQ(g.state_digest, w.state_digest) << "step " << s;
    }
  }
}

TEST_F(FaultyBackendTest, KvRowFaultChangesEveryDigestFromItsStepUntilARebuild) {
  FaultPlan plan;
  plan.kind = FaultKind::kKvRow;
  plan.session = 0;
  plan.step = 5;
  plan.kv_row = 2;
  FaultyBackend* faulty = nullptr;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, FaultyEngine(plan, &faulty));
  ASSERT_OK(engine->Submit(requests_[0]));
  // Run to step 8 only: a finished session's cache is released, so a rollback of it re-prefills
  // whatever the mode, and the test needs a keep-cache rollback of a running one.
  std::vector<StepOutput> got;
  while (got.size() < 9) ASSERT_OK(engine->Step(&got));
  const std::vector<StepOutput> want = [&] {
    auto plain = PlainEngine();
    EXPECT_OK(plain->Submit(requests_[0]));
    return Drain(*plain)[requests_[0].id];
  }();
  for (size_t s = 0; s < got.size(); ++s) {
    if (s < plan.step) {
      EXPECT_EQ(got[s].leaf, want[s].leaf) << "step " << s;
    } else {
      EXPECT_NE(got[s].leaf.state_digest, want[s].leaf.state_digest) << "step " << s;
    }
  }
  // The bad row is older than step 7, so a keep-cache rollback regenerates the same bad digests
  // (the fault does not fire again).
  ASSERT_OK(engine->Truncate(requests_[0].id, 7, RollbackMode::kKeepCache));
  const std::vector<StepOutput> again = Drain(*engine)[requests_[0].id];
  ASSERT_EQ(again.size(), kMaxTokens - 7);
  EXPECT_EQ(again[0].leaf, got[7].leaf);
  EXPECT_EQ(again[1].leaf, got[8].leaf);
  for (size_t i = 0; i < again.size(); ++i) {
    EXPECT_NE(again[i].leaf.state_digest, want[7 + i].leaf.state_digest) << "step " << 7 + i;
  }
  // A rebuild re-prefills the kept tokens, which repairs the row: from step 7 on the run equals
  // a plain engine given the same tokens (the prompt and outputs 0..6) as its prompt.
  ASSERT_OK(engine->Truncate(requests_[0].id, 7, RollbackMode::kRebuild));
  const std::vector<StepOutput> rebuilt = Drain(*engine)[requests_[0].id];
  SessionRequest reference_request = requests_[0];
  reference_request.id[0] = 0x77;
  for (size_t s = 0; s < 7; ++s) {
    reference_request.prompt.push_back(static_cast<int32_t>(got[s].leaf.token_id));
  }
  reference_request.max_tokens = kMaxTokens - 7;
  auto plain = PlainEngine();
  ASSERT_OK(plain->Submit(reference_request));
  const std::vector<StepOutput> reference = Drain(*plain)[reference_request.id];
  ASSERT_EQ(rebuilt.size(), reference.size());
  for (size_t i = 0; i < rebuilt.size(); ++i) {
    EXPECT_EQ(rebuilt[i].leaf.token_id, reference[i].leaf.token_id) << "step " << 7 + i;
    EXPECT_EQ(rebuilt[i].leaf.state_digest, reference[i].leaf.state_digest) << "step " << 7 + i;
  }
  EXPECT_EQ(faulty->fired(), 1u);
}

TEST_F(FaultyBackendTest, WeightBitChangesEveryStepButNotTheProfile) {
  FaultPlan plan;
  plan.kind = FaultKind::kWeightBit;
  plan.tensor = "model.norm.weight";
  plan.element = 0;
  plan.bit = 7;  // the lowest exponent bit of a bf16 1.0: the weight becomes 0.5
  FaultyBackend* faulty = nullptr;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, FaultyEngine(plan, &faulty));
  const Outputs got = Run(*engine);
  auto plain = PlainEngine();
  const Outputs want = Run(*plain);
  EXPECT_EQ(engine->numerics_profile(), plain->numerics_profile());
  for (const SessionRequest& request : requests_) {
    for (size_t s = 0; s < kMaxTokens; ++s) {
      EXPECT_NE(got.at(request.id)[s].leaf.state_digest, want.at(request.id)[s].leaf.state_digest)
          << "step " << s;
    }
  }
  // The corrupted copy differs from the model file in exactly one bit.
  auto read = [](const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(file)), {});
  };
  const std::string original = read(dir_.Join("model/model.safetensors"));
  const std::string copy = read(dir_.Join("scratch/fault-model/model.safetensors"));
  ASSERT_EQ(original.size(), copy.size());
  int differing_bits = 0;
  for (size_t i = 0; i < original.size(); ++i) {
    differing_bits += std::popcount(static_cast<uint8_t>(original[i] ^ copy[i]));
  }
  EXPECT_EQ(differing_bits, 1);
  EXPECT_EQ(faulty->fired(), 1u);
}

TEST_F(FaultyBackendTest, StallDelaysTheStepWithoutChangingIt) {
  FaultPlan plan;
  plan.kind = FaultKind::kStall;
  plan.session = 0;
  plan.step = 2;
  plan.stall_ms = 150;
  FaultyBackend* faulty = nullptr;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine, FaultyEngine(plan, &faulty));
  const auto start = std::chrono::steady_clock::now();
  const Outputs got = Run(*engine);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(150));
  const Outputs want = Run(*PlainEngine());
  for (size_t s = 0; s < kMaxTokens; ++s) {
    EXPECT_EQ(got.at(requests_[0].id)[s].leaf, want.at(requests_[0].id)[s].leaf);
  }
}

TEST_F(FaultyBackendTest, CrashAbortsAtItsStep) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  FaultPlan plan;
  plan.kind = FaultKind::kCrash;
  plan.session = 1;
  plan.step = 3;
  EXPECT_DEATH(
      {
        FaultyBackend* faulty = nullptr;
        auto engine = FaultyEngine(plan, &faulty);
        if (engine.ok()) Run(**engine);
      },
      "");
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(FaultyBackendTest, InvalidPlansAreRefused) {
  FaultPlan plan;
  plan.bit = -1;
  EXPECT_THAT(FaultyBackend::Create(std::move(CpuBackend::Create({1}).value()), {plan, ""}),
              StatusIs(StatusCode::kInvalidArgument));
  plan = FaultPlan{};
  plan.kind = FaultKind::kWeightBit;
  EXPECT_THAT(FaultyBackend::Create(std::move(CpuBackend::Create({1}).value()), {plan, ""}),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(FaultyBackendTest, FaultsOutsideTheModelAreRefusedAtLoad) {
  FaultyBackend* faulty = nullptr;
  FaultPlan plan;
  plan.kind = FaultKind::kWeightBit;
  plan.tensor = "model.no_such.weight";
  EXPECT_THAT(FaultyEngine(plan, &faulty), StatusIs(StatusCode::kInvalidArgument));
  plan.tensor = "model.norm.weight";
  plan.element = 64;  // hidden_size elements
  EXPECT_THAT(FaultyEngine(plan, &faulty), StatusIs(StatusCode::kInvalidArgument));
  plan = FaultPlan{};
  plan.kind = FaultKind::kHiddenBit;
  plan.bit = 16;  // a bf16 element has 16 bits
  EXPECT_THAT(FaultyEngine(plan, &faulty), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node::worker
