// Tests for Model::Load: tiny models, shards, the weights hash (checked against a naive
// re-implementation of its definition) and every rejection the loader promises.
#include "node/model/model.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "node/model/mapped_file.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

TinyModelOptions SmallOptions() {
  TinyModelOptions o;
  o.hidden_size = 64;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.intermediate_size = 96;
  o.max_positions = 256;
  return o;
}

// The weights hash by its definition in model.h, written independently of the loader: every
// tensor of the files, by name, as u32 len | name | u8 dtype | u32 rank | u64 dims | u64 size |
// bytes (big-endian).
Hash NaiveWeightsHash(const std::vector<std::string>& files) {
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> all;
  std::vector<std::unique_ptr<SafetensorsFile>> open;
  for (const std::string& f : files) {
    open.push_back(std::move(SafetensorsFile::Open(f).value()));
    for (const auto& e : open.back()->header().tensors) all[e.name] = {open.back().get(), &e};
  }
  Bytes stream;
  for (const auto& [name, fe] : all) {
    auto put = [&](uint64_t v, int bytes) {
      for (int i = bytes - 1; i >= 0; --i) stream.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(name.size(), 4);
    stream.insert(stream.end(), name.begin(), name.end());
    put(static_cast<uint8_t>(fe.second->dtype), 1);
    put(fe.second->shape.size(), 4);
    for (int64_t d : fe.second->shape) put(static_cast<uint64_t>(d), 8);
    put(fe.second->end - fe.second->begin, 8);
    Tensor t = fe.first->Load(*fe.second);
    stream.insert(stream.end(), t.bytes().begin(), t.bytes().end());
  }
  return Sha256(stream);
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(WriteTinyModel(dir_.path().string(), SmallOptions())); }

  std::string Dir() const { return dir_.path().string(); }
  std::string WeightsPath() const { return Dir() + "/model.safetensors"; }

  // Rewrites model.safetensors with `edit` applied to the tensor map.
  void RewriteWeights(const std::function<void(std::map<std::string, Tensor>&)>& edit) {
    std::map<std::string, Tensor> tensors;
    {
      auto file = SafetensorsFile::Open(WeightsPath()).value();
      for (const auto& e : file->header().tensors) tensors[e.name] = file->Load(e).Clone();
    }
    edit(tensors);
    std::vector<NamedTensor> named;
    for (const auto& [name, t] : tensors) named.push_back({name, &t});
    ASSERT_OK(WriteSafetensors(WeightsPath(), named, {}));
  }

  testing::TempDir dir_;
};

TEST_F(ModelTest, LoadsTinyModel) {
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(Dir()));
  const LlamaConfig& c = model->config();
  EXPECT_EQ(c.vocab_size, kTinyVocabSize);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.head_dim, 16);
  ASSERT_EQ(model->layers().size(), 2u);
  EXPECT_EQ(model->layers()[1].k_proj.shape(), Shape({32, 64}));
  EXPECT_EQ(model->layers()[0].down_proj.shape(), Shape({64, 96}));
  EXPECT_EQ(model->lm_head().shape(), Shape({kTinyVocabSize, 64}));
  EXPECT_EQ(model->embed_tokens().dtype(), DType::kBf16);
  EXPECT_FALSE(model->embed_tokens().owning());  // memory-mapped
}

TEST_F(ModelTest, WeightsHashMatchesItsDefinition) {
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(Dir()));
  EXPECT_EQ(model->weights_hash(), NaiveWeightsHash({WeightsPath()}));
}

TEST_F(ModelTest, SeedChangesWeightsAndSameSeedRepeats) {
  testing::TempDir other;
  ASSERT_OK(WriteTinyModel(other.path().string(), SmallOptions()));
  TinyModelOptions reseeded = SmallOptions();
  reseeded.seed = 2;
  testing::TempDir third;
  ASSERT_OK(WriteTinyModel(third.path().string(), reseeded));
  ASSERT_OK_AND_ASSIGN(auto a, Model::Load(Dir()));
  ASSERT_OK_AND_ASSIGN(auto b, Model::Load(other.path().string()));
  ASSERT_OK_AND_ASSIGN(auto c, Model::Load(third.path().string()));
  EXPECT_EQ(a->weights_hash(), b->weights_hash());
  EXPECT_NE(a->weights_hash(), c->weights_hash());
}

