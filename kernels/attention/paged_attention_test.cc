// Tests for PagedFieldprintAttention and WritePagedKv.
//
// Accuracy is checked against a dense attention written here in double precision (different
// code: no paging, no online softmax, no tiles). Determinism is checked bitwise: gamma = 0 against
// plain attention, gamma = 1 against anchors-only attention, decode against prefill in any
// chunking, a sequence alone against the same sequence inside a batch, block sizes, thread counts
// and repeated runs. Cache slots that no query may read hold NaN, so a stray read shows up.
#include "kernels/attention/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/base/internal/cpu_dispatch.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::StatusIs;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Keys and values of the sequences and the anchors, dense: [len, kv_heads, head_dim].
struct Inputs {
  int32_t q_heads;
  int32_t kv_heads;
  int32_t head_dim;
  std::vector<std::vector<float>> keys;    // per sequence
  std::vector<std::vector<float>> values;  // per sequence
  std::vector<float> anchor_keys;          // [num_anchors, kv_heads, head_dim]
  std::vector<float> anchor_values;
  std::vector<float> gamma;  // [q_heads]
  int32_t num_anchors;

  int64_t row() const { return int64_t{kv_heads} * head_dim; }
  int32_t length(size_t s) const { return static_cast<int32_t>(keys[s].size() / row()); }
};

// A paged cache holding the sequences of Inputs at shuffled blocks; free slots hold NaN.
struct Paged {
  std::vector<float> key;
  std::vector<float> value;
  std::vector<int32_t> table;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t max_blocks = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t num_seqs = 0;

  PagedKvCache View() {
    return {key.data(), value.data(), num_blocks, block_size, kv_heads, head_dim};
  }
  BlockTables Tables() const { return {table.data(), num_seqs, max_blocks}; }
  // Element offset of (sequence, position) in key/value, by the documented layout.
  int64_t Offset(int32_t seq, int32_t position) const {
    const int32_t block = table[static_cast<size_t>(seq * max_blocks + position / block_size)];
    return (int64_t{block} * block_size + position % block_size) * kv_heads * head_dim;
  }
};

