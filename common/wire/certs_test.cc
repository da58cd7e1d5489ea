// Tests of `certs init` / `certs issue` (certs.h, certs_cli.h). Certificates are checked with
// OpenSSL's own verifier (X509_verify_cert) and name matching (X509_check_host), not with
// anything certs.cc computes.
#include "common/wire/certs.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include "common/wire/certs_cli.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::wire {
namespace {

using ::fp::testing::StatusIs;
using ::fp::testing::TempDir;

struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
using CertPtr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, X509Free>;

CertPtr ReadCert(const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "r");
  EXPECT_NE(file, nullptr) << path;
  if (file == nullptr) return nullptr;
  CertPtr cert(PEM_read_X509(file, nullptr, nullptr, nullptr));
  std::fclose(file);
  EXPECT_NE(cert, nullptr) << path;
  return cert;
}

KeyPtr ReadKey(const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "r");
  EXPECT_NE(file, nullptr) << path;
  if (file == nullptr) return nullptr;
  KeyPtr key(PEM_read_PrivateKey(file, nullptr, nullptr, nullptr));
  std::fclose(file);
  EXPECT_NE(key, nullptr) << path;
  return key;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// X509_verify_cert of `cert` against `ca` alone, for `purpose` (X509_PURPOSE_SSL_*).
bool VerifiesAgainst(X509* cert, X509* ca, int purpose) {
  std::unique_ptr<X509_STORE, X509Free> store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), ca);
  std::unique_ptr<X509_STORE_CTX, X509Free> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr);
  X509_STORE_CTX_set_purpose(ctx.get(), purpose);
  return X509_verify_cert(ctx.get()) == 1;
}

mode_t FileMode(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 0777;
}

class CertsTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& file) const { return dir_.Join(file); }

  TempDir dir_;
};

TEST_F(CertsTest, DefaultNamesMakeALocalCluster) {
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  for (const char* name : {"ca", "supervisor-0", "worker-0", "worker-1", "worker-2"}) {
    EXPECT_EQ(FileMode(Path(std::string(name) + ".key")), 0600u) << name;
    EXPECT_EQ(FileMode(Path(std::string(name) + ".pem")), 0644u) << name;
  }
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_.path()), {}), 10);
}

TEST_F(CertsTest, NodeCertsVerifyAgainstTheCaForServerAndClientUse) {
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  CertPtr ca = ReadCert(Path("ca.pem"));
  ASSERT_NE(ca, nullptr);
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  for (const char* name : {"supervisor-0", "worker-0", "worker-1", "worker-2"}) {
    CertPtr cert = ReadCert(Path(std::string(name) + ".pem"));
    ASSERT_NE(cert, nullptr);
    EXPECT_TRUE(VerifiesAgainst(cert.get(), ca.get(), X509_PURPOSE_SSL_SERVER)) << name;
    EXPECT_TRUE(VerifiesAgainst(cert.get(), ca.get(), X509_PURPOSE_SSL_CLIENT)) << name;
    EXPECT_EQ(X509_check_ca(cert.get()), 0) << name << " must not be able to sign";
    KeyPtr key = ReadKey(Path(std::string(name) + ".key"));
    EXPECT_EQ(X509_check_private_key(cert.get(), key.get()), 1) << name;
  }
}

TEST_F(CertsTest, NodeCertCarriesItsNameAndLocalhost) {
  CertsOptions options;
  options.names = {"node-a", "node-b"};
  ASSERT_OK(InitCerts(dir_.path().string(), options));
  CertPtr cert = ReadCert(Path("node-a.pem"));
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_host(cert.get(), "node-a", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "node-b", 0, 0, nullptr), 0);
  char cn[64] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof(cn));
  EXPECT_STREQ(cn, "node-a");
}

TEST_F(CertsTest, ValidityFollowsDays) {
  CertsOptions options;
  options.names = {"short"};
  options.validity_days = 3;
  ASSERT_OK(InitCerts(dir_.path().string(), options));
  CertPtr cert = ReadCert(Path("short.pem"));
  ASSERT_NE(cert, nullptr);
  int days = 0, seconds = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &seconds, nullptr, X509_get0_notAfter(cert.get())), 1);
  // Three days from now, less the seconds this test has run.
  const long remaining = days * 86400L + seconds;
  EXPECT_LE(remaining, 3 * 86400L);
  EXPECT_GT(remaining, 3 * 86400L - 60);
  EXPECT_LT(X509_cmp_current_time(X509_get0_notBefore(cert.get())), 0);
}

