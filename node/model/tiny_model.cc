// Seeded tiny LLaMA models; see tiny_model.h.
#include "node/model/tiny_model.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <string_view>
#include <vector>

#include "common/tokenizer/tokenizer.h"
#include "kernels/base/half.h"
#include "node/model/mapped_file.h"
#include "node/model/safetensors.h"

namespace fp::node {
namespace {

// What tiny models write: lower-case letters, space and a few punctuation marks.
constexpr std::string_view kPrintable = "abcdefghijklmnopqrstuvwxyz .,";
// Logit of the predicted byte, in units of the final hidden state's RMS: large enough that
// greedy decoding has a wide margin, small enough that temperature 1 still samples.
constexpr float kLmHeadScale = 8.0f;
// Residual updates of the attention and MLP blocks relative to a unit-RMS stream.
constexpr float kBlockOutputScale = 0.5f;

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-bound, bound) with standard deviation bound / sqrt(3).
  float Uniform(float bound) {
    double u = static_cast<double>(Next() >> 11) * 0x1p-53;
    return static_cast<float>((2.0 * u - 1.0) * bound);
  }

 private:
  uint64_t state_;
};

// Values of standard deviation `std` (uniform, so no libm is involved).
std::vector<float> RandomValues(SplitMix64& rng, int64_t count, float std) {
  std::vector<float> v(static_cast<size_t>(count));
  const float bound = std * 1.7320508f;
  for (float& x : v) x = rng.Uniform(bound);
  return v;
}

Tensor ToTensor(const std::vector<float>& values, Shape shape, DType dtype) {
  Tensor t = Tensor::Zeros(dtype, std::move(shape));
  FP_CHECK(static_cast<size_t>(t.elements()) == values.size());
  if (dtype == DType::kBf16) {
    kernels::ConvertF32ToBf16(values.data(), values.size(), t.mutable_data_as<uint16_t>());
  } else if (dtype == DType::kF16) {
    kernels::ConvertF32ToF16(values.data(), values.size(), t.mutable_data_as<uint16_t>());
  } else {
    std::copy(values.begin(), values.end(), t.mutable_data_as<float>());
  }
  return t;
}

// The byte each token predicts: the printable bytes follow one seeded cycle through all of them
// (so greedy text walks the cycle instead of repeating one byte), every other token predicts a
// seeded printable byte.
std::vector<int64_t> PredictedBytes(SplitMix64& rng, int64_t vocab) {
  std::string order(kPrintable);
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.Next() % (i + 1)]);
  std::vector<int64_t> target(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) {
    target[static_cast<size_t>(t)] =
        static_cast<uint8_t>(kPrintable[rng.Next() % kPrintable.size()]);
  }
  for (size_t i = 0; i < order.size(); ++i) {
    target[static_cast<uint8_t>(order[i])] = static_cast<uint8_t>(order[(i + 1) % order.size()]);
  }
  return target;
}

// Embeddings that are exactly orthogonal where the width allows: token t gets row t mod n of the
// n x n Sylvester-Hadamard matrix (n the largest power of two <= hidden), with seeded sign flips
// per column so the rows look random; wider models fill the other columns with noise. Entries are
// +-1, so every row has RMS 1. Orthogonality is what keeps one LM head row from leaking into
// another.
std::vector<float> Embeddings(SplitMix64& rng, int64_t vocab, int64_t hidden) {
  int64_t n = 1;
  while (n * 2 <= hidden) n *= 2;
  std::vector<float> signs(static_cast<size_t>(n));
  for (float& s : signs) s = (rng.Next() & 1) ? 1.0f : -1.0f;
  std::vector<float> embed = RandomValues(rng, vocab * hidden, 1.0f);
  for (int64_t t = 0; t < vocab; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      // Sylvester: H[r][j] = (-1)^popcount(r & j).
      float h = (__builtin_popcountll(static_cast<uint64_t>((t % n) & j)) & 1) ? -1.0f : 1.0f;
      embed[static_cast<size_t>(t * hidden + j)] = h * signs[static_cast<size_t>(j)];
    }
  }
  return embed;
}

