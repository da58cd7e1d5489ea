// Outbox; see outbox.h.
#include "node/worker/outbox.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <boost/crc.hpp>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base/log.h"

namespace fp::node::worker {
namespace {

constexpr char kComponent[] = "worker.outbox";
constexpr char kFileName[] = "outbox.log";
constexpr uint8_t kMagic[8] = {'F', 'P', 'O', 'U', 'T', 'B', 'O', 'X'};
constexpr size_t kHeaderBytes = sizeof(kMagic) + 4;
constexpr size_t kRecordHeaderBytes = 8;

enum RecordType : uint8_t {
  kPut = 1,
  kAck = 2,
  kForget = 3,
  kCursor = 4,
};

constexpr size_t kReplicaKeyBytes = kSessionIdSize + 4;
constexpr size_t kAckBytes = 1 + kReplicaKeyBytes + 8 + 8;
constexpr size_t kForgetBytes = 1 + kReplicaKeyBytes;
constexpr size_t kCursorBytes = 1 + kReplicaKeyBytes + 8 + 8;
static_assert(kMaxOutboxRecordBytes > wire::kMaxFramePayloadBytes + 1);

// CRC-32C (Castagnoli), the checksum LevelDB and RocksDB use for their logs.
uint32_t Crc32c(ByteSpan data) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data.data(), data.size());
  return crc.checksum();
}

Status ErrnoStatus(std::string_view what, const std::string& path) {
  const int error = errno;
  std::string message = std::string(what) + " " + path + ": " + std::strerror(error);
  if (error == ENOSPC || error == EDQUOT || error == EIO) return UnavailableError(message);
  return InternalError(message);
}

void AppendRecord(Bytes& out, ByteSpan body) {
  AppendU32(out, static_cast<uint32_t>(body.size()));
  AppendU32(out, Crc32c(body));
  out.insert(out.end(), body.begin(), body.end());
}

void AppendReplicaKey(Bytes& out, const SessionId& session, uint32_t replica) {
  out.insert(out.end(), session.begin(), session.end());
  AppendU32(out, replica);
}

Bytes PutBody(const wire::pb::LeafBatch& batch) {
  Bytes body;
  body.reserve(1 + batch.ByteSizeLong());
  body.push_back(kPut);
  const std::string serialized = batch.SerializeAsString();
  body.insert(body.end(), serialized.begin(), serialized.end());
  return body;
}

Bytes CursorBody(const SessionId& session, uint32_t replica, const ReplicaCursor& cursor) {
  Bytes body{kCursor};
  AppendReplicaKey(body, session, replica);
  AppendU64(body, cursor.epoch);
  AppendU64(body, cursor.next_step);
  return body;
}

SessionId ReadSession(const uint8_t* p) {
  SessionId id;
  std::copy_n(p, id.size(), id.begin());
  return id;
}

// Reads exactly `size` bytes at `offset`; false at end of file or on a short read.
bool ReadAt(int fd, uint64_t offset, uint8_t* out, size_t size, Status* error,
            const std::string& path) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *error = ErrnoStatus("cannot read", path);
      return false;
    }
    if (n == 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

Status WriteAll(int fd, uint64_t offset, ByteSpan bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path);
    }
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoStatus("cannot sync directory", dir);
  return OkStatus();
}

Bytes FileHeader() {
  Bytes header(std::begin(kMagic), std::end(kMagic));
  AppendU32(header, kOutboxVersion);
  return header;
}

}  // namespace

BatchKey KeyOf(const wire::pb::LeafBatch& batch) {
  FP_CHECK(batch.session_id().size() == kSessionIdSize);
  BatchKey key;
  std::copy_n(batch.session_id().begin(), kSessionIdSize, key.session.begin());
  key.replica = batch.replica();
  key.epoch = batch.epoch();
  key.first_step = batch.first_step();
  return key;
}

std::string KeyString(const BatchKey& key) {
  return SessionIdToHex(key.session).substr(0, 12) + "/" + std::to_string(key.replica) + "@" +
         std::to_string(key.epoch) + "+" + std::to_string(key.first_step);
}

