// GenerationLoop: the worker's generation thread (DESIGN.md section 5, steps 2 and 6). It owns
// the engines (one per served model; an Engine is not thread-safe, so no other thread touches
// them), takes orders from a bounded inbox, steps the engines and hands every step's
// (session, replica, epoch, step, token, state digest) to the streaming thread through a bounded
// StreamSink. It never hashes trees and never does I/O: leaves, trees, batches, the outbox and
// the network all live on the streaming and I/O threads.
//
// Orders:
//   Assign    a new replica is submitted to its model's engine; an Assign for a replica the loop
//             already runs is a resend (the supervisor repeats pending work after every
//             reconnect) and is ignored, unless it carries a higher epoch: then the replica was
//             placed here anew and restarts from step 0 (the engine is deterministic, so the
//             regenerated steps reproduce the verified prefix).
//   Rollback  the engine truncates the session to `to_step` steps (keep-cache or rebuild) and the
//             replica takes the new epoch; a repeated order (same epoch, already applied) is
//             ignored.
//   Quarantine  every replica stops and later Assigns are refused.
//   Commit    (coalesced per session) raises the verified prefix and is passed on to the
//             streaming thread; once the session is verified the replica is dropped. Orders are
//             applied before the Commits taken with them, so a Commit that the supervisor sent
//             right after an Assign finds its replica.
//
// Backpressure: a replica may run at most max_unverified_steps steps past its verified prefix.
// The engine has no per-session pause: every Step advances all running sessions together. So
// the loop (1) does not step an engine at all while every session it could advance is at its
// limit (it waits for a Commit or an order instead of spinning), and (2) when it steps for the
// sake of the others, it takes a blocked session's extra step back with Engine::Truncate
// (keep-cache: only that row is recomputed later, bit for bit the same). Pausing the whole engine
// whenever one session is blocked would be simpler, but two workers whose sessions wait on each
// other's replicas could then block each other forever. A blocked session's final step is kept
// instead of taken back (taking back a finished session re-prefills it); the streaming thread
// holds that leaf until the window allows it.
//
// Engines cannot drop a running session, so a replica stopped while it still generates
// (quarantine, or its session verified without it) is "abandoned": it runs to its end with its
// steps discarded, then is removed.
//
// Thread-safety: Post, Commit and the accessors are safe from any thread; Start and Stop from
// the owning thread. Everything else runs on the loop's thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/base/status.h"
#include "node/worker/orders.h"
#include "node/worker/worker_metrics.h"
#include "node/worker/worker_models.h"

namespace fp::node::worker {

// Orders waiting for the loop; Post refuses more.
inline constexpr size_t kMaxPendingOrders = 4096;
// Sessions with a Commit waiting for the loop; later ones are dropped (the next Commit of that
// session carries the newer prefix anyway).
inline constexpr size_t kMaxPendingCommits = 1 << 16;
// Consecutive failed engine steps before the loop gives up on that engine.
inline constexpr int kMaxConsecutiveStepErrors = 3;
// Longest idle wait between checks when nothing can be stepped.
inline constexpr std::chrono::milliseconds kMaxIdleWait{100};

struct LoopOptions {
  uint32_t max_replicas = 32;  // replicas generating at once (abandoned ones excluded)
};

class GenerationLoop {
 public:
  // Takes the slots (owned); `sink` and `metrics` are borrowed and must outlive the loop.
  // FP_CHECKs that there is at least one slot and max_replicas >= 1.
  GenerationLoop(std::vector<std::unique_ptr<ModelSlot>> slots, const LoopOptions& options,
                 StreamSink* sink, const WorkerMetrics* metrics);
  ~GenerationLoop();
  GenerationLoop(const GenerationLoop&) = delete;
  GenerationLoop& operator=(const GenerationLoop&) = delete;

  void Start();
  // Stops the thread after its current step and joins it. The sink must be closed first if the
  // loop may be blocked in Push. Idempotent.
  void Stop();

  // Queues an order. ResourceExhausted when kMaxPendingOrders are waiting; FailedPrecondition
  // once stopped.
  Status Post(Order order);
  // Records a Commit: the session's verified prefix, its root, and whether the whole session is
  // verified. Commits of one session coalesce to the longest prefix.
  void Commit(const SessionId& session, uint64_t verified_steps, const Hash& verified_root,
              bool session_verified);

  // Replicas generating now (not abandoned, not finished), for heartbeats.
  uint32_t active_replicas() const { return active_replicas_.load(); }

 private:
  struct Replica {
    size_t slot = 0;
    uint64_t ordinal = 0;
    uint32_t replica = 0;
    uint64_t epoch = 0;
    bool rolled_back_this_epoch = false;
    uint32_t max_unverified_steps = 1;
    uint64_t verified_steps = 0;
    uint64_t produced = 0;  // steps kept so far (the engine's step count)
    bool finished = false;
    bool abandoned = false;
    bool stepped_last = false;  // produced or paused a step in the latest Step of its engine
  };
  struct CommitUpdate {
    uint64_t verified_steps = 0;
    Hash verified_root{};
    bool session_verified = false;
  };

  void Run();
  // Waits (bounded) for inbox content unless `busy`; moves the inbox out. False once stopping.
  bool TakeInbox(bool busy, std::deque<Order>* orders, std::map<SessionId, CommitUpdate>* commits);
  void Apply(AssignOrder order);
  void Apply(const RollbackOrder& order);
  void Apply(const QuarantineOrder& order);
  void Apply(const AbortOrder& order);
  void Apply(const ReinstateOrder& order);
  void ApplyCommit(const SessionId& session, const CommitUpdate& update);
  void Restart(const SessionId& session, Replica& replica, const AssignOrder& order);
  // Stops generating a replica: removes it if finished, else abandons it.
  void StopReplica(const SessionId& session, Replica& replica);
  bool Blocked(const Replica& replica) const;
  // True if stepping slot `slot` can make progress (see the file comment).
  bool Steppable(size_t slot);
  void StepSlot(size_t slot);
  void HandleOutput(size_t slot, const StepOutput& output);
  void HandleStepError(size_t slot, const Status& status);
  void Report(const SessionId& session, Status status);
  void UpdateGauges();

  std::vector<std::unique_ptr<ModelSlot>> slots_;  // loop thread only after Start
  const LoopOptions options_;
  StreamSink* const sink_;              // borrowed
  const WorkerMetrics* const metrics_;  // borrowed

  // Loop thread only.
  std::map<SessionId, Replica> replicas_;
  std::vector<bool> admission_futile_;  // per slot: a step admitted nothing; wait for a change
  std::vector<int> step_errors_;        // per slot: consecutive failed steps
  std::vector<bool> broken_;            // per slot: gave up after kMaxConsecutiveStepErrors
  uint64_t next_ordinal_ = 0;
  bool quarantined_ = false;
  std::string quarantine_reason_;
  std::vector<StepOutput> outputs_;  // reused per step

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Order> orders_;                   // guarded by mutex_
  std::map<SessionId, CommitUpdate> commits_;  // guarded by mutex_
  bool stopping_ = false;                      // guarded by mutex_
  std::atomic<uint32_t> active_replicas_{0};
  std::thread thread_;
};

}  // namespace fp::node::worker
