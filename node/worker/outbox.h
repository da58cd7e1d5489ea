// Outbox: the worker's bounded, durable buffer of LeafBatches the supervisor has not yet
// acknowledged (DESIGN.md section 5.3). A batch is on disk (fdatasync'd) before it is sent; after
// a reconnect, or a restart of the process, every batch still here is resent with the same
// idempotent key (session, replica, epoch, first_step) and the same bytes, until an Ack removes
// it.
//
// The outbox also remembers, per replica, how far its leaves were sent (a cursor: epoch and
// next step), also after the batches are acknowledged, so that a worker restarted in the middle
// of a session regenerates the replica from step 0 but sends only from where it had got to:
// the supervisor expects the next batch to start exactly at its next step.
//
// File format: DATA_DIR/outbox.log, a header ("FPOUTBOX" and a big-endian u32 version, 1), then
// records appended one after another:
//   u32 body_length (big-endian, 1..kMaxOutboxRecordBytes) | u32 CRC-32C of the body | body
// where the body's first byte is its type:
//   1 PUT     the serialized wire LeafBatch (its key is read from it)
//   2 ACK     session id (16) | replica u32 | epoch u64 | first_step u64: the batch is gone
//   3 FORGET  session id (16) | replica u32: the replica's batches and cursor are gone
//   4 CURSOR  session id (16) | replica u32 | epoch u64 | next_step u64 (written by compaction)
// Replaying the records in order rebuilds the state. A record that is cut short, fails its CRC,
// or does not decode ends the replay: it and everything after it are dropped (logged, and
// truncated from the file) and the outbox opens with what came before. When the file grows to
// several times its live content it is rewritten (to a temporary file, fsync'd, then renamed).
//
// ACK and FORGET records are not synced: losing one only causes a duplicate resend, which the
// supervisor acknowledges again without storing it twice.
//
// Thread-safety: not thread-safe; the streaming thread owns the outbox.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/leaf/session_id.h"
#include "common/wire/envelope.h"
#include "common/wire/frame.h"

namespace fp::node::worker {

inline constexpr uint32_t kOutboxVersion = 1;
// One record: a whole LeafBatch frame payload plus the record's own fields.
inline constexpr size_t kMaxOutboxRecordBytes = wire::kMaxFramePayloadBytes + 64;
// Bounds on what the outbox holds (OutboxOptions may set lower ones).
inline constexpr size_t kMaxOutboxBatches = 1 << 16;
inline constexpr uint64_t kMaxOutboxBytes = uint64_t{1} << 30;
// Replica cursors kept; beyond this the least recently updated one is forgotten (that replica,
// if it is ever assigned again after a restart, is resent from step 0 and the supervisor refuses
// the steps it already has).
inline constexpr size_t kMaxOutboxCursors = 1 << 16;
// The file is rewritten once it is larger than this and than kCompactionFactor times the live
// records.
inline constexpr uint64_t kCompactionMinBytes = uint64_t{4} << 20;
inline constexpr uint64_t kCompactionFactor = 4;

// The idempotent key of a LeafBatch.
struct BatchKey {
  SessionId session{};
  uint32_t replica = 0;
  uint64_t epoch = 0;
  uint64_t first_step = 0;

  auto operator<=>(const BatchKey&) const = default;
};
// The key of `batch` (which must have a 16-byte session id: FP_CHECKed).
BatchKey KeyOf(const wire::pb::LeafBatch& batch);
// "0123abcd.../1@2+16": session prefix, replica, epoch and first step, for logs.
std::string KeyString(const BatchKey& key);

// How far a replica's leaves were handed to the outbox.
struct ReplicaCursor {
  uint64_t epoch = 0;
  uint64_t next_step = 0;  // one past the last step of the newest batch of that epoch

