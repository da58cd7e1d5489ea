// Tests the canonical step leaf layout byte by byte, its leaf hash, strict parsing, and SessionId.
#include "common/leaf/step_leaf.h"

#include <gtest/gtest.h>

#include "common/leaf/session_id.h"
#include "tests/testutil/status_matchers.h"

namespace fp::leaf {
namespace {

using ::fp::testing::StatusIs;

StepLeaf SampleLeaf() {
  StepLeaf leaf;
  for (size_t i = 0; i < kSessionIdSize; ++i) leaf.session_id[i] = static_cast<uint8_t>(0x10 + i);
  leaf.step = 0x0102030405060708ull;
  leaf.token_id = 0xa1b2c3d4u;
  for (size_t i = 0; i < kHashSize; ++i) leaf.state_digest[i] = static_cast<uint8_t>(0xe0 ^ i);
  return leaf;
}

Bytes SampleLeafBytesByHand() {
  Bytes expected = {0x01};  // leaf type
  for (uint8_t i = 0; i < 16; ++i) expected.push_back(static_cast<uint8_t>(0x10 + i));
  expected.insert(expected.end(), {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08});
  expected.insert(expected.end(), {0xa1, 0xb2, 0xc3, 0xd4});
  for (uint8_t i = 0; i < 32; ++i) expected.push_back(static_cast<uint8_t>(0xe0 ^ i));
  return expected;
}

class StepLeafTest : public ::testing::Test {};

TEST_F(StepLeafTest, FixedLayoutKnownAnswer) {
  const StepLeafBytes bytes = EncodeStepLeaf(SampleLeaf());
  const Bytes expected = SampleLeafBytesByHand();
  ASSERT_EQ(expected.size(), 61u);
  EXPECT_EQ(HexEncode(ByteSpan(bytes)), HexEncode(expected));
}

TEST_F(StepLeafTest, LeafHashIsSha256OfZeroPrefixAndBytes) {
  Bytes preimage = {0x00};
  const Bytes bytes = SampleLeafBytesByHand();
  preimage.insert(preimage.end(), bytes.begin(), bytes.end());
  EXPECT_EQ(StepLeafHash(SampleLeaf()), Sha256(preimage));
}

TEST_F(StepLeafTest, DecodeRoundTrips) {
  const StepLeafBytes bytes = EncodeStepLeaf(SampleLeaf());
  ASSERT_OK_AND_ASSIGN(StepLeaf decoded, DecodeStepLeaf(bytes));
  EXPECT_EQ(decoded, SampleLeaf());
}

TEST_F(StepLeafTest, EveryFieldChangesTheLeafHash) {
  const Hash base = StepLeafHash(SampleLeaf());
  StepLeaf leaf = SampleLeaf();
  leaf.session_id[15] ^= 1;
  EXPECT_NE(StepLeafHash(leaf), base);
  leaf = SampleLeaf();
  leaf.step += 1;
  EXPECT_NE(StepLeafHash(leaf), base);
  leaf = SampleLeaf();
  leaf.token_id ^= 0x80000000u;
  EXPECT_NE(StepLeafHash(leaf), base);
  leaf = SampleLeaf();
  leaf.state_digest[0] ^= 1;
  EXPECT_NE(StepLeafHash(leaf), base);
}

class SessionIdTest : public ::testing::Test {};

TEST_F(SessionIdTest, HexRoundTripIsLowerCase) {
  const SessionId id = SampleLeaf().session_id;
  EXPECT_EQ(SessionIdToHex(id), "101112131415161718191a1b1c1d1e1f");
  ASSERT_OK_AND_ASSIGN(SessionId parsed, SessionIdFromHex("101112131415161718191A1B1C1D1E1F"));
  EXPECT_EQ(parsed, id);
}

TEST_F(SessionIdTest, NewIdsAreDistinct) {
  ASSERT_OK_AND_ASSIGN(SessionId a, NewSessionId());
  ASSERT_OK_AND_ASSIGN(SessionId b, NewSessionId());
  EXPECT_NE(a, b);
}

// Error paths.

TEST_F(StepLeafTest, DecodeRejectsWrongLengths) {
  const Bytes good = SampleLeafBytesByHand();
  for (size_t size : {size_t{0}, size_t{1}, size_t{60}, size_t{62}, size_t{128}}) {
    Bytes bytes = good;
    bytes.resize(size, 0x00);
    EXPECT_THAT(DecodeStepLeaf(bytes), StatusIs(StatusCode::kInvalidArgument)) << size;
  }
}

TEST_F(StepLeafTest, DecodeRejectsOtherLeafTypes) {
  Bytes bytes = SampleLeafBytesByHand();
  for (uint8_t type : {0x00, 0x02, 0xff}) {
    bytes[0] = type;
    EXPECT_THAT(DecodeStepLeaf(bytes), StatusIs(StatusCode::kInvalidArgument)) << int{type};
  }
}

TEST_F(SessionIdTest, FromHexRejectsBadText) {
  EXPECT_THAT(SessionIdFromHex(""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SessionIdFromHex("101112131415161718191a1b1c1d1e1"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SessionIdFromHex("101112131415161718191a1b1c1d1e1f00"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SessionIdFromHex("101112131415161718191a1b1c1d1e1g"),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::leaf