StatusOr<std::unique_ptr<Outbox>> Outbox::Open(const std::string& dir,
                                               const OutboxOptions& options) {
  if (options.max_batches < 1 || options.max_batches > kMaxOutboxBatches) {
    return InvalidArgumentError("outbox: max_batches must be in [1, " +
                                std::to_string(kMaxOutboxBatches) + "]");
  }
  if (options.max_bytes < 1 || options.max_bytes > kMaxOutboxBytes) {
    return InvalidArgumentError("outbox: max_bytes must be in [1, " +
                                std::to_string(kMaxOutboxBytes) + "]");
  }
  const std::string path = (std::filesystem::path(dir) / kFileName).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  std::unique_ptr<Outbox> outbox(new Outbox(path, fd, options));
  FP_RETURN_IF_ERROR(outbox->Replay());
  return outbox;
}

Outbox::~Outbox() {
  if (fd_ >= 0) ::close(fd_);
}

Status Outbox::Replay() {
  struct stat info;
  if (::fstat(fd_, &info) != 0) return ErrnoStatus("cannot stat", path_);
  const uint64_t file_size = static_cast<uint64_t>(info.st_size);
  const Bytes header = FileHeader();
  if (file_size < kHeaderBytes) {
    // New, or cut short while it was being created: nothing was ever stored in it.
    if (::ftruncate(fd_, 0) != 0) return ErrnoStatus("cannot truncate", path_);
    FP_RETURN_IF_ERROR(WriteAll(fd_, 0, header, path_));
    if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot sync", path_);
    end_offset_ = kHeaderBytes;
    dropped_tail_bytes_ = file_size;
    return SyncDirectory(std::filesystem::path(path_).parent_path().string());
  }
  Bytes found(kHeaderBytes);
  Status error;
  if (!ReadAt(fd_, 0, found.data(), found.size(), &error, path_)) return error;
  if (found != header) {
    return DataLossError(path_ + " is not a fieldprint outbox (version " +
                         std::to_string(kOutboxVersion) + "); move it away");
  }
  uint64_t offset = kHeaderBytes;
  std::string problem;
  Bytes body;
  while (offset < file_size) {
    uint8_t record_header[kRecordHeaderBytes];
    if (!ReadAt(fd_, offset, record_header, sizeof(record_header), &error, path_)) {
      if (!error.ok()) return error;
      problem = "record header cut short";
      break;
    }
    const uint32_t length = LoadU32(record_header);
    if (length == 0 || length > kMaxOutboxRecordBytes) {
      problem = "record length " + std::to_string(length) + " out of range";
      break;
    }
    body.resize(length);
    if (!ReadAt(fd_, offset + kRecordHeaderBytes, body.data(), length, &error, path_)) {
      if (!error.ok()) return error;
      problem = "record body cut short";
      break;
    }
    if (Crc32c(body) != LoadU32(record_header + 4)) {
      problem = "record checksum mismatch";
      break;
    }
    if (Status applied = ApplyRecord(body); !applied.ok()) {
      problem = std::string(applied.message());
      break;
    }
    offset += kRecordHeaderBytes + length;
  }
  end_offset_ = offset;
  if (offset < file_size) {
    dropped_tail_bytes_ = file_size - offset;
    LogWarn(
        kComponent, "dropping a corrupt or truncated tail",
        {{"file", path_}, {"offset", offset}, {"bytes", dropped_tail_bytes_}, {"reason", problem}});
    if (::ftruncate(fd_, static_cast<off_t>(offset)) != 0) {
      return ErrnoStatus("cannot truncate", path_);
    }
    if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot sync", path_);
  }
  return OkStatus();
}

