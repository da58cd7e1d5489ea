// Frame encoder and incremental decoder; see frame.h.
#include "common/wire/frame.h"

#include <algorithm>

#include <fmt/format.h>

namespace fp::wire {
namespace {

constexpr size_t kVersionOffset = kFrameMagic.size();
constexpr size_t kLengthOffset = kVersionOffset + 1;
static_assert(kLengthOffset + 4 == kFrameHeaderBytes);
static_assert(kMaxFramePayloadBytes <= UINT32_MAX, "the length field is 32 bits");
static_assert(kMaxFramePayloadBytes <= INT32_MAX, "protobuf parses at most INT_MAX bytes");

// A decoder keeps its payload buffer between frames to avoid reallocating for every batch, but
// not one grown by a rare large frame: a supervisor holds one decoder per worker connection.
constexpr size_t kMaxRetainedPayloadCapacity = size_t{64} << 10;

}  // namespace

Status AppendFrame(const pb::Envelope& envelope, Bytes& out) {
  FP_RETURN_IF_ERROR(ValidateEnvelope(envelope));
  const size_t payload_size = envelope.ByteSizeLong();
  if (payload_size > kMaxFramePayloadBytes) {
    return InvalidArgumentError(
        fmt::format("{} envelope of {} bytes exceeds the {}-byte frame limit", BodyName(envelope),
                    payload_size, kMaxFramePayloadBytes));
  }
  const size_t start = out.size();
  out.insert(out.end(), kFrameMagic.begin(), kFrameMagic.end());
  out.push_back(kProtocolVersion);
  AppendU32(out, static_cast<uint32_t>(payload_size));
  out.resize(start + kFrameHeaderBytes + payload_size);
  uint8_t* payload = out.data() + start + kFrameHeaderBytes;
  // ByteSizeLong above cached the sizes this serializer relies on.
  const uint8_t* end = envelope.SerializeWithCachedSizesToArray(payload);
  FP_CHECK(end == payload + payload_size);
  return OkStatus();
}

StatusOr<Bytes> EncodeFrame(const pb::Envelope& envelope) {
  Bytes frame;
  FP_RETURN_IF_ERROR(AppendFrame(envelope, frame));
  return frame;
}

Status FrameDecoder::Feed(ByteSpan bytes, std::vector<pb::Envelope>& out) {
  if (!error_.ok()) return error_;
  Status status;
  for (;;) {
    if (header_filled_ < kFrameHeaderBytes) {
      if (bytes.empty()) break;
      status = ConsumeHeader(bytes);
      if (!status.ok() || header_filled_ < kFrameHeaderBytes) break;
    }
    if (payload_.empty() && bytes.size() >= payload_length_) {
      // The whole payload arrived in this read: parse it where it lies, without a copy.
      status = FinishFrame(bytes.first(payload_length_), out);
      bytes = bytes.subspan(payload_length_);
      if (!status.ok()) break;
      continue;
    }
    if (bytes.empty()) break;
    const size_t take = std::min(bytes.size(), payload_length_ - payload_.size());
    payload_.insert(payload_.end(), bytes.begin(), bytes.begin() + take);
    bytes = bytes.subspan(take);
    if (payload_.size() < payload_length_) break;
    status = FinishFrame(payload_, out);
    if (!status.ok()) break;
  }
  if (!status.ok()) {
    error_ = status;
    header_filled_ = 0;
    Bytes().swap(payload_);
  }
  return status;
}

Status FrameDecoder::ConsumeHeader(ByteSpan& bytes) {
  while (header_filled_ < kFrameHeaderBytes && !bytes.empty()) {
    const size_t at = header_filled_++;
    const uint8_t byte = bytes.front();
    bytes = bytes.subspan(1);
    header_[at] = byte;
    // Checked byte by byte so that a stranger's stream fails on its first byte, not after 8.
    if (at < kVersionOffset && byte != kFrameMagic[at]) {
      return DataLossError(fmt::format(
          "frame header: byte {} is 0x{:02x}, not the magic \"FPW\" of a fieldprint wire stream",
          at, byte));
    }
    if (at == kVersionOffset && byte != kProtocolVersion) {
      return InvalidArgumentError(
          fmt::format("frame header: protocol version {}, this build speaks version {}", byte,
                      kProtocolVersion));
    }
  }
  if (header_filled_ < kFrameHeaderBytes) return OkStatus();
  payload_length_ = LoadU32(header_.data() + kLengthOffset);
  if (payload_length_ > kMaxFramePayloadBytes) {
    return InvalidArgumentError(fmt::format("frame header: payload length {} exceeds the limit {}",
                                            payload_length_, kMaxFramePayloadBytes));
  }
  return OkStatus();
}

Status FrameDecoder::FinishFrame(ByteSpan payload, std::vector<pb::Envelope>& out) {
  pb::Envelope envelope;
  if (!envelope.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return DataLossError(
        fmt::format("frame payload: {} bytes are not a valid Envelope", payload.size()));
  }
  Status valid = ValidateEnvelope(envelope);
  if (!valid.ok()) return valid.WithContext("frame payload");
  header_filled_ = 0;
  payload_.clear();
  if (payload_.capacity() > kMaxRetainedPayloadCapacity) Bytes().swap(payload_);
  out.push_back(std::move(envelope));
  return OkStatus();
}

}  // namespace fp::wire
