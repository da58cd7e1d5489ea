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
  int attempts = 0;
  Status last_error = UnavailableError("no txn sent");
};

StatusOr<std::unique_ptr<EtcdLog>> OpenEtcdLog(const EtcdLogOptions& options) {
  if (options.prefix.empty() || options.prefix.back() == '/') {
    return InvalidArgumentError("etcd log: prefix must be non-empty without a trailing '/'");
  }
  if (options.max_txn_records < 1 || 2 * options.max_txn_records + 2 > etcd::kMaxTxnOps) {
    return InvalidArgumentError(
        fmt::format("etcd log: max_txn_records must be in 1..{}", (etcd::kMaxTxnOps - 2) / 2));
  }
  if (options.append_timeout <= std::chrono::milliseconds::zero() ||
      options.poll_interval <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("etcd log: timeouts must be positive");
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> writer, etcd::Client::Create(options.client));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> poller, etcd::Client::Create(options.client));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> reader, etcd::Client::Create(options.client));
  // The end is read like a failed append's txn reads it: the last log key, else meta/trimmed.
  const std::string log_prefix = options.prefix + "/log/";
  etcd::RangeRequest last;
  last.key = log_prefix;
  last.range_end = etcd::PrefixEnd(log_prefix);
  last.limit = 1;
  last.descending = true;
  last.keys_only = true;
  StatusOr<etcd::RangeResponse> found = writer->Range(last);
  // One failed member must not fail the open: the client moved on to the next endpoint.
  for (size_t i = 1;
       i < options.client.endpoints.size() && !found.ok() && Retryable(found.status().code());
       ++i) {
    found = writer->Range(last);
  }
  FP_RETURN_IF_ERROR(found.status().WithContext("etcd log: read the end"));
  uint64_t end = 0;
  if (!found->kvs.empty()) {
    const std::string& key = found->kvs[0].key;
    const std::string_view hex = std::string_view(key).substr(log_prefix.size());
    uint64_t position = 0;
    auto [ptr, error] = std::from_chars(hex.data(), hex.data() + hex.size(), position, 16);
    if (hex.size() != 16 || error != std::errc() || ptr != hex.data() + hex.size()) {
      return DataLossError(fmt::format("etcd log: key \"{}\" is not a log position", key));
    }
    end = position + 1;
  }
  return std::unique_ptr<EtcdLog>(
      new EtcdLog(options, std::move(writer), std::move(poller), std::move(reader), end));
}

EtcdLog::EtcdLog(const EtcdLogOptions& options, std::unique_ptr<etcd::Client> writer,
                 std::unique_ptr<etcd::Client> poller, std::unique_ptr<etcd::Client> reader,
                 uint64_t end)
    : options_(options),
      writer_client_(std::move(writer)),
      poller_client_(std::move(poller)),
      reader_client_(std::move(reader)),
      end_(end),
      next_position_(end) {
  FP_CHECK(RAND_bytes(nonce_.data(), static_cast<int>(nonce_.size())) == 1);
  writer_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "fp-etcd-writer");
    WriterLoop();
  });
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
  work_.notify_one();
  poll_wake_.notify_one();
  grown_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (poller_.joinable()) poller_.join();
}

std::string EtcdLog::LogKey(uint64_t position) const {
  return fmt::format("{}/log/{:016x}", options_.prefix, position);
}

std::string EtcdLog::IdemKey(const std::string& key) const {
  return options_.prefix + "/idem/" + HexEncode(AsBytes(key));
}

std::string EtcdLog::TrimKey() const { return options_.prefix + "/meta/trimmed"; }

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
    } else if (queue_.size() >= kMaxEtcdPendingAppends ||
               queued_bytes_ + pending.bytes.size() > kMaxEtcdPendingBytes) {
      refused = UnavailableError("log append queue is full");
    } else {
      was_empty = queue_.empty();
      queued_bytes_ += pending.bytes.size();
      queue_.push_back(std::move(pending));
    }
  }
  if (!refused.ok()) {
    pending.done(refused);
    return;
  }
  if (was_empty) work_.notify_one();
}

void EtcdLog::WriterLoop() {
  std::vector<Pending> group;
  while (true) {
    std::vector<std::pair<AppendCallback, Status>> rejected;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;                     // closing and drained
      std::unordered_map<std::string, size_t> keyed;  // idem key -> index in group
      size_t bytes = 0;
      while (!queue_.empty() && group.size() < options_.max_txn_records &&
             (group.empty() || bytes + queue_.front().bytes.size() <= options_.max_txn_bytes)) {
        Pending pending = std::move(queue_.front());
        queue_.pop_front();
        queued_bytes_ -= pending.bytes.size();
        // A second copy of a record in one group shares the first one's outcome: two puts of
        // one key in one txn are rejected by etcd.
        if (auto it = keyed.find(pending.idem_key); it != keyed.end()) {
          if (group[it->second].hash == pending.hash) {
            group[it->second].followers.push_back(std::move(pending.done));
          } else {
            rejected.emplace_back(std::move(pending.done),
                                  FailedPreconditionError("a different record with this "
                                                          "idempotency key is being written"));
          }
          continue;
        }
        bytes += pending.bytes.size();
        keyed.emplace(pending.idem_key, group.size());
        group.push_back(std::move(pending));
      }
    }
    for (auto& [done, status] : rejected) done(status);
    CommitGroup(group);
    group.clear();
  }
}

