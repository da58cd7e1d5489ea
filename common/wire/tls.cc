// TLS contexts and peer identity; see tls.h.
#include "common/wire/tls.h"

#include <filesystem>
#include <string_view>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace fp::wire {
namespace {

// Certificate chains of fieldprint are CA -> node; room for a few intermediates in operator PKIs.
constexpr int kMaxVerifyDepth = 4;

// Drains OpenSSL's per-thread error queue into one line ("" if empty).
std::string OpenSslErrors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text;
}

Status CheckExists(std::string_view what, const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_regular_file(path, error)) return OkStatus();
  return NotFoundError(fmt::format("tls: {} \"{}\" does not exist or is not a file", what, path));
}

// A key file must never make the process wait on a terminal for a passphrase.
int RefusePassword(char* /*buffer*/, int /*size*/, int /*rwflag*/, void* /*user*/) { return 0; }

Status Configure(SSL_CTX* ctx, const TlsFiles& files, bool server) {
  FP_RETURN_IF_ERROR(CheckExists("CA file", files.ca_file));
  FP_RETURN_IF_ERROR(CheckExists("certificate file", files.cert_file));
  FP_RETURN_IF_ERROR(CheckExists("key file", files.key_file));
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return InternalError("tls: cannot restrict the context to TLS 1.3: " + OpenSslErrors());
  }
  SSL_CTX_set_default_passwd_cb(ctx, RefusePassword);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
    return InvalidArgumentError(
        fmt::format("tls: certificate file \"{}\": {}", files.cert_file, OpenSslErrors()));
  }
  // OpenSSL checks the key against the certificate while loading it, so a mismatch shows up
  // here as X509_R_KEY_VALUES_MISMATCH; SSL_CTX_check_private_key below is the backstop.
  const bool key_loaded =
      SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(), SSL_FILETYPE_PEM) == 1;
  const unsigned long key_error = key_loaded ? 0 : ERR_peek_last_error();
  if (!key_loaded && (ERR_GET_LIB(key_error) != ERR_LIB_X509 ||
                      ERR_GET_REASON(key_error) != X509_R_KEY_VALUES_MISMATCH)) {
    return InvalidArgumentError(
        fmt::format("tls: key file \"{}\": {}", files.key_file, OpenSslErrors()));
  }
  if (!key_loaded || SSL_CTX_check_private_key(ctx) != 1) {
    return InvalidArgumentError(fmt::format("tls: key \"{}\" does not match certificate \"{}\": {}",
                                            files.key_file, files.cert_file, OpenSslErrors()));
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(), nullptr) != 1) {
    return InvalidArgumentError(
        fmt::format("tls: CA file \"{}\": {}", files.ca_file, OpenSslErrors()));
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_verify_depth(ctx, kMaxVerifyDepth);
  if (server) {
    // Names the acceptable CA to clients; a client with several certificates picks the right one.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca_file.c_str());
    if (names == nullptr) {
      return InvalidArgumentError(
          fmt::format("tls: CA file \"{}\": {}", files.ca_file, OpenSslErrors()));
    }
    SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
    // Connections are long-lived and never resumed; tickets would only add post-handshake
    // records to every stream.
    SSL_CTX_set_num_tickets(ctx, 0);
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeContext(const TlsFiles& files,
                                                                 bool server) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) return InternalError("tls: SSL_CTX_new: " + OpenSslErrors());
  // Owned from here on: asio's context frees the SSL_CTX it is given.
  auto context = std::make_unique<boost::asio::ssl::context>(ctx);
  FP_RETURN_IF_ERROR(Configure(ctx, files, server));
  return context;
}

// Printable ASCII of 1..kMaxIdentityBytes bytes: safe to log and to use as a map key.
bool IsPrintableName(std::string_view name) {
  if (name.empty() || name.size() > kMaxIdentityBytes) return false;
  for (char c : name) {
    if (c <= 0x20 || c > 0x7e) return false;
  }
  return true;
}

// The subject CN as text, or "" if there is none.
std::string CommonName(X509* cert) {
  X509_NAME* subject = X509_get_subject_name(cert);
  const int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) return "";
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  unsigned char* utf8 = nullptr;
  const int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) return "";
  std::string name(reinterpret_cast<const char*>(utf8), static_cast<size_t>(length));
  OPENSSL_free(utf8);
  return name;
}

// The first DNS subject alternative name, or "" if there is none.
std::string FirstDnsName(X509* cert) {
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return "";
  std::string name;
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && name.empty(); ++i) {
    const GENERAL_NAME* entry = sk_GENERAL_NAME_value(names, i);
    if (entry->type != GEN_DNS) continue;
    const ASN1_STRING* dns = entry->d.dNSName;
    name.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                static_cast<size_t>(ASN1_STRING_length(dns)));
  }
  GENERAL_NAMES_free(names);
  return name;
}

}  // namespace

TlsFiles TlsFilesForNode(const std::string& dir, const std::string& name) {
  const std::filesystem::path base(dir);
  return {(base / "ca.pem").string(), (base / (name + ".pem")).string(),
          (base / (name + ".key")).string()};
}

StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeServerTlsContext(const TlsFiles& files) {
  return MakeContext(files, /*server=*/true);
}

StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeClientTlsContext(const TlsFiles& files) {
  return MakeContext(files, /*server=*/false);
}

StatusOr<std::string> PeerIdentity(const SSL* ssl) {
  FP_CHECK(ssl != nullptr);
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return UnauthenticatedError("tls: the peer presented no certificate");
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    return UnauthenticatedError(fmt::format("tls: the peer's certificate did not verify: {}",
                                            X509_verify_cert_error_string(verify)));
  }
  std::string name = CommonName(cert);
  if (name.empty()) name = FirstDnsName(cert);
  if (!IsPrintableName(name)) {
    return UnauthenticatedError(
        "tls: the peer's certificate has no printable common name or DNS name");
  }
  return name;
}

}  // namespace fp::wire
