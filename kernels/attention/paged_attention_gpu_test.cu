// GPU tests of the CUDA PagedFieldprintAttention (paged_attention_cuda.h): against the CPU
// reference (paged_attention.h) fed the same bf16 values widened to f32, within a bound derived
// below; and the determinism promises bit for bit: run twice, gamma 0 versus plain attention,
// gamma 1 versus anchors-only attention, decode versus prefill, prefill chunkings, a sequence
// alone versus inside batches of 1..256, page sizes and block placements, strided rows (the
// fused q|k|v projection output read in place) versus packed rows. Unwritten cache slots hold
// NaN, so reading one would show. Then the error paths (nothing launched) and the NaN rows for
// out-of-range device indices.
//
// Without a CUDA device the shared GPU test main exits 77 (CTest: skipped).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/attention/paged_attention.h"
#include "kernels/attention/paged_attention_cuda.h"
#include "kernels/base/half.h"
#include "kernels/base/thread_pool.h"
#include "tests/testutil/device_buffer.h"
#include "tests/testutil/status_matchers.h"

namespace fp::kernels {
namespace {

using ::fp::testing::DeviceBuffer;
using ::fp::testing::Download;
using ::fp::testing::Upload;

using ::fp::testing::StatusIs;
using Bits = std::vector<uint16_t>;

constexpr uint16_t kBf16NaN = 0x7fc0;

std::vector<float> Widen(const Bits& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToF32(bits[i]);
  return out;
}

// Sequences (K/V rows by position), anchors and gammas of one attention problem, in bf16.
struct Problem {
  int32_t q_heads;
  int32_t kv_heads;
  int32_t head_dim;
  AttentionMode mode;
  std::vector<Bits> keys;    // per sequence [length, kv_heads, head_dim]
  std::vector<Bits> values;  // per sequence
  Bits anchor_keys;          // [anchors, kv_heads, head_dim]
  Bits anchor_values;
  std::vector<float> gamma;  // [q_heads]
  int32_t anchors;

  int64_t row() const { return int64_t{kv_heads} * head_dim; }
  int32_t length(size_t s) const { return static_cast<int32_t>(keys[s].size() / row()); }
  int64_t query_row() const { return int64_t{q_heads} * head_dim; }
};

// A paged cache holding (a prefix of) each sequence, with shuffled block placement, on the
// device and as the f32 view the CPU reference reads. Unwritten slots hold NaN.
struct PagedCache {
  int32_t block_size;
  int32_t num_blocks;
  int32_t max_blocks;
  std::vector<int32_t> table;
  Bits key_bits;
  Bits value_bits;
  std::unique_ptr<DeviceBuffer> key, value, device_table;

