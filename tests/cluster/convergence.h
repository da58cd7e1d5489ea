// The cluster's guarantees, checked from outside through the HTTP API of every supervisor:
//
//   CheckpointWatcher  samples every supervisor's signed checkpoint while faults run. Each note
//                      must verify against that supervisor's own key (pinned at the start), a
//                      supervisor's checkpoint size never goes back, and no two checkpoints of one
//                      size have different roots, on one supervisor or across them (a fork).
//   CheckConvergence   after the faults are healed: every supervisor is ready and has applied the
//                      same log (equal /v1/cluster applied positions in one sample); every
//                      acknowledged session is present and verified on every supervisor with the
//                      same root, steps and ledger index; every write that was not acknowledged is
//                      present on all supervisors or on none; every supervisor reaches the same
//                      latest checkpoint (size and root); and each checkpoint seen during the run
//                      is a prefix of it, by a consistency proof checked here (common/merkle)
//                      against the roots the watcher saw; that checkpoint is served as one note
//                      by every supervisor, with a valid cosignature of each of them. Optionally
//                      the verified root and output of sampled sessions are compared with an
//                      independent single-process run
//                      (`fieldprint generate`).
//
// Violations are collected as sentences, never thrown or asserted, so a test and the long
// campaign report all of them.
//
// Thread-safety: CheckpointWatcher runs one thread of its own; its readers are safe from any
// thread. CheckConvergence runs on the caller's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto/sha256.h"
#include "common/tlog/note.h"
#include "tests/cluster/load_generator.h"
#include "tests/cluster/supervisor_cluster.h"

namespace fp::cluster_test {

// Distinct checkpoint sizes the watcher keeps (older sizes beyond it are forgotten, oldest first).
inline constexpr size_t kMaxWatchedCheckpoints = 100'000;

class CheckpointWatcher {
 public:
  // `cluster` is borrowed and must outlive the watcher; its supervisors' verifier keys are read
  // now (GET /v1/checkpoint/key). Errors from that read.
  static StatusOr<std::unique_ptr<CheckpointWatcher>> Start(const SupervisorCluster& cluster,
                                                            std::chrono::milliseconds interval);
  ~CheckpointWatcher();  // Stop()
  CheckpointWatcher(const CheckpointWatcher&) = delete;
  CheckpointWatcher& operator=(const CheckpointWatcher&) = delete;

  void Stop();
  // One more sample of every supervisor now (CheckConvergence's final look).
  void SampleOnce();

  // Every size seen, with its root.
  std::map<uint64_t, Hash> Roots() const;
  std::vector<std::string> Violations() const;
  uint64_t samples() const { return samples_.load(); }
  const std::vector<tlog::NoteVerifier>& keys() const { return keys_; }

 private:
  CheckpointWatcher(const SupervisorCluster& cluster, std::vector<tlog::NoteVerifier> keys)
      : cluster_(cluster), keys_(std::move(keys)), last_size_(keys_.size(), 0) {}
  void Record(size_t supervisor, const std::string& note);

  const SupervisorCluster& cluster_;  // borrowed
  const std::vector<tlog::NoteVerifier> keys_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> samples_{0};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::map<uint64_t, std::pair<size_t, Hash>> roots_;  // guarded; size -> (first seen on, root)
  std::vector<uint64_t> last_size_;                    // guarded; per supervisor
  std::vector<std::string> violations_;                // guarded
};

struct ConvergenceOptions {
  std::chrono::milliseconds timeout{60'000};  // for the whole check
  // Sessions whose root and output are compared with `fieldprint generate` (0: none).
  size_t reference_samples = 0;
};

struct ConvergenceReport {
  size_t acknowledged = 0;            // acknowledged writes checked
  size_t indeterminate = 0;           // writes neither acknowledged nor rejected
  size_t indeterminate_admitted = 0;  // ... that turned out present (on every supervisor)
  size_t rejected = 0;                // refused writes (should be none)
  size_t session_reads = 0;           // GETs of a session that were compared
  size_t reference_checked = 0;       // sessions compared with `fieldprint generate`
  size_t checkpoints_observed = 0;    // distinct checkpoint sizes seen during the run
  size_t consistency_proofs = 0;      // proofs checked against the final checkpoint
  uint64_t final_checkpoint_size = 0;
  size_t cosigners = 0;           // cosignatures on the final checkpoint, checked
  std::vector<uint64_t> applied;  // every supervisor's applied position, in one sample
  std::vector<std::string> violations;
  bool ok() const { return violations.empty(); }
};

// The check described at the top. `writes` are the load generator's records; `watcher` the one
// that ran during the faults (its violations are included). Never fails: problems, including a
// supervisor that does not answer, are violations.
ConvergenceReport CheckConvergence(const SupervisorCluster& cluster,
                                   const std::vector<WriteRecord>& writes,
                                   CheckpointWatcher& watcher, const ConvergenceOptions& options);

}  // namespace fp::cluster_test
