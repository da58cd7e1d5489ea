// RocksStore: one RocksDB database on disk with named column families, the storage under both
// the standalone log (supervisor/log/rocksdb_log.h) and the applied state
// (supervisor/state/state_store.h).
//
// The store converts RocksDB statuses to fp::Status at this edge: IO errors are Unavailable,
// corruption is DataLoss. Writes are synced (fsync of the WAL) when the store was opened with
// `sync_writes`.
//
// Thread-safety: all methods are safe to call concurrently (RocksDB's DB is thread-safe); the
// store must outlive every iterator it hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "common/base/status.h"

namespace fp::supervisor {

// Converts a RocksDB status; `what` names the operation for the message.
Status FromRocks(const rocksdb::Status& status, std::string_view what);

inline rocksdb::Slice ToSlice(std::string_view text) { return {text.data(), text.size()}; }
inline std::string_view ToView(const rocksdb::Slice& slice) { return {slice.data(), slice.size()}; }

class RocksStore {
 public:
  struct Options {
    // Sync the WAL on every write: a write that returned OK survives a power loss.
    bool sync_writes = false;
    // Write no WAL for Write(); flush all column families atomically instead, so that the data
    // on disk after a crash is always exactly what some prefix of the writes left. For stores
    // that can be rebuilt from elsewhere (the applied state, rebuilt from the log).
    bool without_wal = false;
    // Bits per key of the bloom filter on point lookups; 0 disables it.
    int bloom_bits_per_key = 10;
  };

  // Opens the database at `path`, creating it and any missing column family. The column families
  // are addressed by their index in `column_families` (the default family is not used).
  // InvalidArgument when the directory holds a database with column families not in the list
  // (another program's data); Unavailable or DataLoss from RocksDB. The caller owns the store.
  static StatusOr<std::unique_ptr<RocksStore>> Open(const std::string& path,
                                                    std::vector<std::string> column_families,
                                                    const Options& options);
  ~RocksStore();
  RocksStore(const RocksStore&) = delete;
  RocksStore& operator=(const RocksStore&) = delete;

  // The value under `key`, nullopt when absent; Unavailable or DataLoss on a read error.
  StatusOr<std::optional<std::string>> Get(size_t column_family, std::string_view key) const;
  // Applies `batch` atomically (synced if the store syncs). The batch is borrowed.
  Status Write(rocksdb::WriteBatch* batch);
  // A fresh iterator over one column family. The caller owns it; it must not outlive the store.
  std::unique_ptr<rocksdb::Iterator> NewIterator(size_t column_family) const;
  // Approximate live data in a column family, in bytes (SST files plus memtables).
  uint64_t ApproximateBytes(size_t column_family) const;
  // Flushes memtables to SST files (tests and clean shutdown).
  Status Flush();

  rocksdb::DB* db() const { return db_.get(); }
  rocksdb::ColumnFamilyHandle* handle(size_t column_family) const;
  const std::vector<std::string>& column_families() const { return names_; }
  const std::string& path() const { return path_; }

 private:
  RocksStore() = default;

  std::string path_;
  std::vector<std::string> names_;
  rocksdb::WriteOptions write_options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned by db_, destroyed before it
};

}  // namespace fp::supervisor
