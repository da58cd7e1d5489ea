// Tests for tlog-proof bundles. Expected roots and proofs come from a naive RFC 6962 model written
// here from the RFC's recursive definitions, independent of common/merkle.
#include "common/tlog/proof_bundle.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"

namespace fp::tlog {
namespace {

using ::fp::testing::StatusIs;
using ::testing::ElementsAre;

constexpr std::string_view kOrigin = "log.example/bundles";

// RFC 6962 section 2.1: MTH over leaf hashes (already hashed with the 0x00 prefix).
Hash NaiveRoot(std::span<const Hash> leaves) {
  if (leaves.empty()) return Sha256("");
  if (leaves.size() == 1) return leaves[0];
  size_t k = 1;
  while (k * 2 < leaves.size()) k *= 2;
  std::string input = "\x01";
  Hash left = NaiveRoot(leaves.subspan(0, k));
  Hash right = NaiveRoot(leaves.subspan(k));
  input.append(reinterpret_cast<const char*>(left.data()), left.size());
  input.append(reinterpret_cast<const char*>(right.data()), right.size());
  return Sha256(input);
}

// RFC 6962 section 2.1.1: PATH(m, D[n]), leaf's sibling first.
std::vector<Hash> NaivePath(size_t m, std::span<const Hash> leaves) {
  if (leaves.size() <= 1) return {};
  size_t k = 1;
  while (k * 2 < leaves.size()) k *= 2;
  std::vector<Hash> path;
  if (m < k) {
    path = NaivePath(m, leaves.subspan(0, k));
    path.push_back(NaiveRoot(leaves.subspan(k)));
  } else {
    path = NaivePath(m - k, leaves.subspan(k));
    path.push_back(NaiveRoot(leaves.subspan(0, k)));
  }
  return path;
}

Hash NaiveLeafHash(std::string_view data) {
  return Sha256(std::string(1, '\0') + std::string(data));
}

class ProofBundleTest : public ::testing::Test {
 protected:
  static constexpr size_t kLeaves = 7;

  ProofBundleTest() {
    for (size_t i = 0; i < kLeaves; ++i)
      leaves_.push_back(NaiveLeafHash("entry " + std::to_string(i)));
    for (std::string_view label : {"log", "witness1", "witness2"}) {
      auto signer = NoteSigner::FromSeed(label == "log" ? std::string(kOrigin) : std::string(label),
                                         Sha256(label));
      FP_CHECK_OK(signer);
      signers_.push_back(*std::move(signer));
    }
    for (const NoteSigner& signer : signers_) verifiers_.push_back(signer.Verifier());
    Checkpoint checkpoint{std::string(kOrigin), kLeaves, NaiveRoot(leaves_), {}};
    auto note = SignCheckpoint(checkpoint, std::span(signers_.data(), 2));
    FP_CHECK_OK(note);
    note_ = *note;
  }

  ProofBundle BundleFor(uint64_t index) const {
    return ProofBundle{{}, index, NaivePath(index, leaves_), note_};
  }

