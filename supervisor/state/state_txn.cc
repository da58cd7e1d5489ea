// StateTxn; see state_txn.h.
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

StateTxn::StateTxn(RocksStore* store)
    : store_(store), batch_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}

StatusOr<std::optional<std::string>> StateTxn::Get(Family family, std::string_view key) const {
  std::string value;
  // GetFromBatchAndDB is not const in RocksDB's API, although it does not change the batch.
  auto* batch = const_cast<rocksdb::WriteBatchWithIndex*>(&batch_);
  rocksdb::Status status = batch->GetFromBatchAndDB(store_->db(), rocksdb::ReadOptions(),
                                                    store_->handle(family), ToSlice(key), &value);
  if (status.IsNotFound()) return std::optional<std::string>();
  FP_RETURN_IF_ERROR(FromRocks(status, "get"));
  return std::optional<std::string>(std::move(value));
}

void StateTxn::Put(Family family, std::string_view key, std::string_view value) {
  FP_CHECK(batch_.Put(store_->handle(family), ToSlice(key), ToSlice(value)).ok());
}

void StateTxn::Delete(Family family, std::string_view key) {
  FP_CHECK(batch_.Delete(store_->handle(family), ToSlice(key)).ok());
}

Status StateTxn::Commit() {
  Status status = store_->Write(batch_.GetWriteBatch());
  batch_.Clear();
  return status;
}

}  // namespace fp::supervisor
