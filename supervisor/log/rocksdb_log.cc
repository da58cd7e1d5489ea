// RocksLog; see rocksdb_log.h.
#include "supervisor/log/rocksdb_log.h"

#include <unordered_map>

#include <fmt/format.h>
#include <pthread.h>

#include "common/base/bytes.h"
#include "common/crypto/sha256.h"

namespace fp::supervisor {
namespace {

constexpr size_t kRecords = 0;
constexpr size_t kKeys = 1;
constexpr size_t kMeta = 2;
constexpr std::string_view kMetaBegin = "begin";

std::string PositionKey(uint64_t position) {
  Bytes key;
  AppendU64(key, position);
  return std::string(key.begin(), key.end());
}

StatusOr<uint64_t> ParsePosition(std::string_view bytes) {
  if (bytes.size() != 8) return DataLossError("log position is not 8 bytes");
  return LoadU64(reinterpret_cast<const uint8_t*>(bytes.data()));
}

// A keys-family value: the position, then the record's SHA-256.
std::string KeyValue(uint64_t position, std::string_view record) {
  std::string value = PositionKey(position);
  const Hash hash = Sha256(AsBytes(record));
  value.append(reinterpret_cast<const char*>(hash.data()), hash.size());
  return value;
}

}  // namespace

StatusOr<std::unique_ptr<RocksLog>> RocksLog::Open(const std::string& path) {
  RocksStore::Options options;
  options.sync_writes = true;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<RocksStore> store,
                      RocksStore::Open(path, {"records", "keys", "meta"}, options));
  uint64_t begin = 0;
  FP_ASSIGN_OR_RETURN(std::optional<std::string> trimmed, store->Get(kMeta, kMetaBegin));
  if (trimmed.has_value()) {
    FP_ASSIGN_OR_RETURN(begin, ParsePosition(*trimmed));
  }
  uint64_t end = begin;
  {
    std::unique_ptr<rocksdb::Iterator> it = store->NewIterator(kRecords);
    it->SeekToLast();
    if (it->Valid()) {
      FP_ASSIGN_OR_RETURN(uint64_t last, ParsePosition(ToView(it->key())));
      end = last + 1;
      it->SeekToFirst();
      FP_ASSIGN_OR_RETURN(uint64_t first, ParsePosition(ToView(it->key())));
      if (first != begin) {
        return DataLossError(fmt::format("log {} starts at {}, expected {}", path, first, begin));
      }
    }
    FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan log"));
  }
  return std::unique_ptr<RocksLog>(new RocksLog(std::move(store), begin, end));
}

RocksLog::RocksLog(std::unique_ptr<RocksStore> store, uint64_t begin, uint64_t end)
    : store_(std::move(store)), end_(end), begin_(begin), next_position_(end) {
  writer_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "fp-log-writer");
    WriterLoop();
  });
}

RocksLog::~RocksLog() { Close(); }

void RocksLog::Close() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
  }
  work_.notify_one();
  grown_.notify_all();
  if (writer_.joinable()) writer_.join();
}

void RocksLog::Append(pb::LogRecord record, AppendCallback done) {
  if (record.body_case() == pb::LogRecord::BODY_NOT_SET) {
    done(InvalidArgumentError("log record has no body"));
    return;
  }
  Pending pending;
  pending.key = IdempotencyKey(record);
  if (!record.SerializeToString(&pending.bytes) || pending.bytes.size() > kMaxRecordBytes) {
    done(InvalidArgumentError(fmt::format("{} record cannot be serialized within {} bytes",
                                          RecordTypeName(record), kMaxRecordBytes)));
    return;
  }
  pending.done = std::move(done);
  Status refused;
  bool was_empty = false;
  {
    std::lock_guard lock(mutex_);
    if (!failure_.ok()) {
      refused = failure_;
    } else if (closing_) {
      refused = UnavailableError("log is closing");
    } else if (queue_.size() >= kMaxPendingAppends ||
               queued_bytes_ + pending.bytes.size() > kMaxPendingBytes) {
      refused = UnavailableError("log append queue is full");
    }
    if (refused.ok()) {
      was_empty = queue_.empty();
      queued_bytes_ += pending.bytes.size();
      queue_.push_back(std::move(pending));
    } else {
      ++stats_.refused;
    }
  }
  if (!refused.ok()) {
    pending.done(refused);
    return;
  }
  // The writer only sleeps on an empty queue, so only the first append after it must wake it.
  if (was_empty) work_.notify_one();
}