  CudaPagedKvCache View(const Problem& pr) const {
    return {key->get(), value->get(), num_blocks, block_size, pr.kv_heads, pr.head_dim};
  }
  CudaBlockTables Tables() const {
    return {device_table->get<int32_t>(), static_cast<int32_t>(table.size() / max_blocks),
            max_blocks};
  }
  int64_t Offset(const Problem& pr, size_t s, int32_t p) const {
    const int32_t block = table[s * max_blocks + p / block_size];
    return (int64_t{block} * block_size + p % block_size) * pr.row();
  }
};

PagedCache MakeCache(const Problem& pr, int32_t block_size, int32_t capacity, bool fill,
                     std::mt19937& rng) {
  PagedCache c;
  c.block_size = block_size;
  c.max_blocks = (capacity + block_size - 1) / block_size;
  const auto seqs = static_cast<int32_t>(pr.keys.size());
  c.num_blocks = seqs * c.max_blocks + 3;
  std::vector<int32_t> ids(static_cast<size_t>(c.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.table.assign(ids.begin(), ids.begin() + int64_t{seqs} * c.max_blocks);
  const size_t elements = static_cast<size_t>(c.num_blocks) * block_size * pr.row();
  c.key_bits.assign(elements, kBf16NaN);
  c.value_bits.assign(elements, kBf16NaN);
  if (fill) {
    for (size_t s = 0; s < pr.keys.size(); ++s) {
      for (int32_t p = 0; p < pr.length(s); ++p) {
        std::copy_n(pr.keys[s].begin() + p * pr.row(), pr.row(),
                    c.key_bits.begin() + c.Offset(pr, s, p));
        std::copy_n(pr.values[s].begin() + p * pr.row(), pr.row(),
                    c.value_bits.begin() + c.Offset(pr, s, p));
      }
    }
  }
  c.key = std::make_unique<DeviceBuffer>(c.key_bits);
  c.value = std::make_unique<DeviceBuffer>(c.value_bits);
  c.device_table = std::make_unique<DeviceBuffer>(c.table);
  return c;
}

// A second cache with the same geometry and block placement, every slot NaN.
PagedCache SamePlacement(const PagedCache& c) {
  PagedCache copy;
  copy.block_size = c.block_size;
  copy.num_blocks = c.num_blocks;
  copy.max_blocks = c.max_blocks;
  copy.table = c.table;
  copy.key_bits.assign(c.key_bits.size(), kBf16NaN);
  copy.value_bits.assign(c.value_bits.size(), kBf16NaN);
  copy.key = std::make_unique<DeviceBuffer>(copy.key_bits);
  copy.value = std::make_unique<DeviceBuffer>(copy.value_bits);
  copy.device_table = std::make_unique<DeviceBuffer>(copy.table);
  return copy;
}

// `rows` ([count, width]) placed at element offset + r * stride of a buffer of `filler`.
Bits Embed(const Bits& rows, int64_t width, int64_t offset, int64_t stride, uint16_t filler) {
  const auto count = static_cast<int64_t>(rows.size()) / width;
  Bits image(static_cast<size_t>(offset + count * stride), filler);
  for (int64_t r = 0; r < count; ++r) {
    std::copy_n(rows.begin() + r * width, width, image.begin() + offset + r * stride);
  }
  return image;
}

struct DeviceAnchors {
  std::unique_ptr<DeviceBuffer> key, value, gamma;
  CudaAnchorSet set{nullptr, nullptr, nullptr, 0};
};

DeviceAnchors UploadAnchors(const Problem& pr) {
  DeviceAnchors a;
  if (pr.mode == AttentionMode::kPrefix) return a;
  a.key = std::make_unique<DeviceBuffer>(pr.anchor_keys);
  a.value = std::make_unique<DeviceBuffer>(pr.anchor_values);
  a.gamma = std::make_unique<DeviceBuffer>(pr.gamma);
  a.set = {a.key->get(), a.value->get(), a.gamma->get<float>(), pr.anchors};
  return a;
}

AttentionOptions Options(const Problem& pr) { return {pr.mode, DefaultSoftmaxScale(pr.head_dim)}; }

Bits RunDecode(const Problem& pr, const PagedCache& c, const Bits& queries,
               const std::vector<int32_t>& context_lens, int32_t max_context) {
  const DeviceAnchors anchors = UploadAnchors(pr);
  const DeviceBuffer q(queries);
  const DeviceBuffer lens(context_lens);
  const auto seqs = static_cast<int32_t>(context_lens.size());
  DeviceBuffer out(queries.size() * 2);
  const size_t bytes =
      PagedAttentionDecodeWorkspaceBytes(seqs, pr.q_heads, pr.head_dim, max_context);
  DeviceBuffer workspace(bytes);
  CudaBlockTables tables = c.Tables();
  tables.num_seqs = seqs;
  EXPECT_OK(LaunchPagedAttentionDecodeCuda(q.get(), lens.get<int32_t>(), max_context, pr.q_heads,
                                           tables, c.View(pr), anchors.set, Options(pr),
                                           workspace.get(), bytes, out.get(), nullptr));
  return out.Download<uint16_t>();
}

Bits RunPrefill(const Problem& pr, const PagedCache& c, const Bits& queries,
                const std::vector<int32_t>& seq_ids, const std::vector<int32_t>& positions,
                int32_t max_context) {
  const DeviceAnchors anchors = UploadAnchors(pr);
  const DeviceBuffer q(queries);
  const DeviceBuffer seqs(seq_ids);
  const DeviceBuffer pos(positions);
  DeviceBuffer out(queries.size() * 2);
  EXPECT_OK(LaunchPagedAttentionPrefillCuda(q.get(), seqs.get<int32_t>(), pos.get<int32_t>(),
                                            static_cast<int32_t>(seq_ids.size()), max_context,
                                            pr.q_heads, c.Tables(), c.View(pr), anchors.set,
                                            Options(pr), out.get(), nullptr));
  return out.Download<uint16_t>();
}

// The launchers with strided queries: query row r at element offset + r * stride of `image`.
Bits RunDecodeStrided(const Problem& pr, const PagedCache& c, const Bits& image, int64_t offset,
                      int64_t stride, const std::vector<int32_t>& context_lens,
                      int32_t max_context) {
  const DeviceAnchors anchors = UploadAnchors(pr);
  const DeviceBuffer q(image);
  const DeviceBuffer lens(context_lens);
  const auto seqs = static_cast<int32_t>(context_lens.size());
  DeviceBuffer out(static_cast<size_t>(seqs * pr.query_row()) * 2);
  const size_t bytes =
      PagedAttentionDecodeWorkspaceBytes(seqs, pr.q_heads, pr.head_dim, max_context);
  DeviceBuffer workspace(bytes);
  CudaBlockTables tables = c.Tables();
  tables.num_seqs = seqs;
  EXPECT_OK(LaunchPagedAttentionDecodeCuda(
      q.get<uint16_t>() + offset, stride, lens.get<int32_t>(), max_context, pr.q_heads, tables,
      c.View(pr), anchors.set, Options(pr), workspace.get(), bytes, out.get(), nullptr));
  return out.Download<uint16_t>();
}

Bits RunPrefillStrided(const Problem& pr, const PagedCache& c, const Bits& image, int64_t offset,
                       int64_t stride, const std::vector<int32_t>& seq_ids,
                       const std::vector<int32_t>& positions, int32_t max_context) {
  const DeviceAnchors anchors = UploadAnchors(pr);
  const DeviceBuffer q(image);
  const DeviceBuffer seqs(seq_ids);
  const DeviceBuffer pos(positions);
  const auto tokens = static_cast<int32_t>(seq_ids.size());
  DeviceBuffer out(static_cast<size_t>(tokens * pr.query_row()) * 2);
  EXPECT_OK(LaunchPagedAttentionPrefillCuda(q.get<uint16_t>() + offset, stride, seqs.get<int32_t>(),
                                            pos.get<int32_t>(), tokens, max_context, pr.q_heads,
                                            c.Tables(), c.View(pr), anchors.set, Options(pr),
                                            out.get(), nullptr));
  return out.Download<uint16_t>();
}

// The CPU reference on the bf16 values widened to f32.
std::vector<float> RunReference(const Problem& pr, const PagedCache& c, const Bits& queries,
                                const std::vector<int32_t>& seq_ids,
                                const std::vector<int32_t>& positions, ThreadPool& pool) {
  std::vector<float> key = Widen(c.key_bits), value = Widen(c.value_bits);
  const std::vector<float> q = Widen(queries), ak = Widen(pr.anchor_keys),
                           av = Widen(pr.anchor_values);
  const PagedKvCache cache{key.data(),   value.data(), c.num_blocks,
                           c.block_size, pr.kv_heads,  pr.head_dim};
  const BlockTables tables{c.table.data(), static_cast<int32_t>(c.table.size() / c.max_blocks),
                           c.max_blocks};
  const AnchorSet anchors = pr.mode == AttentionMode::kPrefix
                                ? AnchorSet{nullptr, nullptr, nullptr, 0}
                                : AnchorSet{ak.data(), av.data(), pr.gamma.data(), pr.anchors};
  std::vector<float> out(queries.size());
  EXPECT_OK(PagedFieldprintAttention(q.data(), seq_ids.data(), positions.data(),
                                     static_cast<int32_t>(seq_ids.size()), pr.q_heads, tables,
                                     cache, anchors, Options(pr), out.data(), pool));
  return out;
}

// The GPU rounds each softmax weight to bf16 before P.V (the weights still sum, in f32, into
// l), which moves o by at most 2^-9 * max|v| (the weights' relative error times a convex
// combination of |v|); the output's own bf16 rounding adds 2^-9 |o|; tensor-core sums, ex2.approx
// (2^-22 relative) and the f32 score differences are orders of magnitude below. The mix is a
// convex combination of two such outputs. Allowed: 2^-8 (max|v| + |ref|), twice the bound.
void ExpectNearReference(const Problem& pr, const Bits& gpu, const std::vector<float>& ref) {
  float max_v = 0.0f;
  for (const Bits& v : pr.values) {
    for (uint16_t b : v) max_v = std::max(max_v, std::fabs(Bf16ToF32(b)));
  }
  for (uint16_t b : pr.anchor_values) max_v = std::max(max_v, std::fabs(Bf16ToF32(b)));
  double worst = 0.0;
  int failures = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const float got = Bf16ToF32(gpu[i]);
    const double tolerance = std::ldexp(1.0, -8) * (max_v + std::fabs(ref[i]));
    const double error = std::fabs(double{got} - ref[i]);
    worst = std::max(worst, error / tolerance);
    if (!(error <= tolerance) && ++failures <= 5) {
      ADD_FAILURE() << "element " << i << ": gpu " << got << " reference " << ref[i];
    }
  }
  EXPECT_EQ(failures, 0);
  std::printf("  worst error %.3f of the tolerance over %zu values\n", worst, gpu.size());
}

class PagedAttentionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pool = ThreadPool::Create(8);
    FP_CHECK(pool.ok());
    pool_ = std::move(*pool);
  }

