// Tests of the TLS context factories (tls.h): what loads, and the error for each bad input.
// Handshakes, peer identity and refusals are tested over real sockets in connection_test.cc.
#include "common/wire/tls.h"

#include <fstream>

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "common/wire/certs.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::wire {
namespace {

using ::fp::testing::StatusIs;
using ::fp::testing::TempDir;

class TlsContextTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions())); }

  TlsFiles Files(const std::string& name) const {
    return TlsFilesForNode(dir_.path().string(), name);
  }

  void WriteFile(const std::string& name, const std::string& text) {
    std::ofstream(dir_.Join(name)) << text;
  }

  TempDir dir_;
};

TEST_F(TlsContextTest, FilesForNodeFollowTheCertsLayout) {
  const TlsFiles files = TlsFilesForNode("/etc/fp", "worker-1");
  EXPECT_EQ(files.ca_file, "/etc/fp/ca.pem");
  EXPECT_EQ(files.cert_file, "/etc/fp/worker-1.pem");
  EXPECT_EQ(files.key_file, "/etc/fp/worker-1.key");
}

TEST_F(TlsContextTest, ContextsAreTls13OnlyAndRequirePeerCertificates) {
  ASSERT_OK_AND_ASSIGN(auto server, MakeServerTlsContext(Files("supervisor-0")));
  ASSERT_OK_AND_ASSIGN(auto client, MakeClientTlsContext(Files("worker-0")));
  for (SSL_CTX* ctx : {server->native_handle(), client->native_handle()}) {
    EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
    EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
    EXPECT_EQ(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
  }
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(TlsContextTest, MissingFilesAreNotFound) {
  for (int which = 0; which < 3; ++which) {
    TlsFiles files = Files("worker-0");
    std::string* field = which == 0   ? &files.ca_file
                         : which == 1 ? &files.cert_file
                                      : &files.key_file;
    *field = dir_.Join("missing.pem");
    EXPECT_THAT(MakeServerTlsContext(files), StatusIs(StatusCode::kNotFound)) << which;
    EXPECT_THAT(MakeClientTlsContext(files), StatusIs(StatusCode::kNotFound)) << which;
  }
}

TEST_F(TlsContextTest, KeyOfAnotherNodeIsRejected) {
  TlsFiles files = Files("worker-0");
  files.key_file = Files("worker-1").key_file;
  const auto context = MakeClientTlsContext(files);
  EXPECT_THAT(context, StatusIs(StatusCode::kInvalidArgument));
  EXPECT_NE(context.status().message().find("does not match"), std::string_view::npos);
}

TEST_F(TlsContextTest, NonPemFilesAreRejected) {
  WriteFile("junk.pem", "not a certificate\n");
  TlsFiles files = Files("worker-0");
  files.cert_file = dir_.Join("junk.pem");
  EXPECT_THAT(MakeServerTlsContext(files), StatusIs(StatusCode::kInvalidArgument));
  files = Files("worker-0");
  files.key_file = files.cert_file;  // a certificate where the key belongs
  EXPECT_THAT(MakeServerTlsContext(files), StatusIs(StatusCode::kInvalidArgument));
  files = Files("worker-0");
  files.ca_file = dir_.Join("junk.pem");
  EXPECT_THAT(MakeServerTlsContext(files), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(TlsContextTest, EncryptedKeyIsRejectedWithoutPrompting) {
  FILE* in = std::fopen(Files("worker-0").key_file.c_str(), "r");
  ASSERT_NE(in, nullptr);
  EVP_PKEY* key = PEM_read_PrivateKey(in, nullptr, nullptr, nullptr);
  std::fclose(in);
  ASSERT_NE(key, nullptr);
  const std::string encrypted = dir_.Join("encrypted.key");
  FILE* out = std::fopen(encrypted.c_str(), "w");
  ASSERT_NE(out, nullptr);
  const char passphrase[] = "secret";
  EXPECT_EQ(PEM_write_PKCS8PrivateKey(out, key, EVP_aes_256_cbc(), passphrase,
                                      sizeof(passphrase) - 1, nullptr, nullptr),
            1);
  std::fclose(out);
  EVP_PKEY_free(key);
  TlsFiles files = Files("worker-0");
  files.key_file = encrypted;
  EXPECT_THAT(MakeClientTlsContext(files), StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::wire
