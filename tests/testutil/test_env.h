// Test environment helpers: source-tree paths and self-deleting temporary directories.
//
// Thread-safety: TempDir objects are not shared between threads.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "common/base/temp_dir.h"

namespace fp::testing {

// The source tree's root (CTest sets FP_SOURCE_DIR; aborts if it is missing).
std::filesystem::path SourceDir();
// The build tree's root (CTest sets FP_BINARY_DIR), where `fieldprint` is built.
std::filesystem::path BinaryDir();

// A fresh directory under $TMPDIR, removed with everything in it on destruction: a
// ScopedTempDir that aborts the test binary if it cannot be created.
class TempDir {
 public:
  TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return dir_->path(); }
  std::string Join(const std::string& name) const { return dir_->Join(name); }

 private:
  std::unique_ptr<ScopedTempDir> dir_;
};

}  // namespace fp::testing