Status Outbox::ApplyRecord(ByteSpan body) {
  const uint8_t* p = body.data() + 1;
  switch (body[0]) {
    case kPut: {
      wire::pb::Envelope envelope;
      if (!envelope.mutable_leaf_batch()->ParseFromArray(p, static_cast<int>(body.size() - 1))) {
        return InvalidArgumentError("a PUT record holds no LeafBatch");
      }
      FP_RETURN_IF_ERROR(wire::ValidateEnvelope(envelope));
      ApplyPut(std::move(*envelope.mutable_leaf_batch()), body.size() - 1);
      return OkStatus();
    }
    case kAck: {
      if (body.size() != kAckBytes) return InvalidArgumentError("an ACK record has a bad size");
      BatchKey key{ReadSession(p), LoadU32(p + kSessionIdSize), LoadU64(p + kReplicaKeyBytes),
                   LoadU64(p + kReplicaKeyBytes + 8)};
      auto it = pending_.find(key);
      if (it != pending_.end()) {
        live_bytes_ -= it->second.bytes;
        pending_.erase(it);
      }
      return OkStatus();
    }
    case kForget: {
      if (body.size() != kForgetBytes)
        return InvalidArgumentError("a FORGET record has a bad size");
      ApplyForget({ReadSession(p), LoadU32(p + kSessionIdSize)});
      return OkStatus();
    }
    case kCursor: {
      if (body.size() != kCursorBytes)
        return InvalidArgumentError("a CURSOR record has a bad size");
      TouchCursor({ReadSession(p), LoadU32(p + kSessionIdSize)},
                  {LoadU64(p + kReplicaKeyBytes), LoadU64(p + kReplicaKeyBytes + 8)});
      return OkStatus();
    }
    default:
      return InvalidArgumentError("unknown record type " + std::to_string(body[0]));
  }
}

void Outbox::ApplyPut(wire::pb::LeafBatch batch, uint64_t bytes) {
  const BatchKey key = KeyOf(batch);
  const ReplicaKey replica{key.session, key.replica};
  const uint64_t next_step = key.first_step + static_cast<uint64_t>(batch.token_ids_size());
  auto cursor = cursors_.find(replica);
  if (cursor == cursors_.end() || key.epoch > cursor->second.cursor.epoch) {
    TouchCursor(replica, {key.epoch, next_step});
  } else if (key.epoch == cursor->second.cursor.epoch) {
    TouchCursor(replica, {key.epoch, std::max(next_step, cursor->second.cursor.next_step)});
  }
  auto [it, inserted] = pending_.try_emplace(key);
  if (!inserted) live_bytes_ -= it->second.bytes;
  it->second.batch = std::move(batch);
  it->second.bytes = bytes;
  live_bytes_ += bytes;
}

void Outbox::ApplyForget(const ReplicaKey& replica) {
  cursors_.erase(replica);
  const BatchKey first{replica.first, replica.second, 0, 0};
  for (auto it = pending_.lower_bound(first); it != pending_.end() &&
                                              it->first.session == replica.first &&
                                              it->first.replica == replica.second;) {
    live_bytes_ -= it->second.bytes;
    it = pending_.erase(it);
  }
}

void Outbox::TouchCursor(const ReplicaKey& replica, const ReplicaCursor& cursor) {
  if (!cursors_.contains(replica) && cursors_.size() >= kMaxOutboxCursors) {
    auto oldest = std::min_element(cursors_.begin(), cursors_.end(), [](auto& a, auto& b) {
      return a.second.touched < b.second.touched;
    });
    cursors_.erase(oldest);
  }
  cursors_[replica] = {cursor, ++cursor_clock_};
}

Status Outbox::AppendRecords(const Bytes& records, bool sync) {
  if (broken_) return InternalError("outbox " + path_ + " is unusable after an I/O error");
  Status written = WriteAll(fd_, end_offset_, records, path_);
  if (written.ok() && sync && ::fdatasync(fd_) != 0) written = ErrnoStatus("cannot sync", path_);
  if (!written.ok()) {
    // Cut the partial records off, so that later appends follow a clean record boundary.
    if (::ftruncate(fd_, static_cast<off_t>(end_offset_)) != 0) broken_ = true;
    return written;
  }
  end_offset_ += records.size();
  return OkStatus();
}

