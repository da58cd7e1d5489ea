// GPU tests of the tensor-parallel CUDA backend at degree FP_TP_DEGREE (one binary per degree;
// each exits 77, skipped, on a machine with fewer GPUs than its degree). Bitwise unless stated:
//   - the backend names its degree in its identity;
//   - a second run gives the same leaves and session roots;
//   - a session alone equals the same session in batches of other sessions of random lengths at
//     random positions and arrival times, with CUDA graphs on or off; its session root too, run
//     twice;
//   - prefill in one chunk, several chunks or token by token gives the same leaves; at the backend
//     level a prefill's last row equals the same row decoded (hidden state and logits);
//   - a rollback (keep cache or rebuild) regenerates the original leaves;
//   - layer 0's K/V rows equal the single-GPU backend's (they come before any cross-rank sum),
//     which also checks the gather of ReadKvRows across the ranks' shards;
//   - logits agree with the single-GPU backend within a bf16 bound (argued at kLogitTolerance);
//   - anchors: mix mode (gamma 0 equals no anchors, gamma sliced per rank) and prefix mode (rows
//     scattered to the ranks' shards read back as written), both batch invariant;
//   - the device digest equals the CPU reference over the hidden state copied back;
//   - NCCL's all-reduce, priced by the benchmark, equals the all-gather at two ranks (one f32
//     addition per element either way) and stays within the bf16 bound at more;
//   - error paths: degrees that do not divide the model, bad device lists, malformed batches.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "common/leaf/state_digest.h"
#include "common/merkle/merkle.h"
#include "kernels/base/half.h"
#include "node/backend/cuda_backend.h"
#include "node/engine/engine.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

#ifndef FP_TP_DEGREE
#error "FP_TP_DEGREE must name the tensor-parallel degree this test binary checks"
#endif

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

constexpr int kDegree = FP_TP_DEGREE;
constexpr int kSessions = 12;
constexpr int32_t kBlocks = 256;
// The tiny model's logits agree with the single-GPU backend's within this fraction of each row's
// largest |logit|. Why it differs at all: with R ranks, o_proj and down_proj sum R partial f32 dot
// products instead of one, so before each bf16 rounding of the residual stream the two backends
// hold values a few f32 ulps (~2^-22 relative) apart, and an element next to a bf16 rounding edge
// lands one bf16 ulp (2^-8 relative) apart. The model has 2 layers, so 4 roundings of the residual
// stream plus the final norm's; even if every element flipped at every one (it is a few), the
// final state would move by at most ~5 * 2^-8 = 0.02 of its norm, and the logits, one dot product
// with the LM head, by the same fraction of their scale. 1/16 leaves a 3x margin over that worst
// case; a wrong shard (a head or a slice in the wrong place) moves logits by O(1).
constexpr double kLogitTolerance = 1.0 / 16;

// Exits 77 (CTest "skipped") before any test when the machine has fewer GPUs than the degree.
class EnoughGpus : public ::testing::Environment {
 public:
  void SetUp() override {
    const int found = CudaDeviceCount();
    if (found >= kDegree) return;
    std::printf("SKIPPED: tensor-parallel degree %d needs %d GPUs, this machine has %d\n", kDegree,
                kDegree, found);
    std::fflush(stdout);
    std::exit(77);
  }
};
::testing::Environment* const kEnoughGpus = ::testing::AddGlobalTestEnvironment(new EnoughGpus);

using Leaves = std::map<int, std::vector<Hash>>;  // session index -> leaf hashes by step

struct RunOptions {
  int batch = kSessions;
  int chunk = 512;
  int arrival_spread = 0;
  uint32_t seed = 1;
  bool graphs = true;
  TpReduction reduction = TpReduction::kGatherFixedOrder;
  const AnchorSet* anchors = nullptr;
  AnchorMode mode = AnchorMode::kMix;
  struct Rollback {
    int victim;
    uint64_t at;
    uint64_t to;
    RollbackMode mode;
  };
  std::vector<Rollback> rollbacks;
};

std::unique_ptr<Backend> MakeBackend(int degree, bool graphs = true,
                                     TpReduction reduction = TpReduction::kGatherFixedOrder) {
  CudaBackendOptions o;
  o.tensor_parallel = degree;
  o.cuda_graphs = graphs;
  o.reduction = reduction;
  StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(o);
  FP_CHECK(backend.ok());
  return std::move(backend).value();
}