void EtcdLog::CommitGroup(std::vector<Pending>& pending) {
  Group group;
  for (Pending& p : pending) group.live.push_back(&p);
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
    if (group.live.empty()) return;
    if (group.attempts >= kMaxEtcdAppendAttempts) {
      FailGroup(group, UnavailableError(fmt::format("etcd log: no position after {} txns ({})",
                                                    group.attempts, group.last_error.ToString())));
      return;
    }
    if (!TryTxn(group)) return;
  }
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

bool EtcdLog::TryTxn(Group& group) {
  ++group.attempts;
  const uint64_t q = next_position_;
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
  etcd::RangeRequest last;
  last.key = options_.prefix + "/log/";
  last.range_end = etcd::PrefixEnd(last.key);
  last.limit = 1;
  last.descending = true;
  last.keys_only = true;
  request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, last, ""});
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
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(earliest - SteadyClock::now());
  StatusOr<etcd::TxnResponse> response =
      writer_client_->Txn(request, std::max(left, std::chrono::milliseconds(1)));
  if (!response.ok()) {
    if (!Retryable(response.status().code())) {
      FailGroup(group, response.status());
      return false;
    }
    // Indeterminate: resend the same txn (the next endpoint; the compares make it write once).
    group.sent = true;
    group.last_error = response.status();
    {
      std::lock_guard lock(mutex_);
      ++stats_.retries;
    }
    const auto pause = std::min(kMaxRetryPause, std::chrono::milliseconds(5 * group.attempts));
    std::this_thread::sleep_until(std::min(earliest, SteadyClock::now() + pause));
    return true;
  }
  if (response->succeeded) {
    Publish(q, group.live);
    next_position_ = q + k;
    {
      std::lock_guard lock(mutex_);
      ++stats_.txns;
      stats_.records += k;
    }
    for (size_t i = 0; i < k; ++i) group.live[i]->Complete(q + i);
    group.live.clear();
    return false;
  }
  // The failure branch: the current end, then each record's stored idempotency entry, if any.
  const std::vector<etcd::TxnOpResult>& results = response->results;
  uint64_t end = 0;
  if (!results[0].range.kvs.empty()) {
    const std::string_view key = results[0].range.kvs[0].key;
    uint64_t position = 0;
    const std::string_view hex = key.substr(std::min(key.size(), last.key.size()));
    auto [ptr, error] = std::from_chars(hex.data(), hex.data() + hex.size(), position, 16);
    if (hex.size() != 16 || error != std::errc() || ptr != hex.data() + hex.size()) {
      FailGroup(group, DataLossError(fmt::format("etcd log: bad log key \"{}\"", key)));
      return false;
    }
    end = position + 1;
  } else if (!results[1].range.kvs.empty()) {
    FailGroup(group, DataLossError("etcd log: trimmed, but no record is left"));
    return false;
  }
  uint64_t duplicates = 0;
  std::vector<Pending*> still_live;
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
      p->Complete(DataLossError("etcd log: idempotency entry is not 40 bytes"));
      continue;
    }
    const uint64_t position = LoadU64(reinterpret_cast<const uint8_t*>(value.data()));
    if (value.compare(8, kHashSize, AsChars(p->hash)) == 0) {
      p->Complete(position);
    } else {
      p->Complete(FailedPreconditionError(
          fmt::format("a different record with this idempotency key is at position {}", position)));
    }
  }
  group.live = std::move(still_live);
  {
    std::lock_guard lock(mutex_);
    stats_.duplicates += duplicates;
    if (end != q) ++stats_.races_lost;
  }
  next_position_ = end;
  return true;
}

void EtcdLog::Publish(uint64_t first, const std::vector<Pending*>& written) {
  std::vector<LogEntry> entries;
  entries.reserve(written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    entries.push_back({first + i, written[i]->record});
  }
  {
    std::lock_guard lock(mutex_);
    if (first != end_) return;  // the poller is behind or ahead; it fills in what is missing
    AddToCacheLocked(std::move(entries));
  }
  grown_.notify_all();
}

void EtcdLog::AddToCacheLocked(std::vector<LogEntry> entries) {
  for (LogEntry& entry : entries) {
    if (entry.position < end_) continue;  // already there (the writer published it)
    FP_CHECK(entry.position == end_);
    cache_bytes_ += entry.record.ByteSizeLong();
    cache_.push_back(std::move(entry));
    ++end_;
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
