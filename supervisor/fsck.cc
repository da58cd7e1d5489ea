// fsck; see fsck.h.
#include "supervisor/fsck.h"

#include <fmt/format.h>

#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"
#include "supervisor/state/trees.h"

namespace fp::supervisor {
namespace {

class Checker {
 public:
  explicit Checker(const RocksStore& state) : state_(state), reader_(&state) {}

  Status Run() {
    FP_RETURN_IF_ERROR(CheckSessions());
    return CheckLedger();
  }
  FsckReport& report() { return report_; }

 private:
  void Problem(std::string text) {
    ++report_.problem_count;
    if (report_.problems.size() < kMaxFsckProblems) report_.problems.push_back(std::move(text));
  }

  // Checks one stored leaf against its token and digest, appends it to the recomputed tree and
  // compares every stored node it completes.
  Status CheckLeaf(const std::string& name, merkle::Frontier& tree, leaf::StepLeaf& step_leaf,
                   const StoredLeaf& leaf, const std::string& id, uint32_t index) {
    ++report_.leaves;
    step_leaf.step = tree.size();
    step_leaf.token_id = leaf.token_id;
    step_leaf.state_digest = leaf.state_digest;
    if (leaf::StepLeafHash(step_leaf) != leaf.leaf_hash) {
      Problem(fmt::format("{}: leaf {} hash does not match its token and digest", name,
                          step_leaf.step));
    }
    std::vector<merkle::Node> completed;
    tree.Append(leaf.leaf_hash, &completed);
    for (const merkle::Node& node : completed) {
      if (node.level < kLeafChunkLevel) continue;
      FP_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                          reader_.Get(kTrees, TreeNodeKey(id, index, node.level, node.index)));
      if (!stored.has_value() || *stored != HashString(node.hash)) {
        Problem(fmt::format("{}: node {}/{} differs from its recomputation", name, node.level,
                            node.index));
      }
    }
    return OkStatus();
  }

  // Recomputes one replica's tree from its leaves; returns the root of the first `size` leaves.
  StatusOr<Hash> CheckReplica(const std::string& id, uint32_t index,
                              const pb::ReplicaState& replica) {
    const std::string name = fmt::format("session {} replica {}", HexEncode(AsBytes(id)), index);
    const std::string prefix = ReplicaKey(id, index);
    merkle::Frontier tree;
    leaf::StepLeaf step_leaf;
    std::copy(id.begin(), id.end(), step_leaf.session_id.begin());
    std::unique_ptr<rocksdb::Iterator> it = state_.NewIterator(kLeaves);
    bool ended = false;  // a chunk that is not full must be the last one
    for (it->Seek(ToSlice(prefix)); it->Valid() && it->key().starts_with(ToSlice(prefix));
         it->Next()) {
      FP_ASSIGN_OR_RETURN(uint64_t chunk, ParseU64(ToView(it->key()).substr(prefix.size())));
      const std::string_view value = ToView(it->value());
      if (ended || chunk != LeafChunkIndex(tree.size()) || value.empty() ||
          value.size() % kLeafValueSize != 0 || value.size() > kLeafChunkSteps * kLeafValueSize) {
        Problem(fmt::format("{}: leaf chunk {} out of sequence or malformed", name, chunk));
        break;
      }
      ended = value.size() < kLeafChunkSteps * kLeafValueSize;
      for (size_t offset = 0; offset < value.size(); offset += kLeafValueSize) {
        FP_ASSIGN_OR_RETURN(StoredLeaf leaf,
                            DecodeStoredLeaf(value.substr(offset, kLeafValueSize)));
        FP_RETURN_IF_ERROR(CheckLeaf(name, tree, step_leaf, leaf, id, index));
      }
    }
    FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan leaves"));
    if (tree.size() != replica.stored()) {
      Problem(
          fmt::format("{}: {} leaves stored, state says {}", name, tree.size(), replica.stored()));
      return tree.Root();
    }
    StatusOr<merkle::Frontier> frontier = FrontierFromBytes(replica.stored(), replica.frontier());
    if (!frontier.ok() || frontier->Root() != tree.Root()) {
      Problem(fmt::format("{}: stored frontier root differs from the leaves' root", name));
    }
    ReplicaNodeReader nodes(&reader_, id, index);
    StatusOr<Hash> from_nodes = merkle::RootAt(nodes, tree.size());
    if (!from_nodes.ok() || *from_nodes != tree.Root()) {
      Problem(fmt::format("{}: stored nodes give another root ({})", name,
                          from_nodes.ok() ? "mismatch" : from_nodes.status().ToString()));
    }
    return tree.Root();
  }

  Status CheckSession(const std::string& id, const pb::SessionState& session) {
    ++report_.sessions;
    std::optional<Hash> first_root;
    for (uint32_t r = 0; r < static_cast<uint32_t>(session.replicas_size()); ++r) {
      ++report_.replica_trees;
      FP_ASSIGN_OR_RETURN(Hash root, CheckReplica(id, r, session.replicas(r)));
      if (r == 0) first_root = root;
    }
    if (session.phase() != pb::SESSION_PHASE_VERIFIED) return OkStatus();
    const std::string name = "session " + HexEncode(AsBytes(id));
    if (!first_root.has_value() || HashString(*first_root) != session.session_root()) {
      Problem(name + ": recorded session root differs from the recomputed root");
    }
    FP_ASSIGN_OR_RETURN(
        std::optional<pb::LedgerEntry> entry,
        reader_.GetMessage<pb::LedgerEntry>(kLedger, LedgerEntryKey(session.ledger_index())));
    if (!entry.has_value() || !entry->has_session() ||
        entry->session().session_root() != session.session_root() ||
        entry->session().session_id() != id) {
      Problem(name + ": ledger entry does not record this session and root");
    }
    return OkStatus();
  }