  Bits RandomBits(int64_t count, float scale = 1.0f) {
    std::normal_distribution<float> normal(0.0f, scale);
    Bits bits(static_cast<size_t>(count));
    for (uint16_t& b : bits) b = F32ToBf16(normal(rng_));
    return bits;
  }

  // Gammas cycle 0, 1, and values between, so every branch of the mix runs.
  Problem MakeProblem(int32_t q_heads, int32_t kv_heads, int32_t head_dim, int32_t anchors,
                      const std::vector<int32_t>& lengths) {
    Problem pr{
        q_heads, kv_heads, head_dim, anchors == 0 ? AttentionMode::kPrefix : AttentionMode::kMix,
        {},      {},       {},       {},
        {},      anchors};
    for (int32_t length : lengths) {
      pr.keys.push_back(RandomBits(length * pr.row()));
      pr.values.push_back(RandomBits(length * pr.row()));
    }
    pr.anchor_keys = RandomBits(anchors * pr.row());
    pr.anchor_values = RandomBits(anchors * pr.row());
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (int32_t h = 0; h < q_heads; ++h) {
      pr.gamma.push_back(h % 4 == 0 ? 0.0f : h % 4 == 1 ? 1.0f : uniform(rng_));
    }
    return pr;
  }

  int32_t MaxLength(const Problem& pr) {
    int32_t m = 1;
    for (size_t s = 0; s < pr.keys.size(); ++s) m = std::max(m, pr.length(s));
    return m;
  }

  std::mt19937 rng_{20261127};
  std::unique_ptr<ThreadPool> pool_;
};

struct Shape {
  int32_t q_heads, kv_heads, head_dim, anchors, block_size;
  std::vector<int32_t> lengths;
};

TEST_F(PagedAttentionGpuTest, MatchesCpuReferenceAcrossShapesAndRunsTwiceBitwise) {
  std::uniform_int_distribution<int32_t> length(1, 1300);
  std::vector<int32_t> seven(7), many(33);
  for (int32_t& l : seven) l = length(rng_);
  for (int32_t& l : many) l = length(rng_) / 2 + 1;
  const std::vector<Shape> shapes = {
      {8, 8, 64, 1, 16, {1500}},              // B 1, GQA 1, one anchor
      {32, 8, 128, 64, 32, {1, 513, 1100}},   // B 3, GQA 4
      {16, 2, 128, 512, 7, seven},            // B 7, GQA 8, 512 anchors, odd pages
      {16, 1, 64, 0, 16, many},               // B 33, GQA 16, prefix mode
      {12, 4, 64, 64, 256, {700, 65, 1024}},  // GQA 3 (padded rows), pages of 256
      {16, 4, 128, 0, 1, {333, 64}},          // GQA 4, pages of one token, prefix
  };
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(::testing::Message() << "q " << shape.q_heads << " kv " << shape.kv_heads << " d "
                                      << shape.head_dim << " A " << shape.anchors << " bs "
                                      << shape.block_size << " B " << shape.lengths.size());
    std::printf("shape q %d kv %d d %d A %d bs %d B %zu\n", shape.q_heads, shape.kv_heads,
                shape.head_dim, shape.anchors, shape.block_size, shape.lengths.size());
    const Problem pr =
        MakeProblem(shape.q_heads, shape.kv_heads, shape.head_dim, shape.anchors, shape.lengths);
    const int32_t max_context = MaxLength(pr);
    const PagedCache c = MakeCache(pr, shape.block_size, max_context + 5, true, rng_);
    const auto seqs = static_cast<int32_t>(shape.lengths.size());
    // Decode of every sequence.
    std::vector<int32_t> lens(shape.lengths), ids(static_cast<size_t>(seqs)), last(lens);
    std::iota(ids.begin(), ids.end(), 0);
    for (int32_t& p : last) p -= 1;
    const Bits dq = RandomBits(seqs * pr.query_row());
    const Bits decode = RunDecode(pr, c, dq, lens, max_context);
    ExpectNearReference(pr, decode, RunReference(pr, c, dq, ids, last, *pool_));
    EXPECT_EQ(RunDecode(pr, c, dq, lens, max_context), decode) << "decode run twice";
    // A prefill work list: a chunk of the longest sequence plus scattered tokens of the others.
    const auto longest = static_cast<int32_t>(
        std::max_element(shape.lengths.begin(), shape.lengths.end()) - shape.lengths.begin());
    std::vector<int32_t> seq_ids, positions;
    for (int32_t p = std::max(0, max_context - 150); p < max_context; ++p) {
      seq_ids.push_back(longest);
      positions.push_back(p);
    }
    for (int32_t s = 0; s < seqs; ++s) {
      seq_ids.push_back(s);
      positions.push_back(std::uniform_int_distribution<int32_t>(0, shape.lengths[s] - 1)(rng_));
    }
    const Bits pq = RandomBits(static_cast<int64_t>(seq_ids.size()) * pr.query_row());
    const Bits prefill = RunPrefill(pr, c, pq, seq_ids, positions, max_context);
    ExpectNearReference(pr, prefill, RunReference(pr, c, pq, seq_ids, positions, *pool_));
    EXPECT_EQ(RunPrefill(pr, c, pq, seq_ids, positions, max_context), prefill)
        << "prefill run twice";
  }
}

