// Tests of the frame encoder and the incremental decoder (frame.h). Expected headers are built by
// hand from the spec in docs/formats.md; payloads are compared with protobuf's own
// MessageDifferencer.
#include "common/wire/frame.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "common/wire/wire_samples.h"
#include "tests/testutil/status_matchers.h"

namespace fp::wire {
namespace {

using ::fp::testing::StatusIs;
using ::google::protobuf::util::MessageDifferencer;

// The spec's header, written out independently of the encoder.
Bytes SpecHeader(uint8_t version, uint32_t length) {
  return {'F',
          'P',
          'W',
          version,
          static_cast<uint8_t>(length >> 24),
          static_cast<uint8_t>(length >> 16),
          static_cast<uint8_t>(length >> 8),
          static_cast<uint8_t>(length)};
}

// A frame around arbitrary payload bytes, bypassing the encoder's validation.
Bytes RawFrame(std::string_view payload, uint8_t version = 1) {
  Bytes frame = SpecHeader(version, static_cast<uint32_t>(payload.size()));
  frame.insert(frame.end(), payload.begin(), payload.end());
  return frame;
}

Bytes Concat(const std::vector<Bytes>& parts) {
  Bytes all;
  for (const Bytes& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

class FrameDecoderTest : public ::testing::Test {
 protected:
  // Frames of every sample, each encoded on its own, and their concatenation.
  void SetUp() override {
    samples_ = SampleEnvelopes();
    std::vector<Bytes> frames;
    for (const pb::Envelope& sample : samples_) {
      ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(sample));
      frames.push_back(std::move(frame));
    }
    stream_ = Concat(frames);
  }

  void ExpectSamples(const std::vector<pb::Envelope>& decoded) {
    ASSERT_EQ(decoded.size(), samples_.size());
    for (size_t i = 0; i < decoded.size(); ++i) {
      EXPECT_TRUE(MessageDifferencer::Equals(decoded[i], samples_[i])) << "envelope " << i;
    }
  }

  std::vector<pb::Envelope> samples_;
  Bytes stream_;
  FrameDecoder decoder_;
  std::vector<pb::Envelope> out_;
};

TEST_F(FrameDecoderTest, HeaderFollowsSpec) {
  for (const pb::Envelope& sample : samples_) {
    ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(sample));
    const std::string payload = sample.SerializeAsString();
    EXPECT_EQ(frame, RawFrame(payload)) << BodyName(sample);
  }
}

TEST_F(FrameDecoderTest, SpecExampleHeartbeat) {
  // docs/formats.md: a Heartbeat with sequence 1, byte for byte.
  const Bytes spec = {0x46, 0x50, 0x57, 0x01, 0x00, 0x00, 0x00, 0x04, 0x12, 0x02, 0x08, 0x01};
  pb::Envelope heartbeat;
  heartbeat.mutable_heartbeat()->set_sequence(1);
  ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(heartbeat));
  EXPECT_EQ(frame, spec);
  ASSERT_OK(decoder_.Feed(spec, out_));
  ASSERT_EQ(out_.size(), 1u);
  EXPECT_EQ(out_[0].heartbeat().sequence(), 1u);
}

TEST_F(FrameDecoderTest, RoundTripsEveryMessageType) {
  ASSERT_OK(decoder_.Feed(stream_, out_));
  ExpectSamples(out_);
  EXPECT_FALSE(decoder_.mid_frame());
  EXPECT_EQ(decoder_.buffered_bytes(), 0u);
}

TEST_F(FrameDecoderTest, AppendFrameAppendsToExistingBytes) {
  Bytes out = {0xee};
  ASSERT_OK(AppendFrame(samples_[0], out));
  ASSERT_OK_AND_ASSIGN(Bytes alone, EncodeFrame(samples_[0]));
  ASSERT_EQ(out.size(), alone.size() + 1);
  EXPECT_EQ(out[0], 0xee);
  EXPECT_TRUE(std::equal(alone.begin(), alone.end(), out.begin() + 1));
}

TEST_F(FrameDecoderTest, SplitAtEveryByteBoundary) {
  const ByteSpan all(stream_);
  for (size_t split = 0; split <= all.size(); ++split) {
    FrameDecoder decoder;
    std::vector<pb::Envelope> out;
    ASSERT_OK(decoder.Feed(all.first(split), out));
    ASSERT_OK(decoder.Feed(all.subspan(split), out));
    ExpectSamples(out);
    ASSERT_FALSE(decoder.mid_frame()) << "split " << split;
  }
}

TEST_F(FrameDecoderTest, OneByteAtATime) {
  for (uint8_t byte : stream_) ASSERT_OK(decoder_.Feed(ByteSpan(&byte, 1), out_));
  ExpectSamples(out_);
}

TEST_F(FrameDecoderTest, TruncatedFrameStaysPending) {
  ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(samples_[2]));
  const ByteSpan all(frame);
  for (size_t cut : {size_t{1}, size_t{7}, size_t{8}, all.size() - 1}) {
    FrameDecoder decoder;
    std::vector<pb::Envelope> out;
    ASSERT_OK(decoder.Feed(all.first(cut), out));
    EXPECT_TRUE(out.empty());
    EXPECT_TRUE(decoder.mid_frame());
    EXPECT_EQ(decoder.buffered_bytes(), cut);
    ASSERT_OK(decoder.Feed(all.subspan(cut), out));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(MessageDifferencer::Equals(out[0], samples_[2]));
  }
}

