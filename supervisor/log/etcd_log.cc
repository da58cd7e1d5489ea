// EtcdLog; see etcd_log.h.
#include "supervisor/log/etcd_log.h"

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include <fmt/format.h>
#include <openssl/rand.h>
#include <pthread.h>

#include "common/base/bytes.h"
#include "common/base/log.h"

namespace fp::supervisor {
namespace {

using SteadyClock = std::chrono::steady_clock;
using etcd::Compare;
using etcd::TxnOp;

// Bytes of an idempotency entry: position (8) || SHA-256 of the record (32).
constexpr size_t kIdemValueBytes = 8 + kHashSize;
// Pause between resends of a failed txn: grows per attempt up to this bound.
constexpr std::chrono::milliseconds kMaxRetryPause{200};

std::string Be64(uint64_t value) {
  Bytes bytes;
  AppendU64(bytes, value);
  return std::string(AsChars(bytes));
}

StatusOr<uint64_t> ParseBe64(std::string_view bytes, std::string_view what) {
  if (bytes.size() != 8) return DataLossError(fmt::format("etcd log: {} is not 8 bytes", what));
  return LoadU64(reinterpret_cast<const uint8_t*>(bytes.data()));
}

// The position of log key `key` (prefix "<prefix>/log/" of `prefix_size` bytes), or DataLoss.
StatusOr<uint64_t> ParseLogKey(std::string_view key, size_t prefix_size) {
  const std::string_view hex = key.substr(std::min(key.size(), prefix_size));
  uint64_t position = 0;
  auto [ptr, error] = std::from_chars(hex.data(), hex.data() + hex.size(), position, 16);
  if (hex.size() != 16 || error != std::errc() || ptr != hex.data() + hex.size()) {
    return DataLossError(fmt::format("etcd log: key \"{}\" is not a log position", key));
  }
  return position;
}

// A range of the last log key, as Open and a failed append's txn read the end.
etcd::RangeRequest LastLogKey(const std::string& prefix) {
  etcd::RangeRequest last;
  last.key = prefix + "/log/";
  last.range_end = etcd::PrefixEnd(last.key);
  last.limit = 1;
  last.descending = true;
  last.keys_only = true;
  return last;
}

bool Retryable(StatusCode code) {
  return code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded ||
         code == StatusCode::kInternal || code == StatusCode::kUnknown ||
         code == StatusCode::kResourceExhausted;
}

}  // namespace

void EtcdLog::Pending::Complete(const StatusOr<uint64_t>& result) {
  done(result);
  for (AppendCallback& follower : followers) follower(result);
}

struct EtcdLog::Group {
  std::vector<Pending*> live;  // not yet completed, in queue order
  bool sent = false;           // a txn carrying them may have been applied
  int failed_attempts = 0;     // txns without an answer (a lost race is an answer)
  uint64_t end = 0;            // after kLost: the end etcd reported
  int64_t fence = 0;           // the records' leadership term; 0: not fenced
  Status last_error = UnavailableError("no txn sent");
};

StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options) {
  if (options.prefix.empty() || options.prefix.back() == '/') {
    return InvalidArgumentError("etcd log: prefix must be non-empty without a trailing '/'");
  }
  const size_t max_ops = options.client.max_txn_ops;
  if (options.max_txn_records < 1 || 2 * options.max_txn_records + 2 > max_ops) {
    return InvalidArgumentError(
        fmt::format("etcd log: max_txn_records must be in 1..{} (the client's max_txn_ops is {})",
                    max_ops < 4 ? 0 : (max_ops - 2) / 2, max_ops));
  }
  if (options.append_timeout <= std::chrono::milliseconds::zero() ||
      options.poll_interval <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("etcd log: timeouts must be positive");
  }
  if (options.max_txns_in_flight < 1 || options.max_txns_in_flight > kMaxEtcdTxnsInFlight) {
    return InvalidArgumentError(
        fmt::format("etcd log: max_txns_in_flight must be in 1..{}", kMaxEtcdTxnsInFlight));
  }
  std::vector<std::unique_ptr<etcd::Client>> writers;
  for (size_t i = 0; i < options.max_txns_in_flight; ++i) {
    FP_ASSIGN_OR_RETURN(writers.emplace_back(), etcd::Client::Create(options.client));
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> poller, etcd::Client::Create(options.client));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> reader, etcd::Client::Create(options.client));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> trimmer, etcd::Client::Create(options.client));
  // The end and the trim point in one snapshot (a txn without compares runs its success ops).
  etcd::TxnRequest snapshot;
  snapshot.success.push_back({TxnOp::Kind::kRange, "", "", 0, LastLogKey(options.prefix), ""});
  etcd::RangeRequest trim;
  trim.key = options.prefix + "/meta/trimmed";
  snapshot.success.push_back({TxnOp::Kind::kRange, "", "", 0, trim, ""});
  StatusOr<etcd::TxnResponse> found = writers[0]->Txn(snapshot, std::nullopt);
  // One failed member must not fail the open: the client moved on to the next endpoint.
  for (size_t i = 1;
       i < options.client.endpoints.size() && !found.ok() && Retryable(found.status().code());
       ++i) {
    found = writers[0]->Txn(snapshot, std::nullopt);
  }
  FP_RETURN_IF_ERROR(found.status().WithContext("etcd log: read the end"));
  uint64_t end = 0;
  uint64_t begin = 0;
  if (!found->results[0].range.kvs.empty()) {
    FP_ASSIGN_OR_RETURN(uint64_t last,
                        ParseLogKey(found->results[0].range.kvs[0].key, options.prefix.size() + 5));
    end = last + 1;
  }
  if (!found->results[1].range.kvs.empty()) {
    FP_ASSIGN_OR_RETURN(begin, ParseBe64(found->results[1].range.kvs[0].value, "meta/trimmed"));
    if (begin >= end) return DataLossError("etcd log: trimmed, but no record is left");
  }
  return std::unique_ptr<EtcdLog>(new EtcdLog(options, std::move(writers), std::move(poller),
                                              std::move(reader), std::move(trimmer), begin, end));
}

