// Tests for anchor sets: canonical hashing, file round trips, gamma overrides, compatibility
// checks, building from a prefill (checked against a naive layer-0 value projection), and the
// rejection of malformed sets.
#include "node/anchors/anchor_set.h"

#include <cmath>
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/base/half.h"
#include "node/anchors/anchor_builder.h"
#include "node/backend/cpu_backend.h"
#include "node/model/mapped_file.h"
#include "node/model/safetensors.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

class AnchorSetTest : public ::testing::Test {
 protected:
  static std::vector<AnchorLayer> Layers(int layers, int anchors, int kv_heads, int head_dim,
                                         int q_heads, float gamma) {
    std::vector<AnchorLayer> out;
    for (int l = 0; l < layers; ++l) {
      AnchorLayer layer{Tensor::Zeros(DType::kF32, {anchors, kv_heads, head_dim}),
                        Tensor::Zeros(DType::kF32, {anchors, kv_heads, head_dim}),
                        Tensor::Zeros(DType::kF32, {q_heads})};
      for (int64_t i = 0; i < layer.key.elements(); ++i) {
        layer.key.mutable_data_as<float>()[i] = static_cast<float>(l * 1000 + i);
        layer.value.mutable_data_as<float>()[i] = -static_cast<float>(i);
      }
      for (int h = 0; h < q_heads; ++h) layer.gamma.mutable_data_as<float>()[h] = gamma;
      out.push_back(std::move(layer));
    }
    return out;
  }
};

TEST_F(AnchorSetTest, SaveLoadRoundTripsAndHashIsTheFilesSha256) {
  testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(2, 3, 2, 8, 4, 0.25f)));
  ASSERT_OK(set->Save(dir.Join("a.safetensors")));
  ASSERT_OK_AND_ASSIGN(std::string bytes, ReadFileToString(dir.Join("a.safetensors"), 1 << 20));
  EXPECT_EQ(set->hash(), Sha256(bytes));
  ASSERT_OK_AND_ASSIGN(auto loaded, AnchorSet::Load(dir.Join("a.safetensors")));
  EXPECT_EQ(loaded->hash(), set->hash());
  EXPECT_EQ(loaded->num_anchors(), 3);
  EXPECT_EQ(loaded->num_layers(), 2);
  EXPECT_EQ(loaded->kv_heads(), 2);
  EXPECT_EQ(loaded->head_dim(), 8);
  EXPECT_EQ(loaded->q_heads(), 4);
  EXPECT_EQ(loaded->layers()[1].key.data_as<float>()[5], 1005.0f);
}

TEST_F(AnchorSetTest, HashIgnoresForeignHeaderLayout) {
  testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(1, 2, 1, 4, 2, 0.5f)));
  // The same tensors written without metadata: a different file, the same canonical content.
  std::vector<NamedTensor> named = {{"layers.0.anchor_key", &set->layers()[0].key},
                                    {"layers.0.anchor_value", &set->layers()[0].value},
                                    {"layers.0.gamma", &set->layers()[0].gamma}};
  ASSERT_OK(WriteSafetensors(dir.Join("foreign.safetensors"), named, {}));
  ASSERT_OK_AND_ASSIGN(auto loaded, AnchorSet::Load(dir.Join("foreign.safetensors")));
  EXPECT_EQ(loaded->hash(), set->hash());
}

TEST_F(AnchorSetTest, GammaOverrideChangesHashAndEveryHead) {
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(2, 3, 2, 8, 4, 0.25f)));
  ASSERT_OK_AND_ASSIGN(auto other, set->WithGamma(0.75f));
  EXPECT_NE(other->hash(), set->hash());
  for (const AnchorLayer& l : other->layers()) {
    for (int h = 0; h < 4; ++h) EXPECT_EQ(l.gamma.data_as<float>()[h], 0.75f);
  }
  ASSERT_OK_AND_ASSIGN(auto back, other->WithGamma(0.25f));
  EXPECT_EQ(back->hash(), set->hash());
}