TEST_F(PagedAttentionGpuTest, GammaZeroIsPlainAttentionBitwise) {
  for (int32_t head_dim : {64, 128}) {
    Problem pr = MakeProblem(32, 8, head_dim, 64, {700, 1030});
    std::fill(pr.gamma.begin(), pr.gamma.end(), 0.0f);
    Problem plain = pr;
    plain.mode = AttentionMode::kPrefix;
    const PagedCache c = MakeCache(pr, 16, 1030, true, rng_);
    const Bits dq = RandomBits(2 * pr.query_row());
    EXPECT_EQ(RunDecode(pr, c, dq, {700, 1030}, 1030), RunDecode(plain, c, dq, {700, 1030}, 1030));
    const std::vector<int32_t> seq_ids = {1, 1, 0, 1};
    const std::vector<int32_t> positions = {0, 600, 699, 1029};
    const Bits pq = RandomBits(4 * pr.query_row());
    EXPECT_EQ(RunPrefill(pr, c, pq, seq_ids, positions, 1030),
              RunPrefill(plain, c, pq, seq_ids, positions, 1030));
  }
}

// g == 1 is anchors-only attention: prefix-mode attention over a sequence that is exactly the
// anchors, queried at the last anchor.
TEST_F(PagedAttentionGpuTest, GammaOneIsAnchorsOnlyBitwise) {
  for (int32_t anchors : {1, 64, 512}) {
    Problem pr = MakeProblem(8, 2, 128, anchors, {300});
    std::fill(pr.gamma.begin(), pr.gamma.end(), 1.0f);
    const PagedCache c = MakeCache(pr, 16, 300, true, rng_);
    Problem only = pr;
    only.mode = AttentionMode::kPrefix;
    only.keys = {pr.anchor_keys};
    only.values = {pr.anchor_values};
    const PagedCache anchor_cache = MakeCache(only, 32, anchors, true, rng_);
    const Bits q = RandomBits(pr.query_row());
    EXPECT_EQ(RunDecode(pr, c, q, {300}, 300), RunDecode(only, anchor_cache, q, {anchors}, anchors))
        << anchors;
    EXPECT_EQ(RunPrefill(pr, c, q, {0}, {123}, 300),
              RunPrefill(only, anchor_cache, q, {0}, {anchors - 1}, anchors))
        << anchors;
  }
}