EtcdLog::EtcdLog(const EtcdLogOptions& options, std::vector<std::unique_ptr<etcd::Client>> writers,
                 std::unique_ptr<etcd::Client> poller, std::unique_ptr<etcd::Client> reader,
                 std::unique_ptr<etcd::Client> trimmer, uint64_t begin, uint64_t end)
    : options_(options),
      writer_clients_(std::move(writers)),
      poller_client_(std::move(poller)),
      reader_client_(std::move(reader)),
      trim_client_(std::move(trimmer)),
      end_(end),
      begin_(begin),
      claim_(end),
      known_end_(end) {
  FP_CHECK(RAND_bytes(nonce_.data(), static_cast<int>(nonce_.size())) == 1);
  for (const std::unique_ptr<etcd::Client>& client : writer_clients_) {
    writers_.emplace_back([this, &client] {
      pthread_setname_np(pthread_self(), "fp-etcd-writer");
      WriterLoop(*client);
    });
  }
  poller_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "fp-etcd-poller");
    PollLoop();
  });
}

EtcdLog::~EtcdLog() { Close(); }

void EtcdLog::Close() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
  }
  work_.notify_all();
  poll_wake_.notify_one();
  grown_.notify_all();
  for (std::thread& writer : writers_) {
    if (writer.joinable()) writer.join();
  }
  if (poller_.joinable()) poller_.join();
}

std::string EtcdLog::LogKey(uint64_t position) const {
  return fmt::format("{}/log/{:016x}", options_.prefix, position);
}

std::string EtcdLog::IdemKey(const std::string& key) const {
  return options_.prefix + "/idem/" + HexEncode(AsBytes(key));
}

std::string EtcdLog::TrimKey() const { return options_.prefix + "/meta/trimmed"; }

std::string EtcdLog::LeaderKey() const { return options_.prefix + "/leader"; }

void EtcdLog::Append(pb::LogRecord record, AppendCallback done) {
  if (record.body_case() == pb::LogRecord::BODY_NOT_SET) {
    done(InvalidArgumentError("log record has no body"));
    return;
  }
  Pending pending;
  if (!record.SerializeToString(&pending.bytes) || pending.bytes.size() > options_.max_txn_bytes) {
    done(InvalidArgumentError(fmt::format("{} record cannot be serialized within {} bytes",
                                          RecordTypeName(record), options_.max_txn_bytes)));
    return;
  }
  std::optional<std::string> key = IdempotencyKey(record);
  if (!key.has_value()) {
    Bytes unique = {'U'};
    unique.insert(unique.end(), nonce_.begin(), nonce_.end());
    AppendU64(unique, unkeyed_sequence_.fetch_add(1));
    key = std::string(AsChars(unique));
  }
  if (options_.leader_token && IsLeaderRecord(record)) {
    pending.fence = CurrentFence();
    if (pending.fence == 0) {
      {
        std::lock_guard lock(mutex_);
        ++stats_.fenced_refused;
      }
      if (options_.on_fence_refused) options_.on_fence_refused();
      done(FailedPreconditionError(
          fmt::format("not the leader: {} records are written by the cluster's leader only",
                      RecordTypeName(record))));
      return;
    }
  }
  pending.idem_key = IdemKey(*key);
  pending.hash = Sha256(pending.bytes);
  pending.record = std::move(record);
  pending.deadline = SteadyClock::now() + options_.append_timeout;
  pending.done = std::move(done);
  Status refused;
  bool was_empty = false;
  {
    std::lock_guard lock(mutex_);
    if (closing_) {
      refused = UnavailableError("log is closing");
    } else if (queue_.size() + fenced_queue_.size() >= kMaxEtcdPendingAppends ||
               queued_bytes_ + pending.bytes.size() > kMaxEtcdPendingBytes) {
      refused = UnavailableError("log append queue is full");
    } else {
      was_empty = !QueuedLocked();
      queued_bytes_ += pending.bytes.size();
      (pending.fence != 0 ? fenced_queue_ : queue_).push_back(std::move(pending));
    }
  }
  if (!refused.ok()) {
    pending.done(refused);
    return;
  }
  if (was_empty) work_.notify_one();
}