TEST_F(FrameDecoderTest, LargestLeafBatchFitsOneFrame) {
  pb::Envelope batch = SampleLeafBatch(kMaxLeafBatchSteps);
  // Every token id at its widest varint encoding.
  for (int i = 0; i < batch.leaf_batch().token_ids_size(); ++i) {
    batch.mutable_leaf_batch()->set_token_ids(i, UINT32_MAX);
  }
  ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(batch));
  EXPECT_LE(frame.size(), kMaxFrameBytes);
  ASSERT_OK(decoder_.Feed(frame, out_));
  ASSERT_EQ(out_.size(), 1u);
  EXPECT_TRUE(MessageDifferencer::Equals(out_[0], batch));
}

TEST_F(FrameDecoderTest, LengthAtTheLimitIsBuffered) {
  ASSERT_OK(decoder_.Feed(SpecHeader(1, kMaxFramePayloadBytes), out_));
  EXPECT_TRUE(decoder_.mid_frame());
  EXPECT_OK(decoder_.status());
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(FrameDecoderTest, OversizedLengthIsRejectedFromTheHeaderAlone) {
  const Bytes header = SpecHeader(1, kMaxFramePayloadBytes + 1);
  EXPECT_THAT(decoder_.Feed(header, out_), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(decoder_.buffered_bytes(), 0u);
  EXPECT_THAT(decoder_.Feed(SpecHeader(1, UINT32_MAX), out_),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(FrameDecoderTest, WrongMagicIsRejectedAtTheFirstByte) {
  const uint8_t get = 'G';
  EXPECT_THAT(decoder_.Feed(ByteSpan(&get, 1), out_), StatusIs(StatusCode::kDataLoss));
  FrameDecoder http;
  EXPECT_THAT(http.Feed(AsBytes("GET / HTTP/1.1\r\n"), out_), StatusIs(StatusCode::kDataLoss));
  FrameDecoder third_byte;
  EXPECT_THAT(third_byte.Feed(AsBytes("FPX"), out_), StatusIs(StatusCode::kDataLoss));
  EXPECT_TRUE(out_.empty());
}

TEST_F(FrameDecoderTest, WrongVersionIsRejected) {
  const std::string payload = samples_[1].SerializeAsString();
  for (uint8_t version : {0, 2, 255}) {
    FrameDecoder decoder;
    EXPECT_THAT(decoder.Feed(RawFrame(payload, version), out_),
                StatusIs(StatusCode::kInvalidArgument));
  }
  EXPECT_TRUE(out_.empty());
}

TEST_F(FrameDecoderTest, GarbagePayloadIsDataLoss) {
  // Field 0 does not exist in protobuf, and wire type 7 is undefined.
  for (std::string_view garbage : {std::string_view("\x00\x01", 2), std::string_view("\xff\xff"),
                                   std::string_view("\x0f"), std::string_view("\x22\x05\x0a")}) {
    FrameDecoder decoder;
    EXPECT_THAT(decoder.Feed(RawFrame(garbage), out_), StatusIs(StatusCode::kDataLoss));
  }
  EXPECT_TRUE(out_.empty());
}

TEST_F(FrameDecoderTest, EmptyPayloadIsInvalid) {
  EXPECT_THAT(decoder_.Feed(RawFrame(""), out_), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(FrameDecoderTest, ParseableButInvalidEnvelopeIsRejected) {
  pb::Envelope bad = SampleLeafBatch(3);
  bad.mutable_leaf_batch()->mutable_state_digests()->pop_back();
  EXPECT_THAT(decoder_.Feed(RawFrame(bad.SerializeAsString()), out_),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_TRUE(out_.empty());
}

TEST_F(FrameDecoderTest, DecoderIsDeadAfterAnError) {
  ASSERT_OK_AND_ASSIGN(Bytes good, EncodeFrame(samples_[0]));
  const Bytes stream = Concat({good, RawFrame("\xff\xff"), good});
  const Status first = decoder_.Feed(stream, out_);
  EXPECT_THAT(first, StatusIs(StatusCode::kDataLoss));
  // The frame before the bad one was delivered; the one after it was not.
  EXPECT_EQ(out_.size(), 1u);
  const Status again = decoder_.Feed(good, out_);
  EXPECT_EQ(again.ToString(), first.ToString());
  EXPECT_EQ(decoder_.status().ToString(), first.ToString());
  EXPECT_EQ(out_.size(), 1u);
}

TEST_F(FrameDecoderTest, EncoderRejectsInvalidEnvelope) {
  pb::Envelope bad = samples_[4];
  bad.mutable_ack()->set_session_id("short");
  Bytes out = {1, 2, 3};
  EXPECT_THAT(AppendFrame(bad, out), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(out, (Bytes{1, 2, 3}));
  EXPECT_THAT(EncodeFrame(pb::Envelope()), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(FrameDecoderTest, EncoderRejectsOversizedEnvelope) {
  // Validated fields cannot reach the limit; unknown fields kept from a newer peer can.
  pb::Envelope big = samples_[1];
  big.GetReflection()->MutableUnknownFields(&big)->AddLengthDelimited(
      1000, std::string(kMaxFramePayloadBytes, 'x'));
  EXPECT_THAT(EncodeFrame(big), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::wire
