// ClusterSim: a single-threaded, discrete-event simulation of a supervisor cluster against the
// in-memory log model, fully determined by one 64-bit seed. Spec: docs/supervisor.md,
// "Deterministic simulation".
//
// What runs: N supervisors (SimNode: the real Applier, CheckpointSigner and RocksDB state
// store each), the log model (LogModel: positions, idempotency keys, trim point, leader lease
// and fencing), a faulty network between them, and SimFleet's workload (workers, sessions,
// leaves, ticks, checkpoint requests). Every append, keepalive, campaign and trim is a message
// with a seeded delay that may be lost, duplicated (requests) or made late (delivered after later
// ones). A proposer whose append is not answered in time resends the same record under the same
// dedup key, never a new one; a worker whose supervisor crashed resends through another. Leader
// records (ticks, placements, deadlines, lost workers, checkpoint requests) and trims carry the
// leader's term and are fenced by the model; a leader counts itself leader until the send time of
// its last answered keepalive plus the lease TTL minus a margin (cluster/leader.h), and pauses
// (no keepalives) let its lease lapse. Supervisors crash at seeded times, losing what they
// applied since their last flush, and restart from disk.
//
// The workload advances in rounds: the leader, once nothing is in flight and it has applied the
// whole log, asks SimFleet for the next round's records and hands each to its proposer (the
// leader for leader records, the supervisor the worker talks to for the rest).
//
// Checks: cheap ones during the run (answers to one append agree, at most one supervisor leads
// at a time, equal ledger sizes at equal applied positions, a crash never loses flushed state,
// trim never passes a position some supervisor has not durably applied), and at the end
// (checker.h): every acknowledged record is in the log exactly once at its position, no dedup
// key is in the log twice, refused records are absent, no stale-term leader record follows a
// newer term's, and every supervisor, caught up, holds the same state and the same signed
// checkpoints. Liveness is reported apart from these: a workload that does not finish within
// max_rounds and max_time_ms is a stall (ClusterSimResult::stall), not a violation.
//
// Replay: the same options (seed included) give the same event trace, byte for byte, and the
// same final state, on the same build. SimFleet's std::shuffle is libstdc++'s; everything else
// draws through SimRandom, whose arithmetic is fixed here.
//
// Thread-safety: a simulation runs on the calling thread. Simulations of distinct seeds may run on
// distinct threads at once (each keeps its stores in DIR/sim-SEED); SimScratch's methods are
// const and safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "common/base/temp_dir.h"
#include "common/crypto/sha256.h"
#include "supervisor/sim/checker.h"
#include "supervisor/sim/log_model.h"
#include "supervisor/sim/sim_node.h"
#include "supervisor/testing/sim_fleet.h"

namespace fp::supervisor::sim {

inline constexpr int kMaxSimSupervisors = 7;
// Sends of one append before the simulation calls it a liveness failure.
inline constexpr uint32_t kMaxAppendAttempts = 200;
// Events per run: a bound on a broken run, far above what a healthy seed needs.
inline constexpr uint64_t kMaxSimEvents = 2'000'000;

struct ClusterSimOptions {
  uint64_t seed = 1;
  int supervisors = 3;  // 1..kMaxSimSupervisors
  // The supervisors' state directories go under this existing directory.
  std::string dir;
  // An empty state store (CreateStoreTemplate) to copy for each supervisor; empty: each creates
  // its own (slower: RocksDB writes and checks its options once per column family).
  std::string store_template;
  // The workload. The default is small but non-trivial: divergences, rollbacks, a lost worker,
  // R = 2 and R = 3 sessions, checkpoints.
  testing::SimOptions fleet = SmallFleet();
  uint64_t max_rounds = 100;  // a healthy seed needs about 12

  // Network (every message): delay in [min, max] ms; late messages get [late/2, late] more.
  uint32_t min_delay_ms = 1;
  uint32_t max_delay_ms = 15;
  uint32_t late_extra_ms = 400;
  double lose_request = 0.05;
  double lose_response = 0.05;
  double duplicate_request = 0.05;
  double late_message = 0.05;
  uint32_t retry_timeout_ms = 60;

