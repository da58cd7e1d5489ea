// Tests for the CPU backend: logits against a naive double-precision LLaMA written here from
// the Hugging Face definitions, bitwise invariance to batch, chunking, block placement and
// thread count, the anchor mix's g = 0 identity, the digest's coverage, the tiny model's logit
// margins, and the error paths.
#include "node/backend/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/leaf/state_digest.h"
#include "kernels/base/half.h"
#include "node/model/tiny_model.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;

// --- A naive LLaMA forward in double, independent of the kernels. ---

std::vector<double> Row(const Tensor& w, int64_t r) {
  std::vector<double> out(static_cast<size_t>(w.dim(w.rank() - 1)));
  for (size_t j = 0; j < out.size(); ++j) {
    out[j] = kernels::LoadAsF32(w.data(), w.dtype(), static_cast<size_t>(r) * out.size() + j);
  }
  return out;
}

std::vector<double> MatVec(const Tensor& w, const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(w.dim(0)));
  for (int64_t i = 0; i < w.dim(0); ++i) {
    std::vector<double> r = Row(w, i);
    y[static_cast<size_t>(i)] = std::inner_product(r.begin(), r.end(), x.begin(), 0.0);
  }
  return y;
}

std::vector<double> RmsNormNaive(const std::vector<double>& x, const Tensor& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  std::vector<double> g = Row(w, 0);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = g[i] * x[i] * inv;
  return out;
}

// HF's _compute_default_rope_parameters / _compute_llama3_parameters.
std::vector<double> InvFreq(const LlamaConfig& c) {
  std::vector<double> inv(static_cast<size_t>(c.head_dim / 2));
  for (size_t i = 0; i < inv.size(); ++i) {
    inv[i] = 1.0 / std::pow(c.rope_theta, 2.0 * static_cast<double>(i) / double(c.head_dim));
    if (c.rope_scaling != RopeScaling::kLlama3) continue;
    double old = static_cast<double>(c.rope_original_max_positions);
    double wavelen = 2 * M_PI / inv[i];
    if (wavelen > old / c.rope_low_freq_factor) {
      inv[i] /= c.rope_factor;
    } else if (wavelen >= old / c.rope_high_freq_factor) {
      double smooth = (old / wavelen - c.rope_low_freq_factor) /
                      (c.rope_high_freq_factor - c.rope_low_freq_factor);
      inv[i] = (1 - smooth) * inv[i] / c.rope_factor + smooth * inv[i];
    }
  }
  return inv;
}

void RotateNaive(double* x, int64_t d, int64_t pos, const std::vector<double>& inv) {
  for (int64_t i = 0; i < d / 2; ++i) {
    double a = static_cast<double>(pos) * inv[static_cast<size_t>(i)];
    double x0 = x[i], x1 = x[i + d / 2];
    x[i] = x0 * std::cos(a) - x1 * std::sin(a);
    x[i + d / 2] = x1 * std::cos(a) + x0 * std::sin(a);
  }
}

// Logits at every position of `tokens`.
std::vector<std::vector<double>> NaiveLogits(const Model& m, const std::vector<int32_t>& tokens) {
  const LlamaConfig& c = m.config();
  const int64_t d = c.head_dim, group = c.num_heads / c.num_kv_heads;
  std::vector<double> inv = InvFreq(c);
  std::vector<std::vector<double>> x;
  for (int32_t t : tokens) x.push_back(Row(m.embed_tokens(), t));
  for (const LayerWeights& w : m.layers()) {
    std::vector<std::vector<double>> q, k, v;
    for (size_t p = 0; p < x.size(); ++p) {
      std::vector<double> h = RmsNormNaive(x[p], w.input_norm, c.rms_norm_eps);
      q.push_back(MatVec(w.q_proj, h));
      k.push_back(MatVec(w.k_proj, h));
      v.push_back(MatVec(w.v_proj, h));
      for (int64_t hd = 0; hd < c.num_heads; ++hd) RotateNaive(&q[p][hd * d], d, p, inv);
      for (int64_t hd = 0; hd < c.num_kv_heads; ++hd) RotateNaive(&k[p][hd * d], d, p, inv);
    }
    for (size_t p = 0; p < x.size(); ++p) {
      std::vector<double> attn(static_cast<size_t>(c.num_heads * d), 0.0);
      for (int64_t hd = 0; hd < c.num_heads; ++hd) {
        int64_t kvh = hd / group;
        std::vector<double> s(p + 1);
        for (size_t j = 0; j <= p; ++j) {
          s[j] = std::inner_product(&q[p][hd * d], &q[p][hd * d] + d, &k[j][kvh * d], 0.0) /
                 std::sqrt(double(d));
        }
        double mx = *std::max_element(s.begin(), s.end()), sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (size_t j = 0; j <= p; ++j) {
          for (int64_t i = 0; i < d; ++i) attn[hd * d + i] += s[j] / sum * v[j][kvh * d + i];
        }
      }
      std::vector<double> o = MatVec(w.o_proj, attn);
      for (size_t i = 0; i < o.size(); ++i) x[p][i] += o[i];
      std::vector<double> h = RmsNormNaive(x[p], w.post_norm, c.rms_norm_eps);
      std::vector<double> g = MatVec(w.gate_proj, h), u = MatVec(w.up_proj, h);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      std::vector<double> down = MatVec(w.down_proj, g);
      for (size_t i = 0; i < down.size(); ++i) x[p][i] += down[i];
    }
  }
  std::vector<std::vector<double>> logits;
  for (auto& row : x)
    logits.push_back(MatVec(m.lm_head(), RmsNormNaive(row, m.final_norm(), c.rms_norm_eps)));
  return logits;
}

// --- Fixture ---

class CpuBackendTest : public ::testing::Test {
 protected:
  static constexpr int32_t kBlocks = 64;

  static TinyModelOptions Small(DType dtype) {
    TinyModelOptions o;
    o.hidden_size = 64;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.intermediate_size = 96;
    o.max_positions = 512;
    o.dtype = dtype;
    return o;
  }

  std::unique_ptr<Model> MakeModel(const TinyModelOptions& o) {
    dirs_.push_back(std::make_unique<testing::TempDir>());
    EXPECT_OK(WriteTinyModel(dirs_.back()->path().string(), o));
    return std::move(Model::Load(dirs_.back()->path().string()).value());
  }

  static std::unique_ptr<CpuBackend> MakeBackend(const Model& model, int threads,
                                                 const AnchorSet* anchors = nullptr) {
    auto backend = std::move(CpuBackend::Create({threads}).value());
    EXPECT_OK(backend->LoadModel(model, {model.config().dtype, -1}));
    EXPECT_OK(backend->LoadAnchors(anchors, AnchorMode::kMix));
    EXPECT_OK(backend->AllocateKvCache(kBlocks, 16));
    return backend;
  }

  // Blocks [first, first + count), deliberately not in order, so placement is exercised.
  static std::vector<int32_t> Blocks(int32_t first, int32_t count) {
    std::vector<int32_t> t(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i) t[static_cast<size_t>(i)] = first + count - 1 - i;
    return t;
  }

  // Prefills `tokens` in chunks of `chunk` and returns the last token's result.
  static ForwardResult Prefill(Backend& backend, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& table, size_t chunk) {
    ForwardResult result;
    for (size_t start = 0; start < tokens.size(); start += chunk) {
      ForwardSequence s;
      s.tokens =
          std::span<const int32_t>(tokens).subspan(start, std::min(chunk, tokens.size() - start));
      s.start_row = static_cast<int32_t>(start);
      s.block_table = table;
      s.emit = start + chunk >= tokens.size();
      EXPECT_OK(backend.Forward({&s, 1}, {true, true}, &result));
    }
    return result;
  }

  static std::vector<int32_t> Prompt(int seed, int length) {
    std::vector<int32_t> p;
    for (int i = 0; i < length; ++i) p.push_back((seed * 37 + i * 11 + 5) % kTinyVocabSize);
    return p;
  }

  static bool SameBytes(const Tensor& a, const Tensor& b) {
    return a.bytes_size() == b.bytes_size() && std::memcmp(a.data(), b.data(), a.bytes_size()) == 0;
  }

  std::vector<std::unique_ptr<testing::TempDir>> dirs_;
};

