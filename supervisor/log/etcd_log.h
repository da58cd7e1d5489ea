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
// sequence number, so that a retried txn can still find it) and queues it. Writer threads take up
// to max_txn_records / max_txn_bytes of the queue (group commit), claim the next positions
// [q, q + k) and write them in one txn:
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
// its SHA-256 matches (a retry) and FailedPrecondition otherwise. A txn that fails in transit
// (timeout, connection loss, member down) is indeterminate and is resent unchanged on the next
// endpoint: the compares make the resend write at most once. Each append has a deadline
// (append_timeout): past it the callback gets DeadlineExceeded if a txn carrying it may have been
// applied (the caller retries with the same key) or Unavailable if none was ever sent.
//
// Pipelining. Up to max_txns_in_flight txns (each on its own writer thread and connection) are in
// flight at once: the second claims [q + k, q + k + k2) while the first, at [q, q + k), is still
// on its way. This is sound with the q-1 compare: every txn checks its own predecessor atomically,
// so whatever order etcd applies them in, a txn either extends the contiguous range or fails;
// and the idempotency compares keep each record write-once across txns as within one. What can
// happen is wasted work: if etcd evaluates a txn before its predecessor in the pipeline (the
// connections race through the gateway to the raft leader, and a later, smaller txn usually
// overtakes its predecessor), or another supervisor took the positions, the txn fails. A txn that
// saw an end below its q waits until our own claims below q resolve; if they all landed and the end
// is now exactly q, it resends the same txn (an "overtake": one more round trip, no stall). Any
// other failure does not guess a new position while others are in flight (a guess at the tail can
// chase its own pipeline forever): it stops new claims, waits until every txn in flight has
// resolved, then retries alone from the highest end anyone observed (the one-txn-at-a-time loop,
// which learns the true end from each failure branch), and reopens the pipeline after it (a
// "stall").
//
// Why the default is one txn in flight (measured with log_bench, etcd 3.4 through its JSON
// gateway, 3 members with mTLS; 16-core host unless noted). Appends/s are bounded by work per
// record inside etcd, about 0.17 ms + 0.08 ms per KiB of record (69 B records: 5477/s; 2214 B:
// 2728/s; 8743 B: 1137/s; 1 member as fast as 3), not by round trips or txn count: on the 2-core
// host, 250 records per txn (--max-txn-ops raised) carried no more than 62 (3154 vs 3115/s at
// 128 appenders). Pipelining cannot add capacity there, and it costs: the txn claimed second is
// usually the smaller one, so etcd decodes and proposes it first and it fails (a full proposal)
// before its resend, and smaller groups cost more per record: 4 in flight gave 1553/s where 1
// gave 2728/s (128 appenders). It pays only where the round trip dominates (a remote etcd).
// The levers left are in the schema and transport: fewer keys per record (one value per group)
// and binary gRPC instead of JSON with base64.
//
// With several supervisors appending (the normal cluster case), a pipelined writer also keeps a
// txn claiming the current end in flight nearly all the time, so an unpipelined writer on another
// supervisor loses almost every race until its append deadline (seen in tests): pipeline
// either every writer of a prefix or none.
//
// Reads. A poller thread follows the log in position order with linearizable range reads
// (polling, not watches: a watch can be cancelled or compacted away silently, a range read
// cannot), keeps the newest records in a bounded cache and advances End(); the writers add their
// own committed groups to the cache at once (a group that completes before its predecessor waits
// in a small reorder buffer). Read() serves from the cache or, for older positions, with a
// linearizable range read; WaitBeyond waits on the poller.
//
// Trimming. Trim(below) deletes the records [Begin(), below) in one txn that also writes
// meta/trimmed = below, never deleting the last record (the q-1 compare of the next append needs
// it); it then deletes the idempotency entries of records more than idem_window_records below the
// trim point (Admit entries stay, as in RocksLog: a retried submission must find its session after
// its record is gone), each guarded by its mod_revision, and compacts etcd's history to the
// revision of the last deletion, so that the deleted values really leave etcd. A retried append
// whose entry is still kept completes with the stored position; after the window it would be
// written again, so the window must exceed the longest time a client retries. Read below the trim
// point is OutOfRange.
//
// Fencing. In a cluster only the elected leader writes leader records (IsLeaderRecord), and a
// leader that was deposed without noticing (paused, partitioned) must not. With
// options.leader_token set (the runtime hands it its cluster::LeaderElection's view), Append takes
// the token of this process's current leadership term for a leader record, or refuses it at once
// with FailedPrecondition when it does not lead. Leader records queue apart from the others and a
// group holds records of one term only; its txn adds
//   compare  <prefix>/leader.create_revision == token     (cluster::FencedTxn's fence)
//   failure  range <prefix>/leader
// so it can land only while that term lasts at etcd. When the fence fails (the failure branch
// shows the key gone or another term's), or the term ended locally before the first send, the
// group's records fail with FailedPrecondition ("not the leader") and are never retried: a new
// leader decides afresh from the applied state. When the term ended locally while a sent txn was
// in doubt, they fail with DeadlineExceeded instead (they may have landed) and are not retried
// either. Records already stored under their idempotency key still
// complete with their position. Unfenced records never wait for or depend on leadership.
//
// Deviations from RocksLog: the largest record is max_txn_bytes (etcd's --max-request-bytes
// bounds a txn; 1.5 MiB by default), not kMaxRecordBytes; raise both to carry larger Admits.
//
// Thread-safety: every public method is safe from any thread. Callbacks run on a writer thread,
// or on the appending thread when an append is refused at once.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "supervisor/log/etcd_client.h"
#include "supervisor/log/log.h"

