// StateTxn; see state_txn.h.
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

StateTxn::StateTxn(RocksStore* store) : store_(store) { overlay_.reserve(kOverlayReserve); }

std::string StateTxn::OverlayKey(Family family, std::string_view key) {
  std::string overlay_key;
  overlay_key.reserve(key.size() + 1);
  overlay_key.push_back(static_cast<char>(family));
  overlay_key.append(key);
  return overlay_key;
}

StatusOr<std::optional<std::string>> StateTxn::Get(Family family, std::string_view key) const {
  auto it = overlay_.find(OverlayKey(family, key));
  if (it != overlay_.end()) return it->second.value;
  return store_->Get(family, key);
}

void StateTxn::Put(Family family, std::string_view key, std::string_view value) {
  overlay_.insert_or_assign(OverlayKey(family, key), Entry{std::string(value), true});
}

void StateTxn::Delete(Family family, std::string_view key) {
  overlay_.insert_or_assign(OverlayKey(family, key), Entry{std::nullopt, true});
}

StatusOr<StateTxn::Entry*> StateTxn::Load(Family family, std::string_view key) {
  std::string overlay_key = OverlayKey(family, key);
  auto it = overlay_.find(overlay_key);
  if (it == overlay_.end()) {
    FP_ASSIGN_OR_RETURN(std::optional<std::string> stored, store_->Get(family, key));
    it = overlay_.emplace(std::move(overlay_key), Entry{std::move(stored), false}).first;
  }
  return &it->second;
}

StatusOr<const std::string*> StateTxn::Peek(Family family, std::string_view key) {
  FP_ASSIGN_OR_RETURN(Entry * entry, Load(family, key));
  return entry->value.has_value() ? &*entry->value : nullptr;
}

StatusOr<std::string*> StateTxn::Mutable(Family family, std::string_view key) {
  FP_ASSIGN_OR_RETURN(Entry * entry, Load(family, key));
  if (!entry->value.has_value()) entry->value.emplace();
  entry->dirty = true;
  return &*entry->value;
}

Status StateTxn::Commit() {
  rocksdb::WriteBatch batch;
  for (const auto& [overlay_key, entry] : overlay_) {
    if (!entry.dirty) continue;
    rocksdb::ColumnFamilyHandle* handle = store_->handle(static_cast<uint8_t>(overlay_key[0]));
    const rocksdb::Slice key(overlay_key.data() + 1, overlay_key.size() - 1);
    const rocksdb::Status added = entry.value.has_value()
                                      ? batch.Put(handle, key, ToSlice(*entry.value))
                                      : batch.Delete(handle, key);
    FP_CHECK(added.ok());
  }
  overlay_.clear();
  return store_->Write(&batch);
}

}  // namespace fp::supervisor
