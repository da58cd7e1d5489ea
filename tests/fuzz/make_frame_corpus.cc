// Writes the seed corpus of the frame decoder fuzzer (tests/fuzz/corpus/frame_decoder/): valid
// frames of every message type, a stream of all of them, truncated frames, and the bad inputs
// the decoder must reject (wrong magic, wrong version, oversized length, garbage and invalid
// payloads). Deterministic: rerunning it rewrites identical files.
//
//   build-fuzz/make_frame_corpus tests/fuzz/corpus/frame_decoder
//
// Thread-safety: a single-threaded command-line program.
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "common/base/bytes.h"
#include "common/wire/frame.h"
#include "common/wire/wire_samples.h"

namespace fp::wire {
namespace {

void Write(const std::string& dir, const std::string& name, ByteSpan bytes) {
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  FP_CHECK_MSG(out.good(), "cannot write " + path);
}

Bytes Header(uint8_t version, uint32_t length) {
  Bytes header(kFrameMagic.begin(), kFrameMagic.end());
  header.push_back(version);
  AppendU32(header, length);
  return header;
}

// A frame around `payload` without the encoder's validation.
Bytes RawFrame(const std::string& payload) {
  Bytes frame = Header(kProtocolVersion, static_cast<uint32_t>(payload.size()));
  frame.insert(frame.end(), payload.begin(), payload.end());
  return frame;
}

Bytes Encode(const pb::Envelope& envelope) {
  StatusOr<Bytes> frame = EncodeFrame(envelope);
  FP_CHECK_OK(frame);
  return *std::move(frame);
}

void WriteValid(const std::string& dir) {
  Bytes stream;
  for (const pb::Envelope& sample : SampleEnvelopes()) {
    const Bytes frame = Encode(sample);
    Write(dir, "valid_" + std::string(BodyName(sample)), frame);
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  Write(dir, "valid_stream_all_types", stream);
  Write(dir, "valid_leaf_batch_64_steps", Encode(SampleLeafBatch(64)));
  pb::Envelope window = SampleLeafBatch(1);
  pb::LeafBatch* batch = window.mutable_leaf_batch();
  batch->clear_token_ids();
  for (uint32_t step = 0; step < 40; ++step) batch->add_token_ids(step);
  batch->set_state_digests(std::string(3 * kDigestBytes, '\x33'));  // windows of 16: 16+16+8
  batch->set_window_steps(16);
  Write(dir, "valid_leaf_batch_window_16", Encode(window));
}

void WriteInvalid(const std::string& dir) {
  const Bytes assign = Encode(SampleEnvelopes()[2]);
  Write(dir, "truncated_header", ByteSpan(assign).first(5));
  Write(dir, "truncated_payload", ByteSpan(assign).first(assign.size() / 2));
  Write(dir, "oversized_length", Header(kProtocolVersion, kMaxFramePayloadBytes + 1));
  Write(dir, "max_length_header_only", Header(kProtocolVersion, kMaxFramePayloadBytes));
  Bytes wrong_version = Encode(SampleEnvelopes()[1]);
  wrong_version[3] = kProtocolVersion + 1;
  Write(dir, "wrong_version", wrong_version);
  Write(dir, "wrong_magic_http", AsBytes("GET / HTTP/1.1\r\nHost: supervisor-0\r\n\r\n"));
  Write(dir, "garbage_payload", RawFrame(std::string("\x22\x05\x0a\xff\xff", 5)));
  Write(dir, "empty_payload", RawFrame(""));
  pb::Envelope bad = SampleLeafBatch(3);
  bad.mutable_leaf_batch()->mutable_state_digests()->pop_back();
  Write(dir, "invalid_leaf_batch_digest_length", RawFrame(bad.SerializeAsString()));
  pb::Envelope nan = SampleEnvelopes()[2];
  nan.mutable_assign()->mutable_sampling()->set_temperature(
      std::numeric_limits<float>::quiet_NaN());
  Write(dir, "invalid_assign_nan_temperature", RawFrame(nan.SerializeAsString()));
}

}  // namespace
}  // namespace fp::wire

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  fp::wire::WriteValid(argv[1]);
  fp::wire::WriteInvalid(argv[1]);
  return 0;
}
