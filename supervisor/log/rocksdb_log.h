// RocksLog: the standalone Log backend, one RocksDB database with the WAL synced on every write.
//
// Group commit: Append only queues the serialized record. One writer thread takes everything
// queued (up to kMaxGroupRecords / kMaxGroupBytes), assigns positions, checks idempotency keys,
// writes the whole group as one WriteBatch with sync = true, and then completes every callback of
// the group. Concurrent appenders therefore share one fsync, and throughput grows with
// concurrency instead of collapsing to one fsync per record.
//
// Key schema (column families):
//   records  position (BE64)        -> serialized LogRecord
//   keys     IdempotencyKey(record) -> position (BE64) || SHA-256 of the record (32 bytes); logs
//                                      written before the hash was kept hold the position only
//   meta     "begin"                -> first retained position (BE64), once trimmed
//
// Trimming (Trim) deletes the oldest records and their keys, except the keys of Admit records,
// which stay (with the record's hash) so that a retried submission with an Idempotency-Key still
// finds its session after its record is gone. Reads below the trim point are OutOfRange.
//
// A write error (fsync failed, disk full) leaves the log failed: every later Append fails with that
// error, because after a failed fsync nothing written since the last good sync can be trusted.
//
// Thread-safety: all public methods are safe from any thread. Callbacks run on the writer thread
// (or on the appending thread when an append is refused at once).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/base/status.h"
#include "supervisor/log/log.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor {

// Appends queued and not yet written; more are refused with Unavailable (backpressure).
inline constexpr size_t kMaxPendingAppends = 1 << 16;
inline constexpr size_t kMaxPendingBytes = size_t{256} << 20;
// Records and bytes written in one synced WriteBatch.
inline constexpr size_t kMaxGroupRecords = 8192;
inline constexpr size_t kMaxGroupBytes = size_t{32} << 20;
// Largest serialized record (a maximal Admit is about 1.3 MiB).
inline constexpr size_t kMaxRecordBytes = size_t{8} << 20;
// Records returned by one Read.
inline constexpr size_t kMaxReadRecords = 8192;
// Records deleted by one Trim call (each needs its idempotency key computed).
inline constexpr size_t kMaxTrimRecords = 65536;

class RocksLog final : public Log {
 public:
  // Opens (or creates) the log in directory `path` and starts its writer thread. Unavailable or
  // DataLoss from RocksDB; DataLoss when the stored positions are not contiguous from 0. The
  // caller owns the log.
  static StatusOr<std::unique_ptr<RocksLog>> Open(const std::string& path);
  // Close()s.
  ~RocksLog() override;
  RocksLog(const RocksLog&) = delete;
  RocksLog& operator=(const RocksLog&) = delete;

  void Append(pb::LogRecord record, AppendCallback done) override;
  StatusOr<std::vector<LogEntry>> Read(uint64_t from, size_t max_records) const override;
  uint64_t End() const override;
  // End(): this process is the only writer.
  StatusOr<uint64_t> ReadEnd() override { return End(); }
  uint64_t Begin() const override;

  // Deletes the records at positions [Begin(), min(before, End(), Begin() + kMaxTrimRecords)) and
  // their idempotency keys (Admit keys stay), synced. The caller guarantees that every
  // supervisor applied them durably and that a signed checkpoint covers them: nothing can replay
  // them afterwards. Returns the new Begin(). Unavailable or DataLoss from storage (nothing is
  // trimmed then).
  StatusOr<uint64_t> Trim(uint64_t before) override;
  uint64_t WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const override;

  // Refuses new appends (Unavailable), writes everything already queued, completes its callbacks
  // and stops the writer thread. Idempotent.
  void Close() override;

  struct Stats {
    uint64_t groups = 0;      // synced WriteBatches
    uint64_t records = 0;     // records written
    uint64_t duplicates = 0;  // appends answered with an existing record's position
    uint64_t refused = 0;     // appends refused because the queue was full or the log closed
  };
  Stats stats() const;
  // Approximate bytes on disk of the records and keys.
  uint64_t ApproximateBytes() const override;

 private:
  struct Pending {
    std::string bytes;  // serialized record
    std::optional<std::string> key;
    AppendCallback done;
  };

  RocksLog(std::unique_ptr<RocksStore> store, uint64_t begin, uint64_t end);
  void WriterLoop();
  // Writes one group and completes its callbacks. Runs on the writer thread only.
  void CommitGroup(std::vector<Pending>& group);
  // Where a keyed record already is: its position and whether the content matches, or nullopt.
  StatusOr<std::optional<uint64_t>> FindStored(const std::string& key, const std::string& bytes,
                                               bool& same_content) const;

  std::unique_ptr<RocksStore> store_;

  mutable std::mutex mutex_;
  std::condition_variable work_;           // the writer waits for appends or Close
  mutable std::condition_variable grown_;  // readers wait for End() to grow
  std::deque<Pending> queue_;              // guarded by mutex_
  size_t queued_bytes_ = 0;                // guarded by mutex_
  bool closing_ = false;                   // guarded by mutex_
  Status failure_;                         // guarded by mutex_; set once a write failed
  uint64_t end_ = 0;                       // guarded by mutex_; one past the last durable record
  uint64_t begin_ = 0;                     // guarded by mutex_; the first retained record
  std::mutex trim_mutex_;                  // one Trim at a time
  Stats stats_;                            // guarded by mutex_

  uint64_t next_position_ = 0;  // writer thread only
  std::thread writer_;
};

}  // namespace fp::supervisor
