// GPU tests of the CUDA backend (skipped without a device): the determinism rules of
// docs/engine.md on the "cuda-bf16" kernels, end to end through the engine, plus the digest
// against the CPU reference and the agreement with the CPU backend's greedy tokens.
//   - a second run gives the same leaves;
//   - a session alone equals the same session in batches of other sizes, compositions, arrival
//     times and positions (graph buckets 1..32 and eager batches), with CUDA graphs on or off;
//   - prefill in one chunk, several chunks or token by token gives the same leaves;
//   - a rollback (keep cache or rebuild) regenerates the original leaves;
//   - the device digest equals common/leaf/state_digest.h over the hidden state copied back, for
//     bf16, f16 and f32 models, with and without quantize_bits;
//   - greedy tokens agree with the CPU backend on most steps (reported, not asserted equal: the
//     numerics differ);
//   - gamma 0 anchors equal no anchors; prefix anchors read back as written.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "common/leaf/state_digest.h"
#include "kernels/base/half.h"
#include "node/backend/cpu_backend.h"
#include "node/backend/cuda_backend.h"
#include "node/engine/engine.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

constexpr int kSessions = 16;
constexpr int32_t kBlocks = 256;

using Leaves = std::map<int, std::vector<Hash>>;  // session index -> leaf hashes by step

struct RunOptions {
  int batch = kSessions;
  int chunk = 512;
  int arrival_spread = 0;
  uint32_t seed = 1;
  bool graphs = true;
  struct Rollback {
    int victim;
    uint64_t at;
    uint64_t to;
    RollbackMode mode;
  };
  std::vector<Rollback> rollbacks;
};

std::unique_ptr<Backend> MakeCuda(bool graphs) {
  CudaBackendOptions o;
  o.cuda_graphs = graphs;
  return std::move(CreateCudaBackend(o).value());
}

class CudaBackendGpuTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    ASSERT_OK(WriteTinyModel(dir_->path().string(), TinyModelOptions{}));  // head_dim 64
    model_ = Model::Load(dir_->path().string()).value().release();
    std::mt19937 rng(5);
    for (int i = 0; i < kSessions; ++i) {
      SessionRequest r;
      r.id[0] = static_cast<uint8_t>(i);
      r.id[15] = 0x5a;
      const int prompt = 1 + static_cast<int>(rng() % 70);
      for (int j = 0; j < prompt; ++j) r.prompt.push_back(static_cast<int32_t>(rng() % 260));
      r.max_tokens = 6 + static_cast<int>(rng() % 18);
      if (i % 2 == 1) r.sampling = {0.9f, static_cast<int32_t>(rng() % 30), 0.95f, rng()};
      requests_.push_back(r);
    }
    reference_ = new Leaves();
    for (int i = 0; i < kSessions; ++i) {
      RunOptions alone;
      alone.batch = 1;
      (*reference_)[i] = Run(alone, {i})[i];
    }
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete model_;
    delete dir_;
  }

  static Leaves Run(const RunOptions& o, const std::vector<int>& which) {
    EngineOptions options;
    options.max_batch_sequences = o.batch;
    options.prefill_chunk_tokens = o.chunk;
    options.max_batch_tokens = std::max(o.batch, 128);
    auto engine = std::move(Engine::Create(*model_, MakeCuda(o.graphs), nullptr, options).value());
    std::mt19937 rng(o.seed);
    std::multimap<int, int> arrivals;  // step -> session
    for (int i : which) arrivals.emplace(o.arrival_spread ? rng() % o.arrival_spread : 0, i);
    Leaves leaves;
    std::vector<RunOptions::Rollback> pending = o.rollbacks;
    std::vector<StepOutput> outputs;
    for (int step = 0; engine->HasWork() || !arrivals.empty(); ++step) {
      while (!arrivals.empty() && arrivals.begin()->first <= step) {
        EXPECT_OK(engine->Submit(requests_[static_cast<size_t>(arrivals.begin()->second)]));
        arrivals.erase(arrivals.begin());
      }
      outputs.clear();
      EXPECT_OK(engine->Step(&outputs));
      for (const StepOutput& out : outputs) {
        std::vector<Hash>& mine = leaves[out.leaf.session_id[0]];
        EXPECT_EQ(out.leaf.step, mine.size());
        mine.push_back(out.leaf_hash);
      }
      for (auto it = pending.begin(); it != pending.end();) {
        std::vector<Hash>& mine = leaves[it->victim];
        if (mine.size() < it->at) {
          ++it;
          continue;
        }
        EXPECT_OK(engine->Truncate(requests_[size_t(it->victim)].id, it->to, it->mode));
        mine.resize(it->to);
        it = pending.erase(it);
      }
    }
    EXPECT_TRUE(pending.empty()) << "a rollback never triggered";
    return leaves;
  }

  static void ExpectMatchesReference(const Leaves& leaves, const std::vector<int>& which,
                                     const std::string& label) {
    for (int i : which) {
      ASSERT_TRUE(leaves.contains(i)) << label << " session " << i;
      EXPECT_EQ(leaves.at(i), reference_->at(i)) << label << " session " << i;
    }
  }

  static std::vector<int> All() {
    std::vector<int> all(kSessions);
    for (int i = 0; i < kSessions; ++i) all[size_t(i)] = i;
    return all;
  }

  // A backend-level model and helpers (no engine).
  std::unique_ptr<Model> MakeModel(DType dtype) {
    dirs_.push_back(std::make_unique<testing::TempDir>());
    TinyModelOptions o;
    o.dtype = dtype;
    EXPECT_OK(WriteTinyModel(dirs_.back()->path().string(), o));
    return std::move(Model::Load(dirs_.back()->path().string()).value());
  }

  static std::unique_ptr<Backend> Ready(const Model& model, int quantize_bits = -1,
                                        const AnchorSet* anchors = nullptr,
                                        AnchorMode mode = AnchorMode::kMix) {
    auto backend = MakeCuda(true);
    EXPECT_OK(backend->LoadModel(model, {model.config().dtype, quantize_bits}));
    EXPECT_OK(backend->LoadAnchors(anchors, mode));
    EXPECT_OK(backend->AllocateKvCache(kBlocks, 16));
    return backend;
  }

  static std::vector<int32_t> Prompt(int seed, int length) {
    std::vector<int32_t> p;
    for (int i = 0; i < length; ++i) p.push_back((seed * 37 + i * 11 + 5) % kTinyVocabSize);
    return p;
  }

  // Blocks [first, first + count) in reverse order, so placement is exercised.
  static std::vector<int32_t> Blocks(int32_t first, int32_t count) {
    std::vector<int32_t> t(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i) t[static_cast<size_t>(i)] = first + count - 1 - i;
    return t;
  }

  // Prefills `tokens` as one chunk and returns the emitting result (hidden and logits too).
  static ForwardResult Prefill(Backend& backend, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& table) {
    ForwardSequence s{tokens, 0, table, true, {0, 0, 1, 0}, 0};
    ForwardResult r;
    EXPECT_OK(backend.Forward({&s, 1}, {true, true}, &r));
    return r;
  }

  static testing::TempDir* dir_;
  static Model* model_;
  static std::vector<SessionRequest> requests_;
  static Leaves* reference_;
  std::vector<std::unique_ptr<testing::TempDir>> dirs_;
};

testing::TempDir* CudaBackendGpuTest::dir_ = nullptr;
Model* CudaBackendGpuTest::model_ = nullptr;
std::vector<SessionRequest> CudaBackendGpuTest::requests_;
Leaves* CudaBackendGpuTest::reference_ = nullptr;

TEST_F(CudaBackendGpuTest, IdentityNamesTheDeviceAndTheKernels) {
  auto backend = MakeCuda(true);
  BackendIdentity id = backend->identity();
  EXPECT_FALSE(id.device_kind.empty());
  EXPECT_NE(id.device_kind, "cpu");
  EXPECT_GE(id.compute_capability_major, 8u);
  EXPECT_EQ(id.kernel_build_id, kCudaKernelBuildId);
}