TEST_F(CpuBackendTest, LogitsMatchNaiveReferenceAtEveryPosition) {
  for (RopeScaling scaling : {RopeScaling::kNone, RopeScaling::kLlama3}) {
    TinyModelOptions o = Small(DType::kF32);
    o.rope_scaling = scaling;
    auto model = MakeModel(o);
    auto backend = MakeBackend(*model, 1);
    std::vector<int32_t> tokens = Prompt(3, 40);
    std::vector<std::vector<double>> expected = NaiveLogits(*model, tokens);
    std::vector<int32_t> table = Blocks(0, 3);
    double worst = 0;
    for (size_t p = 0; p < tokens.size(); ++p) {  // teacher-forced decode, one token at a time
      ForwardSequence s{std::span<const int32_t>(tokens).subspan(p, 1),
                        static_cast<int32_t>(p),
                        table,
                        true,
                        {0, 0, 1, 0},
                        p};
      ForwardResult r;
      ASSERT_OK(backend->Forward({&s, 1}, {false, true}, &r));
      for (int64_t v = 0; v < model->config().vocab_size; ++v) {
        worst = std::max(worst, std::abs(r.logits.data_as<float>()[v] - expected[p][size_t(v)]));
      }
    }
    EXPECT_LT(worst, 2e-3) << "rope scaling " << static_cast<int>(scaling);
  }
}

TEST_F(CpuBackendTest, SequenceResultIsIndependentOfItsBatch) {
  auto model = MakeModel(Small(DType::kBf16));
  auto backend = MakeBackend(*model, 2);
  std::vector<int32_t> a = Prompt(1, 21), b = Prompt(2, 5), c = Prompt(3, 40);
  ForwardResult alone = Prefill(*backend, a, Blocks(0, 2), 64);
  // a again, now in the middle of a batch with another prefill and a chunk of a third sequence,
  // in other blocks.
  std::vector<int32_t> table_b = Blocks(10, 1), table_a = Blocks(20, 2), table_c = Blocks(30, 3);
  std::vector<ForwardSequence> batch(3);
  batch[0] = {b, 0, table_b, true, {0.8f, 5, 0.9f, 7}, 0};
  batch[1] = {a, 0, table_a, true, {0, 0, 1, 0}, 0};
  batch[2] = {std::span<const int32_t>(c).first(17), 0, table_c, false, {0, 0, 1, 0}, 0};
  ForwardResult together;
  ASSERT_OK(backend->Forward(batch, {true, true}, &together));
  ASSERT_EQ(together.tokens.size(), 2u);
  EXPECT_EQ(together.tokens[1], alone.tokens[0]);
  EXPECT_EQ(together.state_digests[1], alone.state_digests[0]);
  const size_t hidden = static_cast<size_t>(model->config().hidden_size) * 2;  // bf16 bytes
  EXPECT_EQ(
      std::memcmp(together.hidden.bytes().data() + hidden, alone.hidden.bytes().data(), hidden), 0);
}

TEST_F(CpuBackendTest, ChunkingAndThreadsDoNotChangeBits) {
  auto model = MakeModel(Small(DType::kBf16));
  std::vector<int32_t> tokens = Prompt(5, 50);
  auto one = MakeBackend(*model, 1);
  ForwardResult reference = Prefill(*one, tokens, Blocks(0, 4), 64);
  for (size_t chunk : {1, 3, 7, 16, 49}) {
    for (int threads : {1, 3}) {
      auto backend = MakeBackend(*model, threads);
      ForwardResult r = Prefill(*backend, tokens, Blocks(8, 4), chunk);
      EXPECT_TRUE(SameBytes(r.hidden, reference.hidden)) << chunk << " " << threads;
      EXPECT_TRUE(SameBytes(r.logits, reference.logits)) << chunk << " " << threads;
      EXPECT_EQ(r.state_digests, reference.state_digests);
    }
  }
}

TEST_F(CpuBackendTest, DigestCoversTheCanonicalHiddenState) {
  for (DType dtype : {DType::kBf16, DType::kF16, DType::kF32}) {
    auto model = MakeModel(Small(dtype));
    auto backend = MakeBackend(*model, 1);
    ForwardResult r = Prefill(*backend, Prompt(9, 12), Blocks(0, 1), 64);
    EXPECT_EQ(r.hidden.dtype(), dtype);
    EXPECT_EQ(r.hidden.shape(), Shape({1, 64}));
    ASSERT_OK_AND_ASSIGN(
        Hash expected, leaf::TensorStateDigest(dtype, DTypeMantissaBits(dtype), r.hidden.bytes()));
    EXPECT_EQ(r.state_digests[0], expected);
  }
}

