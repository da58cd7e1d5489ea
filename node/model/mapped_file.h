// MappedFile: a read-only, private memory map of a whole file (model weights are gigabytes, so
// they are paged in on demand rather than read).
//
// Thread-safety: immutable after Open; the bytes may be read from any thread.
#pragma once

#include <memory>
#include <string>

#include "common/base/bytes.h"
#include "common/base/status.h"

namespace fp::node {

class MappedFile {
 public:
  // Maps `path`. NotFound if it does not exist, PermissionDenied if it cannot be opened,
  // Internal for any other OS failure. An empty file maps to an empty span. The caller owns the
  // result; spans from bytes() die with it.
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  ByteSpan bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_;  // owned mapping (null when size_ == 0)
  size_t size_;
};

// Reads a whole small file (configs, indexes). NotFound if it does not exist, InvalidArgument if
// it is larger than `max_bytes`, Internal on any other OS failure.
StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes);

// Writes `bytes` to `path` atomically (a temporary file in the same folder, fsync, rename), so a
// crash never leaves a half-written model or anchor file. Internal on any OS failure.
Status WriteFileAtomically(const std::string& path, ByteSpan bytes);

}  // namespace fp::node
