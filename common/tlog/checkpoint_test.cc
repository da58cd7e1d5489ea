// Tests for C2SP checkpoints: the published example, round trips, strict parsing and signing.
#include "common/tlog/checkpoint.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"

namespace fp::tlog {
namespace {

using ::fp::testing::StatusIs;
using ::testing::ElementsAre;

// SHA-256("abc") (FIPS 180-2) in standard base64.
constexpr std::string_view kAbcHashBase64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

class CheckpointTest : public ::testing::Test {
 protected:
  CheckpointTest() {
    auto signer = NoteSigner::FromSeed("log.example/a", Sha256("checkpoint test key"));
    FP_CHECK_OK(signer);
    signers_.push_back(*std::move(signer));
    verifier_ = signers_[0].Verifier().ToString();
  }

  std::vector<NoteVerifier> Verifiers() const {
    auto verifier = NoteVerifier::Parse(verifier_);
    FP_CHECK_OK(verifier);
    return {*verifier};
  }

  static Checkpoint Example() {
    Checkpoint checkpoint;
    checkpoint.origin = "log.example/a";
    checkpoint.size = 5;
    checkpoint.root = Sha256("abc");
    return checkpoint;
  }

  std::vector<NoteSigner> signers_;
  std::string verifier_;
};

TEST_F(CheckpointTest, ParsesTheSpecExample) {
  // The checkpoint text of c2sp.org/tlog-checkpoint's example.
  ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint,
                       ParseCheckpoint("example.com/behind-the-sofa\n20852163\n"
                                       "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"));
  EXPECT_EQ(checkpoint.origin, "example.com/behind-the-sofa");
  EXPECT_EQ(checkpoint.size, 20852163u);
  EXPECT_EQ(Base64Encode(checkpoint.root), "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=");
  EXPECT_TRUE(checkpoint.extensions.empty());
}

TEST_F(CheckpointTest, FormatsTheExactLayout) {
  ASSERT_OK_AND_ASSIGN(std::string text, FormatCheckpoint(Example()));
  EXPECT_EQ(text, "log.example/a\n5\n" + std::string(kAbcHashBase64) + "\n");
}

TEST_F(CheckpointTest, RoundTripsWithExtensions) {
  Checkpoint checkpoint = Example();
  checkpoint.extensions = {"timestamp 1700000000", "\xE2\x80\x94 not a signature"};
  ASSERT_OK_AND_ASSIGN(std::string text, FormatCheckpoint(checkpoint));
  ASSERT_OK_AND_ASSIGN(Checkpoint parsed, ParseCheckpoint(text));
  EXPECT_EQ(parsed, checkpoint);
}

TEST_F(CheckpointTest, SizeBoundaries) {
  std::string root = "\n" + std::string(kAbcHashBase64) + "\n";
  ASSERT_OK_AND_ASSIGN(Checkpoint empty, ParseCheckpoint("o\n0" + root));
  EXPECT_EQ(empty.size, 0u);
  ASSERT_OK_AND_ASSIGN(Checkpoint largest, ParseCheckpoint("o\n18446744073709551615" + root));
  EXPECT_EQ(largest.size, UINT64_MAX);
  Checkpoint checkpoint = Example();
  checkpoint.size = UINT64_MAX;
  ASSERT_OK_AND_ASSIGN(std::string text, FormatCheckpoint(checkpoint));
  EXPECT_EQ(text, "log.example/a\n18446744073709551615" + root);
}

TEST_F(CheckpointTest, SignAndOpen) {
  Checkpoint checkpoint = Example();
  checkpoint.extensions = {"ext"};
  ASSERT_OK_AND_ASSIGN(std::string note, SignCheckpoint(checkpoint, signers_));
  EXPECT_TRUE(note.starts_with("log.example/a\n5\n" + std::string(kAbcHashBase64) + "\next\n\n"));
  ASSERT_OK_AND_ASSIGN(OpenedCheckpoint opened, OpenCheckpoint(note, Verifiers(), "log.example/a"));
  EXPECT_EQ(opened.checkpoint, checkpoint);
  EXPECT_THAT(opened.signed_by, ElementsAre(0));
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(CheckpointTest, MalformedTextIsRejected) {
  const std::string root(kAbcHashBase64);
  const std::vector<std::string> cases = {
      "",
      "o\n5\n",                                   // two lines
      "o\n5\n" + root,                            // no final newline
      "\n5\n" + root + "\n",                      // empty origin
      "o\n05\n" + root + "\n",                    // leading zero
      "o\n00\n" + root + "\n",                    // leading zero
      "o\n+5\n" + root + "\n",                    // sign
      "o\n-1\n" + root + "\n",                    // negative
      "o\n 5\n" + root + "\n",                    // space
      "o\n5 \n" + root + "\n",                    // space
      "o\n\n" + root + "\n",                      // empty size
      "o\n0x5\n" + root + "\n",                   // hex
      "o\n18446744073709551616\n" + root + "\n",  // 2^64
      "o\n99999999999999999999\n" + root + "\n",  // far over 2^64
      "o\n5\nAAAA\n",                             // 3 bytes
      "o\n5\n" + root.substr(0, 40) + "\n",       // 30 bytes
      "o\n5\n" + root + "AAAA\n",                 // 35 bytes
      "o\n5\n" + root.substr(0, 43) + "\n",       // missing padding
      "o\n5\n" + root + "\n\n",                   // empty extension line
      "o\n5\n" + root + "\nx\n\n",                // empty extension line at the end
      "o\n5\n" + root + "\ntab\there\n",          // control character
      "o\xFF\n5\n" + root + "\n",                 // invalid UTF-8
  };
  for (const std::string& text : cases) {
    EXPECT_THAT(ParseCheckpoint(text), StatusIs(StatusCode::kInvalidArgument)) << text;
  }
  // Base64 that is 32 bytes but not canonical (non-zero padding bits) is rejected too.
  std::string non_canonical = root;
  non_canonical[42] = 'b';
  EXPECT_THAT(ParseCheckpoint("o\n5\n" + non_canonical + "\n"),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CheckpointTest, FormatRejectsBadFields) {
  Checkpoint checkpoint = Example();
  checkpoint.origin = "";
  EXPECT_THAT(FormatCheckpoint(checkpoint), StatusIs(StatusCode::kInvalidArgument));
  checkpoint.origin = "two\nlines";
  EXPECT_THAT(FormatCheckpoint(checkpoint), StatusIs(StatusCode::kInvalidArgument));
  checkpoint.origin = "tab\tin origin";
  EXPECT_THAT(FormatCheckpoint(checkpoint), StatusIs(StatusCode::kInvalidArgument));
  checkpoint = Example();
  checkpoint.extensions = {""};
  EXPECT_THAT(FormatCheckpoint(checkpoint), StatusIs(StatusCode::kInvalidArgument));
  checkpoint.extensions = {"a\nb"};
  EXPECT_THAT(SignCheckpoint(checkpoint, signers_), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CheckpointTest, OpenRejectsOtherOriginsKeysAndTampering) {
  ASSERT_OK_AND_ASSIGN(std::string note, SignCheckpoint(Example(), signers_));
  EXPECT_THAT(OpenCheckpoint(note, Verifiers(), "log.example/b"),
              StatusIs(StatusCode::kUnauthenticated));

  ASSERT_OK_AND_ASSIGN(NoteSigner stranger, NoteSigner::Generate("log.example/a"));
  std::vector<NoteVerifier> wrong = {stranger.Verifier()};
  EXPECT_THAT(OpenCheckpoint(note, wrong, "log.example/a"), StatusIs(StatusCode::kUnauthenticated));

  std::string bigger = note;
  bigger[bigger.find("\n5\n") + 1] = '6';
  EXPECT_THAT(OpenCheckpoint(bigger, Verifiers(), "log.example/a"),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(CheckpointTest, OpenRejectsASignedNoteThatIsNotACheckpoint) {
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("log.example/a\nfive\n", signers_));
  EXPECT_THAT(OpenCheckpoint(note, Verifiers(), "log.example/a"),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::tlog
