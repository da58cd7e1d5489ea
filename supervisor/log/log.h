// The replicated log: the ordered, durable sequence of records that every supervisor applies.
//
// Positions are contiguous from 0. Append reports a record's position only once the record is
// durable (standalone: the RocksDB WAL synced; cluster: an etcd quorum), so an acknowledged record
// is never lost. Records that carry an idempotency key (IdempotencyKey below) are written once:
// appending a record whose key is already in the log completes with the stored record's position
// and writes nothing.
//
// Two implementations share this interface: the standalone RocksDB backend (rocksdb_log.h) and
// the etcd backend for clusters (etcd_log.h); nothing above the log knows which one it runs on.
// Leader records (IsLeaderRecord) may be refused with FailedPrecondition by a backend whose
// writes are fenced by a leadership term, when this process does not lead.
//
// Thread-safety: every method of a Log may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "supervisor/log/records.pb.h"

namespace fp::supervisor {

namespace pb = ::fieldprint::supervisor;

struct LogEntry {
  uint64_t position = 0;
  pb::LogRecord record;
};

class Log {
 public:
  // Receives the position of a durable record, or why it is not durable: Unavailable (retryable:
  // the log is overloaded or closing), FailedPrecondition (a record with the same idempotency key
  // but different content is already in the log), InvalidArgument (the record has no body or is
  // too large), DataLoss or Unavailable from storage.
  using AppendCallback = std::function<void(StatusOr<uint64_t> position)>;

  virtual ~Log() = default;

  // Appends `record` asynchronously. `done` runs exactly once, on a thread of the log, and must
  // not block: hand work on to another thread (an Asio post) instead.
  virtual void Append(pb::LogRecord record, AppendCallback done) = 0;

  // The durable records at positions [from, from + n), n <= max_records, in order; empty when
  // `from` >= End(). OutOfRange when `from` < Begin() (trimmed); Unavailable or DataLoss from
  // storage.
  virtual StatusOr<std::vector<LogEntry>> Read(uint64_t from, size_t max_records) const = 0;

  // The first position Read can return: records below it were trimmed (applied everywhere and
  // covered by a signed checkpoint). 0 for a log that was never trimmed.
  virtual uint64_t Begin() const = 0;

  // One past the last durable position this process knows of (a cluster member learns of others'
  // records by polling, so it may lag).
  virtual uint64_t End() const = 0;

  // One past the last durable position as of this call, asked of the log's authority (in a
  // cluster: a quorum read), for a new leader that must see everything its predecessor wrote.
  // Errors when the authority cannot be reached.
  virtual StatusOr<uint64_t> ReadEnd() = 0;

  // Blocks until End() > position, the timeout passes, or the log closes; returns End().
  virtual uint64_t WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const = 0;

  // Deletes a bounded run of the oldest records, at most up to `below` (a backend may keep some,
  // e.g. the last record), with their idempotency keys except Admit ones. The caller guarantees
  // that everything that could replay those records has applied them durably and that a signed
  // checkpoint covers them. Returns the new Begin(). Errors from storage; calling again is safe.
  virtual StatusOr<uint64_t> Trim(uint64_t below) = 0;

  // Refuses new appends (Unavailable), makes what is queued durable (or fails it), completes
  // every callback and stops the log's threads. Idempotent.
  virtual void Close() = 0;

  // Approximate bytes the log keeps on this machine's disk; 0 for a log kept elsewhere.
  virtual uint64_t ApproximateBytes() const = 0;
};

// Appends and blocks until the record is durable; returns its position or the append's error.
StatusOr<uint64_t> AppendAndWait(Log& log, pb::LogRecord record);

// The key under which a record is written at most once, or nullopt for records that are not
// deduplicated (ticks, registrations, checkpoint requests). Binary, prefixed by the record type:
//   Admit      'A' session
//   Assign     'P' session replica(BE32) epoch(BE64) attempt(BE32)
//   LeafBatch  'L' session replica(BE32) epoch(BE64) first_step(BE64)
//   Deadline   'D' session replica(BE32) epoch(BE64)
//   CosignerJoined 'J' SHA-256(ledger vkey) name
//   Cosignature    'S' size(BE64) name
std::optional<std::string> IdempotencyKey(const pb::LogRecord& record);

// A short name of the record's type ("leaf_batch", ...), for logs and metrics labels.
const char* RecordTypeName(const pb::LogRecord& record);

// True for the records only the elected leader writes (Tick, CheckpointRequest, Assign, Deadline,
// WorkerLost, PlacementExpired): everything time-dependent or decided from one process's view.
// A cluster backend writes them fenced by the leader's term, so a deposed leader's proposals never
// land (etcd_log.h, "Fencing"). Records any member may write (client submissions, worker
// registrations and leaves, operator releases, and record types this function does not list) are
// not leader records. Pure.
bool IsLeaderRecord(const pb::LogRecord& record);

}  // namespace fp::supervisor
