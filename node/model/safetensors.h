// Safetensors: parsing (with every bound checked) and writing of the Hugging Face tensor file
// format, for model weights and anchor sets.
//
// Format (https://huggingface.co/docs/safetensors/index#format): an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON mapping tensor names to {"dtype", "shape", "data_offsets":
// [begin, end]} (offsets relative to the byte after the header) plus an optional
// "__metadata__" string map, then the data. The parser requires the tensors to tile the data
// section exactly (no overlap, no hole, nothing after), as the reference implementation does.
// Only BF16, F16 and F32 are accepted; any other dtype is Unimplemented.
//
// Thread-safety: ParseSafetensors and SerializeSafetensors are pure; a SafetensorsFile is
// immutable after Open and may be read from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "node/model/mapped_file.h"
#include "node/tensor.h"

namespace fp::node {

// The format's own limit on the JSON header (safetensors rejects larger headers).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100 << 20;
inline constexpr size_t kMaxSafetensorsTensors = 1 << 16;
inline constexpr size_t kMaxTensorNameBytes = 1024;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offset from the start of the data section
  uint64_t end = 0;    // one past the last byte
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section (8 + header length)
};

// Parses and validates the whole layout of a safetensors file held in `file`. Every error is
// InvalidArgument (DataLoss for a file cut short) and names `file_name` and, where one is at
// fault, the tensor; an unsupported dtype is Unimplemented.
StatusOr<SafetensorsHeader> ParseSafetensors(ByteSpan file, std::string_view file_name);

// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  // Maps and validates `path`; errors as MappedFile::Open and ParseSafetensors. Caller owns.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return file_->path(); }
  // The entry named `name`, or null (borrowed from this file).
  const SafetensorsEntry* Find(std::string_view name) const;
  // A tensor over the entry's bytes: a view into the mapping when its address is aligned for
  // the dtype (the common case), an owning copy otherwise. A view lives no longer than this.
  Tensor Load(const SafetensorsEntry& entry) const;

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
      : file_(std::move(file)), header_(std::move(header)) {}

  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
};

// A tensor to write, by name (borrowed for the duration of the call).
struct NamedTensor {
  std::string name;
  const Tensor* tensor;
};

// Serialises `tensors` (written in name order, header padded with spaces to 8 bytes so every
// tensor starts aligned) with `metadata`. InvalidArgument on an empty or duplicate name.
StatusOr<Bytes> SerializeSafetensors(std::span<const NamedTensor> tensors,
                                     const std::map<std::string, std::string>& metadata);
// SerializeSafetensors then WriteFileAtomically.
Status WriteSafetensors(const std::string& path, std::span<const NamedTensor> tensors,
                        const std::map<std::string, std::string>& metadata);

// "BF16", "F16", "F32".
std::string_view SafetensorsDTypeName(DType dtype);

}  // namespace fp::node
