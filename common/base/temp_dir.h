// ScopedTempDir: a fresh directory under $TMPDIR (or /tmp), removed with everything in it when
// the object is destroyed, unless released first. Tools (benchmarks, the demo) and tests use it.
//
// Thread-safety: an object is not shared between threads.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fp {

class ScopedTempDir {
 public:
  // Creates "<parent>/<prefix>-XXXXXX" (mkdtemp, mode 0700); an empty `parent` is $TMPDIR (or
  // /tmp). Unavailable if it cannot be created. The caller owns the result.
  static StatusOr<std::unique_ptr<ScopedTempDir>> Create(std::string_view prefix,
                                                         const std::filesystem::path& parent = {});
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string Join(std::string_view name) const { return (path_ / name).string(); }
  // Keeps the directory on destruction (its owner now removes it) and returns its path.
  std::filesystem::path Release();

 private:
  explicit ScopedTempDir(std::filesystem::path path) : path_(std::move(path)) {}
  std::filesystem::path path_;
  bool released_ = false;
};

}  // namespace fp