int64_t EtcdLog::CurrentFence() const {
  if (!options_.leader_token) return 0;
  const std::optional<int64_t> token = options_.leader_token();
  if (!token.has_value()) return 0;
  FP_CHECK(*token > 0);
  return *token;
}

void EtcdLog::TakeGroupLocked(std::vector<Pending>& group,
                              std::vector<std::pair<AppendCallback, Status>>& rejected) {
  // Leader records go first: they are few, and a term's records should land within the term.
  std::deque<Pending>& source = fenced_queue_.empty() ? queue_ : fenced_queue_;
  const int64_t fence = source.front().fence;
  std::unordered_map<std::string, size_t> keyed;  // idem key -> index in group
  size_t bytes = 0;
  while (!source.empty() && source.front().fence == fence &&
         group.size() < options_.max_txn_records &&
         (group.empty() || bytes + source.front().bytes.size() <= options_.max_txn_bytes)) {
    Pending pending = std::move(source.front());
    source.pop_front();
    queued_bytes_ -= pending.bytes.size();
    // A second copy of a record in one group shares the first one's outcome: two puts of one key
    // in one txn are rejected by etcd.
    if (auto it = keyed.find(pending.idem_key); it != keyed.end()) {
      if (group[it->second].hash == pending.hash) {
        group[it->second].followers.push_back(std::move(pending.done));
      } else {
        rejected.emplace_back(
            std::move(pending.done),
            FailedPreconditionError("a different record with this idempotency key is being "
                                    "written"));
      }
      continue;
    }
    bytes += pending.bytes.size();
    keyed.emplace(pending.idem_key, group.size());
    group.push_back(std::move(pending));
  }
}

void EtcdLog::WriterLoop(etcd::Client& client) {
  std::vector<Pending> group;
  while (true) {
    std::vector<std::pair<AppendCallback, Status>> rejected;
    uint64_t q = 0;
    bool more = false;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock,
                 [&] { return (QueuedLocked() && !stalled_) || (closing_ && !QueuedLocked()); });
      if (!QueuedLocked()) return;  // closing and drained
      TakeGroupLocked(group, rejected);
      q = claim_;
      claim_ += group.size();
      ++in_flight_;
      claims_.insert(q);
      stats_.max_in_flight = std::max<uint64_t>(stats_.max_in_flight, in_flight_);
      more = QueuedLocked();
    }
    if (more) work_.notify_one();  // another writer takes the rest: the pipeline fills
    for (auto& [done, status] : rejected) done(status);
    if (!group.empty()) CommitGroup(group, client, q);
    group.clear();
  }
}