  Status CheckSessions() {
    std::unique_ptr<rocksdb::Iterator> it = state_.NewIterator(kSessions);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      pb::SessionState session;
      if (!session.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return DataLossError("stored session does not parse");
      }
      FP_RETURN_IF_ERROR(CheckSession(std::string(ToView(it->key())), session));
    }
    return FromRocks(it->status(), "scan sessions");
  }

  // Recomputes the ledger from its entries: every node, the root, and the root at each
  // checkpoint's size.
  Status CheckLedger() {
    std::map<uint64_t, pb::CheckpointBody> bodies;
    std::unique_ptr<rocksdb::Iterator> it = state_.NewIterator(kCheckpoints);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      pb::CheckpointBody body;
      if (!body.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return DataLossError("stored checkpoint body does not parse");
      }
      bodies[body.size()] = body;
    }
    FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan checkpoints"));
    report_.checkpoints = bodies.size();
    merkle::Frontier tree;
    std::map<uint64_t, Hash> roots;  // checkpoint size -> recomputed root
    auto note_root = [&] {
      if (bodies.contains(tree.size())) roots[tree.size()] = tree.Root();
    };
    note_root();
    std::unique_ptr<rocksdb::Iterator> entries = state_.NewIterator(kLedger);
    const std::string prefix = "e";
    for (entries->Seek(ToSlice(prefix));
         entries->Valid() && entries->key().starts_with(ToSlice(prefix)); entries->Next()) {
      FP_ASSIGN_OR_RETURN(uint64_t index, ParseU64(ToView(entries->key()).substr(1)));
      if (index != tree.size()) {
        Problem(fmt::format("ledger entry {} out of sequence", index));
        break;
      }
      std::vector<merkle::Node> completed;
      tree.Append(merkle::LeafHash(AsBytes(ToView(entries->value()))), &completed);
      for (const merkle::Node& node : completed) {
        FP_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                            reader_.Get(kLedger, LedgerNodeKey(node.level, node.index)));
        if (!stored.has_value() || *stored != HashString(node.hash)) {
          Problem(fmt::format("ledger node {}/{} differs from its recomputation", node.level,
                              node.index));
        }
      }
      ++report_.ledger_entries;
      note_root();
    }
    FP_RETURN_IF_ERROR(FromRocks(entries->status(), "scan ledger"));
    FP_RETURN_IF_ERROR(CheckLedgerRoots(tree));
    return CheckCheckpoints(bodies, roots);
  }

  Status CheckLedgerRoots(const merkle::Frontier& tree) {
    FP_ASSIGN_OR_RETURN(std::optional<pb::LedgerFrontier> meta,
                        reader_.GetMessage<pb::LedgerFrontier>(kMeta, kMetaLedger));
    const uint64_t size = meta.has_value() ? meta->size() : 0;
    if (size != tree.size()) {
      Problem(fmt::format("ledger holds {} entries, state says {}", tree.size(), size));
      return OkStatus();
    }
    if (meta.has_value()) {
      StatusOr<merkle::Frontier> frontier = FrontierFromBytes(meta->size(), meta->peaks());
      if (!frontier.ok() || frontier->Root() != tree.Root()) {
        Problem("ledger frontier root differs from the entries' root");
      }
    }
    LedgerNodeReader nodes(&reader_);
    StatusOr<Hash> from_nodes = merkle::RootAt(nodes, tree.size());
    if (!from_nodes.ok() || *from_nodes != tree.Root()) {
      Problem("ledger nodes give another root than the entries");
    }
    return OkStatus();
  }

  Status CheckCheckpoints(const std::map<uint64_t, pb::CheckpointBody>& bodies,
                          const std::map<uint64_t, Hash>& roots) {
    for (const auto& [size, body] : bodies) {
      auto root = roots.find(size);
      if (root == roots.end() || HashString(root->second) != body.root()) {
        Problem(fmt::format("checkpoint {}: root differs from the recomputed ledger root", size));
      }
    }
    std::unique_ptr<rocksdb::Iterator> it = state_.NewIterator(kSigned);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++report_.signed_checkpoints;
      FP_ASSIGN_OR_RETURN(uint64_t size, ParseU64(ToView(it->key())));
      StatusOr<tlog::ParsedNote> note = tlog::ParseNote(ToView(it->value()));
      StatusOr<tlog::Checkpoint> checkpoint =
          note.ok() ? tlog::ParseCheckpoint(note->text) : StatusOr<tlog::Checkpoint>(note.status());
      auto body = bodies.find(size);
      if (!checkpoint.ok() || body == bodies.end() || checkpoint->size != size ||
          HashString(checkpoint->root) != body->second.root()) {
        Problem(fmt::format("signed checkpoint {} does not match its body", size));
      }
    }
    return FromRocks(it->status(), "scan signed checkpoints");
  }

  const RocksStore& state_;
  DbStateReader reader_;
  FsckReport report_;
};

}  // namespace

StatusOr<FsckReport> Fsck(const RocksStore& state) {
  Checker checker(state);
  FP_RETURN_IF_ERROR(checker.Run());
  return std::move(checker.report());
}

}  // namespace fp::supervisor