TEST_F(CudaBackendGpuTest, ReferenceSessionsAreNonTrivial) {
  size_t steps = 0;
  for (const auto& [i, leaves] : *reference_) steps += leaves.size();
  EXPECT_GT(steps, 100u);
  EXPECT_NE(reference_->at(0), reference_->at(1));
}

TEST_F(CudaBackendGpuTest, SecondRunIsIdentical) {
  RunOptions o;
  o.batch = 7;
  o.chunk = 9;
  o.arrival_spread = 8;
  EXPECT_EQ(Run(o, All()), Run(o, All()));
}

TEST_F(CudaBackendGpuTest, AllSessionsInOneBatchMatchTheirSoloRuns) {
  ExpectMatchesReference(Run({}, All()), All(), "batch 16");
  RunOptions eager;
  eager.graphs = false;
  ExpectMatchesReference(Run(eager, All()), All(), "batch 16 without graphs");
}

TEST_F(CudaBackendGpuTest, AnyBatchSizePositionChunkingAndArrival) {
  std::mt19937 rng(13);
  const int batches[] = {2, 3, 5, 9, 16};
  const int chunks[] = {1, 4, 17, 64};
  for (int trial = 0; trial < 8; ++trial) {
    RunOptions o;
    o.batch = batches[trial % 5];
    o.chunk = chunks[trial % 4];
    o.arrival_spread = 1 + trial * 4;
    o.seed = static_cast<uint32_t>(trial + 100);
    o.graphs = trial % 3 != 2;
    std::vector<int> which = All();
    std::shuffle(which.begin(), which.end(), rng);
    which.resize(std::min<size_t>(kSessions, std::max(o.batch + 3, 6)));
    ExpectMatchesReference(Run(o, which), which,
                           "batch " + std::to_string(o.batch) + " chunk " +
                               std::to_string(o.chunk) + " graphs " + std::to_string(o.graphs));
  }
}

TEST_F(CudaBackendGpuTest, PrefillChunkingDoesNotChangeLeaves) {
  for (int chunk : {1, 3, 16}) {
    RunOptions o;
    o.batch = 4;
    o.chunk = chunk;
    ExpectMatchesReference(Run(o, All()), All(), "chunk " + std::to_string(chunk));
  }
}

TEST_F(CudaBackendGpuTest, RollbackRegeneratesTheOriginalLeaves) {
  RunOptions o;
  o.chunk = 8;
  o.arrival_spread = 5;
  std::vector<int> long_ones;
  for (const auto& [i, leaves] : *reference_) {
    if (leaves.size() >= 8) long_ones.push_back(i);
  }
  ASSERT_GE(long_ones.size(), 3u);
  o.rollbacks = {{long_ones[0], 6, 2, RollbackMode::kKeepCache},
                 {long_ones[1], 7, 0, RollbackMode::kRebuild},
                 {long_ones[2], 8, 5, RollbackMode::kRebuild}};
  ExpectMatchesReference(Run(o, All()), All(), "rollbacks");
}

TEST_F(CudaBackendGpuTest, DigestEqualsCpuReferenceOverTheCopiedHiddenState) {
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    auto model = MakeModel(dtype);
    for (int bits : {-1, 3}) {
      auto backend = Ready(*model, bits);
      // Three emitting sequences and a silent chunk in one batch.
      std::vector<int32_t> a = Prompt(1, 30), b = Prompt(2, 5), c = Prompt(3, 40);
      std::vector<int32_t> ta = Blocks(0, 2), tb = Blocks(4, 1), tc = Blocks(8, 3);
      std::vector<int32_t> td = Blocks(12, 1);
      std::vector<ForwardSequence> batch = {
          {a, 0, ta, true, {0, 0, 1, 0}, 0},
          {c, 0, tc, false, {0, 0, 1, 0}, 0},
          {b, 0, tb, true, {0.7f, 0, 1, 3}, 0},
          {std::span<const int32_t>(c).first(9), 0, td, true, {0, 0, 1, 0}, 0}};
      ForwardResult r;
      ASSERT_OK(backend->Forward(batch, {true, true}, &r));
      ASSERT_EQ(r.tokens.size(), 3u);
      EXPECT_EQ(r.hidden.dtype(), dtype);
      const int keep = bits < 0 ? DTypeMantissaBits(dtype) : bits;
      ASSERT_OK_AND_ASSIGN(std::vector<Hash> expected,
                           leaf::RowStateDigests(dtype, keep, r.hidden.bytes(), 3,
                                                 static_cast<size_t>(r.hidden.dim(1))));
      EXPECT_EQ(r.state_digests, expected) << DTypeName(dtype) << " bits " << bits;
    }
  }
}