void EtcdLog::CommitGroup(std::vector<Pending>& pending, etcd::Client& client, uint64_t q) {
  FP_CHECK(!pending.empty());
  const uint64_t claimed_first = q;
  const uint64_t claimed_end = q + pending.size();
  Group group;
  group.fence = pending.front().fence;
  for (Pending& p : pending) group.live.push_back(&p);
  bool alone = false;  // in a recovery: the only txn in flight
  bool lost = false;
  while (!group.live.empty()) {
    const SteadyClock::time_point now = SteadyClock::now();
    std::vector<Pending*> expired;
    std::erase_if(group.live, [&](Pending* p) {
      if (p->deadline > now) return false;
      expired.push_back(p);
      return true;
    });
    for (Pending* p : expired) {
      const std::string message =
          fmt::format("etcd log: append not durable within {} ms ({})",
                      options_.append_timeout.count(), group.last_error.ToString());
      p->Complete(group.sent ? DeadlineExceededError(message) : UnavailableError(message));
    }
    if (group.live.empty()) break;
    if (group.failed_attempts >= kMaxEtcdAppendAttempts) {
      FailGroup(group,
                UnavailableError(fmt::format("etcd log: {} txns failed ({})", group.failed_attempts,
                                             group.last_error.ToString())));
      break;
    }
    const TxnOutcome outcome = TryTxn(group, client, q);
    if (outcome == TxnOutcome::kFinished) break;
    if (outcome == TxnOutcome::kResend) continue;
    lost = true;
    if (group.live.empty()) break;  // every record was already in the log
    if (alone) {
      q = group.end;  // nothing else of ours is in flight: the reported end is the end
    } else if (group.end < q && AwaitPredecessors(q, group)) {
      lost = false;  // overtook its predecessors, which have landed since: resend at q
    } else {
      q = EnterRecovery(q);
      alone = true;
    }
  }
  if (alone) {
    ExitRecovery();
    return;
  }
  {
    std::lock_guard lock(mutex_);
    --in_flight_;
    claims_.erase(claimed_first);
    // Nothing was claimed after a lost txn: the next claim starts at the observed end, not at a
    // hole that would fail the next txn too.
    if (lost && claim_ == claimed_end) claim_ = known_end_;
  }
  settled_.notify_all();
}

bool EtcdLog::AwaitPredecessors(uint64_t q, const Group& group) {
  SteadyClock::time_point earliest = SteadyClock::time_point::max();
  for (const Pending* p : group.live) earliest = std::min(earliest, p->deadline);
  std::unique_lock lock(mutex_);
  // Our claims below q resolve one way or the other (the lowest never waits), so this ends.
  settled_.wait_until(lock, earliest,
                      [&] { return known_end_ >= q || claims_.empty() || *claims_.begin() >= q; });
  if (known_end_ != q) return false;  // a predecessor failed, or another writer took q
  ++stats_.overtakes;
  return true;
}

uint64_t EtcdLog::EnterRecovery(uint64_t claimed_first) {
  std::unique_lock lock(mutex_);
  --in_flight_;
  claims_.erase(claimed_first);
  settled_.notify_all();
  ++stats_.stalls;
  settled_.wait(lock, [&] { return !recovering_; });
  recovering_ = true;
  stalled_ = true;
  settled_.wait(lock, [&] { return in_flight_ == 0; });
  return known_end_;
}

void EtcdLog::ExitRecovery() {
  {
    std::lock_guard lock(mutex_);
    claim_ = known_end_;
    stalled_ = false;
    recovering_ = false;
  }
  settled_.notify_all();
  work_.notify_all();
}

void EtcdLog::RefuseFenced(Group& group, const std::string& why) {
  const size_t refused = group.live.size();
  {
    std::lock_guard lock(mutex_);
    stats_.fenced_refused += refused;
  }
  if (options_.on_fence_refused) {
    for (size_t i = 0; i < refused; ++i) options_.on_fence_refused();
  }
  FailGroup(group, FailedPreconditionError("not the leader: " + why));
}

void EtcdLog::FailGroup(Group& group, const Status& status) {
  for (Pending* p : group.live) {
    if (group.sent && status.code() == StatusCode::kUnavailable) {
      p->Complete(DeadlineExceededError(std::string(status.message()) +
                                        "; a txn carrying it may have been applied"));
    } else {
      p->Complete(status);
    }
  }
  group.live.clear();
}

