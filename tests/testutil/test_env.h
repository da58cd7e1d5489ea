// Test environment helpers: source-tree paths and self-deleting temporary directories.
//
// Thread-safety: TempDir objects are not shared between threads.
#pragma once

#include <filesystem>
#include <string>

namespace fp::testing {

// The source tree's root (CTest sets FP_SOURCE_DIR; aborts if it is missing).
std::filesystem::path SourceDir();
// The build tree's root (CTest sets FP_BINARY_DIR), where `fieldprint` is built.
std::filesystem::path BinaryDir();

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string Join(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace fp::testing
