// Certificates for a fieldprint cluster's mutual TLS (`fieldprint certs init|issue`): one CA and
// node certificates signed by it, all with P-256 keys and ECDSA-SHA256 signatures, written with
// OpenSSL 3 APIs. P-256 rather than Ed25519 so that every TLS stack an operator may point at the
// same files (etcd, Prometheus, curl) accepts them.
//
// Layout of DIR (see TlsFilesForNode in tls.h):
//   ca.pem, ca.key          the CA (basicConstraints CA:TRUE, keyCertSign), 10 years
//   <name>.pem, <name>.key  one per node: CN=<name>, SAN DNS:<name>, DNS:localhost,
//                           IP:127.0.0.1, extendedKeyUsage serverAuth + clientAuth (a node is a
//                           TLS server and client), validity_days
// Keys are unencrypted PKCS#8 PEM with mode 0600; certificates have mode 0644. Every file is
// written to a temporary name and renamed, so a crash never leaves half a file.
//
// Thread-safety: the functions touch only the files of DIR; do not run two on one DIR at once.
#pragma once

#include <string>
#include <vector>

#include "common/base/status.h"

namespace fp::wire {

// Node names per call; a cluster's whole list fits with room to spare.
inline constexpr size_t kMaxCertNames = 1024;
inline constexpr int kMaxCertValidityDays = 3650;
inline constexpr int kCaValidityDays = 3650;

struct CertsOptions {
  // Node names: 1..63 characters of [a-z0-9.-], starting and ending with a letter or digit;
  // "ca" is reserved. Default: a local cluster of one supervisor and three workers.
  std::vector<std::string> names = {"supervisor-0", "worker-0", "worker-1", "worker-2"};
  int validity_days = 825;  // node certificates, 1..kMaxCertValidityDays
  bool force = false;       // overwrite existing files instead of refusing
};

// Creates DIR if needed, then a new CA and a certificate for every name. Errors:
//   InvalidArgument  a bad or duplicate name, no names or too many, validity out of range;
//   AlreadyExists    without force, a file to be written exists (nothing is written then);
//   PermissionDenied, Unavailable, ...  the directory or a file could not be written;
//   Internal         OpenSSL failed.
Status InitCerts(const std::string& dir, const CertsOptions& options);

// Adds node certificates signed by the CA already in DIR (ca.pem, ca.key), e.g. for a new
// worker. InitCerts's errors, plus NotFound if the CA files are missing and InvalidArgument if
// they are not a matching PEM certificate and key.
Status IssueCerts(const std::string& dir, const CertsOptions& options);

}  // namespace fp::wire