// Allocates blocks for `capacities` tokens per sequence in a shuffled order (plus spare blocks),
// unused table entries -1, every slot NaN.
Paged AllocatePaged(const std::vector<int32_t>& capacities, int32_t block_size, int32_t kv_heads,
                    int32_t head_dim, std::mt19937& rng) {
  Paged paged;
  paged.block_size = block_size;
  paged.kv_heads = kv_heads;
  paged.head_dim = head_dim;
  paged.num_seqs = static_cast<int32_t>(capacities.size());
  int32_t needed = 0;
  for (int32_t capacity : capacities) {
    paged.max_blocks = std::max(paged.max_blocks, (capacity + block_size - 1) / block_size);
    needed += (capacity + block_size - 1) / block_size;
  }
  paged.max_blocks = std::max(paged.max_blocks, 1) + 1;
  paged.num_blocks = needed + 3;
  std::vector<int32_t> ids(static_cast<size_t>(paged.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  paged.table.assign(static_cast<size_t>(paged.num_seqs * paged.max_blocks), -1);
  size_t next = 0;
  for (int32_t s = 0; s < paged.num_seqs; ++s) {
    const int32_t blocks = (capacities[static_cast<size_t>(s)] + block_size - 1) / block_size;
    for (int32_t b = 0; b < blocks; ++b) {
      paged.table[static_cast<size_t>(s * paged.max_blocks + b)] = ids[next++];
    }
  }
  const size_t elements = static_cast<size_t>(paged.num_blocks) * block_size * kv_heads * head_dim;
  paged.key.assign(elements, kNaN);
  paged.value.assign(elements, kNaN);
  return paged;
}

// Copies positions [begin, end) of sequence s into the cache with plain indexing.
void Fill(const Inputs& in, size_t s, int32_t begin, int32_t end, Paged& paged) {
  const int64_t row = in.row();
  for (int32_t p = begin; p < end; ++p) {
    const int64_t offset = paged.Offset(static_cast<int32_t>(s), p);
    std::copy_n(in.keys[s].begin() + p * row, row, paged.key.begin() + offset);
    std::copy_n(in.values[s].begin() + p * row, row, paged.value.begin() + offset);
  }
}

// Dense double-precision attention of one query row over rows [0, count) of keys/values
// ([count, kv_heads, head_dim]) for kv head `kv`.
std::vector<double> DenseAttention(const float* q, const float* keys, const float* values,
                                   int32_t count, int32_t kv, const Inputs& in, double scale) {
  std::vector<double> scores(static_cast<size_t>(count));
  double max_score = -INFINITY;
  for (int32_t j = 0; j < count; ++j) {
    double dot = 0.0;
    const float* k = keys + (int64_t{j} * in.kv_heads + kv) * in.head_dim;
    for (int32_t c = 0; c < in.head_dim; ++c) dot += double{q[c]} * k[c];
    scores[static_cast<size_t>(j)] = dot * scale;
    max_score = std::max(max_score, scores[static_cast<size_t>(j)]);
  }
  double total = 0.0;
  for (double& score : scores) {
    score = std::exp(score - max_score);
    total += score;
  }
  std::vector<double> out(static_cast<size_t>(in.head_dim), 0.0);
  for (int32_t j = 0; j < count; ++j) {
    const float* v = values + (int64_t{j} * in.kv_heads + kv) * in.head_dim;
    for (int32_t c = 0; c < in.head_dim; ++c) {
      out[static_cast<size_t>(c)] += scores[static_cast<size_t>(j)] / total * v[c];
    }
  }
  return out;
}

class PagedAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int threads : {1, 2, 3, 7}) {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<ThreadPool> pool, ThreadPool::Create(threads));
      pools_.push_back(std::move(pool));
    }
  }

  ThreadPool& pool() { return *pools_[1]; }

  std::vector<float> Random(int64_t count, float scale) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) value = normal(rng_);
    return values;
  }

  // Random sequences of the given lengths and `anchors` anchors with mixed gammas
  // (0, 1 and values between, so every branch of the mix runs).
  Inputs MakeInputs(int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                    const std::vector<int32_t>& lengths, int32_t anchors) {
    Inputs in{q_heads, kv_heads, head_dim, {}, {}, {}, {}, {}, anchors};
    for (int32_t length : lengths) {
      in.keys.push_back(Random(int64_t{length} * in.row(), 1.0f));
      in.values.push_back(Random(int64_t{length} * in.row(), 1.0f));
    }
    in.anchor_keys = Random(int64_t{anchors} * in.row(), 1.0f);
    in.anchor_values = Random(int64_t{anchors} * in.row(), 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (int32_t h = 0; h < q_heads; ++h) {
      const int kind = h % 4;
      in.gamma.push_back(kind == 0 ? 0.0f : kind == 1 ? 1.0f : uniform(rng_));
    }
    return in;
  }

  static AnchorSet Anchors(const Inputs& in) {
    if (in.num_anchors == 0) return {nullptr, nullptr, nullptr, 0};
    return {in.anchor_keys.data(), in.anchor_values.data(), in.gamma.data(), in.num_anchors};
  }
  static AttentionOptions Options(const Inputs& in) {
    return {in.num_anchors == 0 ? AttentionMode::kPrefix : AttentionMode::kMix,
            DefaultSoftmaxScale(in.head_dim)};
  }

  // Runs one query token per (sequence, position) pair through PagedFieldprintAttention.
  std::vector<float> Attend(const Inputs& in, Paged& paged, const std::vector<float>& queries,
                            const std::vector<int32_t>& seq_ids,
                            const std::vector<int32_t>& positions, ThreadPool& pool) {
    std::vector<float> out(queries.size(), kNaN);
    EXPECT_OK(PagedFieldprintAttention(
        queries.data(), seq_ids.data(), positions.data(), static_cast<int32_t>(seq_ids.size()),
        in.q_heads, paged.Tables(), paged.View(), Anchors(in), Options(in), out.data(), pool));
    return out;
  }

  std::mt19937 rng_{1234};
  std::vector<std::unique_ptr<ThreadPool>> pools_;
};

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Checks out (queries at seq_ids/positions) against DenseAttention and the mix formula;
// returns the largest error in units of f32 epsilon times max |v|.
double CheckAgainstDense(const Inputs& in, const std::vector<float>& queries,
                         const std::vector<int32_t>& seq_ids, const std::vector<int32_t>& positions,
                         const std::vector<float>& out) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(in.head_dim));
  const double epsilon = std::numeric_limits<float>::epsilon();
  double worst = 0.0;
  const int32_t group = in.q_heads / in.kv_heads;
  for (size_t t = 0; t < seq_ids.size(); ++t) {
    const size_t s = static_cast<size_t>(seq_ids[t]);
    const int32_t count = positions[t] + 1;
    for (int32_t h = 0; h < in.q_heads; ++h) {
      const float* q = queries.data() + (t * in.q_heads + h) * in.head_dim;
      std::vector<double> expected =
          DenseAttention(q, in.keys[s].data(), in.values[s].data(), count, h / group, in, scale);
      double magnitude = 1.0;
      const double g = in.num_anchors == 0 ? 0.0 : in.gamma[static_cast<size_t>(h)];
      if (g > 0.0) {
        const std::vector<double> anchor =
            DenseAttention(q, in.anchor_keys.data(), in.anchor_values.data(), in.num_anchors,
                           h / group, in, scale);
        for (int32_t c = 0; c < in.head_dim; ++c) {
          expected[static_cast<size_t>(c)] =
              (1.0 - g) * expected[static_cast<size_t>(c)] + g * anchor[static_cast<size_t>(c)];
        }
      }
      for (float v : in.values[s]) magnitude = std::max(magnitude, double{std::fabs(v)});
      for (float v : in.anchor_values) magnitude = std::max(magnitude, double{std::fabs(v)});
      // Scores carry ~head_dim / 8 rounding steps, the sums ~count; both scale with epsilon.
      const double tolerance =
          epsilon * magnitude * (32.0 + in.head_dim / 4.0 + 4.0 * std::sqrt(count));
      for (int32_t c = 0; c < in.head_dim; ++c) {
        const float got = out[(t * in.q_heads + h) * in.head_dim + static_cast<size_t>(c)];
        EXPECT_TRUE(std::isfinite(got));
        const double error = std::fabs(got - expected[static_cast<size_t>(c)]);
        EXPECT_LE(error, tolerance) << "token " << t << " head " << h << " dim " << c;
        worst = std::max(worst, error / (epsilon * magnitude));
      }
    }
  }
  return worst;
}