TEST_F(CpuBackendTest, GammaZeroEqualsNoAnchorsAndGammaOneDiffers) {
  auto model = MakeModel(Small(DType::kBf16));
  const LlamaConfig& c = model->config();
  std::vector<AnchorLayer> layers;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    AnchorLayer layer{Tensor::Zeros(DType::kF32, {4, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {4, c.num_kv_heads, c.head_dim}),
                      Tensor::Zeros(DType::kF32, {c.num_heads})};
    for (int64_t i = 0; i < layer.key.elements(); ++i) {
      layer.key.mutable_data_as<float>()[i] = std::sin(float(i));
      layer.value.mutable_data_as<float>()[i] = std::cos(float(i));
    }
    layers.push_back(std::move(layer));
  }
  ASSERT_OK_AND_ASSIGN(auto zero, AnchorSet::Create(std::move(layers)));
  ASSERT_OK_AND_ASSIGN(auto one, zero->WithGamma(1.0f));
  std::vector<int32_t> tokens = Prompt(4, 30);
  ForwardResult plain = Prefill(*MakeBackend(*model, 1), tokens, Blocks(0, 2), 64);
  ForwardResult mixed0 = Prefill(*MakeBackend(*model, 1, zero.get()), tokens, Blocks(0, 2), 64);
  ForwardResult mixed1 = Prefill(*MakeBackend(*model, 1, one.get()), tokens, Blocks(0, 2), 64);
  EXPECT_TRUE(SameBytes(plain.hidden, mixed0.hidden));
  EXPECT_FALSE(SameBytes(plain.hidden, mixed1.hidden));
}

TEST_F(CpuBackendTest, TinyModelGreedyMarginsAreWide) {
  auto model = MakeModel(TinyModelOptions{});  // the default mk-tiny model
  auto backend = MakeBackend(*model, 2);
  double smallest = 1e9;
  for (int prompt = 0; prompt < 4; ++prompt) {
    std::vector<int32_t> tokens = Prompt(prompt, 8);
    std::vector<int32_t> table = Blocks(prompt * 4, 4);
    ForwardResult r = Prefill(*backend, tokens, table, 64);
    for (int step = 0; step < 40; ++step) {
      std::vector<float> row(r.logits.data_as<float>(),
                             r.logits.data_as<float>() + r.logits.dim(1));
      std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
      smallest = std::min<double>(smallest, row[0] - row[1]);
      tokens.push_back(r.tokens[0]);
      ForwardSequence s{std::span<const int32_t>(tokens).last(1),
                        static_cast<int32_t>(tokens.size() - 1),
                        table,
                        true,
                        {0, 0, 1, 0},
                        static_cast<uint64_t>(step + 1)};
      ASSERT_OK(backend->Forward({&s, 1}, {false, true}, &r));
    }
  }
  // The top logit is about 8; rounding the state to bf16 moves logits by a few hundredths. The
  // margin must dwarf that so greedy decoding does not hinge on rounding (measured: ~3.7).
  EXPECT_GT(smallest, 1.0);
}

// --- Test hooks: the activation tap, K/V bit flips, skipped digests ---

TEST_F(CpuBackendTest, ObservingTapSeesEveryLayerAndTheDigestedBytes) {
  auto model = MakeModel(Small(DType::kBf16));
  std::vector<int32_t> a = Prompt(1, 21), b = Prompt(2, 5);
  std::vector<int32_t> table_a = Blocks(0, 2), table_b = Blocks(4, 1);
  std::vector<ForwardSequence> batch(2);
  batch[0] = {a, 0, table_a, false, {0, 0, 1, 0}, 0};
  batch[1] = {b, 0, table_b, true, {0, 0, 1, 0}, 0};
  ForwardResult plain;
  ASSERT_OK(MakeBackend(*model, 1)->Forward(batch, {true, true}, &plain));
  auto backend = MakeBackend(*model, 1);
  std::vector<int32_t> layers;
  Bytes canonical;
  int final_calls = 0;
  backend->TEST_SetActivationTap([&](const TapEvent& e) {
    if (e.site == TapSite::kLayerOutput) {
      layers.push_back(e.layer);
      ASSERT_EQ(e.sequences.size(), a.size() + b.size());
      EXPECT_EQ(e.values.size(), e.sequences.size() * 64);
      // Rows run sequence by sequence, each at its own cache rows.
      EXPECT_EQ(e.sequences[21], 1);
      EXPECT_EQ(e.positions[20], 20);
      EXPECT_EQ(e.positions[21], 0);
    } else if (e.site == TapSite::kFinalHidden) {
      ++final_calls;
      ASSERT_EQ(e.sequences.size(), 1u);  // only the emitting sequence
      EXPECT_EQ(e.sequences[0], 1);
      EXPECT_EQ(e.positions[0], 4);
    } else {
      canonical.assign(e.canonical.begin(), e.canonical.end());
    }
  });
  ForwardResult observed;
  ASSERT_OK(backend->Forward(batch, {true, true}, &observed));
  EXPECT_EQ(layers, std::vector<int32_t>({0, 1}));
  EXPECT_EQ(final_calls, 1);
  EXPECT_TRUE(SameBytes(observed.hidden, plain.hidden));
  EXPECT_EQ(observed.state_digests, plain.state_digests);
  ASSERT_EQ(canonical.size(), plain.hidden.bytes_size());
  EXPECT_EQ(std::memcmp(canonical.data(), plain.hidden.data(), canonical.size()), 0);
}

