// Tests for config.json parsing: real Hugging Face configs, defaults, round trips and rejection
// of what the engine cannot run.
#include "node/model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

// The published config.json of meta-llama/Llama-3.2-1B (abridged to the fields that matter).
constexpr char kLlama32Config[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
  "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "use_cache": true, "vocab_size": 128256})";

// meta-llama/Llama-2-7b-hf's config.json (abridged).
constexpr char kLlama2Config[] = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
  "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16",
  "vocab_size": 32000})";

class LlamaConfigTest : public ::testing::Test {
 protected:
  static std::string Replace(std::string text, const std::string& from, const std::string& to) {
    size_t pos = text.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    return text.replace(pos, from.size(), to);
  }
};

TEST_F(LlamaConfigTest, ParsesLlama32) {
  ASSERT_OK_AND_ASSIGN(LlamaConfig c, ParseLlamaConfig(kLlama32Config, "config.json"));
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_scaling, RopeScaling::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 32.0);
  EXPECT_EQ(c.rope_original_max_positions, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.dtype, DType::kBf16);
  EXPECT_EQ(c.bos_token_ids, std::vector<int32_t>({128000}));
}

TEST_F(LlamaConfigTest, ParsesLlama2WithDefaults) {
  ASSERT_OK_AND_ASSIGN(LlamaConfig c, ParseLlamaConfig(kLlama2Config, "config.json"));
  EXPECT_EQ(c.head_dim, 128);  // hidden_size / heads
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.rope_scaling, RopeScaling::kNone);
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST_F(LlamaConfigTest, EosListIsAccepted) {
  std::string text = Replace(kLlama32Config, R"("eos_token_id": 128001)",
                             R"("eos_token_id": [128001, 128008, 128009])");
  ASSERT_OK_AND_ASSIGN(LlamaConfig c, ParseLlamaConfig(text, "config.json"));
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>({128001, 128008, 128009}));
}

TEST_F(LlamaConfigTest, ParsesTransformers5RopeParameters) {
  std::string text = Replace(kLlama2Config, R"("rope_scaling": null)",
                             R"("rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,)"
                             R"( "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,)"
                             R"( "original_max_position_embeddings": 8192})");
  ASSERT_OK_AND_ASSIGN(LlamaConfig c, ParseLlamaConfig(text, "config.json"));
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling, RopeScaling::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 8.0);
}

TEST_F(LlamaConfigTest, SerializeRoundTrips) {
  ASSERT_OK_AND_ASSIGN(LlamaConfig c, ParseLlamaConfig(kLlama32Config, "config.json"));
  ASSERT_OK_AND_ASSIGN(LlamaConfig back, ParseLlamaConfig(SerializeLlamaConfig(c), "rt"));
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.rope_scaling, c.rope_scaling);
  EXPECT_DOUBLE_EQ(back.rope_factor, c.rope_factor);
  EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
  EXPECT_EQ(back.dtype, c.dtype);
  EXPECT_EQ(back.tie_word_embeddings, c.tie_word_embeddings);
}

// Error paths.

TEST_F(LlamaConfigTest, UnknownArchitectureIsUnimplementedAndNamed) {
  std::string text = Replace(kLlama2Config, "LlamaForCausalLM", "GPT2LMHeadModel");
  auto result = ParseLlamaConfig(text, "dir/config.json");
  EXPECT_THAT(result, StatusIs(StatusCode::kUnimplemented));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("GPT2LMHeadModel"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("dir/config.json"));
}

TEST_F(LlamaConfigTest, UnsupportedFeaturesAreUnimplemented) {
  EXPECT_THAT(
      ParseLlamaConfig(
          Replace(kLlama32Config, R"("attention_bias": false)", R"("attention_bias": true)"), "c"),
      StatusIs(StatusCode::kUnimplemented));
  EXPECT_THAT(
      ParseLlamaConfig(
          Replace(kLlama32Config, R"("rope_type": "llama3")", R"("rope_type": "yarn")"), "c"),
      StatusIs(StatusCode::kUnimplemented));
  EXPECT_THAT(
      ParseLlamaConfig(Replace(kLlama2Config, R"("hidden_act": "silu")", R"("hidden_act": "gelu")"),
                       "c"),
      StatusIs(StatusCode::kUnimplemented));
}

TEST_F(LlamaConfigTest, InconsistentSizesAreRejected) {
  EXPECT_THAT(ParseLlamaConfig(Replace(kLlama2Config, R"("num_key_value_heads": 32)",
                                       R"("num_key_value_heads": 5)"),
                               "c"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLlamaConfig(
                  Replace(kLlama2Config, R"("hidden_size": 4096)", R"("hidden_size": 4097)"), "c"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLlamaConfig(
                  Replace(kLlama2Config, R"("vocab_size": 32000)", R"("vocab_size": -3)"), "c"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLlamaConfig(
                  Replace(kLlama2Config, R"("eos_token_id": 2)", R"("eos_token_id": 32000)"), "c"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(LlamaConfigTest, MissingFieldIsNamed) {
  auto result = ParseLlamaConfig(Replace(kLlama2Config, R"("hidden_size": 4096,)", ""), "c");
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("hidden_size"));
}

TEST_F(LlamaConfigTest, MalformedJsonIsRejected) {
  EXPECT_THAT(ParseLlamaConfig("{", "c"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLlamaConfig("[]", "c"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(LlamaConfigTest, MissingFileIsNotFound) {
  EXPECT_THAT(LoadLlamaConfig("/nonexistent"), StatusIs(StatusCode::kNotFound));
}

}  // namespace
}  // namespace fp::node
