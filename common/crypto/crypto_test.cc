#include <gtest/gtest.h>

#include "common/crypto/ed25519.h"
#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp {
namespace {

using ::fp::testing::StatusIs;

// FIPS 180-2 appendix B known answers.
TEST(Sha256Test, FipsKnownAnswers) {
  EXPECT_EQ(HexEncode(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexEncode(Sha256("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexEncode(Sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, StreamingEqualsOneShotForEverySplit) {
  std::string data(1000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  Hash expected = Sha256(data);
  Sha256Stream stream;
  for (size_t split : {0u, 1u, 63u, 64u, 65u, 999u, 1000u}) {
    stream.Update(std::string_view(data).substr(0, split));
    stream.Update(std::string_view(data).substr(split));
    EXPECT_EQ(stream.Finish(), expected) << "split " << split;
  }
  EXPECT_EQ(Sha256Parts({AsBytes("ab"), AsBytes("c")}), Sha256("abc"));
}

TEST(Sha256Test, HashFromHexValidatesLength) {
  EXPECT_THAT(HashFromHex("00"), StatusIs(StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(Hash hash, HashFromHex(HexEncode(Sha256("abc"))));
  EXPECT_EQ(hash, Sha256("abc"));
}

// RFC 8032 section 7.1, test 1 (empty message).
TEST(Ed25519Test, Rfc8032TestVector1) {
  ASSERT_OK_AND_ASSIGN(
      Bytes seed, HexDecode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey key, Ed25519PrivateKey::FromSeed(seed));
  EXPECT_EQ(HexEncode(key.public_key().raw()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  Ed25519Signature signature = key.Sign({});
  EXPECT_EQ(HexEncode(signature),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_TRUE(key.public_key().Verify({}, signature));
}

TEST(Ed25519Test, TamperedMessageOrSignatureFails) {
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey key, Ed25519PrivateKey::Generate());
  Ed25519Signature signature = key.Sign(AsBytes("checkpoint"));
  EXPECT_TRUE(key.public_key().Verify(AsBytes("checkpoint"), signature));
  EXPECT_FALSE(key.public_key().Verify(AsBytes("checkpoinT"), signature));
  signature[5] ^= 1;
  EXPECT_FALSE(key.public_key().Verify(AsBytes("checkpoint"), signature));
  EXPECT_FALSE(key.public_key().Verify(AsBytes("checkpoint"), ByteSpan(signature).first(63)));
}

TEST(Ed25519Test, PemFileRoundTripAndRefusesOverwrite) {
  testing::TempDir dir;
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey key, Ed25519PrivateKey::Generate());
  std::string path = dir.Join("signer.pem");
  ASSERT_OK(key.WritePemFile(path));
  EXPECT_THAT(key.WritePemFile(path), StatusIs(StatusCode::kAlreadyExists));
  ASSERT_OK_AND_ASSIGN(Ed25519PrivateKey loaded, Ed25519PrivateKey::ReadPemFile(path));
  EXPECT_EQ(loaded.public_key().raw(), key.public_key().raw());
  ASSERT_OK_AND_ASSIGN(Ed25519PublicKey pub, Ed25519PublicKey::FromPem(key.public_key().ToPem()));
  EXPECT_EQ(pub.raw(), key.public_key().raw());
}

TEST(Ed25519Test, BadInputIsRejected) {
  EXPECT_THAT(Ed25519PrivateKey::ReadPemFile("/nonexistent/key.pem"),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(Ed25519PrivateKey::FromPem("-----BEGIN PRIVATE KEY-----\nAAAA\n"),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Ed25519PublicKey::FromRaw(Bytes(31)), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp
