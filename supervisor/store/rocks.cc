// RocksStore; see rocks.h.
#include "supervisor/store/rocks.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <linux/magic.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <sys/vfs.h>

namespace fp::supervisor {

Status FromRocks(const rocksdb::Status& status, std::string_view what) {
  if (status.ok()) return OkStatus();
  std::string message = fmt::format("rocksdb {}: {}", what, status.ToString());
  if (status.IsCorruption()) return DataLossError(std::move(message));
  if (status.IsNotFound()) return NotFoundError(std::move(message));
  if (status.IsInvalidArgument() || status.IsNotSupported()) {
    return InvalidArgumentError(std::move(message));
  }
  return UnavailableError(std::move(message));
}

namespace {

rocksdb::ColumnFamilyOptions FamilyOptions(const RocksStore::Options& options) {
  rocksdb::ColumnFamilyOptions family;
  rocksdb::BlockBasedTableOptions table;
  if (options.bloom_bits_per_key > 0) {
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(options.bloom_bits_per_key));
  }
  family.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Values are hashes and small protobufs: LZ4 is cheap and helps the leaf families.
  family.compression = rocksdb::kLZ4Compression;
  return family;
}

}  // namespace

StatusOr<std::unique_ptr<RocksStore>> RocksStore::Open(const std::string& path,
                                                       std::vector<std::string> column_families,
                                                       const Options& options) {
  // Flushes and compactions are throughput work; on a small machine they must not take the CPU
  // from the threads that acknowledge appends (the log writer, the network threads).
  rocksdb::Env::Default()->LowerThreadPoolCPUPriority(rocksdb::Env::Priority::LOW,
                                                      rocksdb::CpuPriority::kLow);
  rocksdb::Env::Default()->LowerThreadPoolCPUPriority(rocksdb::Env::Priority::HIGH,
                                                      rocksdb::CpuPriority::kLow);
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) {
    return UnavailableError(fmt::format("cannot create {}: {}", path, error.message()));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  db_options.atomic_flush = options.without_wal;
  // Table files are opened on the opening thread: the default starts up to 16 threads per column
  // family at every open, which costs more than opening the few files a store holds.
  db_options.max_file_opening_threads = 1;
  // On tmpfs a preallocated WAL (1.1 write buffers) is memory committed and zeroed for nothing.
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
    db_options.allow_fallocate = false;
  }

  std::vector<std::string> existing;
  rocksdb::Status listed = rocksdb::DB::ListColumnFamilies(db_options, path, &existing);
  if (listed.ok()) {
    for (const std::string& name : existing) {
      if (name != rocksdb::kDefaultColumnFamilyName &&
          std::find(column_families.begin(), column_families.end(), name) ==
              column_families.end()) {
        return InvalidArgumentError(
            fmt::format("{} holds column family '{}', which this store does not know", path, name));
      }
    }
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, FamilyOptions(options));
  for (const std::string& name : column_families) {
    descriptors.emplace_back(name, FamilyOptions(options));
  }
  std::unique_ptr<RocksStore> store(new RocksStore());
  store->path_ = path;
  store->names_ = std::move(column_families);
  store->write_options_.sync = options.sync_writes;
  store->write_options_.disableWAL = options.without_wal;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  FP_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(db_options, path, descriptors, &handles, &db),
                               fmt::format("open {}", path)));
  store->db_.reset(db);
  store->handles_ = std::move(handles);
  return store;
}

RocksStore::~RocksStore() {
  if (db_ == nullptr) return;
  // Without a WAL, unflushed writes exist only in memory: keep them across a clean close.
  if (write_options_.disableWAL) Flush().IgnoreError();
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  db_->Close().PermitUncheckedError();
}

rocksdb::ColumnFamilyHandle* RocksStore::handle(size_t column_family) const {
  FP_CHECK(column_family < names_.size());
  return handles_[column_family + 1];  // handles_[0] is the default family
}

StatusOr<std::optional<std::string>> RocksStore::Get(size_t column_family,
                                                     std::string_view key) const {
  std::string value;
  rocksdb::Status status =
      db_->Get(rocksdb::ReadOptions(), handle(column_family), ToSlice(key), &value);
  if (status.IsNotFound()) return std::optional<std::string>();
  FP_RETURN_IF_ERROR(FromRocks(status, "get"));
  return std::optional<std::string>(std::move(value));
}

Status RocksStore::Write(rocksdb::WriteBatch* batch) {
  return FromRocks(db_->Write(write_options_, batch), "write");
}

std::unique_ptr<rocksdb::Iterator> RocksStore::NewIterator(size_t column_family) const {
  return std::unique_ptr<rocksdb::Iterator>(
      db_->NewIterator(rocksdb::ReadOptions(), handle(column_family)));
}

uint64_t RocksStore::ApproximateBytes(size_t column_family) const {
  uint64_t sst = 0;
  uint64_t memtables = 0;
  db_->GetIntProperty(handle(column_family), rocksdb::DB::Properties::kTotalSstFilesSize, &sst);
  db_->GetIntProperty(handle(column_family), rocksdb::DB::Properties::kCurSizeAllMemTables,
                      &memtables);
  return sst + memtables;
}

Status RocksStore::Flush() {
  std::vector<rocksdb::ColumnFamilyHandle*> families(handles_.begin() + 1, handles_.end());
  return FromRocks(db_->Flush(rocksdb::FlushOptions(), families), "flush");
}

}  // namespace fp::supervisor
