// LogModel: the in-memory fake of the cluster log (the etcd backend, supervisor/log/etcd_log.h)
// that the deterministic simulation (cluster_sim.h) runs supervisors against. Spec:
// docs/supervisor.md, "The etcd backend" and "Deterministic simulation".
//
// It keeps the promises of the Log contract (supervisor/log/log.h) and nothing more, so that it
// is small enough to be obviously right:
//   - positions are contiguous from 0; an append lands at End();
//   - every append carries a dedup key: the record's idempotency key, or, for records without
//     one, a key unique to the sending backend instance (as EtcdLog gives them). A key is written
//     once: the same key with the same content (SHA-256 of the record bytes) answers the stored
//     position, the same key with different content is FailedPrecondition. Keys are kept for
//     ever, trimmed records' keys included;
//   - leadership is a lease with a fencing token (the term): a campaign wins when no lease is
//     live, and a leader record or trim is written only while its term is the live one;
//   - Trim moves Begin() up; Read below Begin() is OutOfRange.
// The model also keeps every entry it ever appended (trimmed ones too) for the checker.
//
// A model can be built with a planted bug (ModelBug) so that tests prove the checker catches it.
//
// Thread-safety: none; the simulation is single-threaded.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "supervisor/log/log.h"

namespace fp::supervisor::sim {

// The term of records that are not leader records, and of "no leader yet".
inline constexpr uint64_t kNoTerm = 0;
// Records returned by one Read.
inline constexpr size_t kMaxModelReadRecords = 1024;

// A deliberately wrong model, for tests of the checker.
enum class ModelBug {
  kNone,
  kIgnoreIdempotency,  // every append is written, even under a key already in the log
  kIgnoreFencing,      // leader records are written whatever their term
};

// One append as it reaches the log.
struct ModelAppend {
  pb::LogRecord record;
  std::string bytes;        // the record's deterministic serialization
  std::string dedup_key;    // idempotency key, or a backend-unique key for unkeyed records
  uint64_t term = kNoTerm;  // a leader record's fencing token; kNoTerm for other records
};

// One entry of the log's whole history.
struct ModelEntry {
  pb::LogRecord record;
  std::string bytes;
  std::string dedup_key;
  uint64_t term = kNoTerm;
  uint64_t appended_ms = 0;  // simulated time of the write
};

class LogModel {
 public:
  // `lease_ttl_ms`: how long a campaign or keepalive keeps the lease alive.
  LogModel(uint64_t lease_ttl_ms, ModelBug bug);
  LogModel(const LogModel&) = delete;
  LogModel& operator=(const LogModel&) = delete;

  // Writes `append` at End(), or answers the position already stored under its dedup key.
  // FailedPrecondition when the key holds different content, or when a leader record's term is
  // not the live one (checked only for new writes: a retry of a written record gets its
  // position back whatever happened to the term since).
  StatusOr<uint64_t> Append(const ModelAppend& append, uint64_t now_ms);

  // Entries [from, from + n), n <= min(max_records, kMaxModelReadRecords); empty at End().
  // OutOfRange below Begin().
  StatusOr<std::vector<LogEntry>> Read(uint64_t from, size_t max_records) const;
  uint64_t Begin() const { return begin_; }
  uint64_t End() const { return history_.size(); }

  // Deletes the records below min(below, End()) if `term` is the live leader term;
  // FailedPrecondition otherwise. Returns the new Begin().
  StatusOr<uint64_t> Trim(uint64_t below, uint64_t term, uint64_t now_ms);

  // Starts a new term for `candidate` when no lease is live, and returns its token;
  // FailedPrecondition (naming the holder) while another lease lives.
  StatusOr<uint64_t> Campaign(int candidate, uint64_t now_ms);
  // Extends the live lease of `term`; FailedPrecondition when that term is over.
  Status KeepAlive(uint64_t term, uint64_t now_ms);
  // True when `term` is the live leader term at `now_ms`.
  bool Fenced(uint64_t term, uint64_t now_ms) const;

  // Supervisors publish how far their state is durably applied; the leader trims below the
  // smallest. Positions only grow (a late, smaller report changes nothing).
  void PublishApplied(int supervisor, uint64_t position);
  // The smallest published position of supervisors [0, supervisors); 0 if one never published.
  uint64_t MinPublishedApplied(int supervisors) const;

  // Every entry ever written, trimmed ones included, by position.
  const std::vector<ModelEntry>& history() const { return history_; }

 private:
  struct Stored {
    uint64_t position = 0;
    Hash content;
  };

  const uint64_t lease_ttl_ms_;
  const ModelBug bug_;
  std::vector<ModelEntry> history_;
  uint64_t begin_ = 0;
  std::map<std::string, Stored> keys_;
  uint64_t term_ = kNoTerm;
  int leader_ = -1;
  uint64_t lease_expiry_ms_ = 0;
  std::map<int, uint64_t> published_;
};

}  // namespace fp::supervisor::sim