TEST_F(AnchorSetTest, ParsesModes) {
  ASSERT_OK_AND_ASSIGN(AnchorMode mode, ParseAnchorMode("prefix"));
  EXPECT_EQ(mode, AnchorMode::kPrefix);
  EXPECT_EQ(AnchorModeName(AnchorMode::kMix), "mix");
  EXPECT_THAT(ParseAnchorMode("both"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(AnchorSetTest, BuildTakesValueRowsOfTheLastPositions) {
  testing::TempDir dir;
  TinyModelOptions o;
  o.hidden_size = 64;
  o.intermediate_size = 96;
  o.max_positions = 256;
  o.dtype = DType::kF32;
  ASSERT_OK(WriteTinyModel(dir.path().string(), o));
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(dir.path().string()));
  ASSERT_OK_AND_ASSIGN(auto backend, CpuBackend::Create({1}));
  std::vector<int32_t> tokens = {256, 'a', 'n', 'c', 'h', 'o', 'r', 's'};
  ASSERT_OK_AND_ASSIGN(auto set, BuildAnchorSet(*model, *backend, tokens, 3, 0.5f));
  ASSERT_OK(set->CheckCompatible(model->config()));
  EXPECT_EQ(set->num_anchors(), 3);
  EXPECT_EQ(set->layers()[0].gamma.data_as<float>()[0], 0.5f);
  // Layer 0's value row of a token is v_proj * rmsnorm(embedding): no attention involved, so it
  // can be computed here directly for the last anchor ('s').
  const LlamaConfig& c = model->config();
  const float* e = model->embed_tokens().data_as<float>() + 's' * c.hidden_size;
  double ss = 0;
  for (int64_t j = 0; j < c.hidden_size; ++j) ss += double(e[j]) * e[j];
  double inv = 1 / std::sqrt(ss / double(c.hidden_size) + c.rms_norm_eps);
  const Tensor& v = model->layers()[0].v_proj;
  const float* got = set->layers()[0].value.data_as<float>() + 2 * c.num_kv_heads * c.head_dim;
  for (int64_t r = 0; r < v.dim(0); ++r) {
    double expected = 0;
    for (int64_t j = 0; j < c.hidden_size; ++j) {
      expected += double(v.data_as<float>()[r * c.hidden_size + j]) * e[j] * inv;
    }
    EXPECT_NEAR(got[r], expected, 1e-4) << r;
  }
  // Causality: the anchors of a prefix are the same rows as those positions of a longer text.
  std::vector<int32_t> longer = tokens;
  longer.push_back('!');
  ASSERT_OK_AND_ASSIGN(auto shifted, BuildAnchorSet(*model, *backend, longer, 4, 0.5f));
  const Tensor& a = set->layers()[1].key;
  const Tensor& b = shifted->layers()[1].key;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.bytes_size()), 0);
}

// Error paths.

TEST_F(AnchorSetTest, InvalidSetsAreRejected) {
  EXPECT_THAT(AnchorSet::Create({}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(AnchorSet::Create(Layers(1, 2, 1, 4, 2, 1.5f)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(AnchorSet::Create(Layers(1, 2, 1, 4, 2, NAN)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(AnchorSet::Create(Layers(1, 0, 1, 4, 2, 0.5f)),
              StatusIs(StatusCode::kInvalidArgument));
  std::vector<AnchorLayer> mixed = Layers(2, 2, 1, 4, 2, 0.5f);
  mixed[1].value = Tensor::Zeros(DType::kF32, {3, 1, 4});
  EXPECT_THAT(AnchorSet::Create(std::move(mixed)), StatusIs(StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(1, 2, 1, 4, 2, 0.5f)));
  EXPECT_THAT(set->WithGamma(-0.1f), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(AnchorSetTest, IncompatibleModelIsRejected) {
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(2, 3, 2, 16, 4, 0.5f)));
  LlamaConfig c = TinyModelConfig(TinyModelOptions{});  // head_dim 64
  EXPECT_THAT(set->CheckCompatible(c), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(AnchorSetTest, MalformedFilesAreRejected) {
  testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto set, AnchorSet::Create(Layers(1, 2, 1, 4, 2, 0.5f)));
  std::vector<NamedTensor> missing = {{"layers.0.anchor_key", &set->layers()[0].key},
                                      {"layers.0.anchor_value", &set->layers()[0].value}};
  ASSERT_OK(WriteSafetensors(dir.Join("missing.safetensors"), missing, {}));
  EXPECT_THAT(AnchorSet::Load(dir.Join("missing.safetensors")),
              StatusIs(StatusCode::kInvalidArgument));
  std::vector<NamedTensor> renamed = {{"layers.0.anchor_key", &set->layers()[0].key},
                                      {"layers.0.anchor_value", &set->layers()[0].value},
                                      {"layers.0.gama", &set->layers()[0].gamma}};
  ASSERT_OK(WriteSafetensors(dir.Join("renamed.safetensors"), renamed, {}));
  EXPECT_THAT(AnchorSet::Load(dir.Join("renamed.safetensors")),
              StatusIs(StatusCode::kInvalidArgument));
  ASSERT_OK(set->Save(dir.Join("cut.safetensors")));
  std::filesystem::resize_file(dir.Join("cut.safetensors"), 40);
  EXPECT_FALSE(AnchorSet::Load(dir.Join("cut.safetensors")).ok());
  EXPECT_THAT(AnchorSet::Load(dir.Join("absent.safetensors")), StatusIs(StatusCode::kNotFound));
}

TEST_F(AnchorSetTest, BuildRejectsBadArguments) {
  testing::TempDir dir;
  TinyModelOptions o;
  o.hidden_size = 64;
  o.intermediate_size = 96;
  o.max_positions = 64;
  ASSERT_OK(WriteTinyModel(dir.path().string(), o));
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(dir.path().string()));
  ASSERT_OK_AND_ASSIGN(auto backend, CpuBackend::Create({1}));
  std::vector<int32_t> tokens = {1, 2, 3};
  EXPECT_THAT(BuildAnchorSet(*model, *backend, tokens, 4, 0.5f),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(BuildAnchorSet(*model, *backend, tokens, 0, 0.5f),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(BuildAnchorSet(*model, *backend, tokens, 2, 2.0f),
              StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> bad = {1, 999};
  EXPECT_THAT(BuildAnchorSet(*model, *backend, bad, 1, 0.5f),
              StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> too_long(65, 1);
  EXPECT_THAT(BuildAnchorSet(*model, *backend, too_long, 1, 0.5f),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node