TEST_F(CertsTest, CertFromAnotherCaDoesNotVerify) {
  TempDir other;
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  ASSERT_OK(InitCerts(other.path().string(), CertsOptions()));
  CertPtr ca = ReadCert(Path("ca.pem"));
  CertPtr stranger = ReadCert(other.Join("worker-0.pem"));
  EXPECT_FALSE(VerifiesAgainst(stranger.get(), ca.get(), X509_PURPOSE_SSL_CLIENT));
}

TEST_F(CertsTest, IssueAddsANodeSignedByTheExistingCa) {
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  const std::string ca_before = ReadText(Path("ca.pem"));
  CertsOptions more;
  more.names = {"worker-3"};
  ASSERT_OK(IssueCerts(dir_.path().string(), more));
  EXPECT_EQ(ReadText(Path("ca.pem")), ca_before);
  CertPtr ca = ReadCert(Path("ca.pem"));
  CertPtr cert = ReadCert(Path("worker-3.pem"));
  EXPECT_TRUE(VerifiesAgainst(cert.get(), ca.get(), X509_PURPOSE_SSL_CLIENT));
  EXPECT_EQ(FileMode(Path("worker-3.key")), 0600u);
}

TEST_F(CertsTest, CliInitWritesTheNamedNodes) {
  CLI::App app;
  AddCertsCommand(app);
  const std::string dir = dir_.Join("cluster");
  app.parse("certs init " + dir + " --names alpha,beta --days 30", /*program_name_included=*/false);
  EXPECT_TRUE(std::filesystem::exists(dir + "/alpha.pem"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/beta.key"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/worker-0.pem"));
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(CertsTest, RefusesToOverwriteWithoutForce) {
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  const std::string ca_before = ReadText(Path("ca.pem"));
  const std::string key_before = ReadText(Path("worker-1.key"));
  EXPECT_THAT(InitCerts(dir_.path().string(), CertsOptions()),
              StatusIs(StatusCode::kAlreadyExists));
  CertsOptions again;
  again.names = {"worker-1"};
  EXPECT_THAT(IssueCerts(dir_.path().string(), again), StatusIs(StatusCode::kAlreadyExists));
  EXPECT_EQ(ReadText(Path("ca.pem")), ca_before);
  EXPECT_EQ(ReadText(Path("worker-1.key")), key_before);

  CertsOptions force;
  force.force = true;
  ASSERT_OK(InitCerts(dir_.path().string(), force));
  EXPECT_NE(ReadText(Path("ca.pem")), ca_before);
  EXPECT_EQ(FileMode(Path("worker-1.key")), 0600u);
}

TEST_F(CertsTest, RejectsBadNamesAndOptions) {
  const std::string dir = dir_.path().string();
  for (const char* bad : {"", "Worker", "a/b", "ca", "-x", "x-", "a b", "../up"}) {
    CertsOptions options;
    options.names = {bad};
    EXPECT_THAT(InitCerts(dir, options), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
  CertsOptions twice;
  twice.names = {"w", "w"};
  EXPECT_THAT(InitCerts(dir, twice), StatusIs(StatusCode::kInvalidArgument));
  CertsOptions none;
  none.names = {};
  EXPECT_THAT(InitCerts(dir, none), StatusIs(StatusCode::kInvalidArgument));
  CertsOptions forever;
  forever.validity_days = kMaxCertValidityDays + 1;
  EXPECT_THAT(InitCerts(dir, forever), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
}

TEST_F(CertsTest, IssueNeedsAnExistingMatchingCa) {
  CertsOptions options;
  options.names = {"worker-9"};
  EXPECT_THAT(IssueCerts(dir_.path().string(), options), StatusIs(StatusCode::kNotFound));
  TempDir other;
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  ASSERT_OK(InitCerts(other.path().string(), CertsOptions()));
  std::filesystem::copy_file(other.Join("ca.key"), Path("ca.key"),
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_THAT(IssueCerts(dir_.path().string(), options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CertsTest, CliFailureExitsWithCodeOne) {
  ASSERT_OK(InitCerts(dir_.path().string(), CertsOptions()));
  CLI::App app;
  AddCertsCommand(app);
  try {
    app.parse("certs init " + dir_.path().string(), /*program_name_included=*/false);
    ADD_FAILURE() << "overwriting without --force must fail";
  } catch (const CLI::RuntimeError& error) {
    EXPECT_EQ(error.get_exit_code(), 1);
  }
}

}  // namespace
}  // namespace fp::wire
