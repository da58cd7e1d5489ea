// SimFleet; see sim_fleet.h.
#include "supervisor/testing/sim_fleet.h"

#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "supervisor/state/placement.h"
#include "supervisor/state/state.pb.h"
#include "supervisor/state/state_store.h"

namespace fp::supervisor::testing {
namespace {

// A value in [0, 1) determined by the inputs alone (so faults do not depend on call order).
double Uniform(std::string_view key) {
  Hash hash = Sha256(key);
  return static_cast<double>(LoadU64(hash.data()) >> 11) / static_cast<double>(uint64_t{1} << 53);
}

}  // namespace

SimFleet::SimFleet(uint64_t seed, const SimOptions& options)
    : seed_(seed), options_(options), random_(seed) {}

std::string SimFleet::WorkerId(uint32_t index) { return fmt::format("worker-{:02}", index); }

std::string SimFleet::SessionId(uint32_t index) const {
  Hash hash = Sha256(fmt::format("session {} {}", seed_, index));
  return std::string(reinterpret_cast<const char*>(hash.data()), kSessionIdSize);
}

uint32_t SimFleet::OutputSteps(const std::string& session) const {
  const uint32_t span = options_.max_steps - options_.min_steps + 1;
  return options_.min_steps + static_cast<uint32_t>(Uniform("length" + session) * span);
}

pb::LogRecord SimFleet::Register(uint32_t worker) const {
  pb::LogRecord record;
  pb::WorkerRegistered* registered = record.mutable_worker_registered();
  registered->set_worker_id(WorkerId(worker));
  registered->add_models("sim-model");
  registered->set_numerics_profile_hash(std::string(kHashSize, 'p'));
  registered->set_max_replicas(8);
  registered->set_software_version("sim");
  return record;
}

void SimFleet::Setup(std::vector<pb::LogRecord>& out) {
  for (uint32_t w = 0; w < options_.workers; ++w) out.push_back(Register(w));
  for (uint32_t s = 0; s < options_.sessions; ++s) {
    pb::SessionRequest* request = out.emplace_back().mutable_admit()->mutable_request();
    request->set_session_id(SessionId(s));
    request->set_model("sim-model");
    request->set_numerics_profile(std::string(kHashSize, 'n'));
    // Two anchor sets, so the ledger records each once.
    request->set_anchor_set_hash(std::string(kHashSize, static_cast<char>('a' + s % 2)));
    for (uint32_t t = 0; t < 5 + s; ++t) request->add_prompt_token_ids(100 + t);
    request->mutable_sampling()->set_max_tokens(options_.max_steps);
    request->mutable_sampling()->set_seed(s);
    request->set_replicas(s % 3 == 2 ? 2 : options_.replicas);
    request->set_digest_scope(::fieldprint::wire::DIGEST_SCOPE_HIDDEN);
    request->set_max_unverified_steps(options_.max_unverified_steps);
  }
}

std::pair<uint32_t, std::string> SimFleet::MakeLeaf(const std::string& session, uint64_t step,
                                                    const std::string& worker, uint64_t epoch) {
  const std::string honest = fmt::format("{}/{}", HexEncode(AsBytes(session)), step);
  Hash digest = Sha256("digest " + honest);
  const uint32_t token = LoadU32(digest.data()) % 32000;
  const double rate = worker == WorkerId(0) ? options_.bad_fault_rate : options_.fault_rate;
  if (Uniform(fmt::format("fault {} {} {} {}", seed_, honest, worker, epoch)) < rate) {
    digest = Sha256(fmt::format("corrupt {} {} {}", honest, worker, epoch));
  }
  return {token, std::string(reinterpret_cast<const char*>(digest.data()), digest.size())};
}

StatusOr<std::vector<pb::LogRecord>> SimFleet::NextRound(const RocksStore& state) {
  std::vector<pb::LogRecord> out;
  ++round_;
  out.emplace_back().mutable_tick()->set_unix_ms(1'700'000'000'000 + round_ * 100);
  if (round_ == 1) {
    Setup(out);
    return out;
  }
  if (round_ == options_.lose_worker_at_round) {
    out.emplace_back().mutable_worker_lost()->set_worker_id(WorkerId(1));
  }
  if (round_ == options_.lose_worker_at_round + 3) out.push_back(Register(1));
  FP_ASSIGN_OR_RETURN(std::vector<pb::LogRecord> plan,
                      PlanPlacement(state, kMaxPlacementsPerRound));
  out.insert(out.end(), plan.begin(), plan.end());
  const size_t shuffled_from = out.size();
  std::unique_ptr<rocksdb::Iterator> it = state.NewIterator(kSessions);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string id(ToView(it->key()));
    pb::SessionState session;
    if (!session.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError("session does not parse");
    }
    if (session.phase() == pb::SESSION_PHASE_VERIFIED ||
        session.phase() == pb::SESSION_PHASE_FAILED) {
      continue;
    }
    for (uint32_t r = 0; r < static_cast<uint32_t>(session.replicas_size()); ++r) {
      const pb::ReplicaState& replica = session.replicas(r);
      if (replica.worker_id().empty() || replica.finished()) continue;
      Local& local = locals_[ReplicaKey(id, r)];
      if (local.worker_id != replica.worker_id()) local = Local{replica.worker_id(), 0, {}};
      local.epoch = replica.epoch();
      if (local.leaves.size() > replica.next_step()) local.leaves.resize(replica.next_step());
      if (local.leaves.size() != replica.next_step()) continue;  // cannot resume; wait
      if (Uniform(fmt::format("deadline {} {} {} {}", seed_, round_, HexEncode(AsBytes(id)), r)) <
          options_.deadline_rate) {
        pb::Deadline* deadline = out.emplace_back().mutable_deadline();
        deadline->set_session_id(id);
        deadline->set_replica(r);
        deadline->set_epoch(replica.epoch());
        continue;
      }
      const uint64_t steps = OutputSteps(id);
      const uint64_t limit =
          std::min<uint64_t>(steps, session.verified_steps() + options_.max_unverified_steps);
      const uint64_t next = local.leaves.size();
      if (next >= limit) continue;
      const uint64_t end = std::min<uint64_t>(next + options_.batch_steps, limit);
      pb::LeafBatch* batch = out.emplace_back().mutable_leaf_batch();
      batch->set_worker_id(replica.worker_id());
      batch->set_session_id(id);
      batch->set_replica(r);
      batch->set_epoch(replica.epoch());
      batch->set_first_step(next);
      for (uint64_t step = next; step < end; ++step) {
        local.leaves.push_back(MakeLeaf(id, step, replica.worker_id(), replica.epoch()));
        batch->add_token_ids(local.leaves.back().first);
        batch->mutable_state_digests()->append(local.leaves.back().second);
      }
      if (end == steps) {
        merkle::Frontier tree;
        leaf::StepLeaf step_leaf;
        std::copy(id.begin(), id.end(), step_leaf.session_id.begin());
        for (uint64_t step = 0; step < local.leaves.size(); ++step) {
          step_leaf.step = step;
          step_leaf.token_id = local.leaves[step].first;
          std::copy(local.leaves[step].second.begin(), local.leaves[step].second.end(),
                    step_leaf.state_digest.begin());
          tree.Append(leaf::StepLeafHash(step_leaf), nullptr);
        }
        batch->set_last(true);
        batch->set_session_root(HashString(tree.Root()));
      }
    }
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan sessions"));
  std::shuffle(out.begin() + shuffled_from, out.end(), random_);
  if (round_ % 5 == 0) out.emplace_back().mutable_checkpoint_request();
  return out;
}

StatusOr<bool> SimFleet::Done(const RocksStore& state) const {
  std::unique_ptr<rocksdb::Iterator> it = state.NewIterator(kSessions);
  size_t sessions = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    pb::SessionState session;
    if (!session.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError("session does not parse");
    }
    ++sessions;
    if (session.phase() != pb::SESSION_PHASE_VERIFIED &&
        session.phase() != pb::SESSION_PHASE_FAILED) {
      return false;
    }
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan sessions"));
  return sessions == options_.sessions;
}

}  // namespace fp::supervisor::testing
