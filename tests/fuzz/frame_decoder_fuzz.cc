// libFuzzer target for the wire frame decoder (common/wire/frame.h). Built with clang and
// -fsanitize=fuzzer,address,undefined by tests/fuzz/CMakeLists.txt; run by the CTest
// fuzz_frame_decoder_smoke (tests/fuzz/run_fuzz_smoke.sh).
//
// Beyond "no crash, no sanitizer report", each input checks three properties:
//   1. split invariance: the input fed whole and fed in chunks gives the same envelopes and the
//      same final status, so no frame boundary or read size changes the outcome;
//   2. a dead decoder stays dead: after an error, more bytes give the same error and nothing else;
//   3. everything decoded is encodable again, and that frame decodes to the same message.
// A violated property aborts through FP_CHECK, which libFuzzer reports as a crash.
//
// Thread-safety: libFuzzer calls the entry point from one thread.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/wire/frame.h"

namespace fp::wire {
namespace {

struct Decoded {
  std::vector<pb::Envelope> envelopes;
  Status status;
  bool mid_frame = false;
};

// Feeds `input` in chunks of `chunk` bytes (the whole input at once for chunk 0).
Decoded Decode(ByteSpan input, size_t chunk) {
  Decoded result;
  FrameDecoder decoder;
  if (chunk == 0) chunk = input.size() + 1;
  for (size_t at = 0; at < input.size() && result.status.ok(); at += chunk) {
    result.status =
        decoder.Feed(input.subspan(at, std::min(chunk, input.size() - at)), result.envelopes);
  }
  result.mid_frame = decoder.mid_frame();
  if (!result.status.ok()) {
    const uint8_t more = 0;
    const size_t before = result.envelopes.size();
    const Status again = decoder.Feed(ByteSpan(&more, 1), result.envelopes);
    FP_CHECK(again.ToString() == result.status.ToString());
    FP_CHECK(result.envelopes.size() == before);
  }
  return result;
}

void CheckReencodes(const pb::Envelope& envelope) {
  StatusOr<Bytes> frame = EncodeFrame(envelope);
  FP_CHECK_OK(frame);
  FrameDecoder decoder;
  std::vector<pb::Envelope> again;
  FP_CHECK_OK(decoder.Feed(*frame, again));
  FP_CHECK(again.size() == 1);
  FP_CHECK(!decoder.mid_frame());
  FP_CHECK(again[0].SerializeAsString() == envelope.SerializeAsString());
}

}  // namespace
}  // namespace fp::wire

// Protobuf logs every proto3 string with invalid UTF-8 it rejects; at thousands of inputs a
// second that drowns libFuzzer's own output and slows it down.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using fp::wire::Decode;
  const fp::ByteSpan input(data, size);
  const fp::wire::Decoded whole = Decode(input, 0);
  // The chunk size comes from the input's length, so the corpus stays plain frames while
  // different inputs still exercise different splits.
  const fp::wire::Decoded split = Decode(input, 1 + size % 13);
  FP_CHECK(whole.status.ToString() == split.status.ToString());
  FP_CHECK(whole.envelopes.size() == split.envelopes.size());
  FP_CHECK(whole.mid_frame == split.mid_frame);
  for (size_t i = 0; i < whole.envelopes.size(); ++i) {
    FP_CHECK(whole.envelopes[i].SerializeAsString() == split.envelopes[i].SerializeAsString());
    fp::wire::CheckReencodes(whole.envelopes[i]);
  }
  return 0;
}
