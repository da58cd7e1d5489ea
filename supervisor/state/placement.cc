// Placement; see placement.h.
#include "supervisor/state/placement.h"

#include <algorithm>
#include <map>

#include "supervisor/state/state.pb.h"

namespace fp::supervisor {
namespace {

struct Candidate {
  pb::WorkerState state;
  size_t load = 0;  // replicas placed, including those planned this round
};

StatusOr<std::map<std::string, Candidate>> ActiveWorkers(const RocksStore& store) {
  std::map<std::string, Candidate> workers;
  std::unique_ptr<rocksdb::Iterator> it = store.NewIterator(kWorkers);
  for (it->SeekToFirst(); it->Valid() && workers.size() < kMaxPlacementWorkers; it->Next()) {
    Candidate candidate;
    if (!candidate.state.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLossError("stored WorkerState does not parse");
    }
    if (candidate.state.phase() != pb::WorkerState::PHASE_ACTIVE) continue;
    candidate.load = static_cast<size_t>(candidate.state.replicas_size());
    workers.emplace(std::string(ToView(it->key())), std::move(candidate));
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan workers"));
  return workers;
}

// The best worker for one more replica of `session`, or nullptr.
Candidate* Choose(std::map<std::string, Candidate>& workers, const pb::SessionState& session,
                  const std::vector<std::string>& taken, std::string& chosen_id) {
  std::string profile;
  for (const std::string& id : taken) {
    auto it = workers.find(id);
    if (it != workers.end()) profile = it->second.state.registration().numerics_profile_hash();
  }
  Candidate* best = nullptr;
  for (auto& [id, candidate] : workers) {
    const pb::WorkerRegistered& registration = candidate.state.registration();
    if (candidate.load >= registration.max_replicas()) continue;
    if (std::find(taken.begin(), taken.end(), id) != taken.end()) continue;
    if (!profile.empty() && registration.numerics_profile_hash() != profile) continue;
    if (std::find(registration.models().begin(), registration.models().end(),
                  session.request().model()) == registration.models().end()) {
      continue;
    }
    if (best == nullptr || candidate.load < best->load) {
      best = &candidate;
      chosen_id = id;
    }
  }
  return best;
}

}  // namespace

StatusOr<std::vector<pb::LogRecord>> PlanPlacement(const RocksStore& store,
                                                   size_t max_assignments) {
  max_assignments = std::min(max_assignments, kMaxPlacementsPerRound);
  std::vector<pb::LogRecord> plan;
  FP_ASSIGN_OR_RETURN(auto workers, ActiveWorkers(store));
  if (workers.empty()) return plan;
  DbStateReader reader(&store);
  std::unique_ptr<rocksdb::Iterator> it = store.NewIterator(kWaiting);
  for (it->SeekToFirst(); it->Valid() && plan.size() < max_assignments; it->Next()) {
    const std::string id(ToView(it->key()));
    FP_ASSIGN_OR_RETURN(std::optional<pb::SessionState> session,
                        reader.GetMessage<pb::SessionState>(kSessions, id));
    if (!session.has_value()) return DataLossError("waiting index names an unknown session");
    std::vector<std::string> taken;
    for (const pb::ReplicaState& replica : session->replicas()) {
      if (!replica.worker_id().empty()) taken.push_back(replica.worker_id());
    }
    for (uint32_t index = 0;
         index < static_cast<uint32_t>(session->replicas_size()) && plan.size() < max_assignments;
         ++index) {
      const pb::ReplicaState& replica = session->replicas(index);
      if (!replica.worker_id().empty()) continue;
      std::string worker_id;
      Candidate* candidate = Choose(workers, *session, taken, worker_id);
      if (candidate == nullptr) break;  // no worker fits this session now
      ++candidate->load;
      taken.push_back(worker_id);
      pb::Assign* assign = plan.emplace_back().mutable_assign();
      assign->set_session_id(id);
      assign->set_replica(index);
      assign->set_epoch(replica.epoch());
      assign->set_worker_id(worker_id);
      assign->set_attempt(replica.placement_attempts());
    }
  }
  FP_RETURN_IF_ERROR(FromRocks(it->status(), "scan waiting sessions"));
  return plan;
}

}  // namespace fp::supervisor
