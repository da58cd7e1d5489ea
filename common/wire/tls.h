// TLS 1.3 contexts with mutual certificate authentication for the worker <-> supervisor stream,
// and the identity of a verified peer. Spec: docs/formats.md, section "Wire frames".
//
// Both sides present a certificate and require one from the peer (verify_peer |
// verify_fail_if_no_peer_cert), and both verify it against the same CA file. Only TLS 1.3 is
// offered or accepted. A node's identity is its certificate's name (see PeerIdentity), never a
// message field.
//
// Thread-safety: the factories are safe from any thread. A context may be shared by every
// connection of a process once built (OpenSSL contexts are safe for concurrent handshakes as long
// as they are not reconfigured).
#pragma once

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

#include "common/base/status.h"

typedef struct ssl_st SSL;

namespace fp::wire {

// Longest identity accepted from a certificate name (a DNS name is at most 253 characters).
inline constexpr size_t kMaxIdentityBytes = 253;

struct TlsFiles {
  std::string ca_file;    // PEM: the CA certificate(s) a peer's certificate must chain to
  std::string cert_file;  // PEM: this node's certificate (then any intermediates)
  std::string key_file;   // PEM: the unencrypted private key of cert_file's first certificate
};

// The files `fieldprint certs init DIR` writes for node `name`: DIR/ca.pem, DIR/<name>.pem,
// DIR/<name>.key.
TlsFiles TlsFilesForNode(const std::string& dir, const std::string& name);

// Contexts for the accepting (supervisor) and the connecting (worker) side. The caller owns the
// result; it must outlive every Listener and Connection built on it. Errors:
//   NotFound         a file does not exist;
//   InvalidArgument  a file holds no usable PEM certificate or key (an encrypted key counts: the
//                    process never prompts for a password), or the key is not the certificate's;
//   Internal         OpenSSL could not allocate or configure the context.
StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeServerTlsContext(const TlsFiles& files);
StatusOr<std::unique_ptr<boost::asio::ssl::context>> MakeClientTlsContext(const TlsFiles& files);

// The identity of the peer of a completed handshake: its certificate's subject common name, or,
// without one, its first DNS subject alternative name. Unauthenticated if the peer presented no
// certificate, its chain did not verify, or it has no name of printable ASCII of
// 1..kMaxIdentityBytes bytes. `ssl` is borrowed.
StatusOr<std::string> PeerIdentity(const SSL* ssl);

}  // namespace fp::wire