  bool operator==(const ReplicaCursor&) const = default;
};

struct OutboxOptions {
  size_t max_batches = 4096;                 // 1..kMaxOutboxBatches
  uint64_t max_bytes = uint64_t{256} << 20;  // serialized batch bytes, 1..kMaxOutboxBytes
};

class Outbox {
 public:
  // Opens (creating if needed) DIR/outbox.log and replays it. DIR must exist. InvalidArgument
  // for options out of range; DataLoss if the file does not start with the outbox header (it is
  // left alone: it is not an outbox); Unavailable or Internal for I/O errors. A corrupt or
  // truncated tail is not an error (see the file comment; dropped_tail_bytes() tells). The caller
  // owns the result.
  static StatusOr<std::unique_ptr<Outbox>> Open(const std::string& dir,
                                                const OutboxOptions& options);
  ~Outbox();
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  // Appends `batches` (each must pass wire validation as a LeafBatch: FP_CHECKed) and syncs
  // them to disk; on OK every one is durable and pending. A batch whose key is already pending
  // replaces it. ResourceExhausted (nothing written) if they would take the outbox past its
  // batch or byte bound; Unavailable/Internal for I/O errors (nothing is pending then, and the
  // file is cut back to where it was).
  Status Put(std::span<const wire::pb::LeafBatch> batches);
  // Removes the pending batch with `key`. OK also when there is none (a duplicate Ack).
  // I/O errors as for Put.
  Status Ack(const BatchKey& key);
  // Removes every pending batch of the replica and its cursor. I/O errors as for Put.
  Status Forget(const SessionId& session, uint32_t replica);

  // The pending batches in key order (for one replica: by epoch, then first step, which is the
  // order the supervisor needs). The pointers are borrowed and valid until the next mutation.
  std::vector<const wire::pb::LeafBatch*> Pending() const;
  // The pending batch with `key`, or null; borrowed until the next mutation.
  const wire::pb::LeafBatch* Find(const BatchKey& key) const;
  std::optional<ReplicaCursor> Cursor(const SessionId& session, uint32_t replica) const;

  size_t batches() const { return pending_.size(); }
  uint64_t bytes() const { return live_bytes_; }
  uint64_t file_bytes() const { return end_offset_; }
  // Bytes dropped from a corrupt or truncated tail when the outbox was opened.
  uint64_t dropped_tail_bytes() const { return dropped_tail_bytes_; }
  // True once an I/O error left the file in an unknown state; every later mutation then fails.
  bool broken() const { return broken_; }

 private:
  struct Entry {
    wire::pb::LeafBatch batch;
    uint64_t bytes = 0;  // serialized size
  };
  struct CursorEntry {
    ReplicaCursor cursor;
    uint64_t touched = 0;  // update counter, for eviction
  };
  using ReplicaKey = std::pair<SessionId, uint32_t>;

  Outbox(std::string path, int fd, const OutboxOptions& options)
      : path_(std::move(path)), fd_(fd), options_(options) {}

  Status Replay();
  // Applies one record body to the in-memory state; InvalidArgument if it does not decode.
  Status ApplyRecord(ByteSpan body);
  void ApplyPut(wire::pb::LeafBatch batch, uint64_t bytes);
  void ApplyForget(const ReplicaKey& replica);
  void TouchCursor(const ReplicaKey& replica, const ReplicaCursor& cursor);
  // Appends whole records (already framed) at the end of the file; `sync` fdatasyncs them.
  Status AppendRecords(const Bytes& records, bool sync);
  Status MaybeCompact();
  Status Compact();

  const std::string path_;
  int fd_ = -1;
  const OutboxOptions options_;
  std::map<BatchKey, Entry> pending_;
  std::map<ReplicaKey, CursorEntry> cursors_;
  uint64_t cursor_clock_ = 0;
  uint64_t live_bytes_ = 0;
  uint64_t end_offset_ = 0;
  uint64_t dropped_tail_bytes_ = 0;
  bool broken_ = false;
};

}  // namespace fp::node::worker
