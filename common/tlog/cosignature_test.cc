// Tests of C2SP tlog-cosignature (Ed25519, cosignature/v1): a known answer made with Go's
// crypto/ed25519 (an independent implementation), the signed message rebuilt by hand and checked
// with a raw Ed25519 key, round trips through signed checkpoints, the k-of-n policy, tampering,
// domain separation from ordinary note keys, and bad arguments.
#include "common/tlog/cosignature.h"

#include <gtest/gtest.h>

#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"

namespace fp::tlog {
namespace {

using ::fp::testing::StatusIs;

// Known answer: Go 1.19 crypto/ed25519 + crypto/sha256, seed bytes 0x01..0x20, name
// "witness.example/w1", timestamp 1700000000, over kKnownText.
constexpr std::string_view kKnownName = "witness.example/w1";
constexpr std::string_view kKnownText =
    "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
constexpr uint64_t kKnownTimestamp = 1700000000;
constexpr uint32_t kKnownKeyId = 0x468d99bb;
constexpr std::string_view kKnownVkey =
    "witness.example/w1+468d99bb+BHm1Vi6P5lT5QHixEuipi6eQH4U65pW+1+DjkQutBJZk";
constexpr std::string_view kKnownLine =
    "\u2014 witness.example/w1 "
    "Ro2ZuwAAAABlU/EAQ5PWXTLhD8kBiINR+OzFsPyLFVDpYDqFVsLZEHqK0PlxsURHWtCCyTzh79YchL2V/"
    "EIYMxX9EMHzYjKNvhjbCg==\n";

Bytes Seed(uint8_t first) {
  Bytes seed(32);
  for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(first + i);
  return seed;
}

class CosignatureTest : public ::testing::Test {
 protected:
  CosignatureTest() {
    auto log = NoteSigner::FromSeed("example.com/log", Seed(100));
    FP_CHECK_OK(log);
    log_signers_.push_back(std::move(log).value());
    log_verifiers_.push_back(log_signers_[0].Verifier());
    for (uint8_t i = 0; i < 3; ++i) {
      auto cosigner = Cosigner::FromSeed("supervisor-" + std::to_string(i), Seed(10 * (i + 1)));
      FP_CHECK_OK(cosigner);
      cosigners_.push_back(std::move(cosigner).value());
      verifiers_.push_back(cosigners_.back().Verifier());
    }
    checkpoint_.origin = "example.com/log";
    checkpoint_.size = 42;
    checkpoint_.root = Sha256(AsBytes(std::string_view("root")));
  }

  // The checkpoint signed by the log and cosigned by cosigners_[first, last).
  std::string Note(size_t first, size_t last, uint64_t timestamp = 1000) {
    auto signed_note = SignCheckpoint(checkpoint_, log_signers_);
    FP_CHECK_OK(signed_note);
    auto cosigned = AddCosignatures(
        *signed_note, std::span<const Cosigner>(cosigners_).subspan(first, last - first),
        timestamp);
    FP_CHECK_OK(cosigned);
    return *cosigned;
  }
  CosignaturePolicy Policy(size_t required) const {
    CosignaturePolicy policy;
    policy.cosigners = verifiers_;
    policy.required = required;
    return policy;
  }