Hash SessionRoot(const std::vector<Hash>& leaves) {
  merkle::Frontier tree;
  for (const Hash& leaf : leaves) tree.Append(leaf, nullptr);
  return tree.Root();
}

// Anchor rows of a model's shape with varied values, gamma `gamma` (-1: varied per head).
std::unique_ptr<AnchorSet> MakeAnchors(const LlamaConfig& c, int count, float gamma) {
  std::vector<AnchorLayer> layers;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    AnchorLayer layer{Tensor::Zeros(DType::kF32, {count, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {count, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {c.num_heads})};
    for (int64_t i = 0; i < layer.key.elements(); ++i) {
      layer.key.mutable_data_as<float>()[i] = std::sin(float(i + 3 * l));
      layer.value.mutable_data_as<float>()[i] = std::cos(float(i * 7 + l));
    }
    for (int64_t h = 0; h < c.num_heads; ++h) {
      layer.gamma.mutable_data_as<float>()[h] =
          gamma >= 0 ? gamma : float(h + 1) / (c.num_heads + 2);
    }
    layers.push_back(std::move(layer));
  }
  StatusOr<std::unique_ptr<AnchorSet>> set = AnchorSet::Create(std::move(layers));
  FP_CHECK(set.ok());
  return std::move(set).value();
}

class CudaTpGpuTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    TinyModelOptions o;  // head_dim 64; kv heads and intermediate divide by 2 and 4
    o.hidden_size = 512;
    o.num_heads = 8;
    o.num_kv_heads = 4;
    o.intermediate_size = 1024;
    ASSERT_OK(WriteTinyModel(dir_->path().string(), o));
    model_ = Model::Load(dir_->path().string()).value().release();
    std::mt19937 rng(5);
    for (int i = 0; i < kSessions; ++i) {
      SessionRequest r;
      r.id[0] = static_cast<uint8_t>(i);
      r.id[15] = 0x7c;
      const int prompt = 1 + static_cast<int>(rng() % 70);
      for (int j = 0; j < prompt; ++j) r.prompt.push_back(static_cast<int32_t>(rng() % 260));
      r.max_tokens = 6 + static_cast<int>(rng() % 18);
      if (i % 2 == 1) r.sampling = {0.9f, static_cast<int32_t>(rng() % 30), 0.95f, rng()};
      requests_.push_back(r);
    }
    reference_ = new Leaves(RunAlone({}, All()));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete model_;
    delete dir_;
  }

  static std::unique_ptr<Engine> MakeEngine(const RunOptions& o) {
    EngineOptions options;
    options.max_batch_sequences = o.batch;
    options.prefill_chunk_tokens = o.chunk;
    options.max_batch_tokens = std::max(o.batch, 128);
    options.anchor_mode = o.mode;
    StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, MakeBackend(kDegree, o.graphs, o.reduction), o.anchors, options);
    FP_CHECK(engine.ok());
    return std::move(engine).value();
  }

  static void Collect(const std::vector<StepOutput>& outputs, Leaves& leaves) {
    for (const StepOutput& out : outputs) {
      std::vector<Hash>& mine = leaves[out.leaf.session_id[0]];
      EXPECT_EQ(out.leaf.step, mine.size());
      mine.push_back(out.leaf_hash);
    }
  }

  // Each session of `which` in a batch of its own, one after another on one engine.
  static Leaves RunAlone(RunOptions o, const std::vector<int>& which) {
    o.batch = 1;
    auto engine = MakeEngine(o);
    Leaves leaves;
    std::vector<StepOutput> outputs;
    for (int i : which) {
      EXPECT_OK(engine->Submit(requests_[static_cast<size_t>(i)]));
      while (engine->HasWork()) {
        outputs.clear();
        EXPECT_OK(engine->Step(&outputs));
        Collect(outputs, leaves);
      }
    }
    return leaves;
  }

  // The sessions `which` arriving over o.arrival_spread steps into batches of o.batch.
  static Leaves Run(const RunOptions& o, const std::vector<int>& which) {
    auto engine = MakeEngine(o);
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
      Collect(outputs, leaves);
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

  static void ExpectEqualLeaves(const Leaves& got, const Leaves& want,
                                const std::vector<int>& which, const std::string& label) {
    for (int i : which) {
      ASSERT_TRUE(got.contains(i)) << label << " session " << i;
      ASSERT_TRUE(want.contains(i)) << label << " session " << i;
      EXPECT_EQ(got.at(i), want.at(i)) << label << " session " << i;
    }
  }

  static std::vector<int> All() {
    std::vector<int> all(kSessions);
    for (int i = 0; i < kSessions; ++i) all[size_t(i)] = i;
    return all;
  }

  // A backend at `degree` with the model, anchors and a cache, outside any engine.
  static std::unique_ptr<Backend> Ready(int degree, const AnchorSet* anchors = nullptr,
                                        AnchorMode mode = AnchorMode::kMix) {
    auto backend = MakeBackend(degree);
    EXPECT_OK(backend->LoadModel(*model_, {DType::kBf16, -1}));
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

  // Runs tokens[begin, end) of one sequence as one chunk; emits (with hidden and logits) when
  // `emit`.
  static ForwardResult Chunk(Backend& backend, const std::vector<int32_t>& tokens, int begin,
                             int end, const std::vector<int32_t>& table, bool emit) {
    ForwardSequence s{std::span<const int32_t>(tokens).subspan(begin, end - begin),
                      begin,
                      table,
                      emit,
                      {0, 0, 1, 0},
                      0};
    ForwardResult r;
    EXPECT_OK(backend.Forward({&s, 1}, {true, true}, &r));
    return r;
  }

  // max over rows of max_j |a - b| / max_j |b|, and the greedy tokens' agreement.
  static double LogitGap(const Tensor& a, const Tensor& b) {
    double worst = 0;
    for (int64_t row = 0; row < a.dim(0); ++row) {
      const float* x = a.data_as<float>() + row * a.dim(1);
      const float* y = b.data_as<float>() + row * b.dim(1);
      double scale = 0, gap = 0;
      for (int64_t j = 0; j < a.dim(1); ++j) {
        scale = std::max(scale, std::fabs(double(y[j])));
        gap = std::max(gap, std::fabs(double(x[j]) - double(y[j])));
      }
      worst = std::max(worst, gap / scale);
    }
    return worst;
  }

  // Teacher-forced by the single-GPU backend's greedy tokens: the worst logit gap of `tp` over
  // `steps` steps of 4 prompts.
  static double TeacherForcedGap(Backend& single, Backend& tp, int steps,
                                 bool prefix_anchors = false, int prefix_rows = 0) {
    double worst = 0;
    for (int prompt = 0; prompt < 4; ++prompt) {
      std::vector<int32_t> table = Blocks(prompt * 8, 8);
      if (prefix_anchors) {
        EXPECT_OK(single.WriteAnchorPrefix(table));
        EXPECT_OK(tp.WriteAnchorPrefix(table));
      }
      std::vector<int32_t> tokens(static_cast<size_t>(prefix_rows), 0);
      for (int32_t t : Prompt(prompt, 9)) tokens.push_back(t);
      ForwardResult a = Chunk(single, tokens, prefix_rows, int(tokens.size()), table, true);
      ForwardResult b = Chunk(tp, tokens, prefix_rows, int(tokens.size()), table, true);
      for (int step = 0; step < steps; ++step) {
        worst = std::max(worst, LogitGap(b.logits, a.logits));
        tokens.push_back(a.tokens[0]);
        const int n = static_cast<int>(tokens.size());
        a = Chunk(single, tokens, n - 1, n, table, true);
        b = Chunk(tp, tokens, n - 1, n, table, true);
      }
    }
    return worst;
  }

  static testing::TempDir* dir_;
  static Model* model_;
  static std::vector<SessionRequest> requests_;
  static Leaves* reference_;
};

testing::TempDir* CudaTpGpuTest::dir_ = nullptr;
Model* CudaTpGpuTest::model_ = nullptr;
std::vector<SessionRequest> CudaTpGpuTest::requests_;
Leaves* CudaTpGpuTest::reference_ = nullptr;

TEST_F(CudaTpGpuTest, IdentityNamesTheDegree) {
  const BackendIdentity tp = MakeBackend(kDegree)->identity();
  const BackendIdentity single = MakeBackend(1)->identity();
  EXPECT_EQ(tp.kernel_build_id, std::string(kCudaKernelBuildId) + "-tp" + std::to_string(kDegree));
  EXPECT_EQ(single.kernel_build_id, kCudaKernelBuildId);
  // The engine copies the degree into the numerics profile's own field.
  EXPECT_EQ(tp.tensor_parallel_degree, static_cast<uint32_t>(kDegree));
  EXPECT_EQ(single.tensor_parallel_degree, 1u);
  EXPECT_EQ(tp.device_kind, single.device_kind);
  EXPECT_EQ(MakeBackend(kDegree, true, TpReduction::kNcclAllReduce)->identity().kernel_build_id,
            tp.kernel_build_id + "-nccl-allreduce");
}

TEST_F(CudaTpGpuTest, ReferenceSessionsAreNonTrivial) {
  size_t steps = 0;
  for (const auto& [i, leaves] : *reference_) steps += leaves.size();
  EXPECT_GT(steps, 80u);
  EXPECT_NE(reference_->at(0), reference_->at(1));
}

TEST_F(CudaTpGpuTest, SecondRunIsIdentical) {
  RunOptions o;
  o.batch = 7;
  o.chunk = 9;
  o.arrival_spread = 8;
  const Leaves first = Run(o, All()), second = Run(o, All());
  EXPECT_EQ(first, second);
  ExpectEqualLeaves(first, *reference_, All(), "batch 7 chunk 9");
}

TEST_F(CudaTpGpuTest, AllSessionsInOneBatchMatchTheirSoloRuns) {
  ExpectEqualLeaves(Run({}, All()), *reference_, All(), "one batch");
  RunOptions eager;
  eager.graphs = false;
  ExpectEqualLeaves(Run(eager, All()), *reference_, All(), "one batch without graphs");
}

TEST_F(CudaTpGpuTest, AnyBatchSizePositionChunkingAndArrival) {
  std::mt19937 rng(13);
  const int batches[] = {2, 3, 5, 12};
  const int chunks[] = {1, 4, 17, 64};
  for (int trial = 0; trial < 4; ++trial) {
    RunOptions o;
    o.batch = batches[trial];
    o.chunk = chunks[trial];
    o.arrival_spread = 1 + trial * 5;
    o.seed = static_cast<uint32_t>(trial + 100);
    o.graphs = trial != 2;
    std::vector<int> which = All();
    std::shuffle(which.begin(), which.end(), rng);
    which.resize(std::min<size_t>(kSessions, std::max(o.batch + 3, 6)));
    ExpectEqualLeaves(Run(o, which), *reference_, which,
                      "batch " + std::to_string(o.batch) + " chunk " + std::to_string(o.chunk));
  }
}

TEST_F(CudaTpGpuTest, SessionRootAloneEqualsRootUnderLoadTwice) {
  // One session's root, alone and under loads of other sessions with random lengths, arrivals
  // and positions, each run twice.
  const int victim = 3;
  const Hash alone = SessionRoot(RunAlone({}, {victim}).at(victim));
  EXPECT_EQ(alone, SessionRoot(reference_->at(victim)));
  EXPECT_EQ(alone, SessionRoot(RunAlone({}, {victim}).at(victim)));
  for (uint32_t seed : {21u, 22u}) {
    RunOptions o;
    o.batch = 8;
    o.chunk = 13;
    o.arrival_spread = 6;
    o.seed = seed;
    std::vector<int> load = All();
    std::shuffle(load.begin(), load.end(), std::mt19937(seed));
    for (int run = 0; run < 2; ++run) {
      EXPECT_EQ(SessionRoot(Run(o, load).at(victim)), alone) << "seed " << seed << " run " << run;
    }
  }
}

TEST_F(CudaTpGpuTest, PrefillChunkingDoesNotChangeLeaves) {
  for (int chunk : {1, 3, 16}) {
    RunOptions o;
    o.batch = 4;
    o.chunk = chunk;
    ExpectEqualLeaves(Run(o, All()), *reference_, All(), "chunk " + std::to_string(chunk));
  }
}

TEST_F(CudaTpGpuTest, PrefillEqualsDecodeBitForBit) {
  auto backend = Ready(kDegree);
  const std::vector<int32_t> tokens = Prompt(9, 37);
  const int n = static_cast<int>(tokens.size());
  // One prefill chunk; a prefill of n - 1 rows then the last row decoded; token by token.
  ForwardResult whole = Chunk(*backend, tokens, 0, n, Blocks(0, 3), true);
  const std::vector<int32_t> split_table = Blocks(10, 3), steps_table = Blocks(20, 3);
  Chunk(*backend, tokens, 0, n - 1, split_table, false);
  ForwardResult split = Chunk(*backend, tokens, n - 1, n, split_table, true);
  ForwardResult stepped;
  for (int i = 0; i < n; ++i) stepped = Chunk(*backend, tokens, i, i + 1, steps_table, true);
  for (const ForwardResult* other : {&split, &stepped}) {
    EXPECT_EQ(other->state_digests, whole.state_digests);
    EXPECT_EQ(other->tokens, whole.tokens);
    ASSERT_EQ(other->hidden.bytes_size(), whole.hidden.bytes_size());
    EXPECT_EQ(0, std::memcmp(other->hidden.data(), whole.hidden.data(), whole.hidden.bytes_size()));
    EXPECT_EQ(0, std::memcmp(other->logits.data(), whole.logits.data(), whole.logits.bytes_size()));
  }
}

TEST_F(CudaTpGpuTest, RollbackRegeneratesTheOriginalLeaves) {
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
  ExpectEqualLeaves(Run(o, All()), *reference_, All(), "rollbacks");
}

TEST_F(CudaTpGpuTest, LayerZeroKvRowsEqualTheSingleGpuBackends) {
  // Layer 0's keys and values come from the embedding, a norm, the QKV columns and RoPE, all
  // per element or per head: the shards must reproduce the single-GPU rows exactly, interleaved
  // back in kv-head order by ReadKvRows.
  auto single = Ready(1), tp = Ready(kDegree);
  const std::vector<int32_t> tokens = Prompt(4, 40), table = Blocks(30, 3);
  Chunk(*single, tokens, 0, 40, table, true);
  Chunk(*tp, tokens, 0, 40, table, true);
  Tensor k1, v1, kt, vt;
  ASSERT_OK(single->ReadKvRows(table, 0, 0, 40, &k1, &v1));
  ASSERT_OK(tp->ReadKvRows(table, 0, 0, 40, &kt, &vt));
  ASSERT_EQ(kt.shape(), k1.shape());
  EXPECT_EQ(0, std::memcmp(kt.data(), k1.data(), k1.bytes_size()));
  EXPECT_EQ(0, std::memcmp(vt.data(), v1.data(), v1.bytes_size()));
}

TEST_F(CudaTpGpuTest, LogitsAgreeWithTheSingleGpuBackendWithinBf16Tolerance) {
  auto single = Ready(1), tp = Ready(kDegree);
  const double gap = TeacherForcedGap(*single, *tp, 24);
  std::printf("tp%d vs tp1: worst logit gap %.5f of the row's largest |logit|\n", kDegree, gap);
  RecordProperty("worst_logit_gap", std::to_string(gap));
  EXPECT_LE(gap, kLogitTolerance);
  EXPECT_GT(gap, 0.0);  // the sums differ: equal logits would mean TP did not split anything
}

TEST_F(CudaTpGpuTest, MixAnchorsAreSlicedPerRank) {
  const LlamaConfig& c = model_->config();
  auto zero = MakeAnchors(c, 8, 0.0f), varied = MakeAnchors(c, 8, -1.0f);
  const std::vector<int32_t> tokens = Prompt(6, 30);
  const auto digest = [&](const AnchorSet* anchors, int degree) {
    return Chunk(*Ready(degree, anchors), tokens, 0, 30, Blocks(0, 2), true).state_digests;
  };
  EXPECT_EQ(digest(zero.get(), kDegree), digest(nullptr, kDegree));
  EXPECT_NE(digest(varied.get(), kDegree), digest(nullptr, kDegree));
  // Per-head gamma and per-kv-head anchor rows in the right ranks: within the bf16 bound of the
  // single-GPU backend.
  auto single = Ready(1, varied.get()), tp = Ready(kDegree, varied.get());
  EXPECT_LE(TeacherForcedGap(*single, *tp, 8), kLogitTolerance);
  RunOptions o;
  o.anchors = varied.get();
  o.batch = 5;
  o.chunk = 11;
  o.arrival_spread = 4;
  ExpectEqualLeaves(Run(o, All()), RunAlone(o, All()), All(), "mix anchors");
}

TEST_F(CudaTpGpuTest, PrefixAnchorsAreScatteredToTheShards) {
  const LlamaConfig& c = model_->config();
  auto anchors = MakeAnchors(c, 8, 1.0f);
  auto tp = Ready(kDegree, anchors.get(), AnchorMode::kPrefix);
  const std::vector<int32_t> table = Blocks(40, 2);
  ASSERT_OK(tp->WriteAnchorPrefix(table));
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    Tensor key, value;
    ASSERT_OK(tp->ReadKvRows(table, layer, 0, 8, &key, &value));
    const AnchorLayer& want = anchors->layers()[static_cast<size_t>(layer)];
    for (int64_t i = 0; i < key.elements(); ++i) {
      ASSERT_EQ(key.data_as<float>()[i],
                kernels::Bf16ToF32(kernels::F32ToBf16(want.key.data_as<float>()[i])))
          << layer << " " << i;
      ASSERT_EQ(value.data_as<float>()[i],
                kernels::Bf16ToF32(kernels::F32ToBf16(want.value.data_as<float>()[i])))
          << layer << " " << i;
    }
  }
  auto single = Ready(1, anchors.get(), AnchorMode::kPrefix);
  tp = Ready(kDegree, anchors.get(), AnchorMode::kPrefix);
  EXPECT_LE(TeacherForcedGap(*single, *tp, 8, /*prefix_anchors=*/true, 8), kLogitTolerance);
  RunOptions o;
  o.anchors = anchors.get();
  o.mode = AnchorMode::kPrefix;
  o.batch = 6;
  o.chunk = 7;
  o.arrival_spread = 3;
  ExpectEqualLeaves(Run(o, All()), RunAlone(o, All()), All(), "prefix anchors");
}

