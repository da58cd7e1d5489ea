// End to end on the GPU: the same sessions run by two workers on the CUDA backend, one with them
// alone and one with them inside a crowd of other sessions (different batch sizes, positions,
// prefill chunking and KV block placement), must stream identical step leaves and claim identical
// session roots. Each worker talks to its own LoopbackSupervisor over real mutual TLS, so the
// leaves compared are the ones a supervisor received, and the roots the ones the workers claimed.
// The expectation is independent of the code under test: the two workers must agree with each
// other, and each root must be the RFC 6962 root of the leaves it covers.
//
// Both workers share the machine's GPUs, each with its own backend, weights and KV cache:
// separate workers in every way a supervisor can see. The file builds once per tensor-parallel
// degree (FP_TP_DEGREE: 1, and 2 with the same digests, streaming and roots through the
// tensor-parallel backend); a binary exits 77 (skipped) on a machine with fewer GPUs than its
// degree.
#include <random>

#include <gtest/gtest.h>

#include "common/merkle/merkle.h"
#include "common/wire/certs.h"
#include "node/backend/cuda_backend.h"
#include "node/model/tiny_model.h"
#include "node/worker/loopback_supervisor.h"
#include "node/worker/worker.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

using ::fp::testing::TempDir;
using std::chrono::milliseconds;

constexpr int kDegree = FP_TP_DEGREE;
constexpr milliseconds kWait{120'000};
constexpr char kModel[] = "tiny";
// Sessions of the crowd around the compared ones on the loaded worker.
constexpr int kCrowd = 40;

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

SessionId Id(uint8_t tag) {
  SessionId id{};
  id[0] = 0x9d;
  id[1] = tag;
  return id;
}

// One worker with its own supervisor.
struct Site {
  std::unique_ptr<LoopbackSupervisor> supervisor;
  std::unique_ptr<prometheus::Registry> registry;
  std::unique_ptr<Worker> worker;
};

class WorkerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    wire::CertsOptions certs;
    certs.names = {"supervisor-0", "worker-a", "worker-b"};
    ASSERT_OK(wire::InitCerts(dir_.Join("certs"), certs));
    ASSERT_OK(WriteTinyModel(dir_.Join("model"), TinyModelOptions{}));  // head_dim 64
  }

  void TearDown() override {
    for (Site* site : {&alone_, &loaded_}) {
      if (site->worker != nullptr) site->worker->Stop();
    }
  }

  // A worker named `name` on the CUDA backend with a loopback supervisor of its own.
  void StartSite(Site& site, const std::string& name, int32_t prefill_chunk, int32_t batch) {
    LoopbackOptions options;
    options.certs_dir = dir_.Join("certs");
    auto supervisor = LoopbackSupervisor::Start(options);
    ASSERT_OK(supervisor);
    site.supervisor = std::move(supervisor).value();
    WorkerConfig config;
    config.name = name;
    config.certs_dir = dir_.Join("certs");
    config.supervisors = {{"supervisor-0", "127.0.0.1", site.supervisor->port()}};
    config.models = {{kModel, dir_.Join("model"), ""}};
    config.data_dir = dir_.Join(name);
    config.engine.backend = BackendKind::kCuda;
    config.engine.tensor_parallel = kDegree;
    config.engine.prefill_chunk_tokens = prefill_chunk;
    config.engine.max_batch_sequences = batch;
    config.max_replicas = 64;
    config.stream = {4, milliseconds(20)};
    config.heartbeat_interval = milliseconds(50);
    config.reconnect = {milliseconds(20), milliseconds(200)};
    config.drain_timeout = milliseconds(300);
    site.registry = std::make_unique<prometheus::Registry>();
    auto worker = Worker::Create(config, *site.registry);
    ASSERT_OK(worker);
    site.worker = std::move(worker).value();
    ASSERT_OK(site.worker->Start());
    ASSERT_TRUE(
        site.supervisor->WaitUntil([&] { return site.worker->accepted_generation() != 0; }, kWait));
  }

  wire::pb::Assign MakeAssign(const Site& site, uint8_t tag, size_t prompt_tokens,
                              uint32_t max_tokens, bool sampled) {
    const Hash& profile = site.worker->catalog().entries[0].profile_hash;
    wire::pb::Assign assign;
    const SessionId id = Id(tag);
    assign.set_session_id(std::string(id.begin(), id.end()));
    assign.set_model(kModel);
    assign.set_numerics_profile(std::string(profile.begin(), profile.end()));
    assign.set_anchor_set_hash(std::string(kHashSize, '\0'));
    for (size_t i = 0; i < prompt_tokens; ++i) {
      assign.add_prompt_token_ids(static_cast<uint32_t>((tag * 53 + i * 29 + 7) % 256));
    }
    assign.mutable_sampling()->set_max_tokens(max_tokens);
    if (sampled) {
      assign.mutable_sampling()->set_temperature(0.8f);
      assign.mutable_sampling()->set_top_k(40);
      assign.mutable_sampling()->set_top_p(0.9f);
      assign.mutable_sampling()->set_seed(1000 + tag);
    }
    assign.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN);
    assign.set_max_unverified_steps(64);
    return assign;
  }

  static bool WaitFinished(Site& site, const std::vector<uint8_t>& tags) {
    return site.supervisor->WaitUntil(
        [&] {
          for (uint8_t tag : tags) {
            auto replica = site.supervisor->replica(Id(tag));
            if (!replica.has_value() || !replica->finished) return false;
          }
          return true;
        },
        kWait);
  }

  TempDir dir_;
  Site alone_, loaded_;
};