// One sequence: a single prefill chunk, chunked prefills that write their own K/V first (later
// slots still NaN), and decode steps at many positions, across page sizes: the same bits.
TEST_F(PagedAttentionGpuTest, DecodeAndPrefillChunkingsAndPageSizesAreBitwiseIdentical) {
  struct Case {
    int32_t q_heads, kv_heads, head_dim, anchors;
  };
  for (const Case& k : {Case{32, 8, 128, 64}, Case{12, 4, 64, 0}, Case{16, 1, 128, 512}}) {
    SCOPED_TRACE(::testing::Message() << "q " << k.q_heads << " kv " << k.kv_heads << " d "
                                      << k.head_dim << " A " << k.anchors);
    const int32_t length = 1100;
    const Problem pr = MakeProblem(k.q_heads, k.kv_heads, k.head_dim, k.anchors, {length});
    const Bits queries = RandomBits(length * pr.query_row());
    std::vector<int32_t> all(length);
    std::iota(all.begin(), all.end(), 0);
    const PagedCache full = MakeCache(pr, 16, length, true, rng_);
    const Bits reference =
        RunPrefill(pr, full, queries, std::vector<int32_t>(length, 0), all, length);
    for (int32_t chunk : {7, 64, 100, 513}) {
      for (int32_t block_size : {16, 32, 1, 5, 64, 256}) {
        PagedCache c = MakeCache(pr, block_size, length, false, rng_);
        Bits out(queries.size());
        for (int32_t start = 0; start < length; start += chunk) {
          const int32_t n = std::min(chunk, length - start);
          std::vector<int32_t> ids(static_cast<size_t>(n), 0), pos(static_cast<size_t>(n));
          std::iota(pos.begin(), pos.end(), start);
          const DeviceBuffer kd(Bits(pr.keys[0].begin() + start * pr.row(),
                                     pr.keys[0].begin() + (start + n) * pr.row()));
          const DeviceBuffer vd(Bits(pr.values[0].begin() + start * pr.row(),
                                     pr.values[0].begin() + (start + n) * pr.row()));
          const DeviceBuffer idd(ids), posd(pos);
          ASSERT_OK(LaunchWritePagedKvCuda(kd.get(), vd.get(), idd.get<int32_t>(),
                                           posd.get<int32_t>(), n, c.Tables(), c.View(pr),
                                           nullptr));
          const Bits chunk_q(queries.begin() + start * pr.query_row(),
                             queries.begin() + (start + n) * pr.query_row());
          const Bits o = RunPrefill(pr, c, chunk_q, ids, pos, length);
          std::copy(o.begin(), o.end(), out.begin() + start * pr.query_row());
        }
        EXPECT_EQ(out, reference) << "chunk " << chunk << " block_size " << block_size;
        if (chunk != 64) continue;
        // Decode steps on the now complete cache (later slots hold the later tokens; the
        // CPU reference is checked on the single-chunk output above in the shapes test).
        for (int32_t p : {0, 1, 63, 64, 65, 511, 512, 513, 777, 1023, 1024, 1099}) {
          const Bits q(queries.begin() + p * pr.query_row(),
                       queries.begin() + (p + 1) * pr.query_row());
          const Bits d = RunDecode(pr, c, q, {p + 1}, length);
          EXPECT_TRUE(std::equal(d.begin(), d.end(), reference.begin() + p * pr.query_row()))
              << "decode at " << p << " block_size " << block_size;
        }
      }
    }
  }
}

// A sequence alone, then inside decode batches and prefill work lists of 1..256 sequences at
// random indices, with random other lengths, page sizes and placements.
TEST_F(PagedAttentionGpuTest, SequenceAloneEqualsSequenceInBatchesBitwise) {
  const int32_t own_length = 900;
  const Problem own = MakeProblem(32, 8, 128, 64, {own_length});
  const Bits own_queries = RandomBits(3 * own.query_row());
  const std::vector<int32_t> own_positions = {899, 511, 0};
  const PagedCache alone = MakeCache(own, 16, 1600, true, rng_);
  const Bits alone_decode =
      RunDecode(own, alone, Bits(own_queries.begin(), own_queries.begin() + own.query_row()),
                {own_length}, 1600);
  const Bits alone_prefill = RunPrefill(own, alone, own_queries, {0, 0, 0}, own_positions, 1600);
  ASSERT_TRUE(std::equal(alone_decode.begin(), alone_decode.end(), alone_prefill.begin()));
  for (int32_t batch : {1, 2, 17, 64, 256}) {
    // Shorter others in the big batches keep the host-side data small.
    std::uniform_int_distribution<int32_t> length(1, batch <= 17 ? 1600 : 300);
    const int32_t index = std::uniform_int_distribution<int32_t>(0, batch - 1)(rng_);
    std::vector<int32_t> lengths(static_cast<size_t>(batch));
    for (int32_t& l : lengths) l = length(rng_);
    lengths[static_cast<size_t>(index)] = own_length;
    Problem pr = MakeProblem(32, 8, 128, 64, lengths);
    pr.keys[static_cast<size_t>(index)] = own.keys[0];
    pr.values[static_cast<size_t>(index)] = own.values[0];
    pr.anchor_keys = own.anchor_keys;
    pr.anchor_values = own.anchor_values;
    pr.gamma = own.gamma;
    const int32_t block_size = batch % 2 == 0 ? 32 : 16;
    const PagedCache c = MakeCache(pr, block_size, 1600, true, rng_);
    Bits dq = RandomBits(batch * pr.query_row());
    std::copy_n(own_queries.begin(), pr.query_row(), dq.begin() + index * pr.query_row());
    const Bits d = RunDecode(pr, c, dq, lengths, 1600);
    EXPECT_TRUE(
        std::equal(alone_decode.begin(), alone_decode.end(), d.begin() + index * pr.query_row()))
        << "decode batch " << batch << " index " << index;
    // Prefill work list: the other sequences' last tokens, with the own three tokens at
    // random places.
    std::vector<int32_t> seq_ids, positions;
    for (int32_t s = 0; s < batch; ++s) {
      if (s == index) continue;
      seq_ids.push_back(s);
      positions.push_back(lengths[static_cast<size_t>(s)] - 1);
    }
    Bits pq = RandomBits(static_cast<int64_t>(seq_ids.size() + 3) * pr.query_row());
    std::vector<size_t> at;
    for (size_t i = 0; i < 3; ++i) {
      const size_t where = std::uniform_int_distribution<size_t>(0, seq_ids.size())(rng_);
      seq_ids.insert(seq_ids.begin() + static_cast<int64_t>(where), index);
      positions.insert(positions.begin() + static_cast<int64_t>(where), own_positions[i]);
      for (size_t& a : at) a += a >= where ? 1 : 0;
      at.push_back(where);
    }
    for (size_t i = 0; i < 3; ++i) {
      std::copy_n(own_queries.begin() + static_cast<int64_t>(i) * pr.query_row(), pr.query_row(),
                  pq.begin() + static_cast<int64_t>(at[i]) * pr.query_row());
    }
    const Bits p = RunPrefill(pr, c, pq, seq_ids, positions, 1600);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(std::equal(alone_prefill.begin() + static_cast<int64_t>(i) * pr.query_row(),
                             alone_prefill.begin() + static_cast<int64_t>(i + 1) * pr.query_row(),
                             p.begin() + static_cast<int64_t>(at[i]) * pr.query_row()))
          << "prefill batch " << batch << " own token " << i;
    }
  }
}

