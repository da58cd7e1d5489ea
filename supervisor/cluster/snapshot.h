// Snapshots of a supervisor's state store: how a new or replaced member of a cluster starts from a
// running peer instead of replaying a log that was trimmed (GET /v1/admin/snapshot, `fieldprint
// supervisor bootstrap`), and how an operator backs a stopped supervisor up (`supervisor backup`).
// Spec: docs/supervisor.md, "Cluster".
//
// A snapshot is a RocksDB checkpoint (rocksdb::Checkpoint: hard links of the immutable SST files,
// copies of the small live files, taken after a flush) of the state store, made between two applied
// groups, so it is exactly the state after applying the log's records [0, applied): the receiver
// continues from `applied` with the cluster's log.
//
// Stream format, version 1 (what the snapshot route sends and SnapshotReceiver accepts):
//   "fieldprint-snapshot 1\n"
//   per file:   "file <name> <size>\n" then <size> bytes
//   "manifest <length>\n" then <length> bytes of JSON:
//       {"applied": N, "files": [{"name": F, "size": S, "sha256": HEX}, ...]}
//   "end\n"
// The manifest comes last so that the sender reads every file once (hashing as it sends) and a
// stream cut anywhere lacks it: the receiver installs nothing until the manifest names exactly the
// files it received, with their sizes and SHA-256s, and the end line follows with nothing after.
// Names are 1..kMaxSnapshotFileNameBytes of [A-Za-z0-9._-] not starting with '.', unique; at most
// kMaxSnapshotFiles files and kMaxSnapshotBytes in all. The hashes protect against corruption and
// truncation in transit; the receiver then checks the state itself (fsck, bootstrap.h).
//
// Thread-safety: a SnapshotStream or SnapshotReceiver is used by one thread at a time; the free
// functions are safe from any thread.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <rocksdb/db.h>

#include "common/base/status.h"
#include "common/crypto/sha256.h"

namespace fp::supervisor::cluster {

inline constexpr size_t kMaxSnapshotFiles = 100'000;
inline constexpr uint64_t kMaxSnapshotBytes = uint64_t{1} << 40;  // 1 TiB
inline constexpr size_t kMaxSnapshotFileNameBytes = 255;
inline constexpr size_t kMaxSnapshotManifestBytes = size_t{16} << 20;
// Longest line of the format ("file <name> <size>\n" is the longest kind).
inline constexpr size_t kMaxSnapshotLineBytes = 512;
// Bytes one SnapshotStream::Next returns at most (the HTTP server writes one chunk per call).
inline constexpr size_t kMaxSnapshotChunkBytes = size_t{1} << 20;

struct SnapshotFile {
  std::string name;
  uint64_t size = 0;
  Hash sha256{};
};

struct SnapshotManifest {
  uint64_t applied = 0;  // the state holds the log's records [0, applied)
  std::vector<SnapshotFile> files;
};

// The manifest as JSON (see the format above). Pure.
std::string EncodeSnapshotManifest(const SnapshotManifest& manifest);
// Parses and validates a manifest: InvalidArgument for bad JSON, a bad name, a duplicate name,
// too many files or bytes. Pure.
StatusOr<SnapshotManifest> DecodeSnapshotManifest(std::string_view json);
// InvalidArgument unless `name` is a valid snapshot file name. Pure.
Status ValidateSnapshotFileName(std::string_view name);

// Creates a RocksDB checkpoint of `db` (borrowed) in `dir`, which must not exist (its parent must):
// the SST files and the WAL as they are, without a flush. A store that writes without a WAL (the
// state) must be flushed by the caller first (RocksStore::Flush), and kept from changing until
// this returns if the caller needs an exact position. AlreadyExists when `dir` exists; Unavailable
// from RocksDB or the filesystem.
Status CreateRocksCheckpoint(rocksdb::DB* db, const std::string& dir);

// Streams the files of `dir` in the format above.
class SnapshotStream {
 public:
  // Lists the regular files of `dir` (a checkpoint; nothing else may write there), in name order.
  // InvalidArgument for a file name the format cannot carry or for bounds exceeded; Unavailable
  // from the filesystem. The stream owns `dir` and deletes it when destroyed, then calls
  // `on_close` (optional). The caller owns the stream.
  static StatusOr<std::unique_ptr<SnapshotStream>> Open(std::string dir, uint64_t applied,
                                                        std::function<void()> on_close);
  ~SnapshotStream();
  SnapshotStream(const SnapshotStream&) = delete;
  SnapshotStream& operator=(const SnapshotStream&) = delete;

