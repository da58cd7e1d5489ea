// EtcdLog: the cluster Log backend. etcd is the ordered, quorum-committed store of write-once
// records; every supervisor runs one EtcdLog on the same key prefix and applies what it reads
// into its own RocksDB (DESIGN.md section 7, docs/supervisor.md "The log").
//
// Key schema (all under options.prefix, e.g. "/fieldprint/main"):
//   <prefix>/log/<position as 16 lower-case hex digits>  -> serialized LogRecord
//   <prefix>/idem/<idempotency key as hex>              -> position (BE64) || SHA-256(record)
//   <prefix>/meta/trimmed                               -> first position kept (BE64), once trimmed
// Hex positions make key order numeric order, so one range read returns records in log order.
//
// Appends. Append serializes the record, gives it its idempotency key (IdempotencyKey, or for an
// unkeyed record a key unique to this append: 'U' || 16 random bytes of this EtcdLog || a
// sequence number, so that a retried txn can still find it) and queues it. One writer thread
// takes up to max_txn_records / max_txn_bytes of the queue (group commit) and writes them at
// positions [q, q + k) in one txn:
//   compare  log[q].create_revision == 0                      (q is free)
//            log[q-1].create_revision > 0, or for q == 0: meta/trimmed absent
//            idem[i].create_revision == 0 for each record     (written once)
//   success  put log[q+i] = record i, put idem[i] = (q+i, hash i)
//   failure  range the last log key, meta/trimmed and every idem[i]
// Written positions always form a range [first kept, end); so "q free and q-1 written" holds
// exactly when q is the end, and the second compare also fences a writer whose view of the end is
// so old that the records below it were trimmed (a deleted key's create_revision is 0 again).
// A failed compare costs no extra round trip: the failure branch returns the current end and any
// stored idempotency entries. A record whose key is stored completes with the stored position if
// its SHA-256 matches (a retry) and FailedPrecondition otherwise; the rest retry at the new end,
// at most kMaxEtcdAppendAttempts times. A txn that fails in transit (timeout, connection loss,
// member down) is indeterminate and is resent unchanged on the next endpoint: the compares make
// the resend write at most once. Each append has a deadline (append_timeout): past it the
// callback gets DeadlineExceeded if a txn carrying it may have been applied (the caller retries
// with the same key) or Unavailable if none was ever sent.
//
// Reads. A poller thread follows the log in position order with linearizable range reads
// (polling, not watches: a watch can be cancelled or compacted away silently, a range read
// cannot), keeps the newest records in a bounded cache and advances End(); the writer adds its
// own committed groups to the cache at once. Read() serves from the cache or, for older
// positions, with a linearizable range read; WaitBeyond waits on the poller.
//
// Trimming (issue 7, item 3) is not implemented yet: the log grows in etcd. The schema already
// reserves meta/trimmed, and appends already compare against it, so that a later Trim (delete the
// records below a position every supervisor applied, keep the idempotency entries for a window,
// compact) needs no change to the append path. A read below the kept range is OutOfRange.
//
// Deviations from RocksLog: the largest record is max_txn_bytes (etcd's --max-request-bytes
// bounds a txn; 1.5 MiB by default), not kMaxRecordBytes; raise both to carry larger Admits.
//
// Thread-safety: every public method is safe from any thread. Callbacks run on the writer thread,
// or on the appending thread when an append is refused at once.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "supervisor/log/etcd_client.h"
#include "supervisor/log/log.h"

namespace fp::supervisor {

// Appends queued and not yet written; more are refused with Unavailable (backpressure).
inline constexpr size_t kMaxEtcdPendingAppends = 1 << 16;
inline constexpr size_t kMaxEtcdPendingBytes = size_t{256} << 20;
// Txns tried for one group before its appends fail with Unavailable (lost races and transport
// failures together; the append deadline usually ends the attempts first).
inline constexpr int kMaxEtcdAppendAttempts = 64;
// Records asked for in one range read (halved while a reply exceeds the client's response limit).
inline constexpr int64_t kMaxEtcdRangeRecords = 1024;
// Records returned by one Read.
inline constexpr size_t kMaxEtcdReadRecords = 8192;

struct EtcdLogOptions {
  etcd::ClientOptions client;          // endpoints, mTLS files, per-request timeout
  std::string prefix = "/fieldprint";  // no trailing '/'
  std::chrono::milliseconds append_timeout{5000};
  std::chrono::milliseconds poll_interval{20};
  // Records per txn: each takes two puts and one compare, under etcd's --max-txn-ops (128).
  size_t max_txn_records = 62;
  // Bytes of record values per txn, under etcd's --max-request-bytes (1.5 MiB) with room for keys.
  size_t max_txn_bytes = 1'400'000;
  size_t max_cache_records = 16384;
  size_t max_cache_bytes = size_t{64} << 20;
};

class EtcdLog final : public Log {
 public:
  struct Stats {
    uint64_t txns = 0;        // successful append txns
    uint64_t records = 0;     // records written by this EtcdLog
    uint64_t duplicates = 0;  // appends answered with a stored record's position
    uint64_t races_lost = 0;  // append txns whose position another writer took first
    uint64_t retries = 0;     // append txns resent after a transport or etcd failure
  };

