// State store key schema and opening; see state_store.h.
#include "supervisor/state/state_store.h"

#include <cstring>

namespace fp::supervisor {

const std::vector<std::string>& StateFamilyNames() {
  static const std::vector<std::string> kNames = {
      "meta",   "sessions",    "leaves",  "trees",   "divergences", "orders",
      "ledger", "checkpoints", "workers", "waiting", "signed",      "cosignatures",
  };
  static_assert(kFamilyCount == 12, "one name per Family");
  return kNames;
}

StatusOr<std::unique_ptr<RocksStore>> OpenStateStore(const std::string& path) {
  RocksStore::Options options;
  options.sync_writes = false;
  options.without_wal = true;
  return RocksStore::Open(path, StateFamilyNames(), options);
}

namespace {

void Put32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
void Put64(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
const uint8_t* Raw(std::string_view bytes) {
  return reinterpret_cast<const uint8_t*>(bytes.data());
}

}  // namespace

std::string U64Key(uint64_t value) {
  std::string key;
  Put64(key, value);
  return key;
}

std::string ReplicaKey(std::string_view session, uint32_t replica) {
  std::string key(session);
  Put32(key, replica);
  return key;
}

std::string LeafChunkKey(std::string_view session, uint32_t replica, uint64_t chunk) {
  std::string key = ReplicaKey(session, replica);
  Put64(key, chunk);
  return key;
}

std::string TreeNodeKey(std::string_view session, uint32_t replica, uint32_t level,
                        uint64_t index) {
  std::string key = ReplicaKey(session, replica);
  key.push_back(static_cast<char>(level));
  Put64(key, index);
  return key;
}

std::string DivergenceKey(std::string_view session, uint32_t sequence) {
  std::string key(session);
  Put32(key, sequence);
  return key;
}

std::string LedgerEntryKey(uint64_t index) { return "e" + U64Key(index); }

std::string LedgerNodeKey(uint32_t level, uint64_t index) {
  std::string key = "n";
  key.push_back(static_cast<char>(level));
  Put64(key, index);
  return key;
}

std::string LedgerSessionKey(std::string_view session) { return "s" + std::string(session); }

std::string LedgerAnchorKey(std::string_view anchor_set_hash) {
  return "a" + std::string(anchor_set_hash);
}

StatusOr<uint64_t> ParseU64(std::string_view bytes) {
  if (bytes.size() != 8) return DataLossError("stored integer is not 8 bytes");
  return LoadU64(Raw(bytes));
}

StatusOr<Hash> ParseHash(std::string_view bytes) {
  if (bytes.size() != kHashSize) return DataLossError("stored hash is not 32 bytes");
  Hash hash;
  std::memcpy(hash.data(), bytes.data(), kHashSize);
  return hash;
}

std::string EncodeStoredLeaf(const StoredLeaf& leaf) {
  std::string value;
  value.reserve(kLeafValueSize);
  value.append(reinterpret_cast<const char*>(leaf.leaf_hash.data()), kHashSize);
  Put32(value, leaf.token_id);
  value.append(reinterpret_cast<const char*>(leaf.state_digest.data()), kHashSize);
  return value;
}

StatusOr<StoredLeaf> DecodeStoredLeaf(std::string_view bytes) {
  if (bytes.size() != kLeafValueSize) return DataLossError("stored leaf has the wrong size");
  StoredLeaf leaf;
  std::memcpy(leaf.leaf_hash.data(), bytes.data(), kHashSize);
  leaf.token_id = LoadU32(Raw(bytes) + kHashSize);
  std::memcpy(leaf.state_digest.data(), bytes.data() + kHashSize + 4, kHashSize);
  return leaf;
}

}  // namespace fp::supervisor

namespace fp::supervisor {

StatusOr<StoredLeaf> LeafFromChunk(std::string_view chunk, uint64_t step) {
  if (chunk.size() % kLeafValueSize != 0 || chunk.size() > kLeafChunkSteps * kLeafValueSize) {
    return DataLossError("stored leaf chunk has the wrong size");
  }
  const size_t slot = static_cast<size_t>(step % kLeafChunkSteps);
  if ((slot + 1) * kLeafValueSize > chunk.size()) {
    return NotFoundError("no leaf " + std::to_string(step));
  }
  return DecodeStoredLeaf(chunk.substr(slot * kLeafValueSize, kLeafValueSize));
}

}  // namespace fp::supervisor