TEST_F(PagedAttentionTest, MatchesDenseReferenceAcrossShapes) {
  const std::vector<std::pair<int32_t, int32_t>> heads = {{1, 1}, {3, 1}, {4, 2},  {6, 3},
                                                          {7, 7}, {8, 2}, {12, 4}, {16, 1}};
  const std::vector<int32_t> head_dims = {1, 3, 5, 64, 128};
  const std::vector<int32_t> block_sizes = {16, 5, 1, 32};
  const std::vector<int32_t> anchor_counts = {0, 1, 64};
  double worst = 0.0;
  int config = 0;
  for (const auto& [q_heads, kv_heads] : heads) {
    for (int32_t head_dim : head_dims) {
      ++config;
      const int32_t anchors = anchor_counts[static_cast<size_t>(config) % anchor_counts.size()];
      const int32_t block_size = block_sizes[static_cast<size_t>(config) % block_sizes.size()];
      const std::vector<int32_t> lengths = {1, 3, 7, 37, 733};
      const Inputs in = MakeInputs(q_heads, kv_heads, head_dim, lengths, anchors);
      Paged paged = AllocatePaged(lengths, block_size, kv_heads, head_dim, rng_);
      for (size_t s = 0; s < lengths.size(); ++s) Fill(in, s, 0, lengths[s], paged);
      // Decode of every sequence plus a few prefill positions of the longest.
      std::vector<int32_t> seq_ids = {0, 1, 2, 3, 4, 4, 4, 3};
      std::vector<int32_t> positions = {0, 2, 6, 36, 732, 0, 15, 16};
      const std::vector<float> queries =
          Random(static_cast<int64_t>(seq_ids.size()) * q_heads * head_dim, 1.0f);
      const std::vector<float> out = Attend(in, paged, queries, seq_ids, positions, pool());
      SCOPED_TRACE(::testing::Message()
                   << "q_heads " << q_heads << " kv_heads " << kv_heads << " head_dim " << head_dim
                   << " anchors " << anchors << " block_size " << block_size);
      worst = std::max(worst, CheckAgainstDense(in, queries, seq_ids, positions, out));
    }
  }
  RecordProperty("worst_error_epsilons", std::to_string(worst));
  std::printf("worst error: %.2f f32 epsilons x max|v|\n", worst);
}