EtcdLog::TxnOutcome EtcdLog::TryTxn(Group& group, etcd::Client& client, uint64_t q) {
  // A term that ended here cannot have its records written, and they are not moved to a later
  // term: the new leader decides again from the applied state.
  if (group.fence != 0 && CurrentFence() != group.fence) {
    if (group.sent) {
      // Not a refusal: the txn in doubt may have landed while the term lasted at etcd.
      FailGroup(group, DeadlineExceededError(fmt::format(
                           "leadership term {} ended while a txn carrying these records was in "
                           "doubt; it may have been applied",
                           group.fence)));
    } else {
      RefuseFenced(group, fmt::format("leadership term {} ended before its records were written",
                                      group.fence));
    }
    return TxnOutcome::kLost;
  }
  const size_t k = group.live.size();
  etcd::TxnRequest request;
  request.compares.push_back({LogKey(q), Compare::Target::kCreate, Compare::Result::kEqual, 0, ""});
  if (q == 0) {
    request.compares.push_back(
        {TrimKey(), Compare::Target::kCreate, Compare::Result::kEqual, 0, ""});
  } else {
    request.compares.push_back(
        {LogKey(q - 1), Compare::Target::kCreate, Compare::Result::kGreater, 0, ""});
  }
  request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, LastLogKey(options_.prefix), ""});
  etcd::RangeRequest trim;
  trim.key = TrimKey();
  request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, trim, ""});
  SteadyClock::time_point earliest = SteadyClock::time_point::max();
  for (size_t i = 0; i < k; ++i) {
    const Pending& p = *group.live[i];
    earliest = std::min(earliest, p.deadline);
    request.compares.push_back(
        {p.idem_key, Compare::Target::kCreate, Compare::Result::kEqual, 0, ""});
    request.success.push_back({TxnOp::Kind::kPut, LogKey(q + i), p.bytes, 0, {}, ""});
    std::string idem_value = Be64(q + i);
    idem_value.append(AsChars(p.hash));
    request.success.push_back({TxnOp::Kind::kPut, p.idem_key, std::move(idem_value), 0, {}, ""});
    etcd::RangeRequest idem;
    idem.key = p.idem_key;
    request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, idem, ""});
  }
  if (group.fence != 0) {
    request.compares.push_back(
        {LeaderKey(), Compare::Target::kCreate, Compare::Result::kEqual, group.fence, ""});
    etcd::RangeRequest leader;
    leader.key = LeaderKey();
    request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, leader, ""});
  }
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(earliest - SteadyClock::now());
  StatusOr<etcd::TxnResponse> response =
      client.Txn(request, std::max(left, std::chrono::milliseconds(1)));
  if (!response.ok()) {
    if (!Retryable(response.status().code())) {
      FailGroup(group, response.status());
      return TxnOutcome::kFinished;
    }
    // Indeterminate: resend the same txn (the next endpoint; the compares make it write once).
    group.sent = true;
    ++group.failed_attempts;
    group.last_error = response.status();
    {
      std::lock_guard lock(mutex_);
      ++stats_.retries;
    }
    const auto pause =
        std::min(kMaxRetryPause, std::chrono::milliseconds(5 * group.failed_attempts));
    std::this_thread::sleep_until(std::min(earliest, SteadyClock::now() + pause));
    return TxnOutcome::kResend;
  }
  if (response->succeeded) {
    Publish(q, group.live);
    {
      std::lock_guard lock(mutex_);
      ++stats_.txns;
      stats_.records += k;
      if (group.fence != 0) stats_.fenced_records += k;
      known_end_ = std::max(known_end_, q + k);
    }
    settled_.notify_all();  // a successor that overtook this txn may resend now
    for (size_t i = 0; i < k; ++i) group.live[i]->Complete(q + i);
    group.live.clear();
    return TxnOutcome::kFinished;
  }
  // The failure branch: the current end, then each record's stored idempotency entry, if any.
  const std::vector<etcd::TxnOpResult>& results = response->results;
  uint64_t end = 0;
  if (!results[0].range.kvs.empty()) {
    StatusOr<uint64_t> last = ParseLogKey(results[0].range.kvs[0].key, options_.prefix.size() + 5);
    if (!last.ok()) {
      FailGroup(group, last.status());
      return TxnOutcome::kFinished;
    }
    end = *last + 1;
  } else if (!results[1].range.kvs.empty()) {
    FailGroup(group, DataLossError("etcd log: trimmed, but no record is left"));
    return TxnOutcome::kFinished;
  }
  uint64_t duplicates = 0;
  std::vector<Pending*> still_live;
  // Completed after the stats are updated, so that a caller who sees its ack also sees the count.
  std::vector<std::pair<Pending*, StatusOr<uint64_t>>> completions;
  for (size_t i = 0; i < k; ++i) {
    Pending* p = group.live[i];
    const std::vector<etcd::KeyValue>& stored = results[2 + i].range.kvs;
    if (stored.empty()) {
      still_live.push_back(p);
      continue;
    }
    ++duplicates;
    const std::string& value = stored[0].value;
    if (value.size() != kIdemValueBytes) {
      completions.emplace_back(p, DataLossError("etcd log: idempotency entry is not 40 bytes"));
      continue;
    }
    const uint64_t position = LoadU64(reinterpret_cast<const uint8_t*>(value.data()));
    if (value.compare(8, kHashSize, AsChars(p->hash)) == 0) {
      completions.emplace_back(p, position);
    } else {
      completions.emplace_back(
          p, FailedPreconditionError(fmt::format(
                 "a different record with this idempotency key is at position {}", position)));
    }
  }
  group.live = std::move(still_live);
  group.end = end;
  group.last_error =
      AbortedError(fmt::format("etcd log: lost position {} (the end was {})", q, end));
  {
    std::lock_guard lock(mutex_);
    stats_.duplicates += duplicates;
    if (end != q) ++stats_.races_lost;
    known_end_ = std::max(known_end_, end);
  }
  for (auto& [p, result] : completions) p->Complete(result);
  if (group.fence != 0 && !group.live.empty()) {
    // The leader key as the failed txn saw it: absent or of another term means the fence failed.
    const std::vector<etcd::KeyValue>& leader = results[2 + k].range.kvs;
    if (leader.empty() || leader[0].create_revision != group.fence) {
      RefuseFenced(group, fmt::format("leadership term {} is over (the leader key {})", group.fence,
                                      leader.empty() ? std::string("is absent")
                                                     : fmt::format("belongs to term {}",
                                                                   leader[0].create_revision)));
    }
  }
  return TxnOutcome::kLost;
}