TEST_F(CpuBackendTest, ResidualFlipChangesOnlyItsOwnSequence) {
  auto model = MakeModel(Small(DType::kBf16));
  std::vector<int32_t> a = Prompt(1, 9), b = Prompt(2, 7);
  std::vector<int32_t> table_a = Blocks(0, 1), table_b = Blocks(4, 1);
  std::vector<ForwardSequence> batch(2);
  batch[0] = {a, 0, table_a, true, {0, 0, 1, 0}, 0};
  batch[1] = {b, 0, table_b, true, {0, 0, 1, 0}, 0};
  ForwardResult clean;
  ASSERT_OK(MakeBackend(*model, 1)->Forward(batch, {true, true}, &clean));
  auto backend = MakeBackend(*model, 1);
  backend->TEST_SetActivationTap([](const TapEvent& e) {
    if (e.site != TapSite::kLayerOutput || e.layer != 0) return;
    // Row 3 of sequence 0 (a prompt row, which the last row attends to); bit 31 is the sign
    // (an exponent flip could make the value infinite, which the sampler refuses).
    uint32_t bits = 0;
    std::memcpy(&bits, &e.values[3 * 64 + 5], 4);
    bits ^= 1u << 31;
    std::memcpy(&e.values[3 * 64 + 5], &bits, 4);
  });
  ForwardResult faulty;
  ASSERT_OK(backend->Forward(batch, {true, true}, &faulty));
  const size_t row = 64 * 2;  // bf16 bytes of one hidden row
  EXPECT_NE(std::memcmp(faulty.hidden.bytes().data(), clean.hidden.bytes().data(), row), 0);
  EXPECT_NE(faulty.state_digests[0], clean.state_digests[0]);
  EXPECT_EQ(std::memcmp(faulty.hidden.bytes().data() + row, clean.hidden.bytes().data() + row, row),
            0);
  EXPECT_EQ(faulty.state_digests[1], clean.state_digests[1]);
}

TEST_F(CpuBackendTest, KvFlipIsReadByLaterStepsAndFlippingBackRestoresIt) {
  auto model = MakeModel(Small(DType::kBf16));
  std::vector<int32_t> tokens = Prompt(6, 12);
  std::vector<int32_t> table = Blocks(0, 1);
  auto backend = MakeBackend(*model, 1);
  Prefill(*backend, std::vector<int32_t>(tokens.begin(), tokens.end() - 1), table, 64);
  ForwardSequence next{std::span<const int32_t>(tokens).last(1), 11, table, true, {0, 0, 1, 0}, 1};
  ForwardResult clean, faulty, restored;
  ASSERT_OK(backend->Forward({&next, 1}, {true, false}, &clean));
  ASSERT_OK(backend->TEST_FlipKvBit(table, 1, 4, KvPart::kValue, 17, 30));
  ASSERT_OK(backend->Forward({&next, 1}, {true, false}, &faulty));
  EXPECT_FALSE(SameBytes(faulty.hidden, clean.hidden));
  ASSERT_OK(backend->TEST_FlipKvBit(table, 1, 4, KvPart::kValue, 17, 30));
  ASSERT_OK(backend->Forward({&next, 1}, {true, false}, &restored));
  EXPECT_TRUE(SameBytes(restored.hidden, clean.hidden));
  // The flipped element is exactly where ReadKvRows says row 4's value element 17 is.
  Tensor key, value_before, value_after;
  ASSERT_OK(backend->ReadKvRows(table, 1, 4, 5, &key, &value_before));
  ASSERT_OK(backend->TEST_FlipKvBit(table, 1, 4, KvPart::kValue, 17, 0));
  ASSERT_OK(backend->ReadKvRows(table, 1, 4, 5, &key, &value_after));
  uint32_t before = 0, after = 0;
  std::memcpy(&before, value_before.data_as<float>() + 17, 4);
  std::memcpy(&after, value_after.data_as<float>() + 17, 4);
  EXPECT_EQ(before ^ after, 1u);
}