TEST_F(CudaTpGpuTest, DigestEqualsCpuReferenceOverTheCopiedHiddenState) {
  auto backend = Ready(kDegree);
  std::vector<int32_t> a = Prompt(1, 30), b = Prompt(2, 5);
  std::vector<int32_t> ta = Blocks(0, 2), tb = Blocks(4, 1);
  std::vector<ForwardSequence> batch = {{a, 0, ta, true, {0, 0, 1, 0}, 0},
                                        {b, 0, tb, true, {0.7f, 0, 1, 3}, 0}};
  ForwardResult r;
  ASSERT_OK(backend->Forward(batch, {true, true}, &r));
  ASSERT_OK_AND_ASSIGN(
      std::vector<Hash> expected,
      leaf::RowStateDigests(DType::kBf16, DTypeMantissaBits(DType::kBf16), r.hidden.bytes(), 2,
                            static_cast<size_t>(r.hidden.dim(1))));
  EXPECT_EQ(r.state_digests, expected);
}

TEST_F(CudaTpGpuTest, NcclAllReduceMatchesAtTwoRanksAndStaysWithinTheBoundAbove) {
  RunOptions o;
  o.reduction = TpReduction::kNcclAllReduce;
  o.batch = 5;
  o.chunk = 11;
  o.arrival_spread = 4;
  const Leaves reduced = Run(o, All());
  if (kDegree == 2) {
    // Two partials: any all-reduce algorithm computes the one sum p0 + p1 (= p1 + p0).
    ExpectEqualLeaves(reduced, *reference_, All(), "all-reduce at two ranks");
  }
  auto single = Ready(1);
  auto reduce = MakeBackend(kDegree, true, TpReduction::kNcclAllReduce);
  ASSERT_OK(reduce->LoadModel(*model_, {DType::kBf16, -1}));
  ASSERT_OK(reduce->LoadAnchors(nullptr, AnchorMode::kMix));
  ASSERT_OK(reduce->AllocateKvCache(kBlocks, 16));
  EXPECT_LE(TeacherForcedGap(*single, *reduce, 8), kLogitTolerance);
}

