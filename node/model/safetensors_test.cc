// Tests for safetensors parsing and writing: round trips, and every malformed layout the
// parser must reject with a message naming the file and tensor.
#include "node/model/safetensors.h"

#include <cstring>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node {
namespace {

using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

// A file assembled by hand: 8-byte little-endian length, header text, data bytes.
Bytes MakeFile(const std::string& header, size_t data_bytes) {
  Bytes out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<uint8_t>(i));
  return out;
}

class SafetensorsTest : public ::testing::Test {};

TEST_F(SafetensorsTest, ParsesHandWrittenFile) {
  Bytes file =
      MakeFile(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
               R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"k":"v"}})",
               12);
  ASSERT_OK_AND_ASSIGN(SafetensorsHeader h, ParseSafetensors(file, "f.safetensors"));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");  // sorted by name
  EXPECT_EQ(h.tensors[0].dtype, DType::kBf16);
  EXPECT_EQ(h.tensors[0].shape, Shape({2}));
  EXPECT_EQ(h.tensors[1].begin, 4u);
  EXPECT_EQ(h.tensors[1].end, 12u);
  EXPECT_EQ(h.metadata.at("k"), "v");
  EXPECT_EQ(h.data_start, file.size() - 12);
}

TEST_F(SafetensorsTest, RoundTripsThroughWriterAndMappedFile) {
  testing::TempDir dir;
  Tensor a = Tensor::Zeros(DType::kF32, {2, 3});
  for (int i = 0; i < 6; ++i) a.mutable_data_as<float>()[i] = static_cast<float>(i) * 0.5f;
  Tensor b = Tensor::Zeros(DType::kBf16, {3});
  b.mutable_data_as<uint16_t>()[1] = 0x3f80;
  std::vector<NamedTensor> named = {{"z.weight", &a}, {"a.weight", &b}};
  ASSERT_OK(WriteSafetensors(dir.Join("m.safetensors"), named, {{"format", "pt"}}));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir.Join("m.safetensors")));
  EXPECT_EQ(file->header().data_start % 8, 0u);  // header padded so tensors are aligned
  const SafetensorsEntry* za = file->Find("z.weight");
  ASSERT_NE(za, nullptr);
  Tensor loaded = file->Load(*za);
  // "a.weight" (6 bytes) comes first, so z's f32 data sits at offset 6: misaligned, so copied.
  EXPECT_TRUE(loaded.owning());
  EXPECT_EQ(loaded.shape(), Shape({2, 3}));
  EXPECT_EQ(std::memcmp(loaded.data(), a.data(), a.bytes_size()), 0);
  EXPECT_EQ(file->Load(*file->Find("a.weight")).data_as<uint16_t>()[1], 0x3f80);
  EXPECT_EQ(file->Find("missing"), nullptr);
  EXPECT_EQ(file->header().metadata.at("format"), "pt");
}

TEST_F(SafetensorsTest, AlignedTensorIsAViewIntoTheMapping) {
  testing::TempDir dir;
  Tensor a = Tensor::Zeros(DType::kF32, {4});
  a.mutable_data_as<float>()[3] = 7.0f;
  std::vector<NamedTensor> named = {{"a", &a}};
  ASSERT_OK(WriteSafetensors(dir.Join("m.safetensors"), named, {}));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir.Join("m.safetensors")));
  Tensor loaded = file->Load(*file->Find("a"));
  EXPECT_FALSE(loaded.owning());
  EXPECT_EQ(loaded.data_as<float>()[3], 7.0f);
}

TEST_F(SafetensorsTest, EmptyTensorIsAllowed) {
  Bytes file = MakeFile(R"({"e":{"dtype":"F16","shape":[0,4],"data_offsets":[0,0]}})", 0);
  ASSERT_OK_AND_ASSIGN(SafetensorsHeader h, ParseSafetensors(file, "f"));
  EXPECT_EQ(h.tensors[0].shape, Shape({0, 4}));
}

// Error paths.

TEST_F(SafetensorsTest, FileShorterThanLengthPrefixIsDataLoss) {
  Bytes file = {1, 2, 3};
  EXPECT_THAT(ParseSafetensors(file, "short.safetensors"), StatusIs(StatusCode::kDataLoss));
}

TEST_F(SafetensorsTest, TruncatedHeaderIsDataLoss) {
  Bytes file = MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  file.resize(20);
  auto result = ParseSafetensors(file, "cut.safetensors");
  EXPECT_THAT(result, StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("cut.safetensors"));
}

TEST_F(SafetensorsTest, TruncatedDataNamesTheTensor) {
  Bytes file = MakeFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 10);
  auto result = ParseSafetensors(file, "f.safetensors");
  EXPECT_THAT(result, StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("tensor 'w'"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("past the data section"));
}

TEST_F(SafetensorsTest, HugeHeaderLengthIsRejected) {
  Bytes file(16, 0xff);
  EXPECT_THAT(ParseSafetensors(file, "f"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, BadJsonIsRejected) {
  EXPECT_THAT(ParseSafetensors(MakeFile("{not json", 0), "f"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(MakeFile("[1,2]", 0), "f"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(MakeFile(R"({"a":3})", 0), "f"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, MissingFieldsAreRejected) {
  EXPECT_THAT(ParseSafetensors(MakeFile(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(MakeFile(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(MakeFile(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, UnsupportedDtypeIsUnimplemented) {
  Bytes file = MakeFile(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(ParseSafetensors(file, "f"), StatusIs(StatusCode::kUnimplemented));
}

TEST_F(SafetensorsTest, ShapeAndByteCountMustAgree) {
  Bytes file = MakeFile(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  EXPECT_THAT(ParseSafetensors(file, "f"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, NegativeOrReversedOffsetsAreRejected) {
  EXPECT_THAT(ParseSafetensors(
                  MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(
                  MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSafetensors(
                  MakeFile(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "f"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, OverlapHoleAndTrailingBytesAreRejected) {
  const char* overlap = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_THAT(ParseSafetensors(MakeFile(overlap, 8), "f"), StatusIs(StatusCode::kInvalidArgument));
  const char* hole = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_THAT(ParseSafetensors(MakeFile(hole, 8), "f"), StatusIs(StatusCode::kInvalidArgument));
  const char* trailing = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_THAT(ParseSafetensors(MakeFile(trailing, 8), "f"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, OverflowingShapeIsRejected) {
  Bytes file =
      MakeFile(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4);
  EXPECT_THAT(ParseSafetensors(file, "f"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  EXPECT_THAT(SafetensorsFile::Open("/nonexistent/x.safetensors"), StatusIs(StatusCode::kNotFound));
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  Tensor a = Tensor::Zeros(DType::kF32, {1});
  std::vector<NamedTensor> named = {{"a", &a}, {"a", &a}};
  EXPECT_THAT(SerializeSafetensors(named, {}), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::node
