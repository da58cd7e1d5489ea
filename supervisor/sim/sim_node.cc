// SimNode; see sim_node.h.
#include "supervisor/sim/sim_node.h"

#include <filesystem>

#include <fmt/format.h>
#include <rocksdb/utilities/checkpoint.h>

#include "supervisor/state/state_store.h"

namespace fp::supervisor::sim {
namespace {

tlog::NoteSigner MakeSigner(const std::string& origin, const Bytes& seed) {
  StatusOr<tlog::NoteSigner> signer = tlog::NoteSigner::FromSeed(origin, seed);
  FP_CHECK_OK(signer);
  return std::move(signer).value();
}

tlog::Cosigner MakeCosigner(const std::string& name, const Bytes& seed) {
  StatusOr<tlog::Cosigner> cosigner = tlog::Cosigner::FromSeed(name, seed);
  FP_CHECK_OK(cosigner);
  return std::move(cosigner).value();
}

}  // namespace

Status CreateStoreTemplate(const std::string& dir) { return OpenStateStore(dir).status(); }

SimNode::SimNode(std::string dir, std::string store_template, std::string origin, Bytes ledger_seed,
                 std::string name, Bytes cosigner_seed, const ApplierOptions& options, NodeBug bug)
    : dir_(std::move(dir)),
      store_template_(std::move(store_template)),
      origin_(std::move(origin)),
      ledger_seed_(std::move(ledger_seed)),
      name_(std::move(name)),
      cosigner_seed_(std::move(cosigner_seed)),
      options_(options),
      bug_(bug),
      verifier_(MakeSigner(origin_, ledger_seed_).Verifier()) {}

SimNode::~SimNode() { Stop(); }

Status SimNode::Start(Log* log) {
  FP_CHECK(!up());
  std::error_code error;
  if (!store_template_.empty() && !std::filesystem::exists(dir_, error)) {
    std::filesystem::create_directories(std::filesystem::path(dir_).parent_path(), error);
    if (!error) {
      std::filesystem::copy(store_template_, dir_, std::filesystem::copy_options::recursive, error);
    }
    if (error) {
      return UnavailableError(
          fmt::format("copy {} to {}: {}", store_template_, dir_, error.message()));
    }
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<RocksStore> store, OpenStateStore(dir_));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<Applier> applier, Applier::Open(store.get(), options_));
  auto signer =
      std::make_unique<CheckpointSigner>(store.get(), log, MakeSigner(origin_, ledger_seed_),
                                         MakeCosigner(name_, cosigner_seed_), nullptr);
  FP_RETURN_IF_ERROR(signer->Join());
  store_ = std::move(store);
  applier_ = std::move(applier);
  signer_ = std::move(signer);
  durable_applied_ = applier_->applied();
  return OkStatus();
}

Status SimNode::Crash() {
  FP_CHECK(up());
  const std::string image = dir_ + ".crash";
  std::error_code error;
  std::filesystem::remove_all(image, error);
  rocksdb::Checkpoint* raw = nullptr;
  Status made = FromRocks(rocksdb::Checkpoint::Create(store_->db(), &raw), "checkpoint");
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  if (made.ok()) {
    // UINT64_MAX: never flush first; the image is what a crash would leave on disk.
    made = FromRocks(checkpoint->CreateCheckpoint(image, UINT64_MAX), "crash image");
  }
  checkpoint.reset();
  Stop();
  FP_RETURN_IF_ERROR(made);
  std::filesystem::remove_all(dir_, error);
  if (!error) std::filesystem::rename(image, dir_, error);
  if (error) {
    return UnavailableError(fmt::format("crash image of {}: {}", dir_, error.message()));
  }
  restarted_ = true;
  return OkStatus();
}

void SimNode::Stop() {
  signer_.reset();
  applier_.reset();
  store_.reset();
}

StatusOr<size_t> SimNode::ApplyNext(const LogModel& model, size_t max_records) {
  FP_CHECK(up());
  uint64_t from = applier_->applied();
  const bool replay_one = bug_ == NodeBug::kReapplyAfterRestart && restarted_ && from > 0;
  if (replay_one) --from;
  FP_ASSIGN_OR_RETURN(std::vector<LogEntry> entries, model.Read(from, max_records));
  if (replay_one) {
    for (LogEntry& entry : entries) ++entry.position;
  }
  restarted_ = false;
  if (entries.empty()) return size_t{0};
  FP_ASSIGN_OR_RETURN(Effects effects, applier_->Apply(entries));
  FP_RETURN_IF_ERROR(signer_->AfterApply(effects));
  return entries.size();
}

StatusOr<uint64_t> SimNode::Flush() {
  FP_CHECK(up());
  const uint64_t applied = applier_->applied();
  FP_RETURN_IF_ERROR(store_->Flush());
  durable_applied_ = applied;
  return applied;
}

uint64_t SimNode::applied() const {
  FP_CHECK(up());
  return applier_->applied();
}

uint64_t SimNode::ledger_size() const {
  FP_CHECK(up());
  return applier_->ledger_size();
}

const RocksStore& SimNode::store() const {
  FP_CHECK(up());
  return *store_;
}

}  // namespace fp::supervisor::sim
