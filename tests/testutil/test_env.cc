// Test environment helpers; see test_env.h.
#include "tests/testutil/test_env.h"

#include <cstdlib>

#include "common/base/status.h"

namespace fp::testing {
namespace {
std::filesystem::path EnvPath(const char* name) {
  const char* value = std::getenv(name);
  FP_CHECK_MSG(value != nullptr, std::string(name) + " is not set; run tests through ctest");
  return value;
}
}  // namespace

std::filesystem::path SourceDir() { return EnvPath("FP_SOURCE_DIR"); }
std::filesystem::path BinaryDir() { return EnvPath("FP_BINARY_DIR"); }

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base ? base : "/tmp") + "/fieldprint-test-XXXXXX";
  FP_CHECK(::mkdtemp(pattern.data()) != nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace fp::testing