void EtcdLog::Publish(uint64_t first, const std::vector<Pending*>& written) {
  std::vector<LogEntry> entries;
  entries.reserve(written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    entries.push_back({first + i, written[i]->record});
  }
  {
    std::lock_guard lock(mutex_);
    if (first + written.size() <= end_) return;  // the poller was faster
    if (first > end_) {
      // A predecessor is still on its way; the poller fills in if it never comes.
      ahead_[first] = std::move(entries);
      if (ahead_.size() > kMaxEtcdTxnsInFlight) ahead_.erase(std::prev(ahead_.end()));
      return;
    }
    AddToCacheLocked(std::move(entries));
  }
  grown_.notify_all();
}

void EtcdLog::AddToCacheLocked(std::vector<LogEntry> entries) {
  while (true) {
    for (LogEntry& entry : entries) {
      if (entry.position < end_) continue;  // already there (a writer published it)
      FP_CHECK(entry.position == end_);
      cache_bytes_ += entry.record.ByteSizeLong();
      cache_.push_back(std::move(entry));
      ++end_;
    }
    // Buffered groups wholly below the end are stale; the first one at or below it continues.
    while (!ahead_.empty() && ahead_.begin()->first + ahead_.begin()->second.size() <= end_) {
      ahead_.erase(ahead_.begin());
    }
    if (ahead_.empty() || ahead_.begin()->first > end_) break;
    entries = std::move(ahead_.begin()->second);
    ahead_.erase(ahead_.begin());
  }
  while (!cache_.empty() &&
         (cache_.size() > options_.max_cache_records || cache_bytes_ > options_.max_cache_bytes)) {
    cache_bytes_ -= cache_.front().record.ByteSizeLong();
    cache_.pop_front();
  }
}

void EtcdLog::PollLoop() {
  while (true) {
    {
      std::lock_guard lock(mutex_);
      if (closing_) return;
    }
    StatusOr<size_t> added = PollOnce();
    if (!added.ok()) {
      LogWarn("etcd_log", "poll failed", {{"error", added.status()}});
    } else if (*added > 0) {
      continue;  // more may be waiting
    }
    std::unique_lock lock(mutex_);
    poll_wake_.wait_for(lock, options_.poll_interval, [&] { return closing_; });
  }
}

StatusOr<size_t> EtcdLog::PollOnce() {
  const uint64_t from = End();
  StatusOr<std::vector<LogEntry>> entries =
      ReadFromEtcd(*poller_client_, from, kMaxEtcdRangeRecords);
  if (!entries.ok()) {
    // Nothing at `from` yet is the common case, not an error.
    if (entries.status().code() == StatusCode::kNotFound) return size_t{0};
    return entries.status();
  }
  const size_t count = entries->size();
  {
    std::lock_guard lock(mutex_);
    if (end_ != from) return size_t{0};  // the writer published meanwhile; poll again later
    AddToCacheLocked(std::move(*entries));
  }
  grown_.notify_all();
  return count;
}

