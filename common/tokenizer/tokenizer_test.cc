// Tests for the tokenizers: byte-level round trips, a real SentencePiece model trained here
// with libsentencepiece's trainer, raw id parsing, and the folder lookup.
#include "common/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include "common/base/bytes.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::tokenizer {
namespace {

using ::fp::testing::StatusIs;

// Writes a whole test file.
Status WriteTestFile(const std::string& path, ByteSpan bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  return out ? OkStatus() : UnavailableError("cannot write " + path);
}

class TokenizerTest : public ::testing::Test {
 protected:
  // Trains a small BPE model on a fixed corpus into DIR/tokenizer.model.
  static void TrainSentencePiece(const std::string& dir, int vocab_size) {
    std::string corpus = dir + "/corpus.txt";
    {
      std::ofstream out(corpus);
      for (int i = 0; i < 50; ++i) {
        out << "the quick brown fox jumps over the lazy dog\n"
            << "a verification service for language model inference\n"
            << "replicas compare step leaves and roll back on divergence\n";
      }
    }
    auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus + " --model_prefix=" + dir + "/tokenizer --vocab_size=" +
        std::to_string(vocab_size) + " --model_type=bpe --minloglevel=2");
    ASSERT_TRUE(status.ok()) << status.ToString();
  }
};

TEST_F(TokenizerTest, ByteTokenizerRoundTrips) {
  ByteTokenizer t(260, 256, 257);
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, t.Encode("hi\xff", /*add_bos=*/true));
  EXPECT_EQ(ids, std::vector<int32_t>({256, 'h', 'i', 255}));
  std::vector<int32_t> with_eos = ids;
  with_eos.push_back(257);
  ASSERT_OK_AND_ASSIGN(std::string text, t.Decode(with_eos));
  EXPECT_EQ(text, "hi\xff");  // specials produce no text
  ASSERT_OK_AND_ASSIGN(ids, t.Encode("", /*add_bos=*/false));
  EXPECT_TRUE(ids.empty());
}

TEST_F(TokenizerTest, ByteTokenizerLoadsFromFolder) {
  testing::TempDir dir;
  ByteTokenizer t(260, 256, 257);
  std::string json = t.ToJson();
  ASSERT_OK(WriteTestFile(dir.Join(kByteTokenizerFile), AsBytes(json)));
  ASSERT_OK_AND_ASSIGN(auto loaded, LoadTokenizer(dir.path().string(), 260));
  EXPECT_EQ(loaded->vocab_size(), 260);
  EXPECT_EQ(loaded->bos_id(), 256);
  EXPECT_EQ(loaded->eos_id(), 257);
}

TEST_F(TokenizerTest, SentencePieceRoundTrips) {
  testing::TempDir dir;
  TrainSentencePiece(dir.path().string(), 80);
  ASSERT_OK_AND_ASSIGN(auto t, LoadTokenizer(dir.path().string(), 80));
  EXPECT_EQ(t->vocab_size(), 80);
  ASSERT_TRUE(t->bos_id().has_value());
  const std::string text = "the lazy fox compares step leaves";
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, t->Encode(text, /*add_bos=*/true));
  EXPECT_EQ(ids.front(), *t->bos_id());
  EXPECT_LT(ids.size(), text.size());  // merges made pieces longer than one byte
  for (int32_t id : ids) EXPECT_LT(id, 80);
  ASSERT_OK_AND_ASSIGN(std::string back, t->Decode(ids));
  EXPECT_EQ(back, text);
}

TEST_F(TokenizerTest, SentencePieceTakesPrecedenceOverByteFile) {
  testing::TempDir dir;
  TrainSentencePiece(dir.path().string(), 80);
  std::string json = ByteTokenizer(260, 256, 257).ToJson();
  ASSERT_OK(WriteTestFile(dir.Join(kByteTokenizerFile), AsBytes(json)));
  ASSERT_OK_AND_ASSIGN(auto t, LoadTokenizer(dir.path().string(), 260));
  EXPECT_EQ(t->vocab_size(), 80);
}

TEST_F(TokenizerTest, ParsesTokenIds) {
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, ParseTokenIds("1,2, 3 ,259", 260));
  EXPECT_EQ(ids, std::vector<int32_t>({1, 2, 3, 259}));
  ASSERT_OK_AND_ASSIGN(ids, ParseTokenIds("0", 260));
  EXPECT_EQ(ids, std::vector<int32_t>({0}));
}

// Error paths.

TEST_F(TokenizerTest, BadTokenIdsAreRejected) {
  EXPECT_THAT(ParseTokenIds("", 260), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseTokenIds("1,,2", 260), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseTokenIds("1,x", 260), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseTokenIds("260", 260), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseTokenIds("-1", 260), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseTokenIds("99999999999", 260), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(TokenizerTest, DecodeRejectsIdsOutsideVocabulary) {
  ByteTokenizer t(260, 256, 257);
  std::vector<int32_t> ids = {1, 300};
  EXPECT_THAT(t.Decode(ids), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(TokenizerTest, FolderWithoutTokenizerIsNotFound) {
  testing::TempDir dir;
  EXPECT_THAT(LoadTokenizer(dir.path().string(), 260), StatusIs(StatusCode::kNotFound));
}

TEST_F(TokenizerTest, MalformedFilesAreRejected) {
  testing::TempDir dir;
  ASSERT_OK(WriteTestFile(dir.Join(kByteTokenizerFile),
                          AsBytes(R"({"type":"byte","vocab_size":260,"bos_token_id":3,)"
                                  R"("eos_token_id":257})")));
  EXPECT_THAT(LoadTokenizer(dir.path().string(), 260), StatusIs(StatusCode::kInvalidArgument));
  ASSERT_OK(WriteTestFile(dir.Join("tokenizer.model"), AsBytes("not a model")));
  EXPECT_THAT(LoadTokenizer(dir.path().string(), 260), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(TokenizerTest, TokenizerLargerThanModelIsRejected) {
  testing::TempDir dir;
  TrainSentencePiece(dir.path().string(), 80);
  EXPECT_THAT(LoadTokenizer(dir.path().string(), 50), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::tokenizer
