// The canonical step leaf; see step_leaf.h.
#include "common/leaf/step_leaf.h"

#include <algorithm>
#include <string>

#include "common/merkle/merkle.h"

namespace fp::leaf {
namespace {

constexpr size_t kSessionIdOffset = 1;
constexpr size_t kStepOffset = kSessionIdOffset + kSessionIdSize;
constexpr size_t kTokenIdOffset = kStepOffset + 8;
constexpr size_t kStateDigestOffset = kTokenIdOffset + 4;
static_assert(kStateDigestOffset + kHashSize == kStepLeafSize);

void StoreBigEndian(uint8_t* out, uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(value);
    value >>= 8;
  }
}

}  // namespace

StepLeafBytes EncodeStepLeaf(const StepLeaf& leaf) {
  StepLeafBytes out;
  out[0] = kStepLeafType;
  std::copy(leaf.session_id.begin(), leaf.session_id.end(), out.begin() + kSessionIdOffset);
  StoreBigEndian(out.data() + kStepOffset, leaf.step, 8);
  StoreBigEndian(out.data() + kTokenIdOffset, leaf.token_id, 4);
  std::copy(leaf.state_digest.begin(), leaf.state_digest.end(), out.begin() + kStateDigestOffset);
  return out;
}

StatusOr<StepLeaf> DecodeStepLeaf(ByteSpan bytes) {
  if (bytes.size() != kStepLeafSize) {
    return InvalidArgumentError("step leaf must be " + std::to_string(kStepLeafSize) +
                                " bytes, got " + std::to_string(bytes.size()));
  }
  if (bytes[0] != kStepLeafType) {
    return InvalidArgumentError("not a step leaf: type byte " + std::to_string(bytes[0]) +
                                ", expected " + std::to_string(kStepLeafType));
  }
  StepLeaf leaf;
  std::copy_n(bytes.begin() + kSessionIdOffset, kSessionIdSize, leaf.session_id.begin());
  leaf.step = LoadU64(bytes.data() + kStepOffset);
  leaf.token_id = LoadU32(bytes.data() + kTokenIdOffset);
  std::copy_n(bytes.begin() + kStateDigestOffset, kHashSize, leaf.state_digest.begin());
  return leaf;
}

Hash StepLeafHash(const StepLeaf& leaf) { return merkle::LeafHash(EncodeStepLeaf(leaf)); }

}  // namespace fp::leaf
