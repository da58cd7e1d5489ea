// Streamer: the worker's streaming thread (DESIGN.md section 5, step 3). It takes the generation
// loop's StreamItems from a bounded queue (the digest queue), keeps one ReplicaStream per replica
// (leaves, session tree, W/T batching), stores every new LeafBatch in the durable Outbox (synced
// before it is sent) and sends it on the supervisor connection. Acks (straight from the
// connection) remove batches from the outbox; Commits (through the loop, in order with the
// replica's other items) raise the verified prefix and are checked against the worker's tree.
//
// Sending, in order per replica: every outbox batch not yet sent on the current connection is in
// `unsent_`, walked in key order (for one replica: epoch, then first step) and sent while the
// connection's send queue has room; a new connection puts every pending batch back in it. A
// failed send means the connection is being closed; nothing more goes out on it, and the next
// connection resends from the start of the outbox, so a batch is never sent after a later batch
// of the same replica on one connection (the supervisor needs first_step == its next step).
//
// Backpressure: while the outbox is full (acks stopped coming) the thread stops taking items, so
// the queue fills and the generation loop blocks in Push.
//
// Thread-safety: Push, OnAck, OnConnected, OnDisconnected and the accessors are safe
// from any thread; Start and Stop from the owning thread. Streams, the outbox and sending run on
// the streaming thread only.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <variant>
#include <vector>

#include "common/wire/envelope.h"
#include "node/worker/fault_plan.h"
#include "node/worker/orders.h"
#include "node/worker/outbox.h"
#include "node/worker/replica_stream.h"
#include "node/worker/worker_metrics.h"

namespace fp::node::worker {

// Items the generation loop may queue ahead of the streaming thread (the digest queue bound).
inline constexpr size_t kMaxStreamQueueItems = 1 << 16;
// Acks waiting for the streaming thread; more are dropped (a lost Ack means a harmless resend,
// acknowledged again).
inline constexpr size_t kMaxPendingAcks = 1 << 16;
// Items taken per round, so acks and sends interleave with a long queue.
inline constexpr size_t kMaxItemsPerRound = 4096;
// Send-queue frames left free for heartbeats and errors.
inline constexpr size_t kReservedSendFrames = 16;
// Wait before retrying a send queue that was full or an outbox write that failed.
inline constexpr std::chrono::milliseconds kSendRetryDelay{5};
inline constexpr std::chrono::milliseconds kOutboxRetryDelay{1000};

// The supervisor connection as the streaming thread sees it (implemented by SupervisorClient).
class LeafTransport {
 public:
  virtual ~LeafTransport() = default;
  // Queues `envelope` on the accepted connection `generation`. Unavailable if that connection is
  // no longer open and accepted; any error means nothing more should be sent on it.
  virtual Status Send(uint64_t generation, const wire::pb::Envelope& envelope) = 0;
  // Frames that connection `generation` can still queue (0 when it is not the open one).
  virtual size_t Room(uint64_t generation) const = 0;
};

struct StreamerOptions {
  StreamPolicy policy;
  size_t max_queue_items = kMaxStreamQueueItems;  // 1..kMaxStreamQueueItems
  std::optional<FaultPlan> fault;                 // only wrong-digest plans act here
};

class Streamer : public StreamSink {
 public:
  // Takes the outbox (owned); `transport` and `metrics` are borrowed and must outlive the
  // streamer. FP_CHECKs the options.
  Streamer(const StreamerOptions& options, std::unique_ptr<Outbox> outbox, LeafTransport* transport,
           const WorkerMetrics* metrics);
  ~Streamer();
  Streamer(const Streamer&) = delete;
  Streamer& operator=(const Streamer&) = delete;

  void Start();
  // Closes the queue (Push returns false from now on), handles what is queued, sends every
  // sendable leaf without waiting for T, waits up to `drain_timeout` for the acks, and joins.
  // Idempotent.
  void Stop(std::chrono::milliseconds drain_timeout);

  // StreamSink: blocks while max_queue_items items wait.
  bool Push(StreamItem item) override;

  // From the supervisor connection (any thread).
  void OnAck(const wire::pb::Ack& ack);
  // A connection was accepted (generation > 0, increasing) or lost.
  void OnConnected(uint64_t generation);
  void OnDisconnected();

  // Unacknowledged batches in the outbox.
  size_t outbox_batches() const { return outbox_batches_.load(); }

 private:
  void Run();
  // Waits for work or the next deadline, then moves queued items and events into the arguments.
  // Returns false when the thread should exit.
  // Waits for work, the next deadline or the end of a drain, then moves queued events and (unless
  // the outbox is full) items into the arguments. Returns false when the thread should exit.
  bool Wait(std::vector<StreamItem>* items, std::vector<wire::pb::Ack>* acks, uint64_t* generation,
            bool* closing);
  // When a batch is due, a send or an outbox write should be retried (min() for "now").
  std::optional<StreamClock::time_point> NextDeadline(const StreamPolicy& policy) const;
  // The policy while draining: every sendable leaf goes at once.
  StreamPolicy DrainPolicy() const;
  bool HasSendable(const StreamPolicy& policy) const;
  void Handle(StepRecord record);
  void Handle(const ReplicaStarted& started);
  void Handle(const ReplicaRolledBack& rolled_back);
  void Handle(const ReplicaStopped& stopped);
  void Handle(const ErrorReport& report);
  void Handle(const CommitSeen& commit);
  void Handle(const wire::pb::Ack& ack);
  void CheckCommit(ReplicaStream& stream);
  // Drops staged, unsent and outbox batches of a replica (all epochs below `below_epoch`).
  void DropBatches(const SessionId& session, uint32_t replica, uint64_t below_epoch);
  void Flush(StreamClock::time_point now, const StreamPolicy& policy);
  void SendUnsent();
  void SendError(const Status& status, const SessionId& session);
  void UpdateOutboxGauge();

  const StreamerOptions options_;
  LeafTransport* const transport_;      // borrowed
  const WorkerMetrics* const metrics_;  // borrowed

  // Streaming thread only.
  std::unique_ptr<Outbox> outbox_;
  std::map<SessionId, ReplicaStream> streams_;
  std::map<SessionId, uint64_t> ordinals_;
  std::map<SessionId, std::pair<uint64_t, Hash>> pending_commits_;  // waiting for the tree
  std::set<uint64_t> wrong_digest_fired_;
  std::vector<wire::pb::LeafBatch> staged_;  // made, not yet in the outbox
  std::set<BatchKey> unsent_;                // in the outbox, not sent on this connection
  uint64_t send_generation_ = 0;             // connection unsent_ refers to; 0: none
  uint64_t failed_generation_ = 0;           // a send failed on it: wait for the next one
  bool outbox_full_ = false;
  std::optional<StreamClock::time_point> outbox_retry_at_;
  std::optional<StreamClock::time_point> send_retry_at_;  // the send queue was full

  mutable std::mutex mutex_;
  std::condition_variable wake_;              // the streaming thread waits on it
  std::condition_variable space_;             // producers wait on it while the queue is full
  std::deque<StreamItem> items_;              // guarded by mutex_
  std::deque<wire::pb::Ack> acks_;            // guarded by mutex_
  uint64_t generation_ = 0;                   // guarded by mutex_; the accepted connection, 0: none
  bool closing_ = false;                      // guarded by mutex_
  StreamClock::time_point drain_deadline_{};  // guarded by mutex_
  std::atomic<size_t> outbox_batches_{0};
  std::thread thread_;
};

}  // namespace fp::node::worker