StatusOr<std::vector<LogEntry>> EtcdLog::ReadFromEtcd(etcd::Client& client, uint64_t from,
                                                      uint64_t count) const {
  etcd::RangeRequest request;
  request.key = LogKey(from);
  request.range_end = etcd::PrefixEnd(options_.prefix + "/log/");
  int64_t limit = static_cast<int64_t>(std::min<uint64_t>(count, kMaxEtcdRangeRecords));
  StatusOr<etcd::RangeResponse> response = UnavailableError("not read");
  while (true) {
    request.limit = limit;
    response = client.Range(request);
    if (response.ok() || response.status().code() != StatusCode::kResourceExhausted || limit == 1) {
      break;
    }
    limit = std::max<int64_t>(1, limit / 2);
  }
  FP_RETURN_IF_ERROR(response.status());
  std::vector<LogEntry> entries;
  entries.reserve(response->kvs.size());
  for (const etcd::KeyValue& kv : response->kvs) {
    const uint64_t position = from + entries.size();
    if (kv.key != LogKey(position)) {
      if (entries.empty()) break;  // decided below: trimmed or a gap
      return DataLossError(
          fmt::format("etcd log: position {} missing (found key \"{}\")", position, kv.key));
    }
    LogEntry& entry = entries.emplace_back();
    entry.position = position;
    if (!entry.record.ParseFromString(kv.value)) {
      return DataLossError(fmt::format("etcd log: record {} does not parse", position));
    }
  }
  if (!entries.empty()) return entries;
  etcd::RangeRequest trim;
  trim.key = TrimKey();
  FP_ASSIGN_OR_RETURN(etcd::RangeResponse trimmed, client.Range(trim));
  if (!trimmed.kvs.empty()) {
    FP_ASSIGN_OR_RETURN(uint64_t first, ParseBe64(trimmed.kvs[0].value, "meta/trimmed"));
    NoteTrimmed(first);
    if (from < first) {
      return OutOfRangeError(
          fmt::format("etcd log: position {} was trimmed (log starts at {})", from, first));
    }
  }
  if (response->kvs.empty()) return NotFoundError(fmt::format("no record at {}", from));
  return DataLossError(
      fmt::format("etcd log: position {} missing (found key \"{}\")", from, response->kvs[0].key));
}

StatusOr<std::vector<LogEntry>> EtcdLog::Read(uint64_t from, size_t max_records) const {
  uint64_t count = 0;
  {
    std::lock_guard lock(mutex_);
    if (from < begin_) {
      return OutOfRangeError(
          fmt::format("etcd log: position {} was trimmed (log starts at {})", from, begin_));
    }
    if (from >= end_) return std::vector<LogEntry>();
    count = std::min<uint64_t>({max_records, kMaxEtcdReadRecords, end_ - from});
    const uint64_t cache_first = end_ - cache_.size();
    if (from >= cache_first) {
      std::vector<LogEntry> entries(
          cache_.begin() + static_cast<ptrdiff_t>(from - cache_first),
          cache_.begin() + static_cast<ptrdiff_t>(from - cache_first + count));
      return entries;
    }
  }
  if (count == 0) return std::vector<LogEntry>();
  StatusOr<std::vector<LogEntry>> entries = ReadFromEtcd(*reader_client_, from, count);
  if (!entries.ok() && entries.status().code() == StatusCode::kNotFound) {
    return DataLossError(fmt::format("etcd log: position {} below the end is missing", from));
  }
  if (entries.ok() && entries->size() > count) entries->resize(count);
  return entries;
}

uint64_t EtcdLog::End() const {
  std::lock_guard lock(mutex_);
  return end_;
}

StatusOr<uint64_t> EtcdLog::ReadEnd() {
  std::lock_guard trim_lock(trim_mutex_);
  FP_ASSIGN_OR_RETURN(etcd::RangeResponse last, trim_client_->Range(LastLogKey(options_.prefix)));
  if (last.kvs.empty()) return uint64_t{0};  // never written: trimming keeps the last record
  FP_ASSIGN_OR_RETURN(uint64_t position, ParseLogKey(last.kvs[0].key, options_.prefix.size() + 5));
  return position + 1;
}

uint64_t EtcdLog::Begin() const {
  std::lock_guard lock(mutex_);
  return begin_;
}

void EtcdLog::NoteTrimmed(uint64_t begin) const {
  std::lock_guard lock(mutex_);
  begin_ = std::max(begin_, begin);
}

