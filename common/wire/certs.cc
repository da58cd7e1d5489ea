// CA and node certificates over OpenSSL 3; see certs.h.
#include "common/wire/certs.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string_view>

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fp::wire {
namespace {

struct OpenSslFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, OpenSslFree>;
using CertPtr = std::unique_ptr<X509, OpenSslFree>;

constexpr size_t kMaxNameLength = 63;
constexpr int kSerialBytes = 16;
// Backdates notBefore so that a peer whose clock runs a little behind accepts a fresh cert.
constexpr long kClockSkewSeconds = 3600;
constexpr mode_t kKeyMode = 0600;
constexpr mode_t kCertMode = 0644;

Status OpenSslError(std::string_view what) {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    text += text.empty() ? "" : "; ";
    text += buffer;
  }
  return InternalError(fmt::format("certs: {}: {}", what, text.empty() ? "failed" : text));
}

Status ErrnoError(std::string_view what, const std::string& path, int error) {
  std::string text = fmt::format("certs: {} \"{}\": {}", what, path, std::strerror(error));
  switch (error) {
    case EACCES:
    case EPERM:
    case EROFS:
      return PermissionDeniedError(std::move(text));
    case ENOENT:
    case ENOTDIR:
      return NotFoundError(std::move(text));
    case ENOSPC:
    case EDQUOT:
      return ResourceExhaustedError(std::move(text));
    default:
      return UnavailableError(std::move(text));
  }
}

Status ValidateName(const std::string& name) {
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  bool ok = !name.empty() && name.size() <= kMaxNameLength && alnum(name.front()) &&
            alnum(name.back()) && name != "ca";
  for (char c : name) ok = ok && (alnum(c) || c == '-' || c == '.');
  if (ok) return OkStatus();
  return InvalidArgumentError(fmt::format(
      "certs: bad node name \"{}\": want 1..{} characters of [a-z0-9.-], starting and ending "
      "with a letter or digit, and not \"ca\"",
      name, kMaxNameLength));
}

Status ValidateOptions(const CertsOptions& options) {
  if (options.names.empty() || options.names.size() > kMaxCertNames) {
    return InvalidArgumentError(
        fmt::format("certs: {} names, want 1..{}", options.names.size(), kMaxCertNames));
  }
  std::set<std::string> seen;
  for (const std::string& name : options.names) {
    FP_RETURN_IF_ERROR(ValidateName(name));
    if (!seen.insert(name).second) {
      return InvalidArgumentError(fmt::format("certs: node name \"{}\" given twice", name));
    }
  }
  if (options.validity_days < 1 || options.validity_days > kMaxCertValidityDays) {
    return InvalidArgumentError(fmt::format("certs: validity of {} days, want 1..{}",
                                            options.validity_days, kMaxCertValidityDays));
  }
  return OkStatus();
}

StatusOr<KeyPtr> NewKey() {
  KeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return OpenSslError("generate a P-256 key");
  return key;
}

// Adds one extension in OpenSSL's config syntax ("critical,CA:TRUE").
Status AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, OpenSslFree> extension(
      X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!extension || X509_add_ext(cert, extension.get(), -1) != 1) {
    return OpenSslError(fmt::format("add extension {}={}", OBJ_nid2sn(nid), value));
  }
  return OkStatus();
}

// A positive random 128-bit serial, so two certificates of one CA never share one.
Status SetRandomSerial(X509* cert) {
  unsigned char bytes[kSerialBytes];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return OpenSslError("random serial");
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;  // never zero, never negative
  std::unique_ptr<BIGNUM, OpenSslFree> serial(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!serial || BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert)) == nullptr) {
    return OpenSslError("set serial");
  }
  return OkStatus();
}