namespace fp::supervisor {

// Appends queued and not yet written; more are refused with Unavailable (backpressure).
inline constexpr size_t kMaxEtcdPendingAppends = 1 << 16;
inline constexpr size_t kMaxEtcdPendingBytes = size_t{256} << 20;
// Txns of one group that may fail in transport before its appends fail with Unavailable (the
// append deadline usually ends them first). Lost races do not count: another writer's records
// landed, so the log made progress; only the append deadline bounds them.
inline constexpr int kMaxEtcdAppendAttempts = 64;
// Records asked for in one range read (halved while a reply exceeds the client's response limit).
inline constexpr int64_t kMaxEtcdRangeRecords = 1024;
// Records returned by one Read.
inline constexpr size_t kMaxEtcdReadRecords = 8192;
// Append txns in flight at once per EtcdLog (each has a writer thread and a connection).
inline constexpr size_t kMaxEtcdTxnsInFlight = 8;
// Records deleted by one Trim call (one delete-range operation in one txn).
inline constexpr uint64_t kMaxEtcdTrimRecords = 65536;
// Idempotency entries deleted by one txn of a Trim (each also takes one compare).
inline constexpr size_t kMaxEtcdTrimDeletesPerTxn = 64;
// Idempotency entries examined by one Trim; the rest wait for the next call.
inline constexpr size_t kMaxEtcdTrimScannedEntries = size_t{1} << 20;
// Txns one Trim tries when another supervisor trims at the same time.
inline constexpr int kMaxEtcdTrimAttempts = 8;

struct EtcdLogOptions {
  etcd::ClientOptions client;          // endpoints, mTLS files, per-request timeout
  std::string prefix = "/fieldprint";  // no trailing '/'
  std::chrono::milliseconds append_timeout{5000};
  std::chrono::milliseconds poll_interval{20};
  // Records per txn: each takes two puts and one compare, and 2 * records + 2 must stay within
  // client.max_txn_ops (etcd's --max-txn-ops, 128 by default). Larger groups did not raise
  // throughput in the measurements above.
  size_t max_txn_records = 62;
  // Bytes of record values per txn, under etcd's --max-request-bytes (1.5 MiB) with room for keys.
  size_t max_txn_bytes = 1'400'000;
  // Append txns in flight at once: 1..kMaxEtcdTxnsInFlight (see "Why the default is one txn").
  size_t max_txns_in_flight = 1;
  // Trim keeps the idempotency entries of the records in [below - idem_window_records, below).
  uint64_t idem_window_records = uint64_t{1} << 20;
  size_t max_cache_records = 16384;
  size_t max_cache_bytes = size_t{64} << 20;
  // Fencing (see "Fencing" above). Returns the fencing token of this process's current leadership
  // term, or nullopt when it does not lead; called on appending threads and writer threads, so it
  // must be thread-safe and must not block. Unset: leader records are not fenced (a log with one
  // writer, such as tests and benchmarks).
  std::function<std::optional<int64_t>()> leader_token;
  // Told once per leader record the fence refused (at Append or at etcd); optional, thread-safe.
  std::function<void()> on_fence_refused;
};

class EtcdLog final : public Log {
 public:
  struct Stats {
    uint64_t txns = 0;           // successful append txns
    uint64_t records = 0;        // records written by this EtcdLog
    uint64_t duplicates = 0;     // appends answered with a stored record's position
    uint64_t races_lost = 0;     // append txns whose position another writer took first
    uint64_t retries = 0;        // append txns resent after a transport or etcd failure
    uint64_t overtakes = 0;      // txns applied before their predecessors, resent once those landed
    uint64_t stalls = 0;         // times a lost race emptied the pipeline before a lone retry
    uint64_t max_in_flight = 0;  // most append txns observed in flight at once
    uint64_t fenced_records = 0;  // leader records written under their term's fence
    uint64_t fenced_refused = 0;  // leader records refused: not the leader, or the term ended
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
  // A linearizable read of the last log key (on Trim's client, one at a time).
  StatusOr<uint64_t> ReadEnd() override;
  // The trim point this EtcdLog knows of: set at open, by its own Trim, and by reads that met a
  // newer trim by another supervisor.
  uint64_t Begin() const override;
  uint64_t WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const override;

