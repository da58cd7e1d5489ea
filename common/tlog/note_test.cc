// Tests for C2SP signed notes: published known answers, round trips, verification policy and
// every rejection rule.
#include "common/tlog/note.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/crypto/ed25519.h"
#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"

namespace fp::tlog {
namespace {

using ::fp::testing::StatusIs;
using ::testing::ElementsAre;

// Known answer published in the documentation of golang.org/x/mod/sumdb/note (and its tests).
constexpr std::string_view kPeterSignerKey =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
constexpr std::string_view kPeterVerifierKey =
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
constexpr std::string_view kPeterText =
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n";
constexpr std::string_view kPeterNote =
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\xE2\x80\x94 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n";
constexpr std::string_view kEmDash = "\xE2\x80\x94";

class NoteTest : public ::testing::Test {
 protected:
  // A signer with a fixed seed derived from `label`, so failures reproduce.
  static NoteSigner MakeSigner(std::string_view name, std::string_view label) {
    Hash seed = Sha256(label);
    auto signer = NoteSigner::FromSeed(name, seed);
    FP_CHECK_OK(signer);
    return *std::move(signer);
  }

  // A signature line built without the code under test: key ID from the spec's formula, signature
  // from the raw Ed25519 key.
  static std::string ManualSignatureLine(std::string_view name, const Ed25519PrivateKey& key,
                                         std::string_view text) {
    std::string id_input = std::string(name) + "\n" + "\x01";
    id_input.append(reinterpret_cast<const char*>(key.public_key().raw().data()), 32);
    Hash id_hash = Sha256(id_input);
    Bytes payload(id_hash.begin(), id_hash.begin() + 4);
    Ed25519Signature signature = key.Sign(AsBytes(text));
    payload.insert(payload.end(), signature.begin(), signature.end());
    return std::string(kEmDash) + " " + std::string(name) + " " + Base64Encode(payload) + "\n";
  }

  static std::string FlipLastSignatureBit(std::string note) {
    // The last base64 character before "=\n" carries signature bits; change it.
    size_t pos = note.rfind('=');
    FP_CHECK(pos != std::string::npos && pos >= 2);
    note[pos - 2] = note[pos - 2] == 'A' ? 'B' : 'A';
    return note;
  }
};

TEST_F(NoteTest, GoDocumentationKnownAnswer) {
  ASSERT_OK_AND_ASSIGN(NoteSigner signer, NoteSigner::Parse(kPeterSignerKey));
  EXPECT_EQ(signer.name(), "PeterNeumann");
  EXPECT_EQ(signer.key_id(), 0xc74f20a3u);
  EXPECT_EQ(signer.ToString(), kPeterSignerKey);
  EXPECT_EQ(signer.Verifier().ToString(), kPeterVerifierKey);

  ASSERT_OK_AND_ASSIGN(std::string note, SignNote(kPeterText, std::span(&signer, 1)));
  EXPECT_EQ(note, kPeterNote);  // Ed25519 is deterministic, so the bytes must match exactly

  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(kPeterVerifierKey));
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(kPeterNote, std::span(&verifier, 1)));
  EXPECT_EQ(opened.text, kPeterText);
  EXPECT_THAT(opened.signed_by, ElementsAre(0));
  EXPECT_EQ(opened.unknown_signatures, 0u);
}

TEST_F(NoteTest, KeyIdFollowsTheSpecFormula) {
  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(kPeterVerifierKey));
  std::string input = "PeterNeumann\n\x01";
  input.append(reinterpret_cast<const char*>(verifier.public_key().data()), 32);
  Hash digest = Sha256(input);
  uint32_t expected =
      uint32_t{digest[0]} << 24 | uint32_t{digest[1]} << 16 | uint32_t{digest[2]} << 8 | digest[3];
  EXPECT_EQ(Ed25519KeyId("PeterNeumann", verifier.public_key()), expected);
  EXPECT_EQ(expected, 0xc74f20a3u);
}

TEST_F(NoteTest, GeneratedKeysRoundTripThroughTheirStrings) {
  ASSERT_OK_AND_ASSIGN(NoteSigner signer, NoteSigner::Generate("log.example/a"));
  ASSERT_OK_AND_ASSIGN(NoteSigner reparsed, NoteSigner::Parse(signer.ToString()));
  EXPECT_EQ(reparsed.key_id(), signer.key_id());
  EXPECT_EQ(reparsed.Sign(AsBytes("x\n")), signer.Sign(AsBytes("x\n")));
  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(signer.Verifier().ToString()));
  EXPECT_EQ(verifier.name(), "log.example/a");
  EXPECT_EQ(verifier.key_id(), signer.key_id());
  EXPECT_EQ(verifier.public_key(), signer.Verifier().public_key());
}

