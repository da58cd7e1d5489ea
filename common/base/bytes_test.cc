#include "common/base/bytes.h"

#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp {
namespace {

using ::fp::testing::StatusIs;

TEST(BytesTest, HexRoundTrip) {
  Bytes bytes = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(HexEncode(bytes), "0001abff");
  ASSERT_OK_AND_ASSIGN(Bytes decoded, HexDecode("0001ABff"));
  EXPECT_EQ(decoded, bytes);
}

TEST(BytesTest, HexRejectsOddLengthAndBadCharacters) {
  EXPECT_THAT(HexDecode("abc"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(HexDecode("zz"), StatusIs(StatusCode::kInvalidArgument));
}

// RFC 4648 section 10 test vectors.
TEST(BytesTest, Base64Rfc4648Vectors) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(Base64Encode(AsBytes(plain)), encoded);
    ASSERT_OK_AND_ASSIGN(Bytes decoded, Base64Decode(encoded));
    EXPECT_EQ(std::string(AsChars(decoded)), plain);
  }
}

TEST(BytesTest, Base64RejectsMalformedInput) {
  EXPECT_THAT(Base64Decode("Zm9"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64Decode("Zm9v\n"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64Decode("Z==="), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64Decode("Zm=v"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Base64Decode("Zh=="), StatusIs(StatusCode::kInvalidArgument));  // non-canonical
}

TEST(BytesTest, BigEndianIntegers) {
  Bytes out;
  AppendU32(out, 0x01020304);
  AppendU64(out, 0x1122334455667788ull);
  EXPECT_EQ(HexEncode(out), "010203041122334455667788");
  EXPECT_EQ(LoadU32(out.data()), 0x01020304u);
  EXPECT_EQ(LoadU64(out.data() + 4), 0x1122334455667788ull);
}

}  // namespace
}  // namespace fp