// The decode tile ring's depth is pipelining only: 2 and 3 stages give the same bits.
TEST_F(PagedAttentionGpuTest, DecodeRingDepthDoesNotChangeBits) {
  for (int32_t head_dim : {64, 128}) {
    const std::vector<int32_t> lengths = {1, 700, 1500};
    const Problem pr = MakeProblem(16, 4, head_dim, 64, lengths);
    const PagedCache c = MakeCache(pr, 16, 1500, true, rng_);
    const DeviceAnchors anchors = UploadAnchors(pr);
    const DeviceBuffer q(RandomBits(3 * pr.query_row()));
    const DeviceBuffer lens(lengths);
    const size_t bytes = PagedAttentionDecodeWorkspaceBytes(3, 16, head_dim, 1500);
    DeviceBuffer workspace(bytes);
    std::vector<Bits> outs;
    for (int32_t stages : {2, 3}) {
      DeviceBuffer out(3 * pr.query_row() * 2);
      ASSERT_OK(internal::LaunchPagedAttentionDecodeWithSplit(
          q.get(), lens.get<int32_t>(), 1500, 16, c.Tables(), c.View(pr), anchors.set, Options(pr),
          kCudaAttentionSplit, stages, workspace.get(), bytes, out.get(), nullptr));
      outs.push_back(out.Download<uint16_t>());
    }
    EXPECT_EQ(outs[0], outs[1]) << head_dim;
  }
}

// The CUDA backend's layout: one [tokens, q | k | v] projection output (row stride n) read in
// place. K/V writes from it fill the cache exactly as packed K/V rows do; prefill and decode
// queries read from it, and from rows at an offset padded with NaN (a stray read would show),
// give the packed launchers' bits, and decode still equals prefill.
TEST_F(PagedAttentionGpuTest, StridedRowsGiveThePackedBitsBitwise) {
  struct Case {
    int32_t q_heads, kv_heads, head_dim, anchors, block_size;
  };
  for (const Case& k :
       {Case{32, 8, 128, 64, 16}, Case{12, 4, 64, 0, 5}, Case{16, 1, 128, 512, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << "q " << k.q_heads << " kv " << k.kv_heads << " d " << k.head_dim << " A "
                 << k.anchors << " bs " << k.block_size);
    const std::vector<int32_t> lengths = {300, 77, 530};
    const int32_t max_context = 530;
    const Problem pr = MakeProblem(k.q_heads, k.kv_heads, k.head_dim, k.anchors, lengths);
    const int64_t q_row = pr.query_row(), row = pr.row(), n = q_row + 2 * row;
    // Work list: every token of every sequence; packed K/V rows and the fused rows.
    std::vector<int32_t> ids, pos, last_token;
    Bits keys, values;
    for (size_t s = 0; s < lengths.size(); ++s) {
      for (int32_t p = 0; p < lengths[s]; ++p) {
        ids.push_back(static_cast<int32_t>(s));
        pos.push_back(p);
        keys.insert(keys.end(), pr.keys[s].begin() + p * row, pr.keys[s].begin() + (p + 1) * row);
        values.insert(values.end(), pr.values[s].begin() + p * row,
                      pr.values[s].begin() + (p + 1) * row);
      }
      last_token.push_back(static_cast<int32_t>(ids.size()) - 1);
    }
    const auto tokens = static_cast<int32_t>(ids.size());
    const Bits queries = RandomBits(tokens * q_row);
    Bits fused(static_cast<size_t>(tokens * n));
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(queries.begin() + t * q_row, q_row, fused.begin() + t * n);
      std::copy_n(keys.begin() + t * row, row, fused.begin() + t * n + q_row);
      std::copy_n(values.begin() + t * row, row, fused.begin() + t * n + q_row + row);
    }
    // K/V writes: packed rows into one cache, the fused rows' k and v columns into a cache with
    // the same block placement.
    const PagedCache packed = MakeCache(pr, k.block_size, max_context, false, rng_);
    const PagedCache strided = SamePlacement(packed);
    const DeviceBuffer kd(keys), vd(values), fd(fused), idd(ids), posd(pos);
    ASSERT_OK(LaunchWritePagedKvCuda(kd.get(), vd.get(), idd.get<int32_t>(), posd.get<int32_t>(),
                                     tokens, packed.Tables(), packed.View(pr), nullptr));
    const uint16_t* f = fd.get<uint16_t>();
    ASSERT_OK(LaunchWritePagedKvCuda(f + q_row, n, f + q_row + row, n, idd.get<int32_t>(),
                                     posd.get<int32_t>(), tokens, strided.Tables(),
                                     strided.View(pr), nullptr));
    const Bits packed_keys = packed.key->Download<uint16_t>();
    EXPECT_EQ(std::count(packed_keys.begin(), packed_keys.end(), kBf16NaN),
              static_cast<int64_t>(packed_keys.size()) - tokens * row);
    EXPECT_EQ(strided.key->Download<uint16_t>(), packed_keys);
    EXPECT_EQ(strided.value->Download<uint16_t>(), packed.value->Download<uint16_t>());
    // Prefill over every token.
    const Bits prefill = RunPrefill(pr, packed, queries, ids, pos, max_context);
    EXPECT_EQ(RunPrefillStrided(pr, strided, fused, 0, n, ids, pos, max_context), prefill)
        << "fused rows";
    const Bits padded = Embed(queries, q_row, 8, q_row + 8, kBf16NaN);
    EXPECT_EQ(RunPrefillStrided(pr, strided, padded, 8, q_row + 8, ids, pos, max_context), prefill)
        << "padded rows";
    // Decode of each sequence's last token.
    Bits decode_q, decode_fused;
    for (int32_t t : last_token) {
      decode_q.insert(decode_q.end(), queries.begin() + t * q_row,
                      queries.begin() + (t + 1) * q_row);
      decode_fused.insert(decode_fused.end(), fused.begin() + t * n, fused.begin() + (t + 1) * n);
    }
    const Bits decode = RunDecode(pr, packed, decode_q, lengths, max_context);
    EXPECT_EQ(RunDecodeStrided(pr, strided, decode_fused, 0, n, lengths, max_context), decode)
        << "fused rows";
    EXPECT_EQ(RunDecodeStrided(pr, strided, Embed(decode_q, q_row, 8, q_row + 8, kBf16NaN), 8,
                               q_row + 8, lengths, max_context),
              decode)
        << "padded rows";
    for (size_t s = 0; s < lengths.size(); ++s) {
      EXPECT_TRUE(std::equal(decode.begin() + static_cast<int64_t>(s) * q_row,
                             decode.begin() + static_cast<int64_t>(s + 1) * q_row,
                             prefill.begin() + last_token[s] * q_row))
          << "decode equals prefill, sequence " << s;
    }
  }
}

