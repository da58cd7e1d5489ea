// ScopedTempDir; see temp_dir.h.
#include "common/base/temp_dir.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace fp {

StatusOr<std::unique_ptr<ScopedTempDir>> ScopedTempDir::Create(
    std::string_view prefix, const std::filesystem::path& parent) {
  const char* tmp = std::getenv("TMPDIR");
  const std::filesystem::path base = !parent.empty()                    ? parent
                                     : (tmp != nullptr && *tmp != '\0') ? tmp
                                                                        : "/tmp";
  std::string pattern = (base / (std::string(prefix) + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return UnavailableError("cannot create a temporary directory " + pattern + ": " +
                            std::strerror(errno));
  }
  return std::unique_ptr<ScopedTempDir>(new ScopedTempDir(pattern));
}

ScopedTempDir::~ScopedTempDir() {
  if (released_) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::filesystem::path ScopedTempDir::Release() {
  released_ = true;
  return path_;
}

}  // namespace fp