TEST_F(NoteTest, UpperCaseKeyIdIsAccepted) {
  std::string upper(kPeterVerifierKey);
  upper.replace(upper.find("c74f20a3"), 8, "C74F20A3");
  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(upper));
  EXPECT_EQ(verifier.ToString(), kPeterVerifierKey);
}

TEST_F(NoteTest, TextWithBlankLinesRoundTrips) {
  NoteSigner signer = MakeSigner("log.example", "one");
  NoteVerifier verifier = signer.Verifier();
  for (std::string_view text : {"a\n", "\n", "a\n\nb\n", "a\n\n", "caf\xC3\xA9 \xE2\x82\xAC\n"}) {
    ASSERT_OK_AND_ASSIGN(std::string note, SignNote(text, std::span(&signer, 1)));
    ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, std::span(&verifier, 1)));
    EXPECT_EQ(opened.text, text);
  }
}

TEST_F(NoteTest, ManuallyBuiltSignatureVerifies) {
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey key, Ed25519PrivateKey::Generate());
  std::string text = "hello\n";
  std::string note = text + "\n" + ManualSignatureLine("manual.example", key, text);
  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier,
                       NoteVerifier::FromPublicKey("manual.example", key.public_key().raw()));
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, std::span(&verifier, 1)));
  EXPECT_EQ(opened.text, text);
}

TEST_F(NoteTest, UnknownExtraSignatureIsIgnored) {
  std::vector<NoteSigner> signers;
  signers.push_back(MakeSigner("log.example", "log"));
  signers.push_back(MakeSigner("witness.example", "witness"));
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signers));
  NoteVerifier log = signers[0].Verifier();
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, std::span(&log, 1)));
  EXPECT_THAT(opened.signed_by, ElementsAre(0));
  EXPECT_EQ(opened.unknown_signatures, 1u);
}

TEST_F(NoteTest, SameNameWithOtherKeyIdIsUnknownNotBad) {
  // The spec: signatures that share a name but not the key ID with a known key are ignored.
  std::vector<NoteSigner> signers;
  signers.push_back(MakeSigner("log.example", "real"));
  signers.push_back(MakeSigner("log.example", "rotated"));
  ASSERT_NE(signers[0].key_id(), signers[1].key_id());
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signers));
  NoteVerifier verifier = signers[0].Verifier();
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, std::span(&verifier, 1)));
  EXPECT_EQ(opened.unknown_signatures, 1u);
}

TEST_F(NoteTest, ReportsWhichVerifiersSignedForKOfN) {
  std::vector<NoteSigner> all;
  for (std::string_view label : {"s0", "s1", "s2", "s3"}) {
    all.push_back(MakeSigner("node-" + std::string(label), label));
  }
  std::vector<NoteVerifier> verifiers;
  for (int i = 0; i < 3; ++i) verifiers.push_back(all[i].Verifier());
  // Keys 2 and 0 of the verifier set sign, and key 3, which the set does not know.
  std::vector<NoteSigner> signing;
  for (int i : {2, 3, 0}) signing.push_back(MakeSigner(all[i].name(), "s" + std::to_string(i)));
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signing));
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, verifiers));
  EXPECT_THAT(opened.signed_by, ElementsAre(0, 2));
  EXPECT_EQ(opened.unknown_signatures, 1u);
}

TEST_F(NoteTest, RepeatedValidSignatureCountsOnce) {
  NoteSigner signer = MakeSigner("log.example", "one");
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", std::span(&signer, 1)));
  std::string line = note.substr(note.find(kEmDash));
  NoteVerifier verifier = signer.Verifier();
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note + line, std::span(&verifier, 1)));
  EXPECT_THAT(opened.signed_by, ElementsAre(0));
}

