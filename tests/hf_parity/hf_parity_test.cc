// Hugging Face parity: the CPU engine's logits against PyTorch + transformers for tiny random
// LlamaForCausalLM models in float32 (data made by tests/hf_parity/make_reference.py, which
// saves each model with save_pretrained and dumps reference logits; see that script).
//
// For every model folder under tests/hf_parity/data/ with a reference.json:
//   - the loader reads the checkpoint exactly as transformers wrote it;
//   - teacher-forced logits at every prompt position (one decode step per position) match the
//     reference within float32 tolerance (gamma = 0, no anchors);
//   - the engine's greedy continuation matches transformers' for as long as transformers' top-1
//     margin stays clear of float32 noise.
// Without data the test fails and says how to make it: parity that is never checked is not
// parity.
#include <cmath>
#include <filesystem>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "node/backend/cpu_backend.h"
#include "node/engine/engine.h"
#include "node/model/mapped_file.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

namespace json = boost::json;

constexpr double kAbsoluteTolerance = 2e-4;
constexpr double kRelativeTolerance = 1e-4;
// Below this top-1 margin a float32 reordering may legitimately flip the greedy token.
constexpr double kGreedyMarginFloor = 1e-3;

std::vector<std::filesystem::path> ModelDirs() {
  std::vector<std::filesystem::path> dirs;
  std::filesystem::path data = testing::SourceDir() / "tests" / "hf_parity" / "data";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(data, ec)) {
    if (std::filesystem::exists(entry.path() / "reference.json")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::vector<int32_t> Ids(const json::value& v) {
  std::vector<int32_t> ids;
  for (const json::value& id : v.as_array()) ids.push_back(static_cast<int32_t>(id.as_int64()));
  return ids;
}

class HfParityTest : public ::testing::Test {
 protected:
  // Teacher-forced logits at every position of `ids`.
  static std::vector<std::vector<float>> EngineLogits(const Model& model,
                                                      const std::vector<int32_t>& ids) {
    auto backend = std::move(CpuBackend::Create({2}).value());
    EXPECT_OK(backend->LoadModel(model, {model.config().dtype, -1}));
    EXPECT_OK(backend->LoadAnchors(nullptr, AnchorMode::kMix));
    const int32_t blocks = static_cast<int32_t>(ids.size() / 16 + 1);
    EXPECT_OK(backend->AllocateKvCache(blocks, 16));
    std::vector<int32_t> table(static_cast<size_t>(blocks));
    for (int32_t b = 0; b < blocks; ++b) table[size_t(b)] = b;
    std::vector<std::vector<float>> out;
    for (size_t p = 0; p < ids.size(); ++p) {
      ForwardSequence s{std::span<const int32_t>(ids).subspan(p, 1),
                        static_cast<int32_t>(p),
                        table,
                        true,
                        {0, 0, 1, 0},
                        p};
      ForwardResult r;
      EXPECT_OK(backend->Forward({&s, 1}, {false, true}, &r));
      out.emplace_back(r.logits.data_as<float>(), r.logits.data_as<float>() + r.logits.dim(1));
    }
    return out;
  }

  static std::vector<int32_t> EngineGreedy(const Model& model, const std::vector<int32_t>& ids,
                                           int steps) {
    auto backend = std::move(CpuBackend::Create({2}).value());
    auto engine = std::move(Engine::Create(model, std::move(backend), nullptr, {}).value());
    SessionRequest request;
    request.prompt = ids;
    request.max_tokens = steps;
    EXPECT_OK(engine->Submit(request));
    std::vector<StepOutput> outputs;
    while (engine->HasWork()) EXPECT_OK(engine->Step(&outputs));
    std::vector<int32_t> tokens;
    for (const StepOutput& o : outputs) tokens.push_back(static_cast<int32_t>(o.leaf.token_id));
    return tokens;
  }

  static void CheckModel(const std::filesystem::path& dir) {
    SCOPED_TRACE(dir.filename().string());
    ASSERT_OK_AND_ASSIGN(auto model, Model::Load(dir.string()));
    ASSERT_EQ(model->config().dtype, DType::kF32);
    ASSERT_OK_AND_ASSIGN(std::string text,
                         ReadFileToString((dir / "reference.json").string(), 64 << 20));
    json::error_code ec;
    json::value reference = json::parse(text, ec);
    ASSERT_FALSE(ec) << "reference.json: " << ec.message();
    ASSERT_EQ(reference.at("format").as_string(), "fieldprint-hf-parity-v1");
    for (const json::value& prompt : reference.at("prompts").as_array()) {
      std::vector<int32_t> ids = Ids(prompt.at("ids"));
      std::vector<std::vector<float>> got = EngineLogits(*model, ids);
      const json::array& want = prompt.at("logits").as_array();
      ASSERT_EQ(want.size(), got.size());
      double worst = 0;
      for (size_t p = 0; p < got.size(); ++p) {
        const json::array& row = want[p].as_array();
        ASSERT_EQ(row.size(), got[p].size());
        for (size_t v = 0; v < row.size(); ++v) {
          double expected = row[v].to_number<double>();
          double error = std::abs(got[p][v] - expected);
          worst = std::max(worst, error);
          ASSERT_LE(error, kAbsoluteTolerance + kRelativeTolerance * std::abs(expected))
              << "prompt of " << ids.size() << " tokens, position " << p << ", token " << v;
        }
      }
      std::vector<int32_t> greedy = Ids(prompt.at("greedy"));
      const json::array& margins = prompt.at("greedy_margins").as_array();
      std::vector<int32_t> mine = EngineGreedy(*model, ids, static_cast<int>(greedy.size()));
      for (size_t s = 0; s < greedy.size(); ++s) {
        if (margins[s].to_number<double>() < kGreedyMarginFloor) break;
        ASSERT_EQ(mine[s], greedy[s]) << "greedy step " << s;
      }
      std::printf("%s: prompt of %zu tokens, max |logit error| %.3g\n", dir.filename().c_str(),
                  ids.size(), worst);
    }
  }
};

TEST_F(HfParityTest, LogitsMatchTransformers) {
  std::vector<std::filesystem::path> dirs = ModelDirs();
  ASSERT_FALSE(dirs.empty())
      << "No Hugging Face reference data in tests/hf_parity/data/. Run\n"
         "    python3 tests/hf_parity/make_reference.py\n"
         "on a machine with PyTorch and transformers (CPU is enough) and commit\n"
         "tests/hf_parity/data/ (about 1.6 MB).";
  for (const auto& dir : dirs) CheckModel(dir);
}

}  // namespace
}  // namespace fp::node