TEST_F(PagedAttentionTest, LargeScoresStayFinite) {
  const std::vector<int32_t> lengths = {100};
  Inputs in = MakeInputs(2, 1, 16, lengths, 4);
  for (float& k : in.keys[0]) k *= 30.0f;
  for (float& k : in.anchor_keys) k *= 30.0f;
  Paged paged = AllocatePaged(lengths, 16, 1, 16, rng_);
  Fill(in, 0, 0, 100, paged);
  std::vector<float> queries = Random(2 * 16, 30.0f);
  const std::vector<float> out = Attend(in, paged, queries, {0}, {99}, pool());
  for (float value : out) EXPECT_TRUE(std::isfinite(value));
  CheckAgainstDense(in, queries, {0}, {99}, out);
}

TEST_F(PagedAttentionTest, GammaZeroIsPlainAttentionBitwise) {
  const std::vector<int32_t> lengths = {37, 200};
  Inputs in = MakeInputs(8, 2, 64, lengths, 64);
  Paged paged = AllocatePaged(lengths, 16, 2, 64, rng_);
  for (size_t s = 0; s < lengths.size(); ++s) Fill(in, s, 0, lengths[s], paged);
  const std::vector<float> queries = Random(3 * 8 * 64, 1.0f);
  const std::vector<int32_t> seq_ids = {0, 1, 1};
  const std::vector<int32_t> positions = {36, 199, 50};
  std::fill(in.gamma.begin(), in.gamma.end(), 0.0f);
  const std::vector<float> mixed = Attend(in, paged, queries, seq_ids, positions, pool());
  Inputs plain = in;
  plain.num_anchors = 0;
  const std::vector<float> reference = Attend(plain, paged, queries, seq_ids, positions, pool());
  EXPECT_TRUE(BitwiseEqual(mixed, reference));
}

// Why the kernel skips the anchor path at g == 0 instead of computing (1 - g) x + g y: the
// arithmetic is the identity for every finite y except when x is -0 (then -0 + 0 = +0).
TEST_F(PagedAttentionTest, ArithmeticMixAtGammaZeroIsNotAlwaysTheIdentity) {
  volatile float gamma = 0.0f;
  for (float x : {1.5f, -2.25f, 1e-40f, 3e38f}) {
    for (float y : {0.5f, -7.0f, 0.0f, -3e38f}) {
      const float mixed = (1.0f - gamma) * x + gamma * y;
      EXPECT_EQ(std::bit_cast<uint32_t>(mixed), std::bit_cast<uint32_t>(x));
    }
  }
  const float negative_zero = -0.0f;
  const float mixed = (1.0f - gamma) * negative_zero + gamma * 5.0f;
  EXPECT_NE(std::bit_cast<uint32_t>(mixed), std::bit_cast<uint32_t>(negative_zero));
}