  // The next 1..max_bytes bytes (max_bytes <= kMaxSnapshotChunkBytes), or empty once done().
  // DataLoss when a file's size changed since Open; Unavailable on a read error. After an error
  // the stream is done (the receiver sees a stream without its manifest).
  StatusOr<std::string> Next(size_t max_bytes);
  bool done() const { return phase_ == Phase::kDone; }
  uint64_t applied() const { return manifest_.applied; }
  // Bytes of file content in the snapshot.
  uint64_t content_bytes() const;

 private:
  enum class Phase { kFileHeader, kFileBody, kManifest, kDone };
  SnapshotStream(std::string dir, SnapshotManifest manifest, std::function<void()> on_close)
      : dir_(std::move(dir)), manifest_(std::move(manifest)), on_close_(std::move(on_close)) {}
  // Appends up to `room` bytes of the current file to `out`; advances phases at its end.
  Status ReadFileBody(std::string& out, size_t room);

  const std::string dir_;
  SnapshotManifest manifest_;  // hashes are filled in as the files are read
  std::function<void()> on_close_;
  Phase phase_ = Phase::kFileHeader;
  std::string pending_;  // format bytes produced and not yet returned
  size_t file_ = 0;      // index of the current file
  uint64_t file_offset_ = 0;
  std::FILE* input_ = nullptr;  // owned; the current file
  Sha256Stream hash_;
};

// Parses a stream (fed in arbitrary pieces) into files of a directory, verifying as it goes.
class SnapshotReceiver {
 public:
  // Creates `dir` (its parent must exist); AlreadyExists when it exists, Unavailable on I/O
  // errors. The caller owns the receiver and the directory (it removes the directory on failure).
  static StatusOr<std::unique_ptr<SnapshotReceiver>> Create(const std::string& dir);
  ~SnapshotReceiver();
  SnapshotReceiver(const SnapshotReceiver&) = delete;
  SnapshotReceiver& operator=(const SnapshotReceiver&) = delete;

  // Consumes the next bytes of the stream. InvalidArgument for bytes that break the format
  // (version, line syntax, names, bounds), DataLoss for a manifest that disagrees with the files
  // received or bytes after the end, Unavailable for write errors. After an error every call fails.
  Status Feed(std::string_view bytes);
  // The verified manifest once the whole stream arrived (every file synced to disk); DataLoss
  // ("truncated") when the stream ended early.
  StatusOr<SnapshotManifest> Finish();
  uint64_t received_bytes() const { return received_; }

 private:
  enum class Phase { kVersion, kHeader, kFileBody, kManifest, kEnd, kDone };
  explicit SnapshotReceiver(std::string dir) : dir_(std::move(dir)) {}
  Status FeedOnce(std::string_view& bytes);
  // Takes a complete line from `bytes` into line_; false while the line is incomplete.
  StatusOr<bool> TakeLine(std::string_view& bytes);
  Status OnHeaderLine(std::string_view line);
  Status FinishFile();
  Status CheckManifest();

  const std::string dir_;
  Phase phase_ = Phase::kVersion;
  Status failed_;
  std::string line_;
  std::vector<SnapshotFile> files_;  // received, with their computed hashes
  uint64_t total_bytes_ = 0;
  uint64_t remaining_ = 0;       // of the current file body or manifest
  std::FILE* output_ = nullptr;  // owned; the current file
  Sha256Stream hash_;
  std::string manifest_text_;
  SnapshotManifest manifest_;
  uint64_t received_ = 0;
};

}  // namespace fp::supervisor::cluster