TEST_F(ModelTest, ShardedCheckpointLoadsWithTheSameHash) {
  ASSERT_OK_AND_ASSIGN(auto single, Model::Load(Dir()));
  Hash expected = single->weights_hash();
  single.reset();
  std::map<std::string, Tensor> tensors;
  {
    auto file = SafetensorsFile::Open(WeightsPath()).value();
    for (const auto& e : file->header().tensors) tensors[e.name] = file->Load(e).Clone();
  }
  std::filesystem::remove(WeightsPath());
  std::vector<NamedTensor> part1, part2;
  std::string index = R"({"metadata":{},"weight_map":{)";
  bool first = true;
  for (const auto& [name, t] : tensors) {
    bool one = name.find("layers.1.") == std::string::npos;
    (one ? part1 : part2).push_back({name, &t});
    index += std::string(first ? "" : ",") + "\"" + name + "\":\"" +
             (one ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") + "\"";
    first = false;
  }
  index += "}}";
  ASSERT_OK(WriteSafetensors(Dir() + "/model-00001-of-00002.safetensors", part1, {}));
  ASSERT_OK(WriteSafetensors(Dir() + "/model-00002-of-00002.safetensors", part2, {}));
  ASSERT_OK(WriteFileAtomically(Dir() + "/model.safetensors.index.json", AsBytes(index)));
  ASSERT_OK_AND_ASSIGN(auto sharded, Model::Load(Dir()));
  EXPECT_EQ(sharded->weights_hash(), expected);
}

TEST_F(ModelTest, TiedEmbeddingsUseTheEmbedding) {
  testing::TempDir tied;
  TinyModelOptions o = SmallOptions();
  o.tie_word_embeddings = true;
  ASSERT_OK(WriteTinyModel(tied.path().string(), o));
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(tied.path().string()));
  EXPECT_EQ(model->lm_head().data(), model->embed_tokens().data());
}

// Error paths.

TEST_F(ModelTest, MissingTensorIsNamed) {
  RewriteWeights([](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  auto result = Model::Load(Dir());
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("model.layers.1.mlp.up_proj"));
}

TEST_F(ModelTest, WrongShapeIsNamedWithBothShapes) {
  RewriteWeights([](auto& t) {
    t["model.layers.0.self_attn.k_proj.weight"] = Tensor::Zeros(DType::kBf16, {64, 64});
  });
  auto result = Model::Load(Dir());
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidArgument));
  std::string message(result.status().message());
  EXPECT_THAT(message, HasSubstr("model.safetensors"));
  EXPECT_THAT(message, HasSubstr("k_proj"));
  EXPECT_THAT(message, HasSubstr("[64, 64]"));
  EXPECT_THAT(message, HasSubstr("[32, 64]"));
}

TEST_F(ModelTest, UnexpectedTensorIsRejected) {
  RewriteWeights([](auto& t) {
    t["model.layers.0.self_attn.q_proj.bias"] = Tensor::Zeros(DType::kBf16, {64});
  });
  auto result = Model::Load(Dir());
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("q_proj.bias"));
}

TEST_F(ModelTest, UnknownArchitectureIsUnimplemented) {
  std::string config = ReadFileToString(Dir() + "/config.json", 1 << 20).value();
  config.replace(config.find("LlamaForCausalLM"), 16, "MixtralForCausalLM");
  ASSERT_OK(WriteFileAtomically(Dir() + "/config.json", AsBytes(config)));
  EXPECT_THAT(Model::Load(Dir()), StatusIs(StatusCode::kUnimplemented));
}

TEST_F(ModelTest, TruncatedWeightsAreRejected) {
  std::filesystem::resize_file(WeightsPath(), std::filesystem::file_size(WeightsPath()) - 100);
  auto result = Model::Load(Dir());
  EXPECT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("model.safetensors"));
}

TEST_F(ModelTest, MissingWeightsAreNotFound) {
  std::filesystem::remove(WeightsPath());
  EXPECT_THAT(Model::Load(Dir()), StatusIs(StatusCode::kNotFound));
}

TEST_F(ModelTest, IndexNamingAMissingShardFails) {
  ASSERT_OK(
      WriteFileAtomically(Dir() + "/model.safetensors.index.json",
                          AsBytes(R"({"weight_map":{"model.norm.weight":"gone.safetensors"}})")));
  EXPECT_THAT(Model::Load(Dir()), StatusIs(StatusCode::kNotFound));
}

TEST_F(ModelTest, IndexWithPathTraversalIsRejected) {
  ASSERT_OK(
      WriteFileAtomically(Dir() + "/model.safetensors.index.json",
                          AsBytes(R"({"weight_map":{"model.norm.weight":"../x.safetensors"}})")));
  EXPECT_THAT(Model::Load(Dir()), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node