TEST_F(PagedAttentionGpuTest, WritePagedKvFollowsTheLayout) {
  const Problem pr = MakeProblem(8, 2, 64, 0, {37, 5});
  PagedCache c = MakeCache(pr, 16, 64, false, rng_);
  std::vector<int32_t> ids, pos;
  Bits keys, values;
  for (int32_t s = 1; s >= 0; --s) {
    for (int32_t p = 0; p < pr.length(static_cast<size_t>(s)); ++p) {
      ids.push_back(s);
      pos.push_back(p);
      keys.insert(keys.end(), pr.keys[static_cast<size_t>(s)].begin() + p * pr.row(),
                  pr.keys[static_cast<size_t>(s)].begin() + (p + 1) * pr.row());
      values.insert(values.end(), pr.values[static_cast<size_t>(s)].begin() + p * pr.row(),
                    pr.values[static_cast<size_t>(s)].begin() + (p + 1) * pr.row());
    }
  }
  const DeviceBuffer kd(keys), vd(values), idd(ids), posd(pos);
  ASSERT_OK(LaunchWritePagedKvCuda(kd.get(), vd.get(), idd.get<int32_t>(), posd.get<int32_t>(),
                                   static_cast<int32_t>(ids.size()), c.Tables(), c.View(pr),
                                   nullptr));
  const Bits key_cache = c.key->Download<uint16_t>();
  const Bits value_cache = c.value->Download<uint16_t>();
  for (size_t s = 0; s < 2; ++s) {
    for (int32_t p = 0; p < pr.length(s); ++p) {
      const int64_t offset = c.Offset(pr, s, p);
      EXPECT_TRUE(std::equal(key_cache.begin() + offset, key_cache.begin() + offset + pr.row(),
                             pr.keys[s].begin() + p * pr.row()));
      EXPECT_TRUE(std::equal(value_cache.begin() + offset, value_cache.begin() + offset + pr.row(),
                             pr.values[s].begin() + p * pr.row()));
    }
  }
  EXPECT_EQ(std::count(key_cache.begin(), key_cache.end(), kBf16NaN),
            static_cast<int64_t>(key_cache.size()) - 42 * pr.row());
}

// Out-of-range device indices: NaN rows for those tokens, the other rows unchanged.
TEST_F(PagedAttentionGpuTest, OutOfRangeDeviceIndicesGiveNanRows) {
  const Problem pr = MakeProblem(8, 2, 64, 64, {100, 200});
  PagedCache c = MakeCache(pr, 16, 256, true, rng_);
  const Bits q = RandomBits(4 * pr.query_row());
  const Bits good = RunPrefill(pr, c, q, {0, 1, 1, 0}, {99, 150, 199, 5}, 256);
  const Bits bad = RunPrefill(pr, c, q, {0, 7, 1, -1}, {99, 150, 256, 5}, 256);
  const auto row = [&](const Bits& b, int t) {
    return Bits(b.begin() + t * pr.query_row(), b.begin() + (t + 1) * pr.query_row());
  };
  EXPECT_EQ(row(bad, 0), row(good, 0));
  for (int t = 1; t < 4; ++t) {
    for (uint16_t v : row(bad, t)) EXPECT_TRUE(std::isnan(Bf16ToF32(v))) << t;
  }
  // A block id out of range in sequence 1 at positions [160, 176): its tokens at or past 160 give
  // NaN, its earlier tokens and sequence 0 do not.
  c.table[static_cast<size_t>(c.max_blocks) + 10] = c.num_blocks + 5;
  c.device_table = std::make_unique<DeviceBuffer>(c.table);
  const Bits poisoned = RunPrefill(pr, c, q, {0, 1, 1, 1}, {99, 150, 199, 170}, 256);
  EXPECT_EQ(row(poisoned, 0), row(good, 0));
  EXPECT_EQ(row(poisoned, 1), row(good, 1));
  for (int t = 2; t < 4; ++t) {
    for (uint16_t v : row(poisoned, t)) EXPECT_TRUE(std::isnan(Bf16ToF32(v))) << t;
  }
  const Bits decoded =
      RunDecode(pr, c, Bits(q.begin(), q.begin() + 2 * pr.query_row()), {100, 200}, 256);
  EXPECT_EQ(row(decoded, 0), row(good, 0));
  for (uint16_t v : row(decoded, 1)) EXPECT_TRUE(std::isnan(Bf16ToF32(v)));
}

