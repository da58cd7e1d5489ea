// Streamer; see streamer.h.
#include "node/worker/streamer.h"

#include <algorithm>

#include "common/base/log.h"

namespace fp::node::worker {
namespace {

constexpr char kComponent[] = "worker.stream";

std::string Short(const SessionId& id) { return SessionIdToHex(id).substr(0, 12); }

SessionId SessionFromWire(const std::string& bytes) {
  FP_CHECK(bytes.size() == kSessionIdSize);  // ValidateEnvelope guarantees it
  SessionId id;
  std::copy_n(bytes.begin(), kSessionIdSize, id.begin());
  return id;
}

bool SameReplica(const BatchKey& key, const SessionId& session, uint32_t replica) {
  return key.session == session && key.replica == replica;
}

std::optional<StreamClock::time_point> Earliest(std::optional<StreamClock::time_point> a,
                                                std::optional<StreamClock::time_point> b) {
  if (!a.has_value()) return b;
  if (!b.has_value()) return a;
  return std::min(*a, *b);
}

}  // namespace

Streamer::Streamer(const StreamerOptions& options, std::unique_ptr<Outbox> outbox,
                   LeafTransport* transport, const WorkerMetrics* metrics)
    : options_(options), transport_(transport), metrics_(metrics), outbox_(std::move(outbox)) {
  FP_CHECK(options_.policy.window_steps >= 1 &&
           options_.policy.window_steps <= wire::kMaxLeafBatchSteps);
  FP_CHECK(options_.max_queue_items >= 1 && options_.max_queue_items <= kMaxStreamQueueItems);
  FP_CHECK(outbox_ != nullptr && transport_ != nullptr && metrics_ != nullptr);
  UpdateOutboxGauge();
}

Streamer::~Streamer() { Stop(std::chrono::milliseconds(0)); }

void Streamer::Start() {
  FP_CHECK(!thread_.joinable());
  thread_ = std::thread([this] { Run(); });
}

void Streamer::Stop(std::chrono::milliseconds drain_timeout) {
  {
    std::lock_guard lock(mutex_);
    if (!closing_) {
      closing_ = true;
      drain_deadline_ = StreamClock::now() + drain_timeout;
    }
  }
  space_.notify_all();
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Streamer::Push(StreamItem item) {
  std::unique_lock lock(mutex_);
  space_.wait(lock, [&] { return closing_ || items_.size() < options_.max_queue_items; });
  if (closing_) return false;
  // The streaming thread sleeps with items queued only while the outbox is full (an Ack wakes
  // it), so only the first item needs a wake-up: the thread takes every queued item per round.
  const bool was_empty = items_.empty();
  items_.push_back(std::move(item));
  metrics_->digest_queue_depth->Set(static_cast<double>(items_.size()));
  lock.unlock();
  if (was_empty) wake_.notify_one();
  return true;
}

void Streamer::OnAck(const wire::pb::Ack& ack) {
  {
    std::lock_guard lock(mutex_);
    if (acks_.size() >= kMaxPendingAcks) return;  // the batch is resent and acked again
    acks_.push_back(ack);
  }
  wake_.notify_one();
}

void Streamer::OnConnected(uint64_t generation) {
  FP_CHECK(generation > 0);
  {
    std::lock_guard lock(mutex_);
    generation_ = generation;
  }
  wake_.notify_one();
}

void Streamer::OnDisconnected() {
  {
    std::lock_guard lock(mutex_);
    generation_ = 0;
  }
  wake_.notify_one();
}

void Streamer::Run() {
  std::vector<StreamItem> items;
  std::vector<wire::pb::Ack> acks;
  uint64_t generation = 0;
  bool closing = false;
  while (Wait(&items, &acks, &generation, &closing)) {
    for (const wire::pb::Ack& ack : acks) Handle(ack);
    for (StreamItem& item : items) {
      std::visit([this](auto&& value) { Handle(std::move(value)); }, std::move(item));
    }
    items.clear();
    acks.clear();
    if (generation != send_generation_) {
      // A new connection (or none): everything in the outbox goes out again, in key order.
      send_generation_ = generation;
      send_retry_at_.reset();
      unsent_.clear();
      if (generation != 0) {
        for (const wire::pb::LeafBatch* batch : outbox_->Pending()) unsent_.insert(KeyOf(*batch));
      }
    }
    Flush(StreamClock::now(), closing ? DrainPolicy() : options_.policy);
    SendUnsent();
  }
}

StreamPolicy Streamer::DrainPolicy() const {
  return StreamPolicy{options_.policy.window_steps, std::chrono::milliseconds(0)};
}

bool Streamer::HasSendable(const StreamPolicy& policy) const {
  return std::any_of(streams_.begin(), streams_.end(),
                     [&](const auto& entry) { return entry.second.NextDue(policy).has_value(); });
}

std::optional<StreamClock::time_point> Streamer::NextDeadline(const StreamPolicy& policy) const {
  std::optional<StreamClock::time_point> deadline = send_retry_at_;
  if (outbox_retry_at_.has_value()) return Earliest(deadline, outbox_retry_at_);
  if (outbox_full_) return deadline;  // an Ack wakes the thread
  if (!staged_.empty()) return StreamClock::time_point::min();
  for (const auto& [id, stream] : streams_) deadline = Earliest(deadline, stream.NextDue(policy));
  return deadline;
}

bool Streamer::Wait(std::vector<StreamItem>* items, std::vector<wire::pb::Ack>* acks,
                    uint64_t* generation, bool* closing) {
  std::unique_lock lock(mutex_);
  while (true) {
    const StreamClock::time_point now = StreamClock::now();
    const bool take_items = !items_.empty() && !outbox_full_;
    if (!acks_.empty() || take_items || generation_ != send_generation_) break;
    const StreamPolicy policy = closing_ ? DrainPolicy() : options_.policy;
    if (closing_) {
      const bool drained =
          items_.empty() && staged_.empty() && !HasSendable(policy) && outbox_->batches() == 0;
      if (drained || now >= drain_deadline_) return false;
    }
    std::optional<StreamClock::time_point> deadline = NextDeadline(policy);
    if (closing_) deadline = Earliest(deadline, drain_deadline_);
    if (deadline.has_value() && *deadline <= now) break;
    if (deadline.has_value()) {
      wake_.wait_until(lock, *deadline);
    } else {
      wake_.wait(lock);
    }
  }
  for (wire::pb::Ack& ack : acks_) acks->push_back(std::move(ack));
  acks_.clear();
  if (!outbox_full_) {
    const size_t n = std::min(items_.size(), kMaxItemsPerRound);
    for (size_t i = 0; i < n; ++i) {
      items->push_back(std::move(items_.front()));
      items_.pop_front();
    }
    metrics_->digest_queue_depth->Set(static_cast<double>(items_.size()));
  }
  *generation = generation_;
  *closing = closing_;
  lock.unlock();
  space_.notify_all();
  return true;
}

void Streamer::Handle(StepRecord record) {
  auto it = streams_.find(record.session);
  FP_CHECK(it != streams_.end());  // the loop starts a replica before its steps
  ReplicaStream& stream = it->second;
  FP_CHECK(record.replica == stream.replica() && record.epoch == stream.epoch());
  const std::optional<FaultPlan>& fault = options_.fault;
  if (fault.has_value() && fault->kind == FaultKind::kWrongDigest && fault->step == record.step) {
    const uint64_t ordinal = ordinals_.at(record.session);
    if (fault->Targets(ordinal) && wrong_digest_fired_.insert(ordinal).second) {
      record.state_digest[static_cast<size_t>(fault->bit / 8)] ^=
          static_cast<uint8_t>(1 << (fault->bit % 8));
      LogWarn(kComponent, "fault injected: wrong digest",
              {{"session", ordinal}, {"step", record.step}, {"bit", fault->bit}});
    }
  }
  stream.AddStep(record.step, record.token, record.state_digest, record.last, StreamClock::now());
  CheckCommit(stream);
}

void Streamer::Handle(const ReplicaStarted& started) {
  uint64_t send_from = 0;
  const std::optional<ReplicaCursor> cursor = outbox_->Cursor(started.session, started.replica);
  if (cursor.has_value() && cursor->epoch == started.epoch) {
    // Restarted mid-session: the supervisor has the steps before the cursor.
    send_from = cursor->next_step;
    LogInfo(kComponent, "resuming a replica from the outbox cursor",
            {{"session", Short(started.session)},
             {"replica", started.replica},
             {"epoch", started.epoch},
             {"send_from", send_from}});
  }
  streams_.erase(started.session);
  streams_.emplace(started.session,
                   ReplicaStream(started.session, started.replica, started.epoch, send_from,
                                 started.max_unverified_steps, started.verified_steps));
  ordinals_[started.session] = started.ordinal;
  pending_commits_.erase(started.session);
}

void Streamer::Handle(const ReplicaRolledBack& rolled_back) {
  auto it = streams_.find(rolled_back.session);
  if (it == streams_.end()) return;
  it->second.Rollback(rolled_back.new_epoch, rolled_back.truncate_to, rolled_back.send_from);
  // Batches of earlier epochs are obsolete: the supervisor has every step before the divergence
  // and refuses stale epochs.
  DropBatches(rolled_back.session, rolled_back.replica, rolled_back.new_epoch);
}

void Streamer::Handle(const ReplicaStopped& stopped) {
  streams_.erase(stopped.session);
  ordinals_.erase(stopped.session);
  pending_commits_.erase(stopped.session);
  DropBatches(stopped.session, stopped.replica, UINT64_MAX);
  if (Status forgotten = outbox_->Forget(stopped.session, stopped.replica); !forgotten.ok()) {
    LogError(kComponent, "outbox write failed", {{"status", forgotten}});
  }
  UpdateOutboxGauge();
}

void Streamer::Handle(const ErrorReport& report) { SendError(report.status, report.session); }

void Streamer::Handle(const wire::pb::Ack& ack) {
  const BatchKey key{SessionFromWire(ack.session_id()), ack.replica(), ack.epoch(),
                     ack.first_step()};
  if (outbox_->Find(key) == nullptr) return;  // a duplicate, or the replica was dropped
  if (Status acked = outbox_->Ack(key); !acked.ok()) {
    LogError(kComponent, "outbox write failed", {{"status", acked}});
    return;
  }
  metrics_->batches_acknowledged->Increment();
  unsent_.erase(key);
  outbox_full_ = false;
  UpdateOutboxGauge();
}

void Streamer::Handle(const CommitSeen& commit) {
  auto it = streams_.find(commit.session);
  if (it == streams_.end()) return;
  it->second.SetVerified(commit.verified_steps);
  pending_commits_[commit.session] = {commit.verified_steps, commit.verified_root};
  CheckCommit(it->second);
}

void Streamer::CheckCommit(ReplicaStream& stream) {
  auto it = pending_commits_.find(stream.session());
  if (it == pending_commits_.end()) return;
  const auto [steps, root] = it->second;
  const CommitCheck check = stream.CheckCommit(steps, root);
  if (check == CommitCheck::kPending) return;
  pending_commits_.erase(it);
  if (check == CommitCheck::kMatch) return;
  metrics_->commit_mismatches->Increment();
  LogError(kComponent, "the verified root differs from this worker's session tree",
           {{"session", Short(stream.session())}, {"steps", steps}});
  SendError(DataLossError("verified root over " + std::to_string(steps) +
                          " steps differs from this worker's session tree"),
            stream.session());
}

void Streamer::DropBatches(const SessionId& session, uint32_t replica, uint64_t below_epoch) {
  std::erase_if(staged_, [&](const wire::pb::LeafBatch& batch) {
    const BatchKey key = KeyOf(batch);
    return SameReplica(key, session, replica) && key.epoch < below_epoch;
  });
  std::vector<BatchKey> obsolete;
  for (const wire::pb::LeafBatch* batch : outbox_->Pending()) {
    const BatchKey key = KeyOf(*batch);
    if (SameReplica(key, session, replica) && key.epoch < below_epoch) obsolete.push_back(key);
  }
  for (const BatchKey& key : obsolete) {
    unsent_.erase(key);
    if (Status acked = outbox_->Ack(key); !acked.ok()) {
      LogError(kComponent, "outbox write failed", {{"status", acked}});
    }
  }
  outbox_full_ = false;
  UpdateOutboxGauge();
}

void Streamer::Flush(StreamClock::time_point now, const StreamPolicy& policy) {
  if (outbox_retry_at_.has_value() && now < *outbox_retry_at_) return;
  outbox_retry_at_.reset();
  if (staged_.empty()) {
    for (auto& [id, stream] : streams_) {
      for (wire::pb::LeafBatch& batch : stream.TakeDue(now, policy)) {
        staged_.push_back(std::move(batch));
      }
    }
  }
  if (staged_.empty()) return;
  Status put = outbox_->Put(staged_);
  if (!put.ok()) {
    if (put.code() == StatusCode::kResourceExhausted) {
      outbox_full_ = true;  // until an Ack makes room
    } else {
      LogError(kComponent, "outbox write failed; retrying", {{"status", put}});
      outbox_retry_at_ = now + kOutboxRetryDelay;
    }
    return;
  }
  for (const wire::pb::LeafBatch& batch : staged_) unsent_.insert(KeyOf(batch));
  staged_.clear();
  UpdateOutboxGauge();
}

void Streamer::SendUnsent() {
  if (send_generation_ == 0 || send_generation_ == failed_generation_) return;
  if (send_retry_at_.has_value() && StreamClock::now() < *send_retry_at_) return;
  send_retry_at_.reset();
  size_t room = transport_->Room(send_generation_);
  for (auto it = unsent_.begin(); it != unsent_.end();) {
    if (room <= kReservedSendFrames) {
      send_retry_at_ = StreamClock::now() + kSendRetryDelay;
      return;
    }
    const wire::pb::LeafBatch* batch = outbox_->Find(*it);
    if (batch == nullptr) {
      it = unsent_.erase(it);
      continue;
    }
    wire::pb::Envelope envelope;
    *envelope.mutable_leaf_batch() = *batch;
    if (Status sent = transport_->Send(send_generation_, envelope); !sent.ok()) {
      LogInfo(kComponent, "send failed; the outbox is resent after the next connection",
              {{"status", sent}});
      failed_generation_ = send_generation_;
      return;
    }
    metrics_->batches_sent->Increment();
    --room;
    it = unsent_.erase(it);
  }
}

void Streamer::SendError(const Status& status, const SessionId& session) {
  if (send_generation_ == 0 || send_generation_ == failed_generation_ ||
      transport_->Room(send_generation_) == 0) {
    LogWarn(kComponent, "error not reported: no connection",
            {{"session", Short(session)}, {"status", status}});
    return;
  }
  const wire::pb::Envelope envelope = wire::MakeErrorEnvelope(status, session);
  if (!transport_->Send(send_generation_, envelope).ok()) failed_generation_ = send_generation_;
}

void Streamer::UpdateOutboxGauge() {
  outbox_batches_.store(outbox_->batches());
  metrics_->outbox_batches->Set(static_cast<double>(outbox_->batches()));
}

}  // namespace fp::node::worker