void RocksLog::WriterLoop() {
  std::vector<Pending> group;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;  // closing and drained
      size_t bytes = 0;
      while (!queue_.empty() && group.size() < kMaxGroupRecords &&
             (group.empty() || bytes + queue_.front().bytes.size() <= kMaxGroupBytes)) {
        bytes += queue_.front().bytes.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      queued_bytes_ -= bytes;
    }
    CommitGroup(group);
    group.clear();
  }
}

StatusOr<std::optional<uint64_t>> RocksLog::FindStored(const std::string& key,
                                                       const std::string& bytes,
                                                       bool& same_content) const {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> stored, store_->Get(kKeys, key));
  if (!stored.has_value()) return std::optional<uint64_t>();
  if (stored->size() == 8 + kHashSize) {
    FP_ASSIGN_OR_RETURN(uint64_t position, ParsePosition(std::string_view(*stored).substr(0, 8)));
    const Hash hash = Sha256(AsBytes(bytes));
    same_content = std::equal(hash.begin(), hash.end(), stored->begin() + 8,
                              [](uint8_t a, char b) { return a == static_cast<uint8_t>(b); });
    return std::optional<uint64_t>(position);
  }
  FP_ASSIGN_OR_RETURN(uint64_t position, ParsePosition(*stored));
  FP_ASSIGN_OR_RETURN(std::optional<std::string> record,
                      store_->Get(kRecords, PositionKey(position)));
  if (!record.has_value()) {
    // A key without its hash whose record a concurrent Trim just removed: it is gone too.
    if (position < Begin()) return std::optional<uint64_t>();
    return DataLossError(fmt::format("log key points at missing position {}", position));
  }
  same_content = *record == bytes;
  return std::optional<uint64_t>(position);
}

void RocksLog::CommitGroup(std::vector<Pending>& group) {
  std::vector<StatusOr<uint64_t>> results(group.size(), InternalError("not written"));
  std::unordered_map<std::string_view, size_t> keyed;  // key -> index in group of its writer
  rocksdb::WriteBatch batch;
  uint64_t next = next_position_;
  uint64_t duplicates = 0;
  Status status;
  {
    std::lock_guard lock(mutex_);
    status = failure_;
  }
  for (size_t i = 0; i < group.size() && status.ok(); ++i) {
    Pending& pending = group[i];
    if (pending.key.has_value()) {
      if (auto it = keyed.find(*pending.key); it != keyed.end()) {
        const bool same = group[it->second].bytes == pending.bytes;
        results[i] = same ? results[it->second]
                          : StatusOr<uint64_t>(FailedPreconditionError(
                                "a different record with this idempotency key is being written"));
        ++duplicates;
        continue;
      }
      bool same = false;
      StatusOr<std::optional<uint64_t>> stored = FindStored(*pending.key, pending.bytes, same);
      if (!stored.ok()) {
        status = stored.status();
        break;
      }
      if (stored->has_value()) {
        results[i] =
            same
                ? StatusOr<uint64_t>(**stored)
                : StatusOr<uint64_t>(FailedPreconditionError(fmt::format(
                      "a different record with this idempotency key is at position {}", **stored)));
        ++duplicates;
        continue;
      }
      keyed.emplace(*pending.key, i);
      batch.Put(store_->handle(kKeys), ToSlice(*pending.key), KeyValue(next, pending.bytes));
    }
    batch.Put(store_->handle(kRecords), PositionKey(next), ToSlice(pending.bytes));
    results[i] = next++;
  }
  if (status.ok() && batch.Count() > 0) status = store_->Write(&batch);
  {
    std::lock_guard lock(mutex_);
    if (status.ok()) {
      stats_.records += next - next_position_;
      stats_.duplicates += duplicates;
      ++stats_.groups;
      end_ = next;
      next_position_ = next;
    } else if (failure_.ok()) {
      failure_ = status.WithContext("log failed");
    }
  }
  grown_.notify_all();
  for (size_t i = 0; i < group.size(); ++i) {
    group[i].done(status.ok() ? std::move(results[i]) : StatusOr<uint64_t>(status));
  }
}

