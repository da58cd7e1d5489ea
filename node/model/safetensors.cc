// Safetensors parsing and writing; see safetensors.h.
#include "node/model/safetensors.h"

#include <algorithm>
#include <cstring>

#include <boost/json.hpp>

namespace fp::node {
namespace json = boost::json;
namespace {

constexpr uint64_t kHeaderLengthBytes = 8;
constexpr size_t kAlignment = 8;

std::string Where(std::string_view file_name, std::string_view tensor) {
  std::string out = "safetensors " + std::string(file_name);
  if (!tensor.empty()) out += ", tensor '" + std::string(tensor) + "'";
  return out + ": ";
}

uint64_t LoadU64Le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "BF16") return DType::kBf16;
  if (name == "F16") return DType::kF16;
  if (name == "F32") return DType::kF32;
  return UnimplementedError("unsupported dtype " + std::string(name) +
                            " (supported: BF16, F16, F32)");
}

// A non-negative JSON integer, or -1.
int64_t NonNegativeInt(const json::value& v) {
  if (v.is_int64()) return v.get_int64() >= 0 ? v.get_int64() : -1;
  if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v.get_uint64());
  }
  return -1;
}

StatusOr<SafetensorsEntry> ParseEntry(std::string_view name, const json::value& v,
                                      uint64_t data_size, std::string_view file_name) {
  const std::string where = Where(file_name, name);
  if (name.empty() || name.size() > kMaxTensorNameBytes) {
    return InvalidArgumentError(where + "name must be 1 to 1024 bytes");
  }
  const json::object* obj = v.if_object();
  if (obj == nullptr) return InvalidArgumentError(where + "entry is not a JSON object");
  const json::value* dtype = obj->if_contains("dtype");
  const json::value* shape = obj->if_contains("shape");
  const json::value* offsets = obj->if_contains("data_offsets");
  if (dtype == nullptr || !dtype->is_string()) {
    return InvalidArgumentError(where + "missing string 'dtype'");
  }
  if (shape == nullptr || !shape->is_array() || shape->get_array().size() > kMaxTensorRank) {
    return InvalidArgumentError(where + "missing 'shape' array of rank <= 8");
  }
  if (offsets == nullptr || !offsets->is_array() || offsets->get_array().size() != 2) {
    return InvalidArgumentError(where + "missing 'data_offsets' [begin, end]");
  }
  SafetensorsEntry entry;
  entry.name = std::string(name);
  auto parsed_dtype = ParseDType(std::string_view(dtype->get_string()));
  if (!parsed_dtype.ok()) return parsed_dtype.status().WithContext(where);
  entry.dtype = *parsed_dtype;
  for (const json::value& d : shape->get_array()) {
    int64_t n = NonNegativeInt(d);
    if (n < 0) return InvalidArgumentError(where + "shape has a non-integer or negative entry");
    entry.shape.push_back(n);
  }
  int64_t elements = ShapeElements(entry.shape);
  int64_t begin = NonNegativeInt(offsets->get_array()[0]);
  int64_t end = NonNegativeInt(offsets->get_array()[1]);
  if (elements < 0) return InvalidArgumentError(where + "shape is too large");
  if (begin < 0 || end < begin) return InvalidArgumentError(where + "bad data_offsets");
  if (static_cast<uint64_t>(end) > data_size) {
    return InvalidArgumentError(where + "data_offsets end " + std::to_string(end) +
                                " is past the data section (" + std::to_string(data_size) +
                                " bytes)");
  }
  entry.begin = static_cast<uint64_t>(begin);
  entry.end = static_cast<uint64_t>(end);
  uint64_t expected = static_cast<uint64_t>(elements) * DTypeSize(entry.dtype);
  if (entry.end - entry.begin != expected) {
    return InvalidArgumentError(where + "holds " + std::to_string(entry.end - entry.begin) +
                                " bytes but shape " + ShapeString(entry.shape) + " of " +
                                std::string(DTypeName(entry.dtype)) + " needs " +
                                std::to_string(expected));
  }
  return entry;
}

StatusOr<std::map<std::string, std::string>> ParseMetadata(const json::value& v,
                                                           std::string_view file_name) {
  const json::object* obj = v.if_object();
  if (obj == nullptr) return InvalidArgumentError(Where(file_name, "") + "bad __metadata__");
  std::map<std::string, std::string> metadata;
  for (const auto& kv : *obj) {
    if (!kv.value().is_string()) {
      return InvalidArgumentError(Where(file_name, "") + "__metadata__ values must be strings");
    }
    metadata[std::string(kv.key())] = std::string(kv.value().get_string());
  }
  return metadata;
}

// The tensors, sorted by offset, must tile [0, data_size) exactly.
Status CheckTiling(std::vector<const SafetensorsEntry*> by_offset, uint64_t data_size,
                   std::string_view file_name) {
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < cursor) {
      return InvalidArgumentError(Where(file_name, e->name) + "data overlaps another tensor");
    }
    if (e->begin > cursor) {
      return InvalidArgumentError(Where(file_name, e->name) + "hole in the data before it");
    }
    cursor = e->end;
  }
  if (cursor != data_size) {
    return InvalidArgumentError(Where(file_name, "") + std::to_string(data_size - cursor) +
                                " trailing bytes after the last tensor");
  }
  return OkStatus();
}

}  // namespace

