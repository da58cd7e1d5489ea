// Reading the applied state, and the applier's write transaction over it.
//
// StateReader is what proofs, the HTTP API and fsck read through. DbStateReader reads the
// committed state; StateTxn is the applier's transaction: its reads see its own uncommitted
// writes, and Commit() writes them atomically as one RocksDB WriteBatch. The read-your-writes
// overlay is a hash map rather than RocksDB's WriteBatchWithIndex: the applier writes hundreds of
// thousands of keys per group and never iterates them, and a skiplist index made every put and
// get a logarithmic chain of key comparisons (half the applier's time in profiles).
//
// Thread-safety: DbStateReader is safe from any thread. A StateTxn belongs to one thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <rocksdb/write_batch.h>

#include "common/base/status.h"
#include "supervisor/state/state_store.h"

namespace fp::supervisor {

class StateReader {
 public:
  virtual ~StateReader() = default;
  // The value under `key`, nullopt when absent; Unavailable or DataLoss from storage.
  virtual StatusOr<std::optional<std::string>> Get(Family family, std::string_view key) const = 0;

  // Get that parses a protobuf message: nullopt when absent, DataLoss when it does not parse.
  template <typename Message>
  StatusOr<std::optional<Message>> GetMessage(Family family, std::string_view key) const {
    FP_ASSIGN_OR_RETURN(std::optional<std::string> bytes, Get(family, key));
    if (!bytes.has_value()) return std::optional<Message>();
    Message message;
    if (!message.ParseFromString(*bytes)) {
      return DataLossError("stored " + std::string(Message::descriptor()->name()) +
                           " does not parse");
    }
    return std::optional<Message>(std::move(message));
  }
};

// Reads the committed state. Borrows the store, which must outlive it.
class DbStateReader final : public StateReader {
 public:
  explicit DbStateReader(const RocksStore* store) : store_(store) {}
  StatusOr<std::optional<std::string>> Get(Family family, std::string_view key) const override {
    return store_->Get(family, key);
  }

 private:
  const RocksStore* store_;  // borrowed
};

// Serializes `message` deterministically (stable bytes for equal messages in this build), as
// every stored value must be.
template <typename Message>
std::string SerializeStable(const Message& message) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  FP_CHECK(!coded.HadError());
  return bytes;
}

class StateTxn final : public StateReader {
 public:
  // Borrows the store, which must outlive the transaction.
  explicit StateTxn(RocksStore* store);
  StateTxn(const StateTxn&) = delete;
  StateTxn& operator=(const StateTxn&) = delete;

  StatusOr<std::optional<std::string>> Get(Family family, std::string_view key) const override;
  void Put(Family family, std::string_view key, std::string_view value);
  template <typename Message>
  void PutMessage(Family family, std::string_view key, const Message& message) {
    Put(family, key, SerializeStable(message));
  }
  void Delete(Family family, std::string_view key);
  // The value under `key` for reading in place, or nullptr when absent. Valid until the next
  // Put, Delete, Mutable or Commit. Unavailable or DataLoss from storage.
  StatusOr<const std::string*> Peek(Family family, std::string_view key);
  // The value under `key` (empty when absent) for changing in place; the key is written at
  // Commit. Valid until the next Put, Delete, Mutable or Commit.
  StatusOr<std::string*> Mutable(Family family, std::string_view key);

  // Writes everything atomically and empties the transaction for reuse.
  Status Commit();

 private:
  // Buckets reserved up front: an apply group writes tens of thousands of keys.
  static constexpr size_t kOverlayReserve = 1 << 16;
  struct Entry {
    std::optional<std::string> value;  // nullopt: absent (deleted, or not in the store)
    bool dirty = false;                // written by this transaction
  };
  static std::string OverlayKey(Family family, std::string_view key);
  // The overlay entry of a key, loaded from the store on first use.
  StatusOr<Entry*> Load(Family family, std::string_view key);

  RocksStore* store_;  // borrowed
  // Write-back cache: family byte || key -> entry. Dirty entries go into the WriteBatch once, at
  // Commit; clean ones are values read through Peek or Mutable.
  std::unordered_map<std::string, Entry> overlay_;
};

}  // namespace fp::supervisor