  std::vector<NoteSigner> log_signers_;
  std::vector<NoteVerifier> log_verifiers_;
  std::vector<Cosigner> cosigners_;
  std::vector<CosignatureVerifier> verifiers_;
  Checkpoint checkpoint_;
};

TEST_F(CosignatureTest, KnownAnswerFromGoCryptoEd25519) {
  ASSERT_OK_AND_ASSIGN(Cosigner cosigner, Cosigner::FromSeed(kKnownName, Seed(1)));
  const CosignatureVerifier verifier = cosigner.Verifier();
  EXPECT_EQ(verifier.key_id(), kKnownKeyId);
  EXPECT_EQ(verifier.ToString(), kKnownVkey);
  ASSERT_OK_AND_ASSIGN(std::string line, cosigner.CosignatureLine(kKnownText, kKnownTimestamp));
  EXPECT_EQ(line, kKnownLine);
}

TEST_F(CosignatureTest, KnownAnswerSplitIntoPartsFormatsTheKnownLine) {
  ASSERT_OK_AND_ASSIGN(Cosigner cosigner, Cosigner::FromSeed(kKnownName, Seed(1)));
  ASSERT_OK_AND_ASSIGN(Cosignature parts, cosigner.Cosign(kKnownText, kKnownTimestamp));
  EXPECT_EQ(parts.name, kKnownName);
  EXPECT_EQ(parts.key_id, kKnownKeyId);
  EXPECT_EQ(parts.timestamp, kKnownTimestamp);
  EXPECT_EQ(FormatCosignatureLine(parts), kKnownLine);
}

TEST_F(CosignatureTest, PrivateKeyStringRoundTrips) {
  ASSERT_OK_AND_ASSIGN(Cosigner cosigner, Cosigner::FromSeed(kKnownName, Seed(1)));
  // Written out from the format: the Go signer key shape with the 0x04 algorithm byte.
  Bytes key = {0x04};
  const Bytes seed = Seed(1);
  key.insert(key.end(), seed.begin(), seed.end());
  const std::string expected =
      "PRIVATE+KEY+" + std::string(kKnownName) + "+468d99bb+" + Base64Encode(key);
  EXPECT_EQ(cosigner.ToString(), expected);
  ASSERT_OK_AND_ASSIGN(Cosigner parsed, Cosigner::Parse(expected));
  EXPECT_EQ(parsed.Verifier().ToString(), kKnownVkey);
  ASSERT_OK_AND_ASSIGN(std::string line, parsed.CosignatureLine(kKnownText, kKnownTimestamp));
  EXPECT_EQ(line, kKnownLine);
  ASSERT_OK_AND_ASSIGN(Cosigner fresh, Cosigner::Generate("fresh"));
  ASSERT_OK_AND_ASSIGN(Cosigner reparsed, Cosigner::Parse(fresh.ToString()));
  EXPECT_EQ(reparsed.Verifier().ToString(), fresh.Verifier().ToString());
}

TEST_F(CosignatureTest, KnownVkeyVerifiesTheKnownLine) {
  ASSERT_OK_AND_ASSIGN(CosignatureVerifier verifier, CosignatureVerifier::Parse(kKnownVkey));
  EXPECT_EQ(verifier.name(), kKnownName);
  const std::string_view encoded = kKnownLine.substr(kKnownLine.rfind(' ') + 1);
  ASSERT_OK_AND_ASSIGN(Bytes blob, Base64Decode(encoded.substr(0, encoded.size() - 1)));
  ASSERT_EQ(blob.size(), 4 + kCosignatureBytes);
  EXPECT_EQ(LoadU32(blob.data()), kKnownKeyId);
  const ByteSpan cosignature = ByteSpan(blob).subspan(4);
  EXPECT_EQ(verifier.Verify(kKnownText, cosignature), std::optional<uint64_t>(kKnownTimestamp));
  EXPECT_EQ(verifier.Verify("example.com/log\n6\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
                            cosignature),
            std::nullopt);
}

TEST_F(CosignatureTest, SignedMessageIsTheSpecsThreePartMessage) {
  // Rebuilt by hand from the spec and checked with a raw Ed25519 key, not with Verify.
  ASSERT_OK_AND_ASSIGN(std::string line, cosigners_[0].CosignatureLine(kKnownText, 1679315147));
  const std::string_view encoded = std::string_view(line).substr(line.rfind(' ') + 1);
  ASSERT_OK_AND_ASSIGN(Bytes blob, Base64Decode(encoded.substr(0, encoded.size() - 1)));
  ASSERT_EQ(blob.size(), 76u);
  EXPECT_EQ(LoadU64(blob.data() + 4), 1679315147u);
  const std::string message =
      std::string("cosignature/v1\ntime 1679315147\n") + std::string(kKnownText);
  ASSERT_OK_AND_ASSIGN(Ed25519PublicKey key, Ed25519PublicKey::FromRaw(verifiers_[0].public_key()));
  EXPECT_TRUE(key.Verify(AsBytes(message), ByteSpan(blob).subspan(12)));
  // The key ID: SHA-256(name || "\n" || 0x04 || key)[:4].
  Bytes preimage(AsBytes(std::string_view("supervisor-0\n")).begin(),
                 AsBytes(std::string_view("supervisor-0\n")).end());
  preimage.push_back(0x04);
  preimage.insert(preimage.end(), verifiers_[0].public_key().begin(),
                  verifiers_[0].public_key().end());
  EXPECT_EQ(LoadU32(blob.data()), LoadU32(Sha256(preimage).data()));
}

TEST_F(CosignatureTest, RoundTripThroughASignedCheckpoint) {
  const std::string note = Note(0, 3, 1234);
  ASSERT_OK_AND_ASSIGN(CosignedCheckpoint opened,
                       OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", Policy(3)));
  EXPECT_EQ(opened.checkpoint, checkpoint_);
  EXPECT_EQ(opened.signed_by, std::vector<size_t>{0});
  EXPECT_EQ(opened.cosigned_by, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(opened.timestamps, (std::vector<uint64_t>{1234, 1234, 1234}));
  // Cosignature lines are ordinary note lines to a plain note verifier: the log key still opens.
  ASSERT_OK(OpenCheckpoint(note, log_verifiers_, "example.com/log").status());
}

TEST_F(CosignatureTest, KOfNCountsDistinctKnownCosigners) {
  const std::string two = Note(1, 3);
  ASSERT_OK_AND_ASSIGN(CosignedCheckpoint opened,
                       OpenCosignedCheckpoint(two, log_verifiers_, "example.com/log", Policy(2)));
  EXPECT_EQ(opened.cosigned_by, (std::vector<size_t>{1, 2}));
  EXPECT_THAT(OpenCosignedCheckpoint(two, log_verifiers_, "example.com/log", Policy(3)),
              StatusIs(StatusCode::kUnauthenticated));
  // The same cosigner twice is one cosigner.
  ASSERT_OK_AND_ASSIGN(
      std::string twice,
      AddCosignatures(Note(0, 1), std::span<const Cosigner>(cosigners_).first(1), 2000));
  EXPECT_THAT(OpenCosignedCheckpoint(twice, log_verifiers_, "example.com/log", Policy(2)),
              StatusIs(StatusCode::kUnauthenticated));
  // A cosigner the policy does not know is ignored.
  ASSERT_OK_AND_ASSIGN(Cosigner stranger, Cosigner::FromSeed("stranger", Seed(200)));
  ASSERT_OK_AND_ASSIGN(std::string with_stranger,
                       AddCosignatures(Note(0, 1), std::span<const Cosigner>(&stranger, 1), 5));
  ASSERT_OK_AND_ASSIGN(
      opened, OpenCosignedCheckpoint(with_stranger, log_verifiers_, "example.com/log", Policy(1)));
  EXPECT_EQ(opened.cosigned_by, std::vector<size_t>{0});
}

// ---- Error paths ----

TEST_F(CosignatureTest, TamperedCosignatureIsUnauthenticated) {
  std::string note = Note(0, 2, 1000);
  // The last line is cosigners_[1]'s: flip a bit of its timestamp (bytes 4..11 of the blob).
  const size_t line = note.rfind("\u2014 ");
  const size_t space = note.find(' ', line + std::string_view("\u2014 ").size());
  ASSERT_OK_AND_ASSIGN(Bytes blob, Base64Decode(note.substr(space + 1, note.size() - space - 2)));
  blob[11] ^= 0x01;
  note = note.substr(0, space + 1) + Base64Encode(blob) + "\n";
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", Policy(1)),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(CosignatureTest, CosignatureOfAnotherCheckpointIsUnauthenticated) {
  // Cosignature lines moved onto a different checkpoint signed by the same log.
  const std::string note = Note(0, 2);
  const std::string lines = note.substr(note.find("\u2014 supervisor-0"));
  checkpoint_.size = 43;
  auto other = SignCheckpoint(checkpoint_, log_signers_);
  ASSERT_OK(other.status());
  EXPECT_THAT(OpenCosignedCheckpoint(*other + lines, log_verifiers_, "example.com/log", Policy(1)),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(CosignatureTest, NoteSignatureByACosignerKeyIsNotACosignature) {
  // The same name and key as an ordinary note key (0x01): another key ID, so it never counts.
  ASSERT_OK_AND_ASSIGN(NoteSigner as_note_key, NoteSigner::FromSeed("supervisor-0", Seed(10)));
  EXPECT_NE(as_note_key.key_id(), verifiers_[0].key_id());
  std::vector<NoteSigner> signers;
  signers.push_back(std::move(log_signers_[0]));
  signers.push_back(std::move(as_note_key));
  ASSERT_OK_AND_ASSIGN(std::string note, SignCheckpoint(checkpoint_, signers));
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", Policy(1)),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(CosignatureTest, FutureTimestampIsUnauthenticated) {
  const std::string note = Note(0, 1, 5000);
  CosignaturePolicy policy = Policy(1);
  policy.max_timestamp = 4999;
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", policy),
              StatusIs(StatusCode::kUnauthenticated));
  policy.max_timestamp = 5000;
  ASSERT_OK(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", policy).status());
}

TEST_F(CosignatureTest, LogSignatureIsStillRequired) {
  const std::string note = Note(0, 3);
  ASSERT_OK_AND_ASSIGN(NoteSigner other_log, NoteSigner::FromSeed("example.com/log", Seed(7)));
  const NoteVerifier wrong[] = {other_log.Verifier()};
  EXPECT_THAT(OpenCosignedCheckpoint(note, wrong, "example.com/log", Policy(1)),
              StatusIs(StatusCode::kUnauthenticated));
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/other", Policy(1)),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(CosignatureTest, BadPolicyIsInvalidArgument) {
  const std::string note = Note(0, 3);
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", Policy(0)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", Policy(4)),
              StatusIs(StatusCode::kInvalidArgument));
  std::vector<CosignatureVerifier> doubled = {verifiers_[0], verifiers_[0]};
  CosignaturePolicy policy;
  policy.cosigners = doubled;
  policy.required = 1;
  EXPECT_THAT(OpenCosignedCheckpoint(note, log_verifiers_, "example.com/log", policy),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CosignatureTest, BadKeysAndArgumentsAreInvalidArgument) {
  EXPECT_THAT(Cosigner::FromSeed("bad name", Seed(1)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Cosigner::FromSeed("ok", Bytes(31)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(cosigners_[0].CosignatureLine(kKnownText, kMaxCosignatureTimestamp + 1),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(cosigners_[0].CosignatureLine("no final newline", 1),
              StatusIs(StatusCode::kInvalidArgument));
  // An ordinary note vkey (0x01) is not a cosigner key; a wrong key ID is refused.
  EXPECT_THAT(CosignatureVerifier::Parse(log_verifiers_[0].ToString()),
              StatusIs(StatusCode::kInvalidArgument));
  std::string wrong_id(kKnownVkey);
  wrong_id[std::string_view(kKnownName).size() + 1] = '0';
  EXPECT_THAT(CosignatureVerifier::Parse(wrong_id), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(CosignatureVerifier::Parse("no-plus-signs"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CosignatureTest, BadPrivateKeyStringsAreInvalidArgument) {
  ASSERT_OK_AND_ASSIGN(Cosigner cosigner, Cosigner::FromSeed(kKnownName, Seed(1)));
  const std::string good = cosigner.ToString();
  // Without the prefix, with another key ID, or a note signer key (0x01).
  EXPECT_THAT(Cosigner::Parse(good.substr(std::string_view("PRIVATE+KEY+").size())),
              StatusIs(StatusCode::kInvalidArgument));
  std::string wrong_id = good;
  wrong_id[std::string_view("PRIVATE+KEY+").size() + kKnownName.size() + 1] = '0';
  EXPECT_THAT(Cosigner::Parse(wrong_id), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Cosigner::Parse(log_signers_[0].ToString()), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Cosigner::Parse("PRIVATE+KEY+name+00000000+!!"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Cosigner::Generate("bad name"), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::tlog