std::string_view SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF32:
      return "F32";
  }
  return "?";
}

StatusOr<SafetensorsHeader> ParseSafetensors(ByteSpan file, std::string_view file_name) {
  const std::string where = Where(file_name, "");
  if (file.size() < kHeaderLengthBytes) {
    return DataLossError(where + "file is " + std::to_string(file.size()) +
                         " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_bytes = LoadU64Le(file.data());
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    return InvalidArgumentError(where + "header length " + std::to_string(header_bytes) +
                                " exceeds the 100 MiB limit");
  }
  if (header_bytes > file.size() - kHeaderLengthBytes) {
    return DataLossError(where + "truncated: header needs " + std::to_string(header_bytes) +
                         " bytes, file has " + std::to_string(file.size() - kHeaderLengthBytes));
  }
  json::error_code ec;
  json::value root =
      json::parse(json::string_view(reinterpret_cast<const char*>(file.data()) + kHeaderLengthBytes,
                                    header_bytes),
                  ec);
  if (ec) return InvalidArgumentError(where + "header is not valid JSON: " + ec.message());
  const json::object* obj = root.if_object();
  if (obj == nullptr) return InvalidArgumentError(where + "header is not a JSON object");
  if (obj->size() > kMaxSafetensorsTensors) {
    return InvalidArgumentError(where + "too many tensors");
  }
  SafetensorsHeader header;
  header.data_start = kHeaderLengthBytes + header_bytes;
  uint64_t data_size = file.size() - header.data_start;
  for (const auto& kv : *obj) {
    if (kv.key() == "__metadata__") {
      FP_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(kv.value(), file_name));
      continue;
    }
    FP_ASSIGN_OR_RETURN(SafetensorsEntry entry,
                        ParseEntry(std::string_view(kv.key()), kv.value(), data_size, file_name));
    header.tensors.push_back(std::move(entry));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    if (header.tensors[i].name == header.tensors[i - 1].name) {
      return InvalidArgumentError(Where(file_name, header.tensors[i].name) + "duplicate name");
    }
  }
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : header.tensors) by_offset.push_back(&e);
  FP_RETURN_IF_ERROR(CheckTiling(std::move(by_offset), data_size, file_name));
  return header;
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  FP_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensors(file->bytes(), path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it =
      std::lower_bound(header_.tensors.begin(), header_.tensors.end(), name,
                       [](const SafetensorsEntry& e, std::string_view n) { return e.name < n; });
  return it != header_.tensors.end() && it->name == name ? &*it : nullptr;
}

Tensor SafetensorsFile::Load(const SafetensorsEntry& entry) const {
  ByteSpan bytes =
      file_->bytes().subspan(header_.data_start + entry.begin, entry.end - entry.begin);
  auto address = reinterpret_cast<uintptr_t>(bytes.data());
  if (address % DTypeSize(entry.dtype) == 0)
    return Tensor::View(entry.dtype, entry.shape, bytes.data());
  return Tensor::Copy(entry.dtype, entry.shape, bytes);
}

StatusOr<Bytes> SerializeSafetensors(std::span<const NamedTensor> tensors,
                                     const std::map<std::string, std::string>& metadata) {
  std::vector<const NamedTensor*> sorted;
  for (const NamedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  json::object header;
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const NamedTensor& t = *sorted[i];
    if (t.name.empty() || t.name == "__metadata__" || (i > 0 && t.name == sorted[i - 1]->name)) {
      return InvalidArgumentError("safetensors: empty, reserved or duplicate name '" + t.name +
                                  "'");
    }
    json::array shape;
    for (int64_t d : t.tensor->shape()) shape.push_back(d);
    uint64_t size = t.tensor->bytes_size();
    header[t.name] = {{"dtype", SafetensorsDTypeName(t.tensor->dtype())},
                      {"shape", std::move(shape)},
                      {"data_offsets", json::array{offset, offset + size}}};
    offset += size;
  }
  if (!metadata.empty()) {
    json::object meta;
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::string text = json::serialize(header);
  text.resize((text.size() + kAlignment - 1) / kAlignment * kAlignment, ' ');
  Bytes out;
  out.reserve(kHeaderLengthBytes + text.size() + offset);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i)));
  out.insert(out.end(), text.begin(), text.end());
  for (const NamedTensor* t : sorted) {
    ByteSpan b = t->tensor->bytes();
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

Status WriteSafetensors(const std::string& path, std::span<const NamedTensor> tensors,
                        const std::map<std::string, std::string>& metadata) {
  FP_ASSIGN_OR_RETURN(Bytes bytes, SerializeSafetensors(tensors, metadata));
  return WriteFileAtomically(path, bytes);
}

}  // namespace fp::node
