// Stored Merkle trees; see trees.h.
#include "supervisor/state/trees.h"

#include <fmt/format.h>

namespace fp::supervisor {

StatusOr<std::string_view> ReplicaNodeReader::Chunk(uint64_t chunk) const {
  if (!cached_.has_value() || cached_->first != chunk) {
    FP_ASSIGN_OR_RETURN(std::optional<std::string> value,
                        reader_->Get(kLeaves, LeafChunkKey(session_, replica_, chunk)));
    if (!value.has_value()) return NotFoundError(fmt::format("no leaf chunk {}", chunk));
    cached_.emplace(chunk, std::move(*value));
  }
  return std::string_view(cached_->second);
}

StatusOr<StoredLeaf> ReplicaNodeReader::ReadLeaf(uint64_t step) const {
  FP_ASSIGN_OR_RETURN(std::string_view chunk, Chunk(LeafChunkIndex(step)));
  return LeafFromChunk(chunk, step);
}

StatusOr<Hash> ReplicaNodeReader::ReadNode(uint32_t level, uint64_t index) const {
  if (level < kLeafChunkLevel) {
    // Inside one chunk: hash the node up from its leaves.
    const uint64_t first = index << level;
    std::vector<Hash> hashes;
    for (uint64_t step = first; step < first + (uint64_t{1} << level); ++step) {
      FP_ASSIGN_OR_RETURN(StoredLeaf leaf, ReadLeaf(step));
      hashes.push_back(leaf.leaf_hash);
    }
    for (size_t width = hashes.size(); width > 1; width /= 2) {
      for (size_t i = 0; i < width / 2; ++i) {
        hashes[i] = merkle::NodeHash(hashes[2 * i], hashes[2 * i + 1]);
      }
    }
    return hashes[0];
  }
  FP_ASSIGN_OR_RETURN(std::optional<std::string> value,
                      reader_->Get(kTrees, TreeNodeKey(session_, replica_, level, index)));
  if (!value.has_value()) return NotFoundError(fmt::format("no node {}/{}", level, index));
  return ParseHash(*value);
}

StatusOr<Hash> LedgerNodeReader::ReadNode(uint32_t level, uint64_t index) const {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> value,
                      reader_->Get(kLedger, LedgerNodeKey(level, index)));
  if (!value.has_value()) return NotFoundError(fmt::format("no ledger node {}/{}", level, index));
  return ParseHash(*value);
}

StatusOr<merkle::Frontier> FrontierFromNodes(const merkle::NodeReader& reader, uint64_t size) {
  std::vector<Hash> peaks;
  uint64_t covered = 0;
  for (int level = merkle::kMaxLevels - 1; level >= 0; --level) {
    if (((size >> level) & 1) == 0) continue;
    FP_ASSIGN_OR_RETURN(Hash peak, reader.ReadNode(level, covered >> level));
    peaks.push_back(peak);
    covered += uint64_t{1} << level;
  }
  return merkle::Frontier::FromPeaks(size, std::move(peaks));
}

StatusOr<merkle::Frontier> FrontierFromBytes(
    uint64_t size, const google::protobuf::RepeatedPtrField<std::string>& peaks) {
  std::vector<Hash> hashes;
  hashes.reserve(peaks.size());
  for (const std::string& peak : peaks) {
    FP_ASSIGN_OR_RETURN(Hash hash, ParseHash(peak));
    hashes.push_back(hash);
  }
  StatusOr<merkle::Frontier> frontier = merkle::Frontier::FromPeaks(size, std::move(hashes));
  if (!frontier.ok()) return DataLossError("stored frontier: " + frontier.status().ToString());
  return frontier;
}

void FrontierToBytes(const merkle::Frontier& frontier,
                     google::protobuf::RepeatedPtrField<std::string>* peaks) {
  peaks->Clear();
  for (const Hash& peak : frontier.peaks()) *peaks->Add() = HashString(peak);
}

Status AppendReplicaLeaf(StateTxn& txn, const std::string& session, uint32_t replica,
                         merkle::Frontier& frontier, const StoredLeaf& leaf) {
  const uint64_t step = frontier.size();
  FP_ASSIGN_OR_RETURN(std::string * chunk,
                      txn.Mutable(kLeaves, LeafChunkKey(session, replica, LeafChunkIndex(step))));
  if (chunk->size() != (step % kLeafChunkSteps) * kLeafValueSize) {
    return DataLossError(fmt::format("leaf chunk of step {} holds {} bytes", step, chunk->size()));
  }
  chunk->append(EncodeStoredLeaf(leaf));
  std::vector<merkle::Node> completed;
  frontier.Append(leaf.leaf_hash, &completed);
  for (const merkle::Node& node : completed) {
    if (node.level < kLeafChunkLevel) continue;  // computed from the chunk when read
    txn.Put(kTrees, TreeNodeKey(session, replica, node.level, node.index), HashString(node.hash));
  }
  return OkStatus();
}

StatusOr<merkle::Frontier> TruncateReplicaTree(StateTxn& txn, const std::string& session,
                                               uint32_t replica, uint64_t stored, uint64_t to) {
  FP_CHECK(to <= stored);
  if (to < stored) {
    for (uint64_t chunk = LeafChunkIndex(to); chunk <= LeafChunkIndex(stored - 1); ++chunk) {
      const std::string key = LeafChunkKey(session, replica, chunk);
      const uint64_t keep = chunk == LeafChunkIndex(to) ? to % kLeafChunkSteps : 0;
      if (keep == 0) {
        txn.Delete(kLeaves, key);
        continue;
      }
      FP_ASSIGN_OR_RETURN(std::string * value, txn.Mutable(kLeaves, key));
      value->resize(keep * kLeafValueSize);
    }
  }
  // Node (level, index) covers leaves [index << level, (index + 1) << level); it is stored when
  // it lies inside [0, stored) and stale when it reaches past `to`.
  for (uint32_t level = kLeafChunkLevel;
       level < merkle::kMaxLevels && (uint64_t{1} << level) <= stored; ++level) {
    for (uint64_t index = to >> level; index < (stored >> level); ++index) {
      txn.Delete(kTrees, TreeNodeKey(session, replica, level, index));
    }
  }
  ReplicaNodeReader reader(&txn, session, replica);
  return FrontierFromNodes(reader, to);
}

void AppendLedgerLeaf(StateTxn& txn, merkle::Frontier& frontier, const Hash& leaf_hash) {
  std::vector<merkle::Node> completed;
  frontier.Append(leaf_hash, &completed);
  for (const merkle::Node& node : completed) {
    txn.Put(kLedger, LedgerNodeKey(node.level, node.index), HashString(node.hash));
  }
}

}  // namespace fp::supervisor