StatusOr<std::vector<LogEntry>> RocksLog::Read(uint64_t from, size_t max_records) const {
  const uint64_t end = End();
  std::vector<LogEntry> entries;
  if (from >= end) return entries;
  max_records = std::min({max_records, kMaxReadRecords, static_cast<size_t>(end - from)});
  entries.reserve(max_records);
  // The iterator reads a snapshot: checking the trim point after creating it covers a Trim that
  // committed in between.
  std::unique_ptr<rocksdb::Iterator> it = store_->NewIterator(kRecords);
  if (const uint64_t begin = Begin(); from < begin) {
    return OutOfRangeError(fmt::format(
        "log position {} was trimmed (the log starts at {}); it is covered by a signed checkpoint",
        from, begin));
  }
  uint64_t expected = from;
  for (it->Seek(PositionKey(from)); it->Valid() && entries.size() < max_records; it->Next()) {
    FP_ASSIGN_OR_RETURN(uint64_t position, ParsePosition(ToView(it->key())));
    if (position != expected) {
      return DataLossError(fmt::format("log position {} missing (found {})", expected, position));
    }
    LogEntry& entry = entries.emplace_back();
    entry.position = position;
    if (!entry.record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError(fmt::format("log record {} does not parse", position));
    }
    ++expected;
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "read log"));
  if (entries.size() < max_records) {
    return DataLossError(fmt::format("log ends at {}, expected {}", expected, from + max_records));
  }
  return entries;
}

uint64_t RocksLog::End() const {
  std::lock_guard lock(mutex_);
  return end_;
}

uint64_t RocksLog::Begin() const {
  std::lock_guard lock(mutex_);
  return begin_;
}

StatusOr<uint64_t> RocksLog::Trim(uint64_t before) {
  std::lock_guard trim_lock(trim_mutex_);
  const uint64_t begin = Begin();
  const uint64_t to = std::min({before, End(), begin + kMaxTrimRecords});
  if (to <= begin) return begin;
  rocksdb::WriteBatch batch;
  std::unique_ptr<rocksdb::Iterator> it = store_->NewIterator(kRecords);
  uint64_t expected = begin;
  for (it->Seek(PositionKey(begin)); it->Valid() && expected < to; it->Next(), ++expected) {
    FP_ASSIGN_OR_RETURN(uint64_t position, ParsePosition(ToView(it->key())));
    if (position != expected) {
      return DataLossError(fmt::format("log position {} missing (found {})", expected, position));
    }
    pb::LogRecord record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError(fmt::format("log record {} does not parse", position));
    }
    std::optional<std::string> key = IdempotencyKey(record);
    if (!key.has_value()) continue;
    if (record.has_admit()) {
      // Kept, with the record's hash, for idempotent submissions (old-format values gain it).
      batch.Put(store_->handle(kKeys), ToSlice(*key), KeyValue(position, ToView(it->value())));
    } else {
      batch.Delete(store_->handle(kKeys), ToSlice(*key));
    }
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "read log for trimming"));
  if (expected != to)
    return DataLossError(fmt::format("log ends at {}, expected {}", expected, to));
  batch.DeleteRange(store_->handle(kRecords), PositionKey(begin), PositionKey(to));
  batch.Put(store_->handle(kMeta), ToSlice(kMetaBegin), PositionKey(to));
  // Readers are turned away before the records go, so that none finds a gap instead.
  {
    std::lock_guard lock(mutex_);
    begin_ = to;
  }
  if (Status written = store_->Write(&batch); !written.ok()) {
    std::lock_guard lock(mutex_);
    begin_ = begin;
    return written;
  }
  return to;
}

uint64_t RocksLog::WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  grown_.wait_for(lock, timeout, [&] { return end_ > position || closing_; });
  return end_;
}

RocksLog::Stats RocksLog::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

uint64_t RocksLog::ApproximateBytes() const {
  return store_->ApproximateBytes(kRecords) + store_->ApproximateBytes(kKeys);
}

}  // namespace fp::supervisor