Status Outbox::Put(std::span<const wire::pb::LeafBatch> batches) {
  Bytes records;
  std::vector<uint64_t> sizes;
  uint64_t added_bytes = 0;
  size_t added_batches = 0;
  for (const wire::pb::LeafBatch& batch : batches) {
    wire::pb::Envelope envelope;
    *envelope.mutable_leaf_batch() = batch;
    FP_CHECK(wire::ValidateEnvelope(envelope).ok());
    const Bytes body = PutBody(batch);
    FP_CHECK(body.size() <= kMaxOutboxRecordBytes);
    AppendRecord(records, body);
    sizes.push_back(body.size() - 1);
    added_bytes += body.size() - 1;
    if (!pending_.contains(KeyOf(batch))) ++added_batches;
  }
  if (pending_.size() + added_batches > options_.max_batches ||
      live_bytes_ + added_bytes > options_.max_bytes) {
    return ResourceExhaustedError("outbox full: " + std::to_string(pending_.size()) + " batches, " +
                                  std::to_string(live_bytes_) + " bytes waiting");
  }
  FP_RETURN_IF_ERROR(AppendRecords(records, /*sync=*/true));
  for (size_t i = 0; i < batches.size(); ++i) ApplyPut(batches[i], sizes[i]);
  return MaybeCompact();
}

Status Outbox::Ack(const BatchKey& key) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return OkStatus();
  Bytes body{kAck};
  AppendReplicaKey(body, key.session, key.replica);
  AppendU64(body, key.epoch);
  AppendU64(body, key.first_step);
  Bytes record;
  AppendRecord(record, body);
  FP_RETURN_IF_ERROR(AppendRecords(record, /*sync=*/false));
  live_bytes_ -= it->second.bytes;
  pending_.erase(it);
  return MaybeCompact();
}

Status Outbox::Forget(const SessionId& session, uint32_t replica) {
  Bytes body{kForget};
  AppendReplicaKey(body, session, replica);
  Bytes record;
  AppendRecord(record, body);
  FP_RETURN_IF_ERROR(AppendRecords(record, /*sync=*/false));
  ApplyForget({session, replica});
  return MaybeCompact();
}

std::vector<const wire::pb::LeafBatch*> Outbox::Pending() const {
  std::vector<const wire::pb::LeafBatch*> out;
  out.reserve(pending_.size());
  for (const auto& [key, entry] : pending_) out.push_back(&entry.batch);
  return out;
}

const wire::pb::LeafBatch* Outbox::Find(const BatchKey& key) const {
  auto it = pending_.find(key);
  return it == pending_.end() ? nullptr : &it->second.batch;
}

std::optional<ReplicaCursor> Outbox::Cursor(const SessionId& session, uint32_t replica) const {
  auto it = cursors_.find({session, replica});
  if (it == cursors_.end()) return std::nullopt;
  return it->second.cursor;
}

Status Outbox::MaybeCompact() {
  if (end_offset_ <= kCompactionMinBytes || end_offset_ <= kCompactionFactor * live_bytes_) {
    return OkStatus();
  }
  return Compact();
}

Status Outbox::Compact() {
  Bytes content = FileHeader();
  for (const auto& [replica, entry] : cursors_) {
    AppendRecord(content, CursorBody(replica.first, replica.second, entry.cursor));
  }
  for (const auto& [key, entry] : pending_) AppendRecord(content, PutBody(entry.batch));
  const std::string temp = path_ + ".tmp";
  const int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("cannot create", temp);
  Status written = WriteAll(fd, 0, content, temp);
  if (written.ok() && ::fdatasync(fd) != 0) written = ErrnoStatus("cannot sync", temp);
  if (written.ok() && ::rename(temp.c_str(), path_.c_str()) != 0) {
    written = ErrnoStatus("cannot rename to", path_);
  }
  if (!written.ok()) {
    ::close(fd);
    ::unlink(temp.c_str());
    return written;  // the old file is intact and still open
  }
  ::close(fd_);
  fd_ = fd;
  end_offset_ = content.size();
  LogInfo(kComponent, "compacted", {{"file", path_}, {"bytes", end_offset_}});
  return SyncDirectory(std::filesystem::path(path_).parent_path().string());
}

}  // namespace fp::node::worker