TEST_F(CpuBackendTest, SkippedDigestsLeaveTokensAndHiddenUnchanged) {
  auto model = MakeModel(Small(DType::kBf16));
  std::vector<int32_t> tokens = Prompt(8, 30);
  ForwardResult with = Prefill(*MakeBackend(*model, 1), tokens, Blocks(0, 2), 64);
  auto backend = MakeBackend(*model, 1);
  backend->TEST_SkipStateDigests(true);
  ForwardResult without = Prefill(*backend, tokens, Blocks(0, 2), 64);
  EXPECT_EQ(without.tokens, with.tokens);
  EXPECT_TRUE(SameBytes(without.hidden, with.hidden));
  EXPECT_EQ(without.state_digests, std::vector<Hash>(1, Hash{}));
  EXPECT_NE(with.state_digests[0], Hash{});
}

// Error paths.

TEST_F(CpuBackendTest, KvFlipOutsideTheCacheIsRejected) {
  auto model = MakeModel(Small(DType::kBf16));
  auto backend = MakeBackend(*model, 1);
  std::vector<int32_t> table = Blocks(0, 1);
  EXPECT_THAT(backend->TEST_FlipKvBit(table, 2, 0, KvPart::kKey, 0, 0),
              StatusIs(StatusCode::kInvalidArgument));  // layer
  EXPECT_THAT(backend->TEST_FlipKvBit(table, 0, 16, KvPart::kKey, 0, 0),
              StatusIs(StatusCode::kInvalidArgument));  // row past the table
  EXPECT_THAT(backend->TEST_FlipKvBit(table, 0, 0, KvPart::kKey, 32, 0),
              StatusIs(StatusCode::kInvalidArgument));  // element (2 heads x 16)
  EXPECT_THAT(backend->TEST_FlipKvBit(table, 0, 0, KvPart::kKey, 0, 32),
              StatusIs(StatusCode::kInvalidArgument));  // bit
  std::vector<int32_t> bad_block = {kBlocks};
  EXPECT_THAT(backend->TEST_FlipKvBit(bad_block, 0, 0, KvPart::kKey, 0, 0),
              StatusIs(StatusCode::kInvalidArgument));
}

// Error paths.

TEST_F(CpuBackendTest, MalformedBatchesAreRejected) {
  auto model = MakeModel(Small(DType::kBf16));
  auto backend = MakeBackend(*model, 1);
  std::vector<int32_t> tokens = Prompt(1, 20);
  std::vector<int32_t> table = Blocks(0, 1);
  ForwardResult r;
  ForwardSequence empty{std::span<const int32_t>(), 0, table, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&empty, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  ForwardSequence past_table{tokens, 0, table, true, {0, 0, 1, 0}, 0};  // 20 rows, 16 in table
  EXPECT_THAT(backend->Forward({&past_table, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  std::vector<int32_t> big_table = Blocks(0, 40);
  ForwardSequence past_positions{
      std::span<const int32_t>(tokens).first(1), 512, big_table, true, {0, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&past_positions, 1}, {}, &r),
              StatusIs(StatusCode::kInvalidArgument));
  ForwardSequence bad_token{
      std::span<const int32_t>(tokens).first(1), 0, table, true, {-1.0f, 0, 1, 0}, 0};
  EXPECT_THAT(backend->Forward({&bad_token, 1}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(backend->Forward({}, {}, &r), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CpuBackendTest, ForwardNeedsACache) {
  auto model = MakeModel(Small(DType::kBf16));
  auto backend = std::move(CpuBackend::Create({1}).value());
  ASSERT_OK(backend->LoadModel(*model, {DType::kBf16, -1}));
  ASSERT_OK(backend->LoadAnchors(nullptr, AnchorMode::kMix));
  std::vector<int32_t> tokens = {1};
  std::vector<int32_t> table = {0};
  ForwardSequence s{tokens, 0, table, true, {0, 0, 1, 0}, 0};
  ForwardResult r;
  EXPECT_THAT(backend->Forward({&s, 1}, {}, &r), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(backend->WriteAnchorPrefix(table), StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(CpuBackendTest, BadOptionsAreRejected) {
  EXPECT_THAT(CpuBackend::Create({0}), StatusIs(StatusCode::kInvalidArgument));
  auto model = MakeModel(Small(DType::kBf16));
  auto backend = std::move(CpuBackend::Create({1}).value());
  EXPECT_THAT(backend->LoadModel(*model, {DType::kBf16, 8}),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node