TEST_F(CudaBackendGpuTest, HiddenStateIsTheBf16StateInTheCanonicalDtype) {
  // f32 models: the canonical state holds bf16 values (widened exactly); the logits come from
  // them, so the greedy token is their argmax.
  auto model = MakeModel(DType::kF32);
  auto backend = Ready(*model);
  ForwardResult r = Prefill(*backend, Prompt(4, 20), Blocks(0, 2));
  for (int64_t i = 0; i < r.hidden.elements(); ++i) {
    const float v = r.hidden.data_as<float>()[i];
    ASSERT_EQ(kernels::Bf16ToF32(kernels::F32ToBf16(v)), v) << i;
  }
  const float* logits = r.logits.data_as<float>();
  EXPECT_EQ(r.tokens[0], std::max_element(logits, logits + r.logits.dim(1)) - logits);
}

TEST_F(CudaBackendGpuTest, GreedyTokensAgreeWithTheCpuBackendOnMostSteps) {
  auto model = MakeModel(DType::kBf16);
  auto gpu = Ready(*model);
  auto cpu = std::move(CpuBackend::Create({2}).value());
  ASSERT_OK(cpu->LoadModel(*model, {DType::kBf16, -1}));
  ASSERT_OK(cpu->LoadAnchors(nullptr, AnchorMode::kMix));
  ASSERT_OK(cpu->AllocateKvCache(kBlocks, 16));
  int agree = 0, total = 0;
  for (int prompt = 0; prompt < 4; ++prompt) {
    // Teacher-forced by the CPU's tokens, so one disagreement does not derail the rest.
    std::vector<int32_t> tokens = Prompt(prompt, 8);
    std::vector<int32_t> table = Blocks(prompt * 8, 8);
    ForwardResult rc = Prefill(*cpu, tokens, table), rg = Prefill(*gpu, tokens, table);
    for (int step = 0; step < 48; ++step) {
      agree += rc.tokens[0] == rg.tokens[0];
      ++total;
      tokens.push_back(rc.tokens[0]);
      ForwardSequence s{std::span<const int32_t>(tokens).last(1),
                        static_cast<int32_t>(tokens.size() - 1),
                        table,
                        true,
                        {0, 0, 1, 0},
                        static_cast<uint64_t>(step + 1)};
      ASSERT_OK(cpu->Forward({&s, 1}, {}, &rc));
      ASSERT_OK(gpu->Forward({&s, 1}, {}, &rg));
    }
  }
  const double agreement = static_cast<double>(agree) / total;
  std::printf("greedy agreement with the CPU backend: %d / %d steps (%.1f%%)\n", agree, total,
              100 * agreement);
  RecordProperty("greedy_agreement_percent", std::to_string(100 * agreement));
  EXPECT_GT(agreement, 0.5);  // wide margins: a low figure means a broken layer, not rounding
}