// g == 1 must be anchors-only attention: the same as prefix-mode attention over a sequence whose
// cache holds exactly the anchors, queried at the last anchor's position.
TEST_F(PagedAttentionTest, GammaOneIsAnchorsOnlyBitwise) {
  for (int32_t anchors : {1, 17, 64}) {
    const std::vector<int32_t> lengths = {29};
    Inputs in = MakeInputs(6, 3, 64, lengths, anchors);
    std::fill(in.gamma.begin(), in.gamma.end(), 1.0f);
    Paged paged = AllocatePaged(lengths, 16, 3, 64, rng_);
    Fill(in, 0, 0, 29, paged);
    const std::vector<float> queries = Random(6 * 64, 1.0f);
    const std::vector<float> mixed = Attend(in, paged, queries, {0}, {28}, pool());

    Inputs anchor_sequence = in;
    anchor_sequence.keys = {in.anchor_keys};
    anchor_sequence.values = {in.anchor_values};
    anchor_sequence.num_anchors = 0;
    Paged anchor_paged = AllocatePaged({anchors}, 16, 3, 64, rng_);
    Fill(anchor_sequence, 0, 0, anchors, anchor_paged);
    const std::vector<float> reference =
        Attend(anchor_sequence, anchor_paged, queries, {0}, {anchors - 1}, pool());
    EXPECT_TRUE(BitwiseEqual(mixed, reference)) << anchors;
  }
}

// The same sequence computed by one prefill chunk, by chunks of several sizes and by decode
// steps (each run sees only the K/V written so far; later slots are NaN).
TEST_F(PagedAttentionTest, PrefillChunkingAndDecodeAreBitwiseIdentical) {
  const int32_t length = 70;
  const int32_t q_heads = 6;
  const int32_t kv_heads = 2;
  const int32_t head_dim = 40;
  const Inputs in = MakeInputs(q_heads, kv_heads, head_dim, {length}, 5);
  const std::vector<float> queries = Random(int64_t{length} * q_heads * head_dim, 1.0f);
  const int64_t stride = int64_t{q_heads} * head_dim;

  auto run = [&](int32_t chunk, int32_t block_size, ThreadPool& pool) {
    Paged paged = AllocatePaged({length}, block_size, kv_heads, head_dim, rng_);
    std::vector<float> out(queries.size(), kNaN);
    for (int32_t start = 0; start < length; start += chunk) {
      const int32_t count = std::min(chunk, length - start);
      std::vector<int32_t> seq_ids(static_cast<size_t>(count), 0);
      std::vector<int32_t> positions(static_cast<size_t>(count));
      std::iota(positions.begin(), positions.end(), start);
      EXPECT_OK(WritePagedKv(in.keys[0].data() + start * in.row(),
                             in.values[0].data() + start * in.row(), seq_ids.data(),
                             positions.data(), count, paged.Tables(), paged.View(), pool));
      if (chunk == 1) {
        const int32_t context = start + 1;
        EXPECT_OK(PagedFieldprintAttentionDecode(queries.data() + start * stride, &context, q_heads,
                                                 paged.Tables(), paged.View(), Anchors(in),
                                                 Options(in), out.data() + start * stride, pool));
      } else {
        EXPECT_OK(PagedFieldprintAttentionPrefill(
            queries.data() + start * stride, count, start, 0, q_heads, paged.Tables(), paged.View(),
            Anchors(in), Options(in), out.data() + start * stride, pool));
      }
    }
    return out;
  };
  const std::vector<float> one_chunk = run(length, 16, *pools_[0]);
  CheckAgainstDense(
      in, queries, std::vector<int32_t>(length, 0),
      [] {
        std::vector<int32_t> p(length);
        std::iota(p.begin(), p.end(), 0);
        return p;
      }(),
      one_chunk);
  for (int32_t chunk : {1, 3, 16, 17, 64}) {
    for (int32_t block_size : {16, 7, 1}) {
      for (size_t p = 0; p < pools_.size(); p += 3) {
        EXPECT_TRUE(BitwiseEqual(run(chunk, block_size, *pools_[p]), one_chunk))
            << "chunk " << chunk << " block_size " << block_size << " pool " << p;
      }
    }
  }
}