  // Deletes the records [Begin(), min(below, last position, Begin() + kMaxEtcdTrimRecords)) and
  // writes the new trim point, then deletes idempotency entries past the window and compacts
  // etcd (see "Trimming" above). The caller guarantees that every supervisor applied the records
  // durably and a signed checkpoint covers them. Returns the new Begin() (unchanged when there
  // is nothing to trim). Unavailable / DeadlineExceeded from etcd (the records may or may not be
  // deleted then; calling again is safe), Aborted when other trimmers kept winning, DataLoss when
  // meta/trimmed is malformed. One Trim runs at a time per EtcdLog; concurrent Trims of several
  // supervisors are safe (meta/trimmed only moves forward, by compare-and-swap).
  StatusOr<uint64_t> Trim(uint64_t below) override;

  // Refuses new appends (Unavailable), writes what is queued (within each append's deadline),
  // completes every callback and stops both threads. Idempotent.
  void Close() override;

  // The records live in etcd, not on this machine's disk.
  uint64_t ApproximateBytes() const override { return 0; }

  Stats stats() const;

 private:
  struct Pending {
    pb::LogRecord record;
    std::string bytes;     // serialized record
    std::string idem_key;  // full etcd key of the idempotency entry
    Hash hash{};           // SHA-256 of bytes
    int64_t fence = 0;     // a leader record's term (fencing token); 0: not fenced
    std::chrono::steady_clock::time_point deadline;
    AppendCallback done;
    // Appends of the same record queued in the same group: they share its outcome.
    std::vector<AppendCallback> followers;

    void Complete(const StatusOr<uint64_t>& result);
  };
  struct Group;
  enum class TxnOutcome { kFinished, kResend, kLost };
  friend StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options);

  EtcdLog(const EtcdLogOptions& options, std::vector<std::unique_ptr<etcd::Client>> writers,
          std::unique_ptr<etcd::Client> poller, std::unique_ptr<etcd::Client> reader,
          std::unique_ptr<etcd::Client> trimmer, uint64_t begin, uint64_t end);
  std::string LogKey(uint64_t position) const;
  std::string IdemKey(const std::string& key) const;
  std::string TrimKey() const;
  // cluster::LeaderElection's key: its create_revision is the fencing token.
  std::string LeaderKey() const;

  // Whether either queue holds appends; requires mutex_.
  bool QueuedLocked() const { return !queue_.empty() || !fenced_queue_.empty(); }
  // Moves the next group into `group`: leader records first (of one term), else the others, up to
  // the txn bounds; a second copy of a record in the group goes to its first copy's followers, a
  // different record with the same key into `rejected`. Requires mutex_.
  void TakeGroupLocked(std::vector<Pending>& group,
                       std::vector<std::pair<AppendCallback, Status>>& rejected);
  // One writer thread: forms groups, claims their positions and commits them on `client`.
  void WriterLoop(etcd::Client& client);
  // Commits `pending` at the claimed position `q` (pipelined) or, after a lost race, alone.
  void CommitGroup(std::vector<Pending>& pending, etcd::Client& client, uint64_t q);
  // After a txn at q lost because etcd applied it before its predecessors (the end it saw is
  // below q): waits until our claims below q resolve; true when they all landed and the end is
  // exactly q, so the txn can be resent unchanged.
  bool AwaitPredecessors(uint64_t q, const Group& group);
  // Releases the claim at `claimed_first`, stops new claims and waits until no other txn is in
  // flight and no other recovery runs; returns the position a lone retry starts at.
  uint64_t EnterRecovery(uint64_t claimed_first);
  // Reopens the pipeline with the next claim at the highest end observed.
  void ExitRecovery();
  // One txn for `group` at `q`; on kLost, group.end holds the end etcd reported.
  TxnOutcome TryTxn(Group& group, etcd::Client& client, uint64_t q);
  // Completes every live append of `group` with `status` (or DeadlineExceeded for those a sent
  // txn may have written, when `status` is Unavailable).
  void FailGroup(Group& group, const Status& status);
  // Fails every live append of a fenced group with FailedPrecondition ("not the leader", `why`)
  // and counts them.
  void RefuseFenced(Group& group, const std::string& why);
  // The fencing token of the current term, or 0 when this process does not lead (or nothing
  // fences).
  int64_t CurrentFence() const;
  void Publish(uint64_t first, const std::vector<Pending*>& written);