// The compared sessions: a greedy one and a sampled one, with prompts that are not multiples of
// the page size or the prefill chunk.
struct Compared {
  uint8_t tag;
  size_t prompt;
  uint32_t max_tokens;
  bool sampled;
};
constexpr Compared kCompared[] = {{1, 37, 40, false}, {2, 101, 33, true}};

TEST_F(WorkerGpuTest, SessionAloneAndInsideACrowdGiveIdenticalLeavesAndRoots) {
  // The quiet worker: whole prompts in one chunk, one session at a time.
  ASSERT_NO_FATAL_FAILURE(StartSite(alone_, "worker-a", 512, 32));
  // The loaded worker: small prefill chunks, large batches, a crowd started first so that the
  // compared sessions join running batches at varying positions.
  ASSERT_NO_FATAL_FAILURE(StartSite(loaded_, "worker-b", 24, 64));
  ASSERT_EQ(alone_.worker->catalog().entries[0].profile_hash,
            loaded_.worker->catalog().entries[0].profile_hash);

  for (const Compared& c : kCompared) {
    ASSERT_OK(
        alone_.supervisor->Assign(MakeAssign(alone_, c.tag, c.prompt, c.max_tokens, c.sampled)));
    ASSERT_TRUE(WaitFinished(alone_, {c.tag}));
  }

  std::mt19937 rng(11);
  std::vector<uint8_t> all;
  for (int i = 0; i < kCrowd; ++i) {
    const auto tag = static_cast<uint8_t>(100 + i);
    ASSERT_OK(loaded_.supervisor->Assign(
        MakeAssign(loaded_, tag, 1 + rng() % 150, 8 + rng() % 48, rng() % 2 == 0)));
    all.push_back(tag);
    if (i == kCrowd / 2) {
      for (const Compared& c : kCompared) {
        ASSERT_OK(loaded_.supervisor->Assign(
            MakeAssign(loaded_, c.tag, c.prompt, c.max_tokens, c.sampled)));
        all.push_back(c.tag);
      }
    }
  }
  ASSERT_TRUE(WaitFinished(loaded_, all));

  for (const Compared& c : kCompared) {
    SCOPED_TRACE(static_cast<int>(c.tag));
    const auto quiet = alone_.supervisor->replica(Id(c.tag)).value();
    const auto busy = loaded_.supervisor->replica(Id(c.tag)).value();
    ASSERT_EQ(quiet.leaves.size(), c.max_tokens);
    ASSERT_EQ(busy.leaves.size(), quiet.leaves.size());
    for (size_t s = 0; s < quiet.leaves.size(); ++s) {
      ASSERT_EQ(quiet.leaves[s].token_id, busy.leaves[s].token_id) << "step " << s;
      ASSERT_EQ(quiet.leaves[s].state_digest, busy.leaves[s].state_digest) << "step " << s;
    }
    // The claimed roots agree, and each is the RFC 6962 root over the leaves received.
    EXPECT_EQ(quiet.claimed_root, busy.claimed_root);
    const Hash root = quiet.tree.Root();
    EXPECT_EQ(quiet.claimed_root, std::string(root.begin(), root.end()));
  }
  EXPECT_TRUE(alone_.supervisor->rejections().empty());
  EXPECT_TRUE(loaded_.supervisor->rejections().empty());
}

}  // namespace
}  // namespace fp::node::worker
