// Framing of wire envelopes on a byte stream: an encoder and a pure incremental decoder.
// Spec: docs/formats.md, section "Wire frames".
//
//   offset 0: 'F' 'P' 'W'          magic: this is a fieldprint wire stream
//   offset 3: version (1 byte)     kProtocolVersion
//   offset 4: length (u32, BE)     payload bytes, at most kMaxFramePayloadBytes
//   offset 8: payload              one serialized fieldprint.wire.Envelope
//
// The decoder does no I/O: it is fed whatever bytes a read returned (any split, even one byte at
// a time) and yields each envelope once its frame is complete. It rejects a stream as soon as the
// bytes seen prove it bad: a wrong magic byte or version at once, an oversized length from the
// header alone (before buffering any payload), then an unparseable or invalid payload. Every
// envelope it yields has passed ValidateEnvelope.
//
// Thread-safety: the free functions are pure; a FrameDecoder belongs to one stream and is not
// shared between threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/wire/envelope.h"

namespace fp::wire {

inline constexpr std::array<uint8_t, 3> kFrameMagic = {'F', 'P', 'W'};
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr size_t kMaxFramePayloadBytes = size_t{4} << 20;
inline constexpr size_t kMaxFrameBytes = kFrameHeaderBytes + kMaxFramePayloadBytes;

// Worst-case protobuf cost of one per-step leaf: a 5-byte varint token id (packed) plus its
// digest; 1 KiB covers every other field of the batch. A full batch must fit one frame.
static_assert(kMaxLeafBatchSteps * (5 + kDigestBytes) + 1024 <= kMaxFramePayloadBytes);
// A largest Assign: prompt and replay tokens at 5 bytes each, plus names and hashes.
static_assert(2 * kMaxSessionTokens * 5 + kMaxStopTokens * 5 + 4096 <= kMaxFramePayloadBytes);

// Appends one frame carrying `envelope` to `out`. InvalidArgument if the envelope fails
// ValidateEnvelope or its payload would exceed kMaxFramePayloadBytes; `out` is unchanged then.
Status AppendFrame(const pb::Envelope& envelope, Bytes& out);
// One frame carrying `envelope`, with AppendFrame's errors.
StatusOr<Bytes> EncodeFrame(const pb::Envelope& envelope);

class FrameDecoder {
 public:
  FrameDecoder() = default;
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Consumes `bytes` and appends to `out` every envelope whose frame they complete, in stream
  // order. Returns OK, or the first error found:
  //   DataLoss         bad magic (not a fieldprint stream), or a payload that is not an Envelope;
  //   InvalidArgument  unsupported version, a length over kMaxFramePayloadBytes, or an envelope
  //                    that fails ValidateEnvelope.
  // Envelopes completed before the bad frame are still appended. After an error the decoder is
  // dead: this and every later call return that same error and consume nothing.
  Status Feed(ByteSpan bytes, std::vector<pb::Envelope>& out);

  // True while part of a frame is buffered: a stream that ends now was cut mid-frame.
  bool mid_frame() const { return header_filled_ > 0; }
  // Bytes of the current partial frame held so far (at most kMaxFrameBytes).
  size_t buffered_bytes() const { return header_filled_ + payload_.size(); }
  // OK while the decoder is alive, else the error that killed it.
  const Status& status() const { return error_; }

 private:
  // Takes header bytes from `bytes` (advancing it); checks each as it arrives.
  Status ConsumeHeader(ByteSpan& bytes);
  // Parses and validates one complete payload, then resets for the next frame.
  Status FinishFrame(ByteSpan payload, std::vector<pb::Envelope>& out);

  std::array<uint8_t, kFrameHeaderBytes> header_{};
  size_t header_filled_ = 0;     // 0 between frames; kFrameHeaderBytes once the header is read
  uint32_t payload_length_ = 0;  // valid once the header is complete
  Bytes payload_;                // payload bytes of a frame that arrived in pieces
  Status error_;
};

}  // namespace fp::wire
