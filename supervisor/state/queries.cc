// Read-side helpers; see queries.h.
#include "supervisor/state/queries.h"

#include "common/merkle/merkle.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

StatusOr<uint32_t> PrefixHolder(const pb::SessionState& session, uint64_t size) {
  for (uint32_t r = 0; r < static_cast<uint32_t>(session.replicas_size()); ++r) {
    if (session.replicas(r).stored() >= size) return r;
  }
  return DataLossError("no replica stores the verified prefix");
}

}  // namespace

StatusOr<std::vector<uint32_t>> ReadVerifiedTokens(const RocksStore& state,
                                                   const pb::SessionState& session,
                                                   const std::string& id, uint64_t from,
                                                   uint64_t to) {
  FP_CHECK(to <= session.verified_steps());
  std::vector<uint32_t> tokens;
  if (from >= to) return tokens;
  FP_ASSIGN_OR_RETURN(uint32_t source, PrefixHolder(session, to));
  tokens.reserve(to - from);
  std::unique_ptr<rocksdb::Iterator> it = state.NewIterator(kLeaves);
  const std::string prefix = ReplicaKey(id, source);
  uint64_t step = from;
  for (it->Seek(ToSlice(LeafChunkKey(id, source, LeafChunkIndex(from))));
       it->Valid() && step < to && it->key().starts_with(ToSlice(prefix)); it->Next()) {
    FP_ASSIGN_OR_RETURN(uint64_t chunk, ParseU64(ToView(it->key()).substr(prefix.size())));
    if (chunk != LeafChunkIndex(step)) return DataLossError("a verified leaf chunk is missing");
    for (; step < to && LeafChunkIndex(step) == chunk; ++step) {
      StatusOr<StoredLeaf> leaf = LeafFromChunk(ToView(it->value()), step);
      if (!leaf.ok()) return DataLossError("verified leaf: " + leaf.status().ToString());
      tokens.push_back(leaf->token_id);
    }
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "read tokens"));
  if (tokens.size() != to - from) return DataLossError("verified leaves missing");
  return tokens;
}

StatusOr<Hash> VerifiedRoot(const StateReader& reader, const pb::SessionState& session,
                            const std::string& id) {
  FP_ASSIGN_OR_RETURN(uint32_t source, PrefixHolder(session, session.verified_steps()));
  ReplicaNodeReader nodes(&reader, id, source);
  return merkle::RootAt(nodes, session.verified_steps());
}

}  // namespace fp::supervisor