TEST_F(CudaBackendGpuTest, GammaZeroAnchorsEqualNoAnchors) {
  auto model = MakeModel(DType::kBf16);
  const LlamaConfig& c = model->config();
  std::vector<AnchorLayer> layers;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    AnchorLayer layer{Tensor::Zeros(DType::kF32, {8, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {8, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {c.num_heads})};
    for (int64_t i = 0; i < layer.key.elements(); ++i) {
      layer.key.mutable_data_as<float>()[i] = std::sin(float(i));
      layer.value.mutable_data_as<float>()[i] = std::cos(float(i));
    }
    layers.push_back(std::move(layer));
  }
  ASSERT_OK_AND_ASSIGN(auto zero, AnchorSet::Create(std::move(layers)));
  ASSERT_OK_AND_ASSIGN(auto one, zero->WithGamma(1.0f));
  std::vector<int32_t> tokens = Prompt(6, 30);
  ForwardResult plain = Prefill(*Ready(*model), tokens, Blocks(0, 2));
  ForwardResult mixed0 = Prefill(*Ready(*model, -1, zero.get()), tokens, Blocks(0, 2));
  ForwardResult mixed1 = Prefill(*Ready(*model, -1, one.get()), tokens, Blocks(0, 2));
  EXPECT_EQ(plain.state_digests, mixed0.state_digests);
  EXPECT_NE(plain.state_digests, mixed1.state_digests);

  // Prefix mode: the anchor rows land in the cache as bf16 of the set's values.
  auto prefix = Ready(*model, -1, one.get(), AnchorMode::kPrefix);
  std::vector<int32_t> table = Blocks(20, 2);
  ASSERT_OK(prefix->WriteAnchorPrefix(table));
  Tensor key, value;
  ASSERT_OK(prefix->ReadKvRows(table, 1, 0, 8, &key, &value));
  const Tensor& expected = one->layers()[1].key;
  for (int64_t i = 0; i < key.elements(); ++i) {
    const float want = kernels::Bf16ToF32(kernels::F32ToBf16(expected.data_as<float>()[i]));
    ASSERT_EQ(key.data_as<float>()[i], want) << i;
  }
}

// Error paths.

TEST_F(CudaBackendGpuTest, MalformedBatchesAreRejected) {
  auto model = MakeModel(DType::kBf16);
  auto backend = Ready(*model);
  std::vector<int32_t> tokens = Prompt(1, 20);
  std::vector<int32_t> table = Blocks(0, 1);
  ForwardResult r;
  ForwardSequence empty{std::span<const int32_t>(), 0, table, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&empty, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  ForwardSequence past_table{tokens, 0, table, true, {0, 0, 1, 0}, 0};  // 20 rows, 16 in table
  EXPECT_THAT(backend->Forward({&past_table, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> bad_ids = {1, 999};
  ForwardSequence bad_token{bad_ids, 0, table, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&bad_token, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  ForwardSequence bad_sampling{
      std::span<const int32_t>(tokens).first(1), 0, table, true, {-1.0f, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&bad_sampling, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> bad_block = {kBlocks};
  ForwardSequence outside{
      std::span<const int32_t>(tokens).first(1), 0, bad_block, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&outside, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend->Forward({}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  // The backend still works after the rejections.
  ForwardResult ok = Prefill(*backend, tokens, Blocks(0, 2));
  EXPECT_EQ(ok.tokens.size(), 1u);
}

TEST_F(CudaBackendGpuTest, ForwardNeedsACacheAndBadOptionsAreRejected) {
  auto model = MakeModel(DType::kBf16);
  auto backend = MakeCuda(true);
  ASSERT_OK(backend->LoadModel(*model, {DType::kBf16, -1}));
  ASSERT_OK(backend->LoadAnchors(nullptr, AnchorMode::kMix));
  std::vector<int32_t> tokens = {1}, table = {0};
  ForwardSequence s{tokens, 0, table, true, {0, 0, 1, 0}, 0};
  ForwardResult r;
  EXPECT_THAT(backend->Forward({&s, 1}, {}, &r), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(backend->WriteAnchorPrefix(table), StatusIs(StatusCode::kFailedPrecondition));
  CudaBackendOptions bad;
  bad.device = 1 << 20;
  EXPECT_THAT(CreateCudaBackend(bad), StatusIs(StatusCode::kFailedPrecondition));
  bad = CudaBackendOptions();
  bad.digest_depth = 0;
  EXPECT_THAT(CreateCudaBackend(bad), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeCuda(true)->LoadModel(*model, {DType::kBf16, 8}),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node
