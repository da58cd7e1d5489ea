// Starting a supervisor's state from somewhere other than a log replay:
//   - Bootstrap: a new or replaced member of a cluster downloads a running peer's snapshot
//     (GET /v1/admin/snapshot, snapshot.h) into an empty data directory; it then starts and
//     catches up from the cluster's log at the snapshot's applied position. Needed once the log
//     was trimmed below what the member has applied (the supervisor refuses to start then).
//   - Backup: an offline copy of a stopped supervisor's data directory as RocksDB checkpoints.
// Spec: docs/supervisor.md, "Cluster", and docs/operations.md, "Backups".
//
// Bootstrap verifies everything before it installs anything: the stream's format and every file's
// size and SHA-256 against the manifest (snapshot.h), then the state itself (its applied position
// is the manifest's, and fsck finds every stored root, tree, ledger node and signed checkpoint
// consistent). Only then is the downloaded state renamed into DATA_DIR/state, in one rename; on any
// error the partial download is deleted and the data directory is left as it was (created by
// Bootstrap only if it did not exist, and then removed again). Keys are never part of a snapshot:
// the ledger key (checkpoint.key) is provisioned like the TLS files.
//
// Transport: plain HTTP/1.1 to the peer's API port (the supervisor's HTTP API has no TLS listener;
// across untrusted networks reach the peer through a tunnel or a TLS-terminating proxy on the
// same host). Every connect and every read of the stream has a deadline.
//
// Thread-safety: each function runs on the calling thread and shares nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fp::supervisor::cluster {

// The name of the directory a bootstrap downloads into, inside the data directory.
inline constexpr std::string_view kBootstrapPartialDir = ".bootstrap-partial";
// Bytes of an error reply read from the peer (to quote its message).
inline constexpr size_t kMaxSnapshotErrorReplyBytes = 64 * 1024;

struct PeerAddress {
  std::string host;
  uint16_t port = 0;
};

// "http://HOST:PORT[/]" (IPv6 hosts in brackets). InvalidArgument otherwise, with a reason for
// https:// (see "Transport"). Pure.
StatusOr<PeerAddress> ParsePeerUrl(std::string_view url);

// OK when `data_dir` does not exist or holds nothing but key files ("*.key", which operators
// provision before the first start) and a partial download of an earlier bootstrap.
// FailedPrecondition naming what it holds otherwise (a state or log directory means this is not a
// new member). Reads only.
Status CheckBootstrapTarget(const std::string& data_dir);

struct BootstrapOptions {
  std::string from;         // the peer's API: http://HOST:PORT
  std::string data_dir;     // the new member's data directory (see CheckBootstrapTarget)
  std::string admin_token;  // the peer's admin token
  // This member's name (its tls-name). The peer reserves the snapshot's position for it in the
  // member table, so the leader cannot trim past it before this member starts. Empty: no
  // reservation (then start the member promptly).
  std::string member;
  std::chrono::milliseconds io_timeout{30'000};  // connect, and each read of the stream
};

struct BootstrapResult {
  uint64_t applied = 0;  // the installed state holds the log's records [0, applied)
  uint64_t bytes = 0;    // file bytes received
  size_t files = 0;
};

// Downloads, verifies and installs a peer's snapshot as described above. InvalidArgument for bad
// options; FailedPrecondition for a data directory that is not empty; Unauthenticated (401) or
// PermissionDenied (403, admin routes disabled) from the peer; Unavailable or DeadlineExceeded for
// the network; DataLoss for a stream that is truncated or corrupt or a state that fails fsck.
StatusOr<BootstrapResult> Bootstrap(const BootstrapOptions& options);

// Receives a snapshot stream: a producer feeds the stream's bytes, piece by piece, to the sink it
// is given, and returns its own failures (a sink error must be returned as it is).
using SnapshotSink = std::function<Status(std::string_view piece)>;
using SnapshotProducer = std::function<Status(const SnapshotSink& sink)>;

// Installs the snapshot `produce` delivers into `data_dir`, with Bootstrap's checks and
// guarantees: Bootstrap's second half, for a stream from elsewhere (and for tests). Errors as
// Bootstrap, and whatever the producer returns.
StatusOr<BootstrapResult> InstallSnapshot(const std::string& data_dir,
                                          const SnapshotProducer& produce);

struct BackupResult {
  uint64_t applied = 0;   // the backed-up state's applied position
  bool with_log = false;  // DATA_DIR/log (the RocksDB log backend) was copied too
};

// Copies a stopped supervisor's DATA_DIR/state (and DATA_DIR/log when present) into `out` as
// RocksDB checkpoints (hard links where the filesystem allows), then fscks the copy. `out` must
// not exist or be empty. Keys are not copied (back them up separately, see docs/operations.md).
// Unavailable when the supervisor is still running (RocksDB's lock) or on I/O errors;
// FailedPrecondition for a non-empty `out` or a data directory without a state; DataLoss when the
// copy fails fsck. On error `out` is removed again if Backup created it.
StatusOr<BackupResult> Backup(const std::string& data_dir, const std::string& out);

}  // namespace fp::supervisor::cluster