TEST_F(NoteTest, SixteenSignaturesAreAccepted) {
  std::vector<NoteSigner> signers;
  for (int i = 0; i < 16; ++i) signers.push_back(MakeSigner("k" + std::to_string(i), "x"));
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signers));
  NoteVerifier last = signers.back().Verifier();
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, std::span(&last, 1)));
  EXPECT_EQ(opened.unknown_signatures, 15u);
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(NoteTest, SeventeenSignaturesAreRejected) {
  std::vector<NoteSigner> signers;
  for (int i = 0; i < 16; ++i) signers.push_back(MakeSigner("k" + std::to_string(i), "x"));
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signers));
  NoteVerifier first = signers.front().Verifier();
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey extra, Ed25519PrivateKey::Generate());
  std::string seventeen = note + ManualSignatureLine("k16", extra, "tree\n");
  EXPECT_THAT(OpenNote(seventeen, std::span(&first, 1)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseNote(seventeen), StatusIs(StatusCode::kInvalidArgument));

  signers.push_back(MakeSigner("k16", "x"));
  EXPECT_THAT(SignNote("tree\n", signers), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, KnownButBadSignatureRejectsTheWholeNote) {
  std::vector<NoteSigner> signers;
  signers.push_back(MakeSigner("log.example", "log"));
  signers.push_back(MakeSigner("witness.example", "witness"));
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", signers));
  std::string bad = FlipLastSignatureBit(note);  // corrupts the witness signature
  std::vector<NoteVerifier> both = {signers[0].Verifier(), signers[1].Verifier()};
  EXPECT_THAT(OpenNote(bad, both), StatusIs(StatusCode::kUnauthenticated));
  // Without the witness key the bad line is an unknown signature and is ignored.
  ASSERT_OK(OpenNote(bad, std::span(both.data(), 1)));
}

TEST_F(NoteTest, TamperedTextIsRejected) {
  NoteSigner signer = MakeSigner("log.example", "one");
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("size 10\n", std::span(&signer, 1)));
  note[5] = '9';
  NoteVerifier verifier = signer.Verifier();
  EXPECT_THAT(OpenNote(note, std::span(&verifier, 1)), StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(NoteTest, NoKnownSignatureIsRejected) {
  NoteSigner signer = MakeSigner("log.example", "one");
  NoteSigner stranger = MakeSigner("other.example", "two");
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", std::span(&signer, 1)));
  NoteVerifier verifier = stranger.Verifier();
  EXPECT_THAT(OpenNote(note, std::span(&verifier, 1)), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_THAT(OpenNote(note, {}), StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(NoteTest, KnownKeyWithWrongSignatureLengthIsUnauthenticated) {
  NoteSigner signer = MakeSigner("log.example", "one");
  Bytes payload;
  AppendU32(payload, signer.key_id());
  payload.resize(4 + 63, 7);
  std::string note =
      "tree\n\n" + std::string(kEmDash) + " log.example " + Base64Encode(payload) + "\n";
  NoteVerifier verifier = signer.Verifier();
  EXPECT_THAT(OpenNote(note, std::span(&verifier, 1)), StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(NoteTest, MalformedNotesAreRejected) {
  NoteSigner signer = MakeSigner("log.example", "one");
  ASSERT_OK_AND_ASSIGN(std::string good, SignNote("tree\n", std::span(&signer, 1)));
  std::string line = good.substr(good.find(kEmDash));  // "— log.example <b64>\n"
  std::string b64 = line.substr(line.rfind(' ') + 1);
  b64.pop_back();
  const std::string dash(kEmDash);
  const std::vector<std::string> cases = {
      "",
      "tree\n",                         // no blank line
      "tree\n\n",                       // no signature line
      "tree\n" + line,                  // no blank line before the signature
      good.substr(0, good.size() - 1),  // no final newline
      "tr\tee\n\n" + line,              // tab
      "tree\r\n\n" + line,              // carriage return
      "tr\x01"
      "ee\n\n" +
          line,  // other control character
      "tr\xFF"
      "ee\n\n" +
          line,  // invalid UTF-8
      "tr\xC0\xAF"
      "ee\n\n" +
          line,  // overlong encoding
      "tr\xED\xA0\x80"
      "ee\n\n" +
          line,  // UTF-16 surrogate
      "tr\xE2\x80"
      "\n\n" +
          line,                                              // truncated sequence
      "tree\n\n- log.example " + b64 + "\n",                 // hyphen instead of em dash
      "tree\n\n" + dash + "log.example " + b64 + "\n",       // no space after the dash
      "tree\n\n" + dash + " log.example\n",                  // no signature
      "tree\n\n" + dash + " log.example \n",                 // empty signature
      "tree\n\n" + dash + " log+example " + b64 + "\n",      // '+' in the key name
      "tree\n\n" + dash + "  " + b64 + "\n",                 // empty key name
      "tree\n\n" + dash + " log\xC2\xA0name " + b64 + "\n",  // no-break space in the name
      "tree\n\n" + dash + " log.example " + b64 + "x\n",     // bad base64
      "tree\n\n" + dash + " log.example AAAAAA==\n",         // 4 bytes: key ID only
      good + "\n",                                           // blank line after signatures
      good + "trailing\n",                                   // non-signature line
  };
  NoteVerifier verifier = signer.Verifier();
  for (const std::string& note : cases) {
    EXPECT_THAT(ParseNote(note), StatusIs(StatusCode::kInvalidArgument)) << note;
    EXPECT_THAT(OpenNote(note, std::span(&verifier, 1)), StatusIs(StatusCode::kInvalidArgument))
        << note;
  }
  std::string huge = std::string(kMaxNoteBytes, 'a') + "\n\n" + line;
  EXPECT_THAT(ParseNote(huge), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, MalformedVerifierKeysAreRejected) {
  ASSERT_OK_AND_ASSIGN(NoteVerifier peter, NoteVerifier::Parse(kPeterVerifierKey));
  Bytes raw{kEd25519Algorithm};
  raw.insert(raw.end(), peter.public_key().begin(), peter.public_key().end());
  Bytes other_algorithm = raw;
  other_algorithm[0] = 0x02;
  Bytes short_key(raw.begin(), raw.end() - 1);
  const std::vector<std::string> cases = {
      "",
      "PeterNeumann",
      "PeterNeumann+c74f20a3",
      "PeterNeumann+c74f20a4+" + Base64Encode(raw),   // wrong key ID
      "PeterNeumann+c74f20a+" + Base64Encode(raw),    // 7 hex digits
      "PeterNeumann+c74f20a3z+" + Base64Encode(raw),  // 9 characters
      "PeterNeumann+c74f20g3+" + Base64Encode(raw),   // not hex
      "Peter+c74f20a3+" + Base64Encode(raw),          // ID of another name
      "+c74f20a3+" + Base64Encode(raw),               // empty name
      "Peter Neumann+c74f20a3+" + Base64Encode(raw),  // space in the name
      "PeterNeumann+c74f20a3+" + Base64Encode(other_algorithm),
      "PeterNeumann+c74f20a3+" + Base64Encode(short_key),
      "PeterNeumann+c74f20a3+" + Base64Encode(raw) + "=",  // bad base64
      "PeterNeumann+c74f20a3+",
  };
  for (const std::string& key : cases) {
    EXPECT_THAT(NoteVerifier::Parse(key), StatusIs(StatusCode::kInvalidArgument)) << key;
  }
  EXPECT_THAT(NoteVerifier::FromPublicKey("bad name", peter.public_key()),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, MalformedSignerKeysAreRejected) {
  std::string good(kPeterSignerKey);
  const std::vector<std::string> cases = {
      good.substr(std::string_view("PRIVATE+KEY+").size()),  // a verifier-shaped string
      "PRIVATE+KEYS+" + good.substr(12),
      "private+key+" + good.substr(12),
      "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
      "PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
      "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDF",
      "PRIVATE+KEY+Peter+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
  };
  for (const std::string& key : cases) {
    EXPECT_THAT(NoteSigner::Parse(key), StatusIs(StatusCode::kInvalidArgument)) << key;
  }
  EXPECT_THAT(NoteSigner::FromSeed("name", Bytes(31)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(NoteSigner::FromSeed("a+b", Bytes(32)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(NoteSigner::Generate(""), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, AmbiguousVerifierSetIsRejected) {
  NoteSigner signer = MakeSigner("log.example", "one");
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("tree\n", std::span(&signer, 1)));
  std::vector<NoteVerifier> twice = {signer.Verifier(), signer.Verifier()};
  EXPECT_THAT(OpenNote(note, twice), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, SignRejectsBadTextAndSignerSets) {
  std::vector<NoteSigner> one;
  one.push_back(MakeSigner("log.example", "one"));
  EXPECT_THAT(SignNote("", one), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SignNote("no newline", one), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SignNote("tab\there\n", one), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SignNote("bad \xFF\n", one), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SignNote(std::string(kMaxNoteBytes, 'a') + "\n", one),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(SignNote("tree\n", {}), StatusIs(StatusCode::kInvalidArgument));
  one.push_back(MakeSigner("log.example", "one"));
  EXPECT_THAT(SignNote("tree\n", one), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(NoteTest, KeyNameRules) {
  EXPECT_TRUE(IsValidKeyName("example.com/log42"));
  EXPECT_TRUE(IsValidKeyName("caf\xC3\xA9"));
  EXPECT_FALSE(IsValidKeyName(""));
  EXPECT_FALSE(IsValidKeyName("a+b"));
  EXPECT_FALSE(IsValidKeyName("a b"));
  EXPECT_FALSE(IsValidKeyName("a\tb"));
  EXPECT_FALSE(
      IsValidKeyName("a\xE2\x80\x83"
                     "b"));  // U+2003 EM SPACE
  EXPECT_FALSE(
      IsValidKeyName("a\xE3\x80\x80"
                     "b"));  // U+3000 IDEOGRAPHIC SPACE
  EXPECT_FALSE(
      IsValidKeyName("a\xC2\x85"
                     "b"));  // U+0085 NEXT LINE
  EXPECT_FALSE(IsValidKeyName("a\xFF"));
}

}  // namespace
}  // namespace fp::tlog
