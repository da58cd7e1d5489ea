// libfp_sentencepiece.so: the C shim over libsentencepiece; see
// internal/sentencepiece_shim.h for why it exists and its contract. Exceptions (only
// std::bad_alloc can arise) are caught here and turned into error returns.
#include "common/tokenizer/internal/sentencepiece_shim.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

namespace {

void SetError(char* error, size_t error_size, const std::string& message) {
  if (error == nullptr || error_size == 0) return;
  size_t n = std::min(message.size(), error_size - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

const sentencepiece::SentencePieceProcessor* Processor(const void* handle) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(handle);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* fp_spm_load(const char* path, char* error,
                                                         size_t error_size) {
  try {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    auto status = sp->Load(path);
    if (!status.ok()) {
      SetError(error, error_size, status.ToString());
      return nullptr;
    }
    return sp.release();
  } catch (...) {
    SetError(error, error_size, "out of memory loading the model");
    return nullptr;
  }
}

__attribute__((visibility("default"))) void fp_spm_free(void* processor) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(processor);
}

__attribute__((visibility("default"))) int32_t fp_spm_piece_size(const void* processor) {
  return Processor(processor)->GetPieceSize();
}

__attribute__((visibility("default"))) int32_t fp_spm_bos_id(const void* processor) {
  return Processor(processor)->bos_id();
}

__attribute__((visibility("default"))) int32_t fp_spm_eos_id(const void* processor) {
  return Processor(processor)->eos_id();
}

__attribute__((visibility("default"))) int64_t fp_spm_encode(const void* processor,
                                                             const char* text, size_t text_size,
                                                             int32_t* ids, size_t capacity,
                                                             char* error, size_t error_size) {
  try {
    std::vector<int> pieces;
    auto status = Processor(processor)->Encode(absl::string_view(text, text_size), &pieces);
    if (!status.ok()) {
      SetError(error, error_size, status.ToString());
      return -1;
    }
    for (size_t i = 0; i < pieces.size() && i < capacity; ++i) ids[i] = pieces[i];
    return static_cast<int64_t>(pieces.size());
  } catch (...) {
    SetError(error, error_size, "out of memory encoding");
    return -1;
  }
}

__attribute__((visibility("default"))) int64_t fp_spm_decode(const void* processor,
                                                             const int32_t* ids, size_t count,
                                                             char* text, size_t capacity,
                                                             char* error, size_t error_size) {
  try {
    std::vector<int> pieces(ids, ids + count);
    std::string out;
    auto status = Processor(processor)->Decode(pieces, &out);
    if (!status.ok()) {
      SetError(error, error_size, status.ToString());
      return -1;
    }
    if (capacity > 0) std::memcpy(text, out.data(), std::min(out.size(), capacity));
    return static_cast<int64_t>(out.size());
  } catch (...) {
    SetError(error, error_size, "out of memory decoding");
    return -1;
  }
}

}  // extern "C"
