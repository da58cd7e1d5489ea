#include "common/base/temp_dir.h"

#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp {
namespace {

namespace fs = std::filesystem;
using ::fp::testing::StatusIs;

TEST(ScopedTempDirTest, RemovedWithContentOnDestruction) {
  fs::path path;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> dir, ScopedTempDir::Create("fp-tmp"));
    path = dir->path();
    EXPECT_TRUE(fs::is_directory(path));
    EXPECT_EQ(path.filename().string().rfind("fp-tmp-", 0), 0u);
    fs::create_directories(dir->Join("a/b"));
    std::ofstream(dir->Join("a/b/file")) << "x";
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(ScopedTempDirTest, ReleaseKeepsTheDirectory) {
  fs::path kept;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> dir, ScopedTempDir::Create("fp-tmp"));
    kept = dir->Release();
  }
  EXPECT_TRUE(fs::is_directory(kept));
  fs::remove_all(kept);
}

TEST(ScopedTempDirTest, HonoursTmpdirAndReportsFailure) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> parent, ScopedTempDir::Create("fp-tmp"));
  const char* old = std::getenv("TMPDIR");
  std::string saved = old != nullptr ? old : "";
  ::setenv("TMPDIR", parent->path().c_str(), 1);
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> child, ScopedTempDir::Create("fp-tmp"));
    EXPECT_EQ(child->path().parent_path(), parent->path());
  }
  ::setenv("TMPDIR", parent->Join("missing").c_str(), 1);
  EXPECT_THAT(ScopedTempDir::Create("fp-tmp"), StatusIs(StatusCode::kUnavailable));
  if (old != nullptr) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
}

TEST(ScopedTempDirTest, AGivenParentWinsOverTmpdir) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> parent, ScopedTempDir::Create("fp-tmp"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ScopedTempDir> child,
                       ScopedTempDir::Create("fp-child", parent->path()));
  EXPECT_EQ(child->path().parent_path(), parent->path());
  EXPECT_THAT(ScopedTempDir::Create("fp-child", parent->Join("missing")),
              StatusIs(StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fp