  // Close()s.
  ~EtcdLog() override;
  EtcdLog(const EtcdLog&) = delete;
  EtcdLog& operator=(const EtcdLog&) = delete;

  void Append(pb::LogRecord record, AppendCallback done) override;
  // Also OutOfRange for a trimmed position, DataLoss for a gap or a record that does not parse,
  // and the client's errors for positions that are not cached.
  StatusOr<std::vector<LogEntry>> Read(uint64_t from, size_t max_records) const override;
  uint64_t End() const override;
  uint64_t WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const override;

  // Refuses new appends (Unavailable), writes what is queued (within each append's deadline),
  // completes every callback and stops both threads. Idempotent.
  void Close();

  Stats stats() const;

 private:
  struct Pending {
    pb::LogRecord record;
    std::string bytes;     // serialized record
    std::string idem_key;  // full etcd key of the idempotency entry
    Hash hash{};           // SHA-256 of bytes
    std::chrono::steady_clock::time_point deadline;
    AppendCallback done;
    // Appends of the same record queued in the same group: they share its outcome.
    std::vector<AppendCallback> followers;

    void Complete(const StatusOr<uint64_t>& result);
  };
  struct Group;
  friend StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options);

  EtcdLog(const EtcdLogOptions& options, std::unique_ptr<etcd::Client> writer,
          std::unique_ptr<etcd::Client> poller, std::unique_ptr<etcd::Client> reader, uint64_t end);
  std::string LogKey(uint64_t position) const;
  std::string IdemKey(const std::string& key) const;
  std::string TrimKey() const;

  void WriterLoop();
  void CommitGroup(std::vector<Pending>& group);
  // One txn for `group` at next_position_; false when the group is finished.
  bool TryTxn(Group& group);
  // Completes every live append of `group` with `status` (or DeadlineExceeded for those a sent
  // txn may have written, when `status` is Unavailable).
  void FailGroup(Group& group, const Status& status);
  void Publish(uint64_t first, const std::vector<Pending*>& written);

  void PollLoop();
  // One range read from End(); returns the number of records added.
  StatusOr<size_t> PollOnce();
  // Records [from, from + n), 1 <= n <= count, with a linearizable range read on `client`
  // (borrowed). NotFound when there is no record at `from` and it was not trimmed, OutOfRange
  // when it was, DataLoss for a gap or a record that does not parse.
  StatusOr<std::vector<LogEntry>> ReadFromEtcd(etcd::Client& client, uint64_t from,
                                               uint64_t count) const;
  // Adds records that continue the log at End() to the cache; requires mutex_.
  void AddToCacheLocked(std::vector<LogEntry> entries);

  const EtcdLogOptions options_;
  const std::unique_ptr<etcd::Client> writer_client_;  // writer thread
  const std::unique_ptr<etcd::Client> poller_client_;  // poller thread
  const std::unique_ptr<etcd::Client> reader_client_;  // Read of uncached positions
  std::array<uint8_t, 16> nonce_{};                    // this EtcdLog's unkeyed-record prefix
  std::atomic<uint64_t> unkeyed_sequence_{0};

  mutable std::mutex mutex_;
  std::condition_variable work_;           // the writer waits for appends or Close
  mutable std::condition_variable grown_;  // readers wait for End() to grow
  std::condition_variable poll_wake_;      // the poller's sleep, cut short by Close
  std::deque<Pending> queue_;              // guarded by mutex_
  size_t queued_bytes_ = 0;                // guarded by mutex_
  bool closing_ = false;                   // guarded by mutex_
  uint64_t end_ = 0;                       // guarded by mutex_
  std::deque<LogEntry> cache_;             // guarded by mutex_; positions [end_ - size, end_)
  size_t cache_bytes_ = 0;                 // guarded by mutex_
  Stats stats_;                            // guarded by mutex_

  uint64_t next_position_ = 0;  // writer thread only: where the next txn writes
  std::thread writer_;
  std::thread poller_;
};

// Connects to etcd, reads the log's end and starts the writer and poller threads. Unavailable or
// DeadlineExceeded when etcd cannot be reached, Unauthenticated for a TLS failure,
// InvalidArgument for bad options, DataLoss when the stored keys break the schema. The caller
// owns the log (usable as a std::unique_ptr<Log>).
StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options);

}  // namespace fp::supervisor