// A v3 certificate for `key` named `name`, valid for `days`, without extensions or signature.
StatusOr<CertPtr> NewCertificate(EVP_PKEY* key, const std::string& name, int days) {
  CertPtr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) return OpenSslError("new cert");
  FP_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("fieldprint"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1,
                                 0) != 1) {
    return OpenSslError("subject name of " + name);
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kClockSkewSeconds) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, 0, nullptr) == nullptr ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return OpenSslError("validity and key of " + name);
  }
  return cert;
}

StatusOr<CertPtr> MakeCaCert(EVP_PKEY* ca_key) {
  FP_ASSIGN_OR_RETURN(CertPtr cert, NewCertificate(ca_key, "fieldprint CA", kCaValidityDays));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) {
    return OpenSslError("CA issuer");
  }
  FP_RETURN_IF_ERROR(
      AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  FP_RETURN_IF_ERROR(
      AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  FP_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), ca_key, EVP_sha256()) == 0) return OpenSslError("sign the CA");
  return cert;
}

StatusOr<CertPtr> MakeNodeCert(const std::string& name, EVP_PKEY* node_key, X509* ca_cert,
                               EVP_PKEY* ca_key, int days) {
  FP_ASSIGN_OR_RETURN(CertPtr cert, NewCertificate(node_key, name, days));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert)) != 1) {
    return OpenSslError("issuer of " + name);
  }
  X509* c = cert.get();
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_basic_constraints, "critical,CA:FALSE"));
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_key_usage, "critical,digitalSignature"));
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_ext_key_usage, "serverAuth,clientAuth"));
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_subject_key_identifier, "hash"));
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_authority_key_identifier, "keyid:always"));
  const std::string sans = name == "localhost"
                               ? "DNS:localhost,IP:127.0.0.1"
                               : fmt::format("DNS:{},DNS:localhost,IP:127.0.0.1", name);
  FP_RETURN_IF_ERROR(AddExtension(c, ca_cert, NID_subject_alt_name, sans.c_str()));
  if (X509_sign(c, ca_key, EVP_sha256()) == 0) return OpenSslError("sign " + name);
  return cert;
}

// PEM text of `cert`, or when it is null, of `key` as unencrypted PKCS#8.
StatusOr<std::string> ToPem(X509* cert, EVP_PKEY* key) {
  std::unique_ptr<BIO, OpenSslFree> bio(BIO_new(BIO_s_mem()));
  const bool written =
      bio && (cert != nullptr ? PEM_write_bio_X509(bio.get(), cert)
                              : PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0,
                                                         nullptr, nullptr)) == 1;
  if (!written) return OpenSslError("PEM encoding");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

// Writes `text` to path.tmp with `mode`, syncs it and renames it over `path`.
Status WriteFileAtomically(const std::string& path, const std::string& text, mode_t mode) {
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("create", temp, errno);
  Status status;
  // fchmod: open's mode is filtered by the umask, and the temp file may have existed already.
  if (::fchmod(fd, mode) != 0) status = ErrnoError("chmod", temp, errno);
  size_t done = 0;
  while (status.ok() && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = ErrnoError("write", temp, errno);
    if (n > 0) done += static_cast<size_t>(n);
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("sync", temp, errno);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("close", temp, errno);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoError("rename", temp, errno);
  }
  if (!status.ok()) ::unlink(temp.c_str());
  return status;
}

// AlreadyExists naming the first of `paths` that exists, unless `force`.
Status CheckOverwrite(const std::vector<std::string>& paths, bool force) {
  if (force) return OkStatus();
  for (const std::string& path : paths) {
    std::error_code error;
    if (std::filesystem::exists(path, error) || error) {
      return AlreadyExistsError(
          fmt::format("certs: \"{}\" exists; pass --force to overwrite it", path));
    }
  }
  return OkStatus();
}

Status WriteKeyAndCert(const std::filesystem::path& dir, const std::string& name, EVP_PKEY* key,
                       X509* cert) {
  FP_ASSIGN_OR_RETURN(std::string key_pem, ToPem(nullptr, key));
  FP_ASSIGN_OR_RETURN(std::string cert_pem, ToPem(cert, nullptr));
  FP_RETURN_IF_ERROR(WriteFileAtomically((dir / (name + ".key")).string(), key_pem, kKeyMode));
  return WriteFileAtomically((dir / (name + ".pem")).string(), cert_pem, kCertMode);
}