// A sequence alone, then at index 2 of a batch of four with different block tables, a different
// block size, mixed decode and prefill tokens and every thread count, and run twice.
TEST_F(PagedAttentionTest, SequenceAloneEqualsSequenceInBatchBitwise) {
  const std::vector<int32_t> lengths = {50, 333, 129, 8};
  const Inputs in = MakeInputs(12, 4, 64, lengths, 64);
  const std::vector<float> own_queries = Random(3 * 12 * 64, 1.0f);

  Inputs alone_inputs = in;
  alone_inputs.keys = {in.keys[2]};
  alone_inputs.values = {in.values[2]};
  Paged alone = AllocatePaged({129}, 16, 4, 64, rng_);
  Fill(alone_inputs, 0, 0, 129, alone);
  const std::vector<float> reference =
      Attend(alone_inputs, alone, own_queries, {0, 0, 0}, {128, 0, 77}, *pools_[0]);

  Paged batch = AllocatePaged(lengths, 5, 4, 64, rng_);
  for (size_t s = 0; s < lengths.size(); ++s) Fill(in, s, 0, lengths[s], batch);
  const int64_t stride = 12 * 64;
  // Batch tokens: seq 0 decode, seq 2 at 128, seq 1 prefill, seq 2 at 0, seq 3, seq 2 at 77.
  const std::vector<int32_t> seq_ids = {0, 2, 1, 1, 2, 3, 2};
  const std::vector<int32_t> positions = {49, 128, 300, 301, 0, 7, 77};
  std::vector<float> queries = Random(7 * stride, 1.0f);
  const size_t own_tokens[3] = {1, 4, 6};
  for (size_t i = 0; i < 3; ++i) {
    std::copy_n(own_queries.begin() + static_cast<int64_t>(i) * stride, stride,
                queries.begin() + static_cast<int64_t>(own_tokens[i]) * stride);
  }
  for (int run = 0; run < 2; ++run) {
    for (size_t p = 0; p < pools_.size(); ++p) {
      const std::vector<float> out = Attend(in, batch, queries, seq_ids, positions, *pools_[p]);
      for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(std::memcmp(out.data() + own_tokens[i] * stride, reference.data() + i * stride,
                              stride * sizeof(float)),
                  0)
            << "token " << own_tokens[i] << " pool " << p << " run " << run;
      }
    }
  }
}

// The AVX2 and baseline (SSE2) copies of the kernel give the same bits (trivially so on a CPU
// without AVX2).
TEST_F(PagedAttentionTest, InstructionSetCopiesAgreeBitwise) {
  const std::vector<int32_t> lengths = {300, 45};
  for (int32_t head_dim : {128, 13}) {
    const Inputs in = MakeInputs(8, 2, head_dim, lengths, 64);
    Paged paged = AllocatePaged(lengths, 16, 2, head_dim, rng_);
    for (size_t s = 0; s < lengths.size(); ++s) Fill(in, s, 0, lengths[s], paged);
    const std::vector<float> queries = Random(3 * 8 * head_dim, 1.0f);
    const std::vector<int32_t> seq_ids = {0, 1, 0};
    const std::vector<int32_t> positions = {299, 44, 100};
    const std::vector<float> fast = Attend(in, paged, queries, seq_ids, positions, pool());
    internal::TEST_ForceBaseline(true);
    const std::vector<float> baseline = Attend(in, paged, queries, seq_ids, positions, pool());
    internal::TEST_ForceBaseline(false);
    EXPECT_TRUE(BitwiseEqual(fast, baseline)) << head_dim;
  }
}

