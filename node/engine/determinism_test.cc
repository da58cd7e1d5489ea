// Bitwise determinism of the engine's step leaves (DESIGN.md section 1: agreement must come from
// the computation, not from rounding). A session's leaves must be identical
//   - alone, or in a batch of 1 to 32 with other sessions at any position and arrival time;
//   - with any prefill chunk size and thread count;
//   - in a second run;
//   - after a rollback to any step (keeping the cache, or rebuilding it) from that step on.
// The reference for every session is a run on its own (batch of one, one prefill chunk).
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

constexpr int kSessions = 32;

struct RunOptions {
  int batch = kSessions;
  int chunk = 512;
  int threads = 1;
  int arrival_spread = 0;  // sessions arrive over this many steps
  uint32_t seed = 1;       // chooses the sessions, their order and arrivals
  // Rollbacks: when session `victim` has produced `at` steps, truncate it to `to`.
  struct Rollback {
    int victim;
    uint64_t at;
    uint64_t to;
    RollbackMode mode;
  };
  std::vector<Rollback> rollbacks;
};

using Leaves = std::map<int, std::vector<Hash>>;  // session index -> leaf hashes by step

class DeterminismTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    TinyModelOptions o;
    o.hidden_size = 64;
    o.intermediate_size = 96;
    o.max_positions = 256;
    ASSERT_OK(WriteTinyModel(dir_->path().string(), o));
    model_ = Model::Load(dir_->path().string()).value().release();
    // Sessions with varied prompts, lengths and sampling; a few stop early.
    std::mt19937 rng(7);
    for (int i = 0; i < kSessions; ++i) {
      SessionRequest r;
      r.id[0] = static_cast<uint8_t>(i);
      r.id[15] = 0xa5;
      int prompt = 1 + static_cast<int>(rng() % 40);
      for (int j = 0; j < prompt; ++j) r.prompt.push_back(static_cast<int32_t>(rng() % 260));
      r.max_tokens = 4 + static_cast<int>(rng() % 20);
      if (i % 2 == 1) r.sampling = {0.9f, static_cast<int32_t>(rng() % 30), 0.95f, rng()};
      if (i % 5 == 0) r.stop_tokens = {'e', ' '};
      requests_.push_back(r);
    }
    reference_ = new Leaves();
    for (int i = 0; i < kSessions; ++i) {
      RunOptions alone;
      alone.batch = 1;
      Leaves one = Run(alone, {i});
      (*reference_)[i] = one[i];
    }
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete model_;
    delete dir_;
  }

  // Runs the sessions `which` (in that arrival order) under `o`; returns their leaves.
  static Leaves Run(const RunOptions& o, const std::vector<int>& which) {
    EngineOptions options;
    options.max_batch_sequences = o.batch;
    options.prefill_chunk_tokens = o.chunk;
    options.max_batch_tokens = std::max(o.batch, 64);
    auto backend = std::move(CpuBackend::Create({o.threads}).value());
    auto engine = std::move(Engine::Create(*model_, std::move(backend), nullptr, options).value());
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

  static testing::TempDir* dir_;
  static Model* model_;
  static std::vector<SessionRequest> requests_;
  static Leaves* reference_;
};

testing::TempDir* DeterminismTest::dir_ = nullptr;
Model* DeterminismTest::model_ = nullptr;
std::vector<SessionRequest> DeterminismTest::requests_;
Leaves* DeterminismTest::reference_ = nullptr;

TEST_F(DeterminismTest, ReferenceSessionsAreNonTrivial) {
  size_t steps = 0;
  for (const auto& [i, leaves] : *reference_) steps += leaves.size();
  EXPECT_GT(steps, 200u);
  EXPECT_NE(reference_->at(0), reference_->at(1));
}

TEST_F(DeterminismTest, AllSessionsInOneBatchMatchTheirSoloRuns) {
  ExpectMatchesReference(Run({}, All()), All(), "batch 32");
}

TEST_F(DeterminismTest, AnyBatchSizePositionChunkingAndArrival) {
  std::mt19937 rng(11);
  const int batches[] = {1, 2, 5, 13, 32};
  const int chunks[] = {1, 3, 16, 64};
  for (int trial = 0; trial < 20; ++trial) {
    RunOptions o;
    o.batch = batches[trial % 5];
    o.chunk = chunks[trial % 4];
    o.arrival_spread = 1 + trial * 3;
    o.seed = static_cast<uint32_t>(trial + 100);
    std::vector<int> which = All();
    std::shuffle(which.begin(), which.end(), rng);
    // More sessions than batch slots, so some wait for admission.
    which.resize(std::min<size_t>(kSessions, std::max(o.batch + 3, 6)));
    ExpectMatchesReference(
        Run(o, which), which,
        "batch " + std::to_string(o.batch) + " chunk " + std::to_string(o.chunk));
  }
}

TEST_F(DeterminismTest, ThreadCountDoesNotMatter) {
  RunOptions o;
  o.threads = 2;
  o.chunk = 7;
  o.arrival_spread = 10;
  ExpectMatchesReference(Run(o, All()), All(), "2 threads");
}

TEST_F(DeterminismTest, SecondRunIsIdentical) {
  RunOptions o;
  o.batch = 9;
  o.chunk = 5;
  o.arrival_spread = 12;
  EXPECT_EQ(Run(o, All()), Run(o, All()));
}

TEST_F(DeterminismTest, RollbackRegeneratesTheOriginalLeaves) {
  RunOptions o;
  o.chunk = 8;
  o.arrival_spread = 6;
  // Sessions with at least 8 steps in the reference; roll back in several ways.
  std::vector<int> long_ones;
  for (const auto& [i, leaves] : *reference_) {
    if (leaves.size() >= 8) long_ones.push_back(i);
  }
  ASSERT_GE(long_ones.size(), 4u);
  o.rollbacks = {{long_ones[0], 6, 3, RollbackMode::kKeepCache},
                 {long_ones[1], 7, 0, RollbackMode::kKeepCache},
                 {long_ones[2], 5, 2, RollbackMode::kRebuild},
                 {long_ones[3], 8, 8, RollbackMode::kRebuild}};
  ExpectMatchesReference(Run(o, All()), All(), "rollbacks");
}

TEST_F(DeterminismTest, RepeatedRollbackOfOneSession) {
  RunOptions o;
  o.batch = 4;
  o.chunk = 3;
  int victim = -1;
  for (const auto& [i, leaves] : *reference_) {
    if (leaves.size() >= 10) victim = i;
  }
  ASSERT_GE(victim, 0);
  o.rollbacks = {{victim, 9, 4, RollbackMode::kKeepCache}, {victim, 6, 5, RollbackMode::kRebuild}};
  std::vector<int> which = {victim, (victim + 1) % kSessions, (victim + 2) % kSessions};
  ExpectMatchesReference(Run(o, which), which, "repeated rollback");
}

}  // namespace
}  // namespace fp::node
