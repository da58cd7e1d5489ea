// The Merkle trees the supervisor stores: one session tree per replica, and the ledger tree.
//
// Both store perfect subtrees (nodes) as they complete, so that any root, inclusion proof or
// consistency proof for a size up to the tree's size is a handful of point reads
// (merkle::NodeReader). Replica trees keep their leaves in chunks of 16 (state_store.h) and
// store nodes from level 4 (a whole chunk) up in the trees family; nodes below level 4 are
// computed from one chunk when read. The ledger keeps all levels in the ledger family.
//
// Thread-safety: the readers are safe from any thread when their StateReader is; the write
// helpers belong to the applier's thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <google/protobuf/repeated_ptr_field.h>

#include "common/merkle/merkle.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {

// Nodes of replica `replica`'s session tree. Borrows `reader`. Keeps the last chunk it read, so
// a proof's low levels cost one read; one reader serves one thread.
class ReplicaNodeReader final : public merkle::NodeReader {
 public:
  ReplicaNodeReader(const StateReader* reader, std::string session, uint32_t replica)
      : reader_(reader), session_(std::move(session)), replica_(replica) {}
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;
  // Step `step`'s stored leaf; NotFound when it is not stored.
  StatusOr<StoredLeaf> ReadLeaf(uint64_t step) const;

 private:
  StatusOr<std::string_view> Chunk(uint64_t chunk) const;

  const StateReader* reader_;  // borrowed
  std::string session_;
  uint32_t replica_;
  mutable std::optional<std::pair<uint64_t, std::string>> cached_;  // chunk index, value
};

// Nodes of the ledger tree. Borrows `reader`.
class LedgerNodeReader final : public merkle::NodeReader {
 public:
  explicit LedgerNodeReader(const StateReader* reader) : reader_(reader) {}
  StatusOr<Hash> ReadNode(uint32_t level, uint64_t index) const override;

 private:
  const StateReader* reader_;  // borrowed
};

// The frontier of a tree of `size` leaves, read from its stored nodes (the peaks are the roots of
// the perfect subtrees that cover [0, size), largest first). NotFound/DataLoss from the reader.
StatusOr<merkle::Frontier> FrontierFromNodes(const merkle::NodeReader& reader, uint64_t size);

// Frontier <-> the repeated bytes field the state keeps it in.
StatusOr<merkle::Frontier> FrontierFromBytes(
    uint64_t size, const google::protobuf::RepeatedPtrField<std::string>& peaks);
void FrontierToBytes(const merkle::Frontier& frontier,
                     google::protobuf::RepeatedPtrField<std::string>* peaks);

// Appends one leaf to a replica's tree: the leaf to its chunk, and every node of level >= 4 it
// completes. DataLoss when the stored chunk does not end where the frontier does.
Status AppendReplicaLeaf(StateTxn& txn, const std::string& session, uint32_t replica,
                         merkle::Frontier& frontier, const StoredLeaf& leaf);

// Shrinks a replica's tree from `stored` to `to` leaves (to <= stored): deletes the leaves and the
// nodes that cover any removed leaf, and returns the frontier of the shorter tree.
StatusOr<merkle::Frontier> TruncateReplicaTree(StateTxn& txn, const std::string& session,
                                               uint32_t replica, uint64_t stored, uint64_t to);

// Appends a ledger leaf hash and the nodes it completes.
void AppendLedgerLeaf(StateTxn& txn, merkle::Frontier& frontier, const Hash& leaf_hash);

}  // namespace fp::supervisor