std::vector<std::string> NodeFiles(const std::filesystem::path& dir,
                                   const std::vector<std::string>& names) {
  std::vector<std::string> paths;
  for (const std::string& name : names) {
    paths.push_back((dir / (name + ".key")).string());
    paths.push_back((dir / (name + ".pem")).string());
  }
  return paths;
}

Status IssueWith(const std::filesystem::path& dir, const CertsOptions& options, X509* ca_cert,
                 EVP_PKEY* ca_key) {
  for (const std::string& name : options.names) {
    FP_ASSIGN_OR_RETURN(KeyPtr key, NewKey());
    FP_ASSIGN_OR_RETURN(CertPtr cert,
                        MakeNodeCert(name, key.get(), ca_cert, ca_key, options.validity_days));
    FP_RETURN_IF_ERROR(WriteKeyAndCert(dir, name, key.get(), cert.get()));
  }
  return OkStatus();
}

// An encrypted CA key fails to load instead of prompting on the terminal.
int RefusePassword(char* /*buffer*/, int /*size*/, int /*rwflag*/, void* /*user*/) { return 0; }

// Reads one PEM object from `path` with `read` (a PEM_read_bio_* function).
template <typename T, typename Reader>
StatusOr<std::unique_ptr<T, OpenSslFree>> ReadPem(const std::string& path, Reader read) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return NotFoundError(fmt::format("certs: \"{}\" does not exist; run `certs init` first", path));
  }
  std::unique_ptr<BIO, OpenSslFree> bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return ErrnoError("open", path, errno);
  std::unique_ptr<T, OpenSslFree> object(read(bio.get(), nullptr, RefusePassword, nullptr));
  if (!object) return InvalidArgumentError(fmt::format("certs: \"{}\" holds no PEM object", path));
  return object;
}

}  // namespace

Status InitCerts(const std::string& dir, const CertsOptions& options) {
  FP_RETURN_IF_ERROR(ValidateOptions(options));
  const std::filesystem::path base(dir);
  std::vector<std::string> paths = NodeFiles(base, options.names);
  paths.push_back((base / "ca.key").string());
  paths.push_back((base / "ca.pem").string());
  FP_RETURN_IF_ERROR(CheckOverwrite(paths, options.force));
  std::error_code error;
  std::filesystem::create_directories(base, error);
  if (error) return ErrnoError("create directory", dir, error.value());
  ERR_clear_error();
  FP_ASSIGN_OR_RETURN(KeyPtr ca_key, NewKey());
  FP_ASSIGN_OR_RETURN(CertPtr ca_cert, MakeCaCert(ca_key.get()));
  FP_RETURN_IF_ERROR(WriteKeyAndCert(base, "ca", ca_key.get(), ca_cert.get()));
  return IssueWith(base, options, ca_cert.get(), ca_key.get());
}

Status IssueCerts(const std::string& dir, const CertsOptions& options) {
  FP_RETURN_IF_ERROR(ValidateOptions(options));
  const std::filesystem::path base(dir);
  FP_RETURN_IF_ERROR(CheckOverwrite(NodeFiles(base, options.names), options.force));
  ERR_clear_error();
  FP_ASSIGN_OR_RETURN(auto ca_cert, ReadPem<X509>((base / "ca.pem").string(), PEM_read_bio_X509));
  FP_ASSIGN_OR_RETURN(auto ca_key,
                      ReadPem<EVP_PKEY>((base / "ca.key").string(), PEM_read_bio_PrivateKey));
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError(fmt::format("certs: {}/ca.key does not match ca.pem", dir));
  }
  return IssueWith(base, options, ca_cert.get(), ca_key.get());
}

}  // namespace fp::wire