  // Leadership (model of cluster/leader.h).
  uint32_t lease_ttl_ms = 300;
  uint32_t keepalive_every_ms = 100;  // ttl/3: one lost keepalive does not end a term
  uint32_t lease_margin_ms = 60;
  uint32_t campaign_every_ms = 50;
  uint32_t max_pauses = 2;  // leader pauses per run: no keepalives for 1..2 TTLs

  // Crashes: up to `max_crashes` per run at seeded times; restart after [min, max] ms.
  uint32_t max_crashes = 3;
  uint32_t restart_min_ms = 50;
  uint32_t restart_max_ms = 400;

  // Supervisors apply every 1..max ms, 1..max_apply_group records at a time, flush and publish
  // their applied position every flush_every_ms; the leader trims every trim_every_ms.
  uint32_t apply_every_max_ms = 12;
  uint32_t max_apply_group = 16;
  uint32_t flush_every_ms = 1000;
  uint32_t trim_every_ms = 700;
  // The workload must finish within this much simulated time.
  uint64_t max_time_ms = 120'000;

  ModelBug model_bug = ModelBug::kNone;
  NodeBug node_bug = NodeBug::kNone;  // planted in supervisor 1 only

  // Receives every trace line as it happens (null: lines are only hashed).
  std::function<void(std::string_view)> trace;

  static testing::SimOptions SmallFleet();
};

struct ClusterSimResult {
  std::vector<std::string> violations;  // safety: empty when every invariant held
  // Liveness: why the workload did not finish (every session verified or failed) in time; empty
  // when it did. Kept apart from the violations, so that a stall is not mistaken for corruption.
  std::string stall;
  Hash trace_hash{};  // SHA-256 over every trace line
  Hash state_hash{};  // SHA-256 over the log's history and supervisor 0's whole store
  bool workload_done = false;
  uint64_t events = 0;
  uint64_t rounds = 0;
  uint64_t end_ms = 0;
  uint64_t log_records = 0;
  uint64_t log_begin = 0;
  uint64_t appends_acked = 0;
  uint64_t appends_refused = 0;
  uint64_t appends_abandoned = 0;
  uint64_t resends = 0;
  uint64_t messages_lost = 0;
  uint64_t messages_duplicated = 0;
  uint64_t messages_late = 0;
  uint64_t crashes = 0;
  uint64_t terms = 0;
  uint64_t fenced = 0;             // leader writes the model refused for a stale term
  uint64_t divergences = 0;        // Divergence records in the final state
  uint64_t verified_sessions = 0;  // sessions verified in the final state

  bool safe() const { return violations.empty(); }
  bool ok() const { return violations.empty() && stall.empty(); }
  // "seed ...: N violation(s)", one line per violation, and the stall if any: for messages.
  std::string Summary(uint64_t seed) const;
};

// Scratch space for simulation runs: a fresh directory in memory (/dev/shm) when the machine has
// one, since RocksDB's file creation, fallocate and fsync cost several times more on disk; else
// under $TMPDIR. It holds the store template. Removed with everything in it on destruction.
class SimScratch {
 public:
  // Unavailable when no directory can be made; RocksDB's errors for the template. The caller
  // owns the result.
  static StatusOr<std::unique_ptr<SimScratch>> Create();

  // Default options for `seed`, with `dir` and `store_template` here.
  ClusterSimOptions Options(uint64_t seed) const;
  std::string path() const { return dir_->path().string(); }

 private:
  explicit SimScratch(std::unique_ptr<ScopedTempDir> dir) : dir_(std::move(dir)) {}
  std::unique_ptr<ScopedTempDir> dir_;  // removed with everything in it
};

// Runs one seed. The result holds the invariant violations; the Status is an error only when the
// simulation itself could not run (RocksDB failed, bad options: InvalidArgument).
StatusOr<ClusterSimResult> RunClusterSim(const ClusterSimOptions& options);

}  // namespace fp::supervisor::sim