TEST_F(PagedAttentionTest, WritePagedKvFollowsTheLayout) {
  const std::vector<int32_t> lengths = {10, 21};
  const Inputs in = MakeInputs(2, 2, 3, lengths, 0);
  Paged paged = AllocatePaged(lengths, 4, 2, 3, rng_);
  std::vector<int32_t> seq_ids;
  std::vector<int32_t> positions;
  std::vector<float> keys;
  std::vector<float> values;
  for (int32_t s = 0; s < 2; ++s) {
    for (int32_t p = 0; p < lengths[static_cast<size_t>(s)]; ++p) {
      seq_ids.push_back(s);
      positions.push_back(p);
      keys.insert(keys.end(), in.keys[static_cast<size_t>(s)].begin() + p * 6,
                  in.keys[static_cast<size_t>(s)].begin() + (p + 1) * 6);
      values.insert(values.end(), in.values[static_cast<size_t>(s)].begin() + p * 6,
                    in.values[static_cast<size_t>(s)].begin() + (p + 1) * 6);
    }
  }
  ASSERT_OK(WritePagedKv(keys.data(), values.data(), seq_ids.data(), positions.data(),
                         static_cast<int32_t>(seq_ids.size()), paged.Tables(), paged.View(),
                         pool()));
  int written = 0;
  for (int32_t s = 0; s < 2; ++s) {
    for (int32_t p = 0; p < lengths[static_cast<size_t>(s)]; ++p) {
      const int64_t offset = paged.Offset(s, p);
      for (int64_t e = 0; e < 6; ++e) {
        EXPECT_EQ(paged.key[static_cast<size_t>(offset + e)],
                  in.keys[static_cast<size_t>(s)][static_cast<size_t>(p * 6 + e)]);
        EXPECT_EQ(paged.value[static_cast<size_t>(offset + e)],
                  in.values[static_cast<size_t>(s)][static_cast<size_t>(p * 6 + e)]);
        ++written;
      }
    }
  }
  // Nothing else was touched.
  const auto finite =
      std::count_if(paged.key.begin(), paged.key.end(), [](float v) { return !std::isnan(v); });
  EXPECT_EQ(finite, written);
}

// Error paths.

class PagedAttentionErrorTest : public PagedAttentionTest {
 protected:
  void SetUp() override {
    PagedAttentionTest::SetUp();
    in_ = MakeInputs(4, 2, 8, {20}, 3);
    paged_ = AllocatePaged({20}, 16, 2, 8, rng_);
    Fill(in_, 0, 0, 20, paged_);
    queries_ = Random(4 * 8, 1.0f);
    out_.assign(queries_.size(), -5.0f);
  }

  Status Call(const BlockTables& tables, const PagedKvCache& cache, const AnchorSet& anchors,
              const AttentionOptions& options, int32_t q_heads, int32_t seq_id, int32_t position) {
    return PagedFieldprintAttention(queries_.data(), &seq_id, &position, 1, q_heads, tables, cache,
                                    anchors, options, out_.data(), pool());
  }

  Inputs in_;
  Paged paged_;
  std::vector<float> queries_;
  std::vector<float> out_;
};