TEST_F(PagedAttentionGpuTest, BadArgumentsAreRejectedWithoutLaunching) {
  const Problem pr = MakeProblem(8, 2, 64, 4, {40});
  const PagedCache c = MakeCache(pr, 16, 64, true, rng_);
  const DeviceAnchors anchors = UploadAnchors(pr);
  const Bits sentinel(pr.query_row(), 0x1234);
  DeviceBuffer out(sentinel);
  const DeviceBuffer q(RandomBits(pr.query_row()));
  const DeviceBuffer lens(std::vector<int32_t>{40});
  const DeviceBuffer zero(std::vector<int32_t>{0});
  const size_t bytes = PagedAttentionDecodeWorkspaceBytes(1, 8, 64, 64);
  DeviceBuffer workspace(bytes);
  const auto decode = [&](int32_t q_heads, CudaPagedKvCache cache, CudaAnchorSet a,
                          AttentionOptions o, int32_t max_context, size_t ws_bytes,
                          const void* query) {
    return LaunchPagedAttentionDecodeCuda(query, lens.get<int32_t>(), max_context, q_heads,
                                          c.Tables(), cache, a, o, workspace.get(), ws_bytes,
                                          out.get(), nullptr);
  };
  const CudaPagedKvCache view = c.View(pr);
  const AttentionOptions mix = Options(pr);
  CudaPagedKvCache wrong_dim = view;
  wrong_dim.head_dim = 96;
  CudaPagedKvCache no_key = view;
  no_key.key = nullptr;
  CudaAnchorSet too_many = anchors.set;
  too_many.num_anchors = kCudaAttentionMaxAnchors + 1;
  const AttentionOptions prefix{AttentionMode::kPrefix, 0.125f};
  const AttentionOptions bad_scale{AttentionMode::kMix, NAN};
  const char* misaligned = q.get<const char>() + 2;
  const auto invalid = StatusIs(StatusCode::kInvalidArgument);
  EXPECT_THAT(decode(8, wrong_dim, anchors.set, mix, 64, bytes, q.get()), invalid);
  EXPECT_THAT(decode(8, no_key, anchors.set, mix, 64, bytes, q.get()), invalid);
  EXPECT_THAT(decode(7, view, anchors.set, mix, 64, bytes, q.get()), invalid);   // not a multiple
  EXPECT_THAT(decode(34, view, anchors.set, mix, 64, bytes, q.get()), invalid);  // group 17
  EXPECT_THAT(decode(8, view, anchors.set, mix, 65, bytes, q.get()), invalid);   // > capacity
  EXPECT_THAT(decode(8, view, anchors.set, mix, 0, bytes, q.get()), invalid);
  EXPECT_THAT(decode(8, view, anchors.set, mix, 64, bytes - 4, q.get()), invalid);
  EXPECT_THAT(decode(8, view, too_many, mix, 64, bytes, q.get()), invalid);
  EXPECT_THAT(decode(8, view, CudaAnchorSet{nullptr, nullptr, nullptr, 0}, mix, 64, bytes, q.get()),
              invalid);
  EXPECT_THAT(decode(8, view, anchors.set, prefix, 64, bytes, q.get()), invalid);
  EXPECT_THAT(decode(8, view, anchors.set, bad_scale, 64, bytes, q.get()), invalid);
  EXPECT_THAT(decode(8, view, anchors.set, mix, 64, bytes, misaligned), invalid);
  EXPECT_THAT(
      LaunchPagedAttentionPrefillCuda(q.get(), nullptr, zero.get<int32_t>(), 1, 64, 8, c.Tables(),
                                      view, anchors.set, mix, out.get(), nullptr),
      invalid);
  EXPECT_THAT(
      LaunchPagedAttentionPrefillCuda(q.get(), zero.get<int32_t>(), zero.get<int32_t>(), -1, 64, 8,
                                      c.Tables(), view, anchors.set, mix, out.get(), nullptr),
      invalid);
  EXPECT_THAT(LaunchWritePagedKvCuda(misaligned, q.get(), zero.get<int32_t>(), zero.get<int32_t>(),
                                     1, c.Tables(), view, nullptr),
              invalid);
  // Row strides: below the width, not whole 16-byte units, past the bound.
  const int64_t q_row = pr.query_row(), row = pr.row();
  for (int64_t stride : {q_row - 8, q_row + 4, q_row + 1, kCudaAttentionMaxRowStride + 8}) {
    EXPECT_THAT(LaunchPagedAttentionDecodeCuda(q.get(), stride, lens.get<int32_t>(), 64, 8,
                                               c.Tables(), view, anchors.set, mix, workspace.get(),
                                               bytes, out.get(), nullptr),
                invalid)
        << stride;
    EXPECT_THAT(LaunchPagedAttentionPrefillCuda(q.get(), stride, zero.get<int32_t>(),
                                                zero.get<int32_t>(), 1, 64, 8, c.Tables(), view,
                                                anchors.set, mix, out.get(), nullptr),
                invalid)
        << stride;
  }
  for (int64_t stride : {row - 8, row + 2, kCudaAttentionMaxRowStride + 8}) {
    EXPECT_THAT(LaunchWritePagedKvCuda(q.get(), stride, q.get(), row, zero.get<int32_t>(),
                                       zero.get<int32_t>(), 1, c.Tables(), view, nullptr),
                invalid)
        << stride;
    EXPECT_THAT(LaunchWritePagedKvCuda(q.get(), row, q.get(), stride, zero.get<int32_t>(),
                                       zero.get<int32_t>(), 1, c.Tables(), view, nullptr),
                invalid)
        << stride;
  }
  EXPECT_OK(LaunchPagedAttentionPrefillCuda(nullptr, nullptr, nullptr, 0, 64, 8, c.Tables(), view,
                                            anchors.set, mix, nullptr, nullptr));
  EXPECT_EQ(out.Download<uint16_t>(), sentinel);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace fp::kernels