StatusOr<uint64_t> EtcdLog::Trim(uint64_t below) {
  std::lock_guard trim_lock(trim_mutex_);
  etcd::Client& client = *trim_client_;
  uint64_t begin = 0;
  int64_t revision = 0;  // of the last deleting txn
  for (int attempt = 0;; ++attempt) {
    if (attempt == kMaxEtcdTrimAttempts) {
      return AbortedError(fmt::format("etcd log: trim lost {} races to other trimmers", attempt));
    }
    // The trim point (with its mod_revision, for the swap) and the last record, in one snapshot.
    etcd::TxnRequest snapshot;
    etcd::RangeRequest trim;
    trim.key = TrimKey();
    snapshot.success.push_back({TxnOp::Kind::kRange, "", "", 0, trim, ""});
    snapshot.success.push_back({TxnOp::Kind::kRange, "", "", 0, LastLogKey(options_.prefix), ""});
    FP_ASSIGN_OR_RETURN(etcd::TxnResponse read, client.Txn(snapshot, std::nullopt));
    int64_t trim_mod_revision = 0;
    if (!read.results[0].range.kvs.empty()) {
      const etcd::KeyValue& kv = read.results[0].range.kvs[0];
      FP_ASSIGN_OR_RETURN(begin, ParseBe64(kv.value, "meta/trimmed"));
      trim_mod_revision = kv.mod_revision;
    }
    if (read.results[1].range.kvs.empty()) break;  // an empty log: nothing to trim
    FP_ASSIGN_OR_RETURN(uint64_t last,
                        ParseLogKey(read.results[1].range.kvs[0].key, options_.prefix.size() + 5));
    // The last record stays: the next append's compare needs its key.
    const uint64_t target = std::min({below, last, begin + kMaxEtcdTrimRecords});
    if (target <= begin) break;
    etcd::TxnRequest cut;
    cut.compares.push_back(
        {TrimKey(), Compare::Target::kMod, Compare::Result::kEqual, trim_mod_revision, ""});
    cut.compares.push_back(
        {LogKey(target), Compare::Target::kCreate, Compare::Result::kGreater, 0, ""});
    cut.success.push_back({TxnOp::Kind::kPut, TrimKey(), Be64(target), 0, {}, ""});
    cut.success.push_back({TxnOp::Kind::kDelete, LogKey(begin), "", 0, {}, LogKey(target)});
    FP_ASSIGN_OR_RETURN(etcd::TxnResponse done, client.Txn(cut, std::nullopt));
    if (!done.succeeded) continue;  // another supervisor trimmed meanwhile: read again
    begin = target;
    revision = done.revision;
    break;
  }
  NoteTrimmed(begin);
  const uint64_t cut = begin - std::min(begin, options_.idem_window_records);
  FP_ASSIGN_OR_RETURN(int64_t idem_revision, TrimIdempotencyEntries(cut));
  revision = std::max(revision, idem_revision);
  if (revision > 0) {
    // History before the deletions still holds the deleted values; compaction drops it. Another
    // supervisor may have compacted further already.
    Status compacted = client.Compact(revision, false);
    if (!compacted.ok() && compacted.code() != StatusCode::kOutOfRange) {
      return compacted.WithContext("etcd log: compact after trim");
    }
  }
  return begin;
}

StatusOr<int64_t> EtcdLog::TrimIdempotencyEntries(uint64_t cut) {
  if (cut == 0) return int64_t{0};
  etcd::Client& client = *trim_client_;
  const std::string idem_prefix = options_.prefix + "/idem/";
  // Admit entries ('A', hex "41") sort first and stay: the scan starts after them.
  etcd::RangeRequest page;
  page.key = idem_prefix + "42";
  page.range_end = etcd::PrefixEnd(idem_prefix);
  page.limit = kMaxEtcdRangeRecords;
  int64_t revision = 0;
  size_t scanned = 0;
  while (scanned < kMaxEtcdTrimScannedEntries) {
    FP_ASSIGN_OR_RETURN(etcd::RangeResponse entries, client.Range(page));
    scanned += entries.kvs.size();
    etcd::TxnRequest deletes;
    auto flush = [&]() -> Status {
      if (deletes.success.empty()) return OkStatus();
      // A guarded delete: an entry rewritten since the scan (deleted and appended again) stays.
      FP_ASSIGN_OR_RETURN(etcd::TxnResponse done, client.Txn(deletes, std::nullopt));
      if (done.succeeded) revision = std::max(revision, done.revision);
      deletes = etcd::TxnRequest();
      return OkStatus();
    };
    for (const etcd::KeyValue& kv : entries.kvs) {
      if (kv.value.size() != kIdemValueBytes) {
        return DataLossError(
            fmt::format("etcd log: idempotency entry \"{}\" is not 40 bytes", kv.key));
      }
      if (LoadU64(reinterpret_cast<const uint8_t*>(kv.value.data())) >= cut) continue;
      deletes.compares.push_back(
          {kv.key, Compare::Target::kMod, Compare::Result::kEqual, kv.mod_revision, ""});
      deletes.success.push_back({TxnOp::Kind::kDelete, kv.key, "", 0, {}, ""});
      if (deletes.success.size() == kMaxEtcdTrimDeletesPerTxn) FP_RETURN_IF_ERROR(flush());
    }
    FP_RETURN_IF_ERROR(flush());
    if (!entries.more || entries.kvs.empty()) break;
    page.key = entries.kvs.back().key + std::string(1, '\0');
  }
  return revision;
}

uint64_t EtcdLog::WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  grown_.wait_for(lock, timeout, [&] { return end_ > position || closing_; });
  return end_;
}

EtcdLog::Stats EtcdLog::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace fp::supervisor