  void PollLoop();
  // One range read from End(); returns the number of records added.
  StatusOr<size_t> PollOnce();
  // Records [from, from + n), 1 <= n <= count, with a linearizable range read on `client`
  // (borrowed). NotFound when there is no record at `from` and it was not trimmed, OutOfRange
  // when it was, DataLoss for a gap or a record that does not parse.
  StatusOr<std::vector<LogEntry>> ReadFromEtcd(etcd::Client& client, uint64_t from,
                                               uint64_t count) const;
  // Adds records that continue the log at End() to the cache, then any group in the reorder
  // buffer that now continues it; requires mutex_.
  void AddToCacheLocked(std::vector<LogEntry> entries);
  // Trim's second step: deletes idempotency entries of positions below `cut` (not Admit ones).
  // Returns the revision of the last deleting txn (0 if none).
  StatusOr<int64_t> TrimIdempotencyEntries(uint64_t cut);
  void NoteTrimmed(uint64_t begin) const;

  const EtcdLogOptions options_;
  const std::vector<std::unique_ptr<etcd::Client>> writer_clients_;  // one per writer thread
  const std::unique_ptr<etcd::Client> poller_client_;                // poller thread
  const std::unique_ptr<etcd::Client> reader_client_;                // Read of uncached positions
  const std::unique_ptr<etcd::Client> trim_client_;                  // Trim
  std::array<uint8_t, 16> nonce_{};  // this EtcdLog's unkeyed-record prefix
  std::atomic<uint64_t> unkeyed_sequence_{0};

  mutable std::mutex mutex_;
  std::condition_variable work_;           // writers wait for appends, the pipeline, or Close
  std::condition_variable settled_;        // a recovering writer waits for txns in flight
  mutable std::condition_variable grown_;  // readers wait for End() to grow
  std::condition_variable poll_wake_;      // the poller's sleep, cut short by Close
  std::deque<Pending> queue_;              // guarded by mutex_; unfenced records
  std::deque<Pending> fenced_queue_;       // guarded by mutex_; leader records, by term
  size_t queued_bytes_ = 0;                // guarded by mutex_
  bool closing_ = false;                   // guarded by mutex_
  uint64_t end_ = 0;                       // guarded by mutex_
  mutable uint64_t begin_ = 0;             // guarded by mutex_; raised by reads too
  uint64_t claim_ = 0;                     // guarded by mutex_; the next txn's first position
  uint64_t known_end_ = 0;                 // guarded by mutex_; highest end any txn observed
  size_t in_flight_ = 0;                   // guarded by mutex_; claimed txns not yet resolved
  std::set<uint64_t> claims_;              // guarded by mutex_; first positions of those claims
  bool stalled_ = false;                   // guarded by mutex_; a recovery stops new claims
  bool recovering_ = false;                // guarded by mutex_; one recovery at a time
  // guarded by mutex_; our committed groups that completed before their predecessor, by first
  // position (at most max_txns_in_flight of them)
  std::map<uint64_t, std::vector<LogEntry>> ahead_;
  std::deque<LogEntry> cache_;  // guarded by mutex_; positions [end_ - size, end_)
  size_t cache_bytes_ = 0;      // guarded by mutex_
  Stats stats_;                 // guarded by mutex_

  std::mutex trim_mutex_;  // one Trim at a time
  std::vector<std::thread> writers_;
  std::thread poller_;
};

// Connects to etcd, reads the log's end and starts the writer and poller threads. Unavailable or
// DeadlineExceeded when etcd cannot be reached, Unauthenticated for a TLS failure,
// InvalidArgument for bad options, DataLoss when the stored keys break the schema. The caller
// owns the log (usable as a std::unique_ptr<Log>).
StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options);

}  // namespace fp::supervisor