// LM head rows: row c = scale / hidden * (sum of embeddings of tokens predicting c) plus noise,
// so h = rmsnorm(embedding of t) scores its predicted byte at about kLmHeadScale.
std::vector<float> LmHead(SplitMix64& rng, const std::vector<float>& embed, int64_t vocab,
                          int64_t hidden) {
  std::vector<float> head = RandomValues(rng, vocab * hidden, 0.02f / std::sqrt(float(hidden)));
  const float scale = kLmHeadScale / static_cast<float>(hidden);
  std::vector<int64_t> target = PredictedBytes(rng, vocab);
  for (int64_t t = 0; t < vocab; ++t) {
    float* row = head.data() + target[static_cast<size_t>(t)] * hidden;
    const float* e = embed.data() + t * hidden;
    for (int64_t j = 0; j < hidden; ++j) row[j] += scale * e[j];
  }
  return head;
}

}  // namespace

LlamaConfig TinyModelConfig(const TinyModelOptions& o) {
  LlamaConfig c;
  c.vocab_size = kTinyVocabSize;
  c.hidden_size = o.hidden_size;
  c.intermediate_size = o.intermediate_size;
  c.num_layers = o.num_layers;
  c.num_heads = o.num_heads;
  c.num_kv_heads = o.num_kv_heads;
  c.head_dim = o.num_heads > 0 ? o.hidden_size / o.num_heads : 0;
  c.max_positions = o.max_positions;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.rope_scaling = o.rope_scaling;
  if (o.rope_scaling == RopeScaling::kLlama3) {
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_positions = 256;
  }
  c.tie_word_embeddings = o.tie_word_embeddings;
  c.bos_token_ids = {kTinyBosId};
  c.eos_token_ids = {kTinyEosId};
  c.dtype = o.dtype;
  return c;
}

Status WriteTinyModel(const std::string& dir, const TinyModelOptions& o) {
  LlamaConfig c = TinyModelConfig(o);
  std::string config_text = SerializeLlamaConfig(c);
  // Round-trip through the parser: the same validation every loaded model gets.
  FP_RETURN_IF_ERROR(ParseLlamaConfig(config_text, "tiny model config").status());
  SplitMix64 rng(o.seed);
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::map<std::string, Tensor> tensors;
  std::vector<float> embed = Embeddings(rng, c.vocab_size, h);
  // Tied: the embedding is the LM head, so each token scores itself highest (also peaked).
  if (!o.tie_word_embeddings) {
    tensors["lm_head.weight"] =
        ToTensor(LmHead(rng, embed, c.vocab_size, h), {c.vocab_size, h}, c.dtype);
  }
  tensors["model.embed_tokens.weight"] = ToTensor(embed, {c.vocab_size, h}, c.dtype);
  tensors["model.norm.weight"] = ToTensor(std::vector<float>(size_t(h), 1.0f), {h}, c.dtype);
  auto linear = [&](int64_t out, int64_t in, float gain) {
    return ToTensor(RandomValues(rng, out * in, gain / std::sqrt(float(in))), {out, in}, c.dtype);
  };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    tensors[p + "input_layernorm.weight"] =
        ToTensor(std::vector<float>(size_t(h), 1.0f), {h}, c.dtype);
    tensors[p + "post_attention_layernorm.weight"] =
        ToTensor(std::vector<float>(size_t(h), 1.0f), {h}, c.dtype);
    tensors[p + "self_attn.q_proj.weight"] = linear(q, h, 1.0f);
    tensors[p + "self_attn.k_proj.weight"] = linear(kv, h, 1.0f);
    tensors[p + "self_attn.v_proj.weight"] = linear(kv, h, 1.0f);
    tensors[p + "self_attn.o_proj.weight"] = linear(h, q, kBlockOutputScale);
    tensors[p + "mlp.gate_proj.weight"] = linear(inter, h, 1.0f);
    tensors[p + "mlp.up_proj.weight"] = linear(inter, h, 1.0f);
    tensors[p + "mlp.down_proj.weight"] = linear(h, inter, kBlockOutputScale);
  }
  std::vector<NamedTensor> named;
  for (const auto& [name, t] : tensors) named.push_back({name, &t});
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return InternalError("cannot create " + dir + ": " + ec.message());
  FP_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", named, {{"format", "pt"}}));
  FP_RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.json", AsBytes(config_text)));
  tokenizer::ByteTokenizer byte_tokenizer(kTinyVocabSize, kTinyBosId, kTinyEosId);
  std::string tokenizer_text = byte_tokenizer.ToJson();
  return WriteFileAtomically(dir + "/" + tokenizer::kByteTokenizerFile, AsBytes(tokenizer_text));
}

}  // namespace fp::node