  std::vector<Hash> leaves_;
  std::vector<NoteSigner> signers_;  // log, witness1 (both sign note_), witness2 (does not)
  std::vector<NoteVerifier> verifiers_;
  std::string note_;
};

TEST_F(ProofBundleTest, FormatsTheExactLayout) {
  ProofBundle bundle = BundleFor(3);
  bundle.extra = {'h', 'i'};
  std::string expected = "c2sp.org/tlog-proof@v1\nextra aGk=\nindex 3\n";
  for (const Hash& hash : NaivePath(3, leaves_)) expected += Base64Encode(hash) + "\n";
  expected += "\n" + note_;
  ASSERT_OK_AND_ASSIGN(std::string text, FormatProofBundle(bundle));
  EXPECT_EQ(text, expected);
}

TEST_F(ProofBundleTest, EveryIndexRoundTripsAndVerifies) {
  for (uint64_t index = 0; index < kLeaves; ++index) {
    ASSERT_OK_AND_ASSIGN(std::string text, FormatProofBundle(BundleFor(index)));
    ASSERT_OK_AND_ASSIGN(ProofBundle parsed, ParseProofBundle(text));
    EXPECT_EQ(parsed, BundleFor(index));
    ASSERT_OK_AND_ASSIGN(OpenedCheckpoint opened,
                         VerifyProofBundle(parsed, leaves_[index], verifiers_, kOrigin));
    EXPECT_EQ(opened.checkpoint.size, kLeaves);
    EXPECT_THAT(opened.signed_by, ElementsAre(0, 1));
  }
}

TEST_F(ProofBundleTest, ExtraDataRoundTrips) {
  ProofBundle bundle = BundleFor(0);
  bundle.extra = Bytes(kMaxBundleExtraBytes, 0xAB);
  ASSERT_OK_AND_ASSIGN(std::string text, FormatProofBundle(bundle));
  ASSERT_OK_AND_ASSIGN(ProofBundle parsed, ParseProofBundle(text));
  EXPECT_EQ(parsed.extra, bundle.extra);
}

TEST_F(ProofBundleTest, SingleLeafTreeHasAnEmptyProof) {
  Hash leaf = NaiveLeafHash("only");
  Checkpoint checkpoint{std::string(kOrigin), 1, leaf, {}};
  ASSERT_OK_AND_ASSIGN(std::string note, SignCheckpoint(checkpoint, std::span(signers_.data(), 1)));
  ASSERT_OK_AND_ASSIGN(std::string text, FormatProofBundle(ProofBundle{{}, 0, {}, note}));
  EXPECT_TRUE(text.starts_with("c2sp.org/tlog-proof@v1\nindex 0\n\n"));
  ASSERT_OK_AND_ASSIGN(ProofBundle parsed, ParseProofBundle(text));
  ASSERT_OK(VerifyProofBundle(parsed, leaf, verifiers_, kOrigin));
}

TEST_F(ProofBundleTest, UnknownWitnessKeyDoesNotMatter) {
  // Only the log's key is trusted; the witness signature is ignored.
  ASSERT_OK_AND_ASSIGN(
      OpenedCheckpoint opened,
      VerifyProofBundle(BundleFor(2), leaves_[2], std::span(verifiers_.data(), 1), kOrigin));
  EXPECT_THAT(opened.signed_by, ElementsAre(0));
}

// The worked example of docs/formats.md. Its bytes were checked against Go's sumdb packages:
// note.Sign with the same signer key produces the identical note, and tlog.TreeHash,
// tlog.ProveRecord and tlog.CheckRecord give and accept the same root and proof.
TEST_F(ProofBundleTest, DocumentedWorkedExample) {
  constexpr std::string_view kVerifierKey =
      "fieldprint.example/ledger+2f5ba629+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
  constexpr std::string_view kNote =
      "fieldprint.example/ledger\n5\nq1uiQNXF9m1XxD/D6UjYe+ylGdTaiwKLbFgv2nu/mbQ=\n\n"
      "\xE2\x80\x94 fieldprint.example/ledger L1umKX671crj23Np92b0E+2dN563YLk+ZUq7nwyssCms3YMT9Oh4"
      "NpQtwAN3oo8bTIq78cJ1ryooOJeKSeR3cbqByws=\n";
  constexpr std::string_view kProofLines =
      "zgHiTyZCGwocqrHsogbzT7tOTci5RDQ4qWNCPZqvb50=\n"
      "XDShEgWHfs8sTyjiVJXQgwGzPb+4YkGfeUb6b9+BJO8=\n"
      "4/xhsimX2iSB/tWu1E/YKdvUyNH5pt75w0DiEhlhg+k=\n";
  Bytes seed(32);
  for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(i);
  ASSERT_OK_AND_ASSIGN(NoteSigner signer, NoteSigner::FromSeed("fieldprint.example/ledger", seed));
  EXPECT_EQ(signer.Verifier().ToString(), kVerifierKey);

  std::vector<Hash> leaves;
  for (int i = 0; i < 5; ++i) leaves.push_back(NaiveLeafHash("record " + std::to_string(i)));
  Checkpoint checkpoint{"fieldprint.example/ledger", 5, NaiveRoot(leaves), {}};
  ASSERT_OK_AND_ASSIGN(std::string note, SignCheckpoint(checkpoint, std::span(&signer, 1)));
  EXPECT_EQ(note, kNote);

  std::string text = "c2sp.org/tlog-proof@v1\nextra aGVsbG8=\nindex 2\n" +
                     std::string(kProofLines) + "\n" + std::string(kNote);
  EXPECT_EQ(text.size(), 379u);
  ASSERT_OK_AND_ASSIGN(ProofBundle bundle, ParseProofBundle(text));
  EXPECT_EQ(bundle.proof, NaivePath(2, leaves));
  ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(kVerifierKey));
  ASSERT_OK(
      VerifyProofBundle(bundle, leaves[2], std::span(&verifier, 1), "fieldprint.example/ledger"));
  ASSERT_OK_AND_ASSIGN(std::string formatted, FormatProofBundle(bundle));
  EXPECT_EQ(formatted, text);
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(ProofBundleTest, ProofThatDoesNotLeadToTheRootIsDataLoss) {
  ProofBundle bundle = BundleFor(5);
  EXPECT_THAT(VerifyProofBundle(bundle, leaves_[4], verifiers_, kOrigin),
              StatusIs(StatusCode::kDataLoss));
  for (size_t i = 0; i < bundle.proof.size(); ++i) {
    ProofBundle tampered = bundle;
    tampered.proof[i][7] ^= 0x01;
    EXPECT_THAT(VerifyProofBundle(tampered, leaves_[5], verifiers_, kOrigin),
                StatusIs(StatusCode::kDataLoss))
        << "hash " << i;
  }
  ProofBundle moved = bundle;
  moved.index = 4;  // same proof length in a tree of 7, other position
  EXPECT_THAT(VerifyProofBundle(moved, leaves_[5], verifiers_, kOrigin),
              StatusIs(StatusCode::kDataLoss));
}

TEST_F(ProofBundleTest, ImpossibleIndexOrProofLengthIsInvalidArgument) {
  ProofBundle bundle = BundleFor(6);
  bundle.index = kLeaves;
  EXPECT_THAT(VerifyProofBundle(bundle, leaves_[6], verifiers_, kOrigin),
              StatusIs(StatusCode::kInvalidArgument));
  bundle = BundleFor(6);
  bundle.proof.push_back(leaves_[0]);
  EXPECT_THAT(VerifyProofBundle(bundle, leaves_[6], verifiers_, kOrigin),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofBundleTest, SignatureProblemsAreUnauthenticated) {
  EXPECT_THAT(VerifyProofBundle(BundleFor(1), leaves_[1], verifiers_, "log.example/other"),
              StatusIs(StatusCode::kUnauthenticated));
  EXPECT_THAT(
      VerifyProofBundle(BundleFor(1), leaves_[1], std::span(verifiers_.data() + 2, 1), kOrigin),
      StatusIs(StatusCode::kUnauthenticated));
  ProofBundle forged = BundleFor(1);
  forged.checkpoint_note[forged.checkpoint_note.find("\n7\n") + 1] = '8';
  EXPECT_THAT(VerifyProofBundle(forged, leaves_[1], verifiers_, kOrigin),
              StatusIs(StatusCode::kUnauthenticated));
}

TEST_F(ProofBundleTest, MalformedTextIsRejected) {
  ASSERT_OK_AND_ASSIGN(std::string good, FormatProofBundle(BundleFor(3)));
  std::string header = "c2sp.org/tlog-proof@v1\n";
  std::string proof_and_note = good.substr(good.find("index 3\n") + 8);
  std::string hash_line = proof_and_note.substr(0, proof_and_note.find('\n') + 1);
  std::string sixty_five;
  for (int i = 0; i < 65; ++i) sixty_five += hash_line;
  const std::vector<std::string> cases = {
      "",
      "c2sp.org/tlog-proof@v2\nindex 3\n" + proof_and_note,
      "c2sp.org/tlog-proof@v1 \nindex 3\n" + proof_and_note,
      header,
      header + "index 3\n",                    // no empty line, no note
      header + "index 3\n" + hash_line,        // no empty line
      header + "index 03\n" + proof_and_note,  // leading zero
      header + "index -3\n" + proof_and_note,
      header + "index 18446744073709551616\n" + proof_and_note,
      header + "index\n" + proof_and_note,
      header + "Index 3\n" + proof_and_note,
      header + proof_and_note,                            // no index line
      header + "extra \nindex 3\n" + proof_and_note,      // empty extra
      header + "extra aGk\nindex 3\n" + proof_and_note,   // bad base64
      header + "extra aGk=\n" + proof_and_note,           // extra without index
      header + "index 3\nextra aGk=\n" + proof_and_note,  // extra after index
      header + "extra aGk=\nextra aGk=\nindex 3\n" + proof_and_note,
      header + "index 3\nAAAA\n" + proof_and_note,                 // 3-byte hash
      header + "index 3\n" + sixty_five + "\n" + note_,            // 65 hashes
      header + "index 3\r\n" + proof_and_note,                     // CRLF
      header + "index 3\n\n" + "not a note\n",                     // no signed note after the proof
      header + "index 3\n\n" + note_.substr(0, note_.size() - 1),  // note without final newline
      "\n" + good,                                                 // leading blank line
  };
  for (const std::string& text : cases) {
    EXPECT_THAT(ParseProofBundle(text), StatusIs(StatusCode::kInvalidArgument)) << text;
  }
  std::string big_extra = header + "extra " + Base64Encode(Bytes(kMaxBundleExtraBytes + 1, 1)) +
                          "\nindex 3\n" + proof_and_note;
  EXPECT_THAT(ParseProofBundle(big_extra), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseProofBundle(good + std::string(kMaxBundleBytes, 'x')),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofBundleTest, SignedNoteThatIsNotACheckpointIsRejected) {
  ASSERT_OK_AND_ASSIGN(std::string note, SignNote("hello\n", std::span(signers_.data(), 1)));
  std::string text = "c2sp.org/tlog-proof@v1\nindex 0\n\n" + note;
  EXPECT_THAT(ParseProofBundle(text), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(FormatProofBundle(ProofBundle{{}, 0, {}, note}),
              StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(ProofBundleTest, FormatRejectsOversizedFields) {
  ProofBundle bundle = BundleFor(0);
  bundle.extra = Bytes(kMaxBundleExtraBytes + 1, 1);
  EXPECT_THAT(FormatProofBundle(bundle), StatusIs(StatusCode::kInvalidArgument));
  bundle = BundleFor(0);
  bundle.proof.assign(kMaxBundleProofHashes + 1, leaves_[0]);
  EXPECT_THAT(FormatProofBundle(bundle), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::tlog