TEST_F(PagedAttentionErrorTest, BadArgumentsAreRejectedWithoutWriting) {
  const auto code = StatusCode::kInvalidArgument;
  const BlockTables tables = paged_.Tables();
  const PagedKvCache cache = paged_.View();
  const AnchorSet anchors = Anchors(in_);
  const AttentionOptions mix = Options(in_);
  ASSERT_OK(Call(tables, cache, anchors, mix, 4, 0, 19));
  out_.assign(out_.size(), -5.0f);

  EXPECT_THAT(Call(tables, cache, anchors, mix, 3, 0, 19), StatusIs(code));  // not a multiple
  EXPECT_THAT(Call(tables, cache, anchors, mix, 0, 0, 19), StatusIs(code));
  EXPECT_THAT(Call(tables, cache, anchors, mix, 4, 1, 19), StatusIs(code));   // seq id
  EXPECT_THAT(Call(tables, cache, anchors, mix, 4, -1, 19), StatusIs(code));  // seq id
  EXPECT_THAT(Call(tables, cache, anchors, mix, 4, 0, -1), StatusIs(code));   // position
  // Position 32 is in block 2, which the table leaves unassigned (-1).
  EXPECT_THAT(Call(tables, cache, anchors, mix, 4, 0, 32), StatusIs(code));
  EXPECT_THAT(Call(tables, cache, anchors, mix, 4, 0, paged_.max_blocks * 16), StatusIs(code));

  PagedKvCache bad_cache = cache;
  bad_cache.head_dim = 0;
  EXPECT_THAT(Call(tables, bad_cache, anchors, mix, 4, 0, 19), StatusIs(code));
  bad_cache = cache;
  bad_cache.block_size = 0;
  EXPECT_THAT(Call(tables, bad_cache, anchors, mix, 4, 0, 19), StatusIs(code));
  bad_cache = cache;
  bad_cache.key = nullptr;
  EXPECT_THAT(Call(tables, bad_cache, anchors, mix, 4, 0, 19), StatusIs(code));
  bad_cache = cache;
  bad_cache.num_blocks = 1;  // the sequence's block id is now out of range, or the test is moot
  if (paged_.table[0] >= 1) {
    EXPECT_THAT(Call(tables, bad_cache, anchors, mix, 4, 0, 19), StatusIs(code));
  }

  std::vector<float> gamma = in_.gamma;
  gamma[1] = 1.5f;
  EXPECT_THAT(Call(tables, cache, {anchors.key, anchors.value, gamma.data(), 3}, mix, 4, 0, 19),
              StatusIs(code));
  gamma[1] = kNaN;
  EXPECT_THAT(Call(tables, cache, {anchors.key, anchors.value, gamma.data(), 3}, mix, 4, 0, 19),
              StatusIs(code));
  EXPECT_THAT(Call(tables, cache, {anchors.key, anchors.value, nullptr, 3}, mix, 4, 0, 19),
              StatusIs(code));
  EXPECT_THAT(Call(tables, cache, {nullptr, nullptr, nullptr, 0}, mix, 4, 0, 19),
              StatusIs(code));  // mix needs anchors
  const AttentionOptions prefix = {AttentionMode::kPrefix, mix.softmax_scale};
  EXPECT_THAT(Call(tables, cache, anchors, prefix, 4, 0, 19), StatusIs(code));
  EXPECT_THAT(Call(tables, cache, anchors, {AttentionMode::kMix, kNaN}, 4, 0, 19), StatusIs(code));
  EXPECT_THAT(Call(tables, cache, anchors, {static_cast<AttentionMode>(7), 1.0f}, 4, 0, 19),
              StatusIs(code));
  EXPECT_THAT(Call({nullptr, 1, 2}, cache, anchors, mix, 4, 0, 19), StatusIs(code));

  const int32_t zero_context = 0;
  EXPECT_THAT(PagedFieldprintAttentionDecode(queries_.data(), &zero_context, 4, tables, cache,
                                             anchors, mix, out_.data(), pool()),
              StatusIs(code));
  EXPECT_THAT(PagedFieldprintAttentionPrefill(queries_.data(), 1, -1, 0, 4, tables, cache, anchors,
                                              mix, out_.data(), pool()),
              StatusIs(code));
  EXPECT_EQ(out_, std::vector<float>(out_.size(), -5.0f));

  const int32_t seq = 0;
  const int32_t far = 40;
  const std::vector<float> row(16, 1.0f);
  EXPECT_THAT(WritePagedKv(row.data(), row.data(), &seq, &far, 1, tables, cache, pool()),
              StatusIs(code));
  EXPECT_THAT(WritePagedKv(nullptr, row.data(), &seq, &seq, 1, tables, cache, pool()),
              StatusIs(code));
  EXPECT_OK(PagedFieldprintAttention(nullptr, nullptr, nullptr, 0, 4, tables, cache, anchors, mix,
                                     nullptr, pool()));
}

}  // namespace
}  // namespace fp::kernels
