// The messages the worker's threads pass to each other (DESIGN.md section 5, steps 2-3 and 6):
//   supervisor client (I/O thread) -> generation loop: Order (Assign, Rollback, Quarantine,
//   Abort, Reinstate);
//   generation loop -> streaming thread: StreamItem (one step's token and digest, a change in a
//   replica's life, or a Commit), through a StreamSink, in the order the loop produced them.
//
// Thread-safety: value types; each is handed over by moving it into a queue.
#pragma once

#include <cstdint>
#include <string>
#include <variant>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "common/leaf/session_id.h"
#include "node/engine/engine.h"

namespace fp::node::worker {

// Run one replica of a session (a validated wire Assign).
struct AssignOrder {
  size_t model_index = 0;  // into the worker's model catalog
  SessionRequest request;
  uint32_t replica = 0;
  uint64_t epoch = 0;
  uint32_t max_unverified_steps = 1;
  // Steps the supervisor has already verified (the replay tokens of a re-placed replica).
  uint64_t verified_steps = 0;
};

struct RollbackOrder {
  SessionId session{};
  uint32_t replica = 0;
  uint64_t to_step = 0;
  uint64_t new_epoch = 0;
  RollbackMode mode = RollbackMode::kKeepCache;
};

struct QuarantineOrder {
  std::string reason;
};

// Stop one session's replica: the supervisor failed the session (Error{ABORTED, session}), so its
// leaves will never be compared.
struct AbortOrder {
  SessionId session{};
  std::string reason;
};

// A supervisor accepted this worker's registration: whatever quarantine it had ordered is over
// (a supervisor refuses the registration of a worker its state holds quarantined, so an accepted
// one is that state's word; an operator's release closes the connection to bring this about).
struct ReinstateOrder {
  std::string supervisor_id;
};

using Order = std::variant<AssignOrder, RollbackOrder, QuarantineOrder, AbortOrder, ReinstateOrder>;

// One generated step of a replica.
struct StepRecord {
  SessionId session{};
  uint32_t replica = 0;
  uint64_t epoch = 0;
  uint64_t step = 0;
  uint32_t token = 0;
  Hash state_digest{};
  bool last = false;  // the replica's final step
};

// The loop took a new replica (or one it had dropped) into its engine.
struct ReplicaStarted {
  SessionId session{};
  uint32_t replica = 0;
  uint64_t epoch = 0;
  uint64_t ordinal = 0;  // the session's number on this worker process (fault targeting)
  uint32_t max_unverified_steps = 1;
  uint64_t verified_steps = 0;
};

// The loop cut the replica back to `truncate_to` steps; later steps carry `new_epoch` and the
// supervisor expects them from `send_from` on.
struct ReplicaRolledBack {
  SessionId session{};
  uint32_t replica = 0;
  uint64_t new_epoch = 0;
  uint64_t truncate_to = 0;
  uint64_t send_from = 0;
};

// The loop stopped generating the replica (its session is verified, the worker is quarantined,
// or it failed); its leaves are no longer needed.
struct ReplicaStopped {
  SessionId session{};
  uint32_t replica = 0;
};

// A Commit the loop applied to a replica it runs: the verified prefix and its root, for the
// streaming thread's window and root check. It travels through the loop so that it always
// follows the ReplicaStarted of its replica.
struct CommitSeen {
  SessionId session{};
  uint64_t verified_steps = 0;
  Hash verified_root{};
};

// An error the supervisor should hear about (an Assign the engine refused, a failed engine).
struct ErrorReport {
  SessionId session{};
  Status status;  // not OK
};

using StreamItem = std::variant<StepRecord, ReplicaStarted, ReplicaRolledBack, ReplicaStopped,
                                CommitSeen, ErrorReport>;

// Where the generation loop puts what it produced.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // Queues `item`, blocking while the queue is full (backpressure on the generation loop).
  // Returns false, dropping the item, once the sink is shutting down.
  virtual bool Push(StreamItem item) = 0;
};

}  // namespace fp::node::worker