// Error paths.

TEST_F(CudaTpGpuTest, DegreesThatDoNotDivideTheModelAreRejected) {
  std::vector<std::unique_ptr<testing::TempDir>> dirs;
  const auto load = [&](int64_t kv_heads, int64_t intermediate) {
    dirs.push_back(std::make_unique<testing::TempDir>());
    TinyModelOptions o;
    o.hidden_size = 512;
    o.num_heads = 8;
    o.num_kv_heads = kv_heads;
    o.intermediate_size = intermediate;
    FP_CHECK(WriteTinyModel(dirs.back()->path().string(), o).ok());
    return std::move(Model::Load(dirs.back()->path().string()).value());
  };
  auto one_kv_head = load(1, 1024);
  EXPECT_THAT(MakeBackend(kDegree)->LoadModel(*one_kv_head, {DType::kBf16, -1}),
              StatusIs(StatusCode::kInvalidArgument));
  // intermediate / R is not a multiple of 8 for R = 2 or 4.
  auto odd_intermediate = load(4, 1032);
  EXPECT_THAT(MakeBackend(kDegree)->LoadModel(*odd_intermediate, {DType::kBf16, -1}),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(MakeBackend(1)->LoadModel(*odd_intermediate, {DType::kBf16, -1}));
}

TEST_F(CudaTpGpuTest, BadDeviceListsAreRejected) {
  CudaBackendOptions o;
  o.tensor_parallel = kDegree;
  o.devices = {0};
  EXPECT_THAT(CreateCudaBackend(o), StatusIs(StatusCode::kInvalidArgument));
  o.devices.assign(kDegree, 0);
  EXPECT_THAT(CreateCudaBackend(o), StatusIs(StatusCode::kInvalidArgument));
  o.devices.clear();
  o.device = CudaDeviceCount() - 1;  // the later ranks' devices do not exist
  EXPECT_THAT(CreateCudaBackend(o), StatusIs(StatusCode::kFailedPrecondition));
  o = CudaBackendOptions();
  for (int degree : {0, 9}) {
    o.tensor_parallel = degree;
    EXPECT_THAT(CreateCudaBackend(o), StatusIs(StatusCode::kInvalidArgument)) << degree;
  }
  // An explicit list in another order is a valid clique (rank 0 on the last GPU).
  o = CudaBackendOptions();
  o.tensor_parallel = kDegree;
  for (int r = 0; r < kDegree; ++r) o.devices.push_back(kDegree - 1 - r);
  ASSERT_OK_AND_ASSIGN(auto reversed, CreateCudaBackend(o));
  ASSERT_OK(reversed->LoadModel(*model_, {DType::kBf16, -1}));
  ASSERT_OK(reversed->LoadAnchors(nullptr, AnchorMode::kMix));
  ASSERT_OK(reversed->AllocateKvCache(kBlocks, 16));
  const std::vector<int32_t> tokens = Prompt(3, 21);
  EXPECT_EQ(Chunk(*reversed, tokens, 0, 21, Blocks(0, 2), true).state_digests,
            Chunk(*Ready(kDegree), tokens, 0, 21, Blocks(0, 2), true).state_digests);
}

TEST_F(CudaTpGpuTest, MalformedBatchesAreRejectedAndTheBackendKeepsWorking) {
  auto backend = Ready(kDegree);
  std::vector<int32_t> tokens = Prompt(1, 20);
  std::vector<int32_t> table = Blocks(0, 1);
  ForwardResult r;
  ForwardSequence past_table{tokens, 0, table, true, {0, 0, 1, 0}, 0};  // 20 rows, 16 in table
  EXPECT_THAT(backend->Forward({&past_table, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> bad_ids = {1, 999};
  ForwardSequence bad_token{bad_ids, 0, table, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&bad_token, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  ForwardSequence bad_sampling{
      std::span<const int32_t>(tokens).first(1), 0, table, true, {-1.0f, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&bad_sampling, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend->WriteAnchorPrefix(table), StatusIs(StatusCode::kFailedPrecondition));
  Tensor key, value;
  EXPECT_THAT(backend->ReadKvRows(table, 99, 0, 1, &key, &value),
              StatusIs(StatusCode::kInvalidArgument));
  ForwardResult ok = Chunk(*backend, tokens, 0, 20, Blocks(0, 2), true);
  EXPECT_EQ(ok.tokens.size(), 1u);
}

}  // namespace
}  // namespace fp::node
