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
  StatusOr<std::unique_ptr<ScopedTempDir>> dir = ScopedTempDir::Create("fieldprint-test");
  FP_CHECK_OK(dir);
  dir_ = std::move(dir).value();
}

}  // namespace fp::testing
