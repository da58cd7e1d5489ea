// Tests the numerics profile encoding against bytes laid out by hand, and that every field
// reaches the hash.
#include "common/leaf/numerics_profile.h"

#include <functional>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::leaf {
namespace {

using ::fp::testing::StatusIs;

NumericsProfile SampleProfile() {
  NumericsProfile profile;
  profile.device_kind = "NVIDIA H100 80GB HBM3";
  profile.compute_capability_major = 9;
  profile.compute_capability_minor = 0;
  profile.kernel_build_id = "k1";
  profile.dtype = DType::kBf16;
  profile.determinism_mode = "batch_invariant";
  profile.model_weights_hash.fill(0xaa);
  profile.anchor_set_hash.fill(0xbb);
  profile.tensor_parallel_degree = 2;
  profile.quantize_bits = 7;
  profile.digest_scope = DigestScope::kHidden;
  return profile;
}

void PushLength(Bytes& out, uint32_t length) {
  out.push_back(static_cast<uint8_t>(length >> 24));
  out.push_back(static_cast<uint8_t>(length >> 16));
  out.push_back(static_cast<uint8_t>(length >> 8));
  out.push_back(static_cast<uint8_t>(length));
}

void PushText(Bytes& out, const std::string& text) {
  PushLength(out, static_cast<uint32_t>(text.size()));
  out.insert(out.end(), text.begin(), text.end());
}

class NumericsProfileTest : public ::testing::Test {};

TEST_F(NumericsProfileTest, EncodingMatchesHandLayout) {
  Bytes expected;
  PushText(expected, "fieldprint/numerics-profile");
  expected.insert(expected.end(), {0, 0, 0, 4, 0, 0, 0, 1});  // version 1
  PushText(expected, "NVIDIA H100 80GB HBM3");
  expected.insert(expected.end(), {0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0});  // capability 9.0
  PushText(expected, "k1");
  expected.insert(expected.end(), {0, 0, 0, 1, 1});  // dtype bf16
  PushText(expected, "batch_invariant");
  PushLength(expected, 32);
  expected.insert(expected.end(), 32, 0xaa);
  PushLength(expected, 32);
  expected.insert(expected.end(), 32, 0xbb);
  expected.insert(expected.end(), {0, 0, 0, 4, 0, 0, 0, 2});  // tensor parallel degree
  expected.insert(expected.end(), {0, 0, 0, 1, 7});           // quantize bits
  expected.insert(expected.end(), {0, 0, 0, 1, 1});           // digest scope hidden

  ASSERT_OK_AND_ASSIGN(Bytes encoding, EncodeNumericsProfile(SampleProfile()));
  EXPECT_EQ(HexEncode(encoding), HexEncode(expected));
  ASSERT_OK_AND_ASSIGN(Hash hash, NumericsProfileHash(SampleProfile()));
  EXPECT_EQ(hash, Sha256(expected));
}

TEST_F(NumericsProfileTest, EveryFieldChangesTheHash) {
  const std::vector<std::function<void(NumericsProfile&)>> changes = {
      [](NumericsProfile& p) { p.device_kind = "NVIDIA H200"; },
      [](NumericsProfile& p) { p.compute_capability_major = 8; },
      [](NumericsProfile& p) { p.compute_capability_minor = 1; },
      [](NumericsProfile& p) { p.kernel_build_id = "k2"; },
      [](NumericsProfile& p) { p.dtype = DType::kF16; },
      [](NumericsProfile& p) { p.determinism_mode = "run_to_run"; },
      [](NumericsProfile& p) { p.model_weights_hash[31] ^= 1; },
      [](NumericsProfile& p) { p.anchor_set_hash[0] ^= 1; },
      [](NumericsProfile& p) { p.tensor_parallel_degree = 4; },
      [](NumericsProfile& p) { p.quantize_bits = 6; },
      [](NumericsProfile& p) { p.digest_scope = DigestScope::kHiddenKv; },
  };
  std::set<Hash> hashes;
  ASSERT_OK_AND_ASSIGN(Hash base, NumericsProfileHash(SampleProfile()));
  hashes.insert(base);
  for (size_t i = 0; i < changes.size(); ++i) {
    NumericsProfile profile = SampleProfile();
    changes[i](profile);
    ASSERT_OK_AND_ASSIGN(Hash hash, NumericsProfileHash(profile));
    EXPECT_TRUE(hashes.insert(hash).second) << "change " << i << " collided";
  }
}

// Length prefixes keep text boundaries unambiguous: moving a character from one text field to
// its neighbour must change the encoding.
TEST_F(NumericsProfileTest, FieldBoundariesAreUnambiguous) {
  NumericsProfile a = SampleProfile();
  a.kernel_build_id = "ab";
  NumericsProfile b = SampleProfile();
  b.kernel_build_id = "a";
  b.device_kind = a.device_kind + "b";
  ASSERT_OK_AND_ASSIGN(Hash hash_a, NumericsProfileHash(a));
  ASSERT_OK_AND_ASSIGN(Hash hash_b, NumericsProfileHash(b));
  EXPECT_NE(hash_a, hash_b);
}

TEST_F(NumericsProfileTest, DigestScopeNamesRoundTrip) {
  for (DigestScope scope : {DigestScope::kHidden, DigestScope::kHiddenKv}) {
    ASSERT_OK_AND_ASSIGN(DigestScope parsed, ParseDigestScope(DigestScopeName(scope)));
    EXPECT_EQ(parsed, scope);
  }
  EXPECT_EQ(DigestScopeName(DigestScope::kHiddenKv), "hidden+kv");
}

// Error paths.

TEST_F(NumericsProfileTest, RejectsMalformedFields) {
  const std::vector<std::function<void(NumericsProfile&)>> breaks = {
      [](NumericsProfile& p) { p.device_kind.clear(); },
      [](NumericsProfile& p) { p.kernel_build_id = std::string(kMaxProfileStringBytes + 1, 'x'); },
      [](NumericsProfile& p) { p.determinism_mode = "line\nbreak"; },
      [](NumericsProfile& p) { p.tensor_parallel_degree = 0; },
      [](NumericsProfile& p) { p.quantize_bits = 8; },
      [](NumericsProfile& p) { p.quantize_bits = -1; },
      [](NumericsProfile& p) { p.digest_scope = static_cast<DigestScope>(9); },
      [](NumericsProfile& p) { p.dtype = static_cast<DType>(0); },
  };
  for (size_t i = 0; i < breaks.size(); ++i) {
    NumericsProfile profile = SampleProfile();
    breaks[i](profile);
    EXPECT_THAT(NumericsProfileHash(profile), StatusIs(StatusCode::kInvalidArgument))
        << "break " << i;
  }
}

TEST_F(NumericsProfileTest, RejectsUnknownDigestScopeName) {
  EXPECT_THAT(ParseDigestScope("kv"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseDigestScope("HIDDEN"), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::leaf
