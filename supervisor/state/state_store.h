// The supervisor's applied state: one RocksDB database whose column families hold everything the
// applier derives from the log. Spec: docs/supervisor.md, "RocksDB key schema".
//
//   meta         "applied"           -> next log position to apply (BE64)
//                "clock"             -> leader clock, unix ms (BE64)
//                "ledger"            -> LedgerFrontier
//                "checkpoint"        -> size of the last checkpoint body (BE64)
//                "phases"            -> PhaseCounts
//                "cosigners"         -> CosignerSet (the cluster's ledger key and cosigners)
//   sessions     session (16)        -> SessionState
//   leaves       session replica(BE32) chunk(BE64) -> up to 16 leaves, each leaf hash (32)
//                                      token (BE32) state digest (32)
//   trees        session replica(BE32) level(1) index(BE64) -> node hash (32), levels >= 4
//   divergences  session seq(BE32)   -> Divergence
//   orders       session replica(BE32) -> Order (the replica's latest order)
//   ledger       'e' index(BE64)     -> LedgerEntry (deterministic protobuf bytes)
//                'n' level(1) index(BE64) -> node hash (32), levels >= 0
//                's' session (16)    -> index of the session's record (BE64)
//                'a' anchor hash (32) -> index of the anchor set's record (BE64)
//   checkpoints  size(BE64)          -> CheckpointBody
//   workers      worker id (UTF-8)   -> WorkerState
//   waiting      session (16)        -> "" while some replica of the session waits for placement
//   signed       size(BE64)          -> signed checkpoint note (C2SP text)
//   cosignatures size(BE64)          -> CheckpointCosignatures (verified, sorted by name)
//
// Every family but `signed` is written only by the applier, in one WriteBatch per applied group
// of records, together with meta "applied". `signed` is written by the checkpoint signer, after
// the body is committed and checked against the stored ledger (and only on a supervisor whose
// ledger key the cluster accepted); its cosignatures travel through the log, so they are applied
// state in `cosignatures`.
//
// Thread-safety: as RocksStore; readers may read while the applier writes and see each applied
// group entirely or not at all.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor {

// The generated protobuf types of supervisor/log/records.proto and supervisor/state/state.proto.
namespace pb = ::fieldprint::supervisor;

enum Family : size_t {
  kMeta = 0,
  kSessions,
  kLeaves,
  kTrees,
  kDivergences,
  kOrders,
  kLedger,
  kCheckpoints,
  kWorkers,
  kWaiting,
  kSigned,
  kCosignatures,
  kFamilyCount,
};

// Column family names, indexed by Family.
const std::vector<std::string>& StateFamilyNames();

// Opens (or creates) the state database in `path`. Writes skip the WAL and column families flush
// atomically: after a crash the state is exactly what some applied prefix of the log left (the
// applied position is written in the same batch as the state), and the applier re-applies the
// rest from the durable log. Signed checkpoints are the exception: CheckpointSigner writes them
// through the WAL, synced. The caller owns the store.
StatusOr<std::unique_ptr<RocksStore>> OpenStateStore(const std::string& path);

inline constexpr std::string_view kMetaApplied = "applied";
inline constexpr std::string_view kMetaClock = "clock";
inline constexpr std::string_view kMetaLedger = "ledger";
inline constexpr std::string_view kMetaCheckpoint = "checkpoint";
inline constexpr std::string_view kMetaPhases = "phases";
inline constexpr std::string_view kMetaCosigners = "cosigners";

// Size of a stored leaf value: leaf hash, token id, state digest.
inline constexpr size_t kLeafValueSize = kHashSize + 4 + kHashSize;
// Leaves are stored 16 to a value (a chunk): a sixteenth of the keys a leaf per key would need,
// which is what limits the applier's throughput. A chunk is the perfect subtree of level 4, so
// session trees store nodes from level 4 up and compute lower ones from the chunk.
inline constexpr uint32_t kLeafChunkLevel = 4;
inline constexpr uint64_t kLeafChunkSteps = uint64_t{1} << kLeafChunkLevel;
inline uint64_t LeafChunkIndex(uint64_t step) { return step >> kLeafChunkLevel; }

// Key builders (all big-endian, so RocksDB's byte order is numeric order).
std::string U64Key(uint64_t value);
std::string ReplicaKey(std::string_view session, uint32_t replica);
std::string LeafChunkKey(std::string_view session, uint32_t replica, uint64_t chunk);
std::string TreeNodeKey(std::string_view session, uint32_t replica, uint32_t level, uint64_t index);
std::string DivergenceKey(std::string_view session, uint32_t sequence);
std::string LedgerEntryKey(uint64_t index);
std::string LedgerNodeKey(uint32_t level, uint64_t index);
std::string LedgerSessionKey(std::string_view session);
std::string LedgerAnchorKey(std::string_view anchor_set_hash);

// DataLoss unless `bytes` is 8 bytes.
StatusOr<uint64_t> ParseU64(std::string_view bytes);
// DataLoss unless `bytes` is 32 bytes.
StatusOr<Hash> ParseHash(std::string_view bytes);
inline std::string HashString(const Hash& hash) {
  return std::string(reinterpret_cast<const char*>(hash.data()), hash.size());
}

struct StoredLeaf {
  Hash leaf_hash{};
  uint32_t token_id = 0;
  Hash state_digest{};
};
std::string EncodeStoredLeaf(const StoredLeaf& leaf);
// DataLoss unless `bytes` is kLeafValueSize bytes.
StatusOr<StoredLeaf> DecodeStoredLeaf(std::string_view bytes);
// Step `step`'s leaf from its chunk's value: NotFound when the chunk ends before it, DataLoss when
// the chunk's size is not a whole number of leaves.
StatusOr<StoredLeaf> LeafFromChunk(std::string_view chunk, uint64_t step);

}  // namespace fp::supervisor
