// BenchWorker and BenchFleet; see bench_worker.h.
#include "supervisor/bench/bench_worker.h"

#include <fmt/format.h>
#include <pthread.h>

#include "common/base/bytes.h"
#include "common/leaf/step_leaf.h"
#include "common/wire/tls.h"

namespace fp::supervisor {
namespace {

using Clock = std::chrono::steady_clock;

std::string TaskKey(const std::string& session, uint32_t replica) {
  Bytes key(session.begin(), session.end());
  AppendU32(key, replica);
  return std::string(key.begin(), key.end());
}

std::string BatchKey(const std::string& session, uint32_t replica, uint64_t epoch,
                     uint64_t first_step) {
  Bytes key(session.begin(), session.end());
  AppendU32(key, replica);
  AppendU64(key, epoch);
  AppendU64(key, first_step);
  return std::string(key.begin(), key.end());
}

}  // namespace

BenchWorker::BenchWorker(boost::asio::io_context& io, boost::asio::ssl::context& tls,
                         BenchWorkerOptions options)
    : io_(io), tls_(tls), options_(std::move(options)) {}

void BenchWorker::NoteError(const std::string& what) {
  ++errors_;
  std::lock_guard lock(error_mutex_);
  if (first_error_.empty()) first_error_ = what;
}

std::string BenchWorker::first_error() const {
  std::lock_guard lock(error_mutex_);
  return first_error_;
}

uint32_t BenchWorker::HonestToken(uint64_t step) { return static_cast<uint32_t>(step % 32000); }

Hash BenchWorker::HonestDigest(const std::string& session, uint64_t step) {
  Hash digest{};
  std::copy_n(session.begin(), std::min<size_t>(session.size(), 16), digest.begin());
  Bytes step_bytes;
  AppendU64(step_bytes, step);
  std::copy(step_bytes.begin(), step_bytes.end(), digest.begin() + 16);
  digest[31] = 0x5a;
  return digest;
}

Hash BenchWorker::LeafHash(const Task& task, uint64_t step, const Hash& digest) const {
  leaf::StepLeaf leaf;
  std::copy_n(task.session.begin(), leaf.session_id.size(), leaf.session_id.begin());
  leaf.step = step;
  leaf.token_id = HonestToken(step);
  leaf.state_digest = digest;
  return leaf::StepLeafHash(leaf);
}

void BenchWorker::Start() {
  wire::ConnectionHandlers handlers;
  handlers.on_open = [this](const std::shared_ptr<wire::Connection>& connection) {
    wire::pb::Envelope envelope;
    wire::pb::Register* registration = envelope.mutable_registration();
    registration->set_max_replicas(options_.max_replicas);
    registration->add_models(options_.model);
    registration->set_numerics_profile_hash(options_.numerics_profile_hash);
    registration->set_software_version("fieldprint bench worker");
    connection->Send(envelope).IgnoreError();
    open_ = true;
  };
  handlers.on_envelope = [this](const std::shared_ptr<wire::Connection>& connection,
                                wire::pb::Envelope envelope) {
    OnEnvelope(connection, std::move(envelope));
  };
  handlers.on_close = [this](const std::shared_ptr<wire::Connection>&, const Status&) {
    open_ = false;
  };
  wire::ConnectionOptions connection_options;
  connection_options.max_send_queue_frames = wire::kMaxSendQueueFrames;
  connection_ =
      wire::Connection::Connect(io_, tls_, options_.host, options_.port, options_.server_name,
                                std::move(handlers), connection_options);
  connection_->Start();
}

void BenchWorker::Stop() {
  if (connection_ != nullptr) connection_->Close();
}

void BenchWorker::OnEnvelope(const std::shared_ptr<wire::Connection>&,
                             wire::pb::Envelope envelope) {
  switch (envelope.body_case()) {
    case wire::pb::Envelope::kAssign:
      OnAssign(envelope.assign());
      break;
    case wire::pb::Envelope::kAck: {
      const wire::pb::Ack& ack = envelope.ack();
      auto it =
          sent_.find(BatchKey(ack.session_id(), ack.replica(), ack.epoch(), ack.first_step()));
      if (it != sent_.end()) {
        const auto now = Clock::now();
        if (samples_.size() < kMaxLatencySamples) {
          samples_.emplace_back(std::chrono::duration<double>(now - it->second).count(), now);
          acks_.push_back(ack);
        }
        sent_.erase(it);
        --in_flight_;
        acked_leaves_ += ack.step_count();
      }
      break;
    }
    case wire::pb::Envelope::kCommit: {
      const wire::pb::Commit& commit = envelope.commit();
      for (auto it = tasks_.begin(); it != tasks_.end();) {
        Task& task = it->second;
        if (task.session != commit.session_id()) {
          ++it;
          continue;
        }
        task.verified = std::max(task.verified, commit.verified_steps());
        if (commit.session_verified()) {
          ++verified_sessions_;
          it = tasks_.erase(it);
        } else {
          ++it;
        }
      }
      break;
    }
    case wire::pb::Envelope::kRollback:
      OnRollback(envelope.rollback());
      break;
    case wire::pb::Envelope::kError: {
      const wire::pb::Error& error = envelope.error();
      // An append of a session's batch that failed as unavailable (refused) or past its
      // deadline (indeterminate) is retryable: resend what is unacknowledged, under the same
      // idempotency keys, so nothing lands twice.
      const bool retryable = error.code() == static_cast<uint32_t>(StatusCode::kUnavailable) ||
                             error.code() == static_cast<uint32_t>(StatusCode::kDeadlineExceeded);
      if (retryable && error.session_id().size() == 16) {
        ResendUnacknowledged(error.session_id());
      } else {
        NoteError(fmt::format("supervisor error {}: {}", error.code(), error.reason()));
      }
      break;
    }
    case wire::pb::Envelope::kQuarantine:
      NoteError("quarantined");
      Stop();
      return;
    default:
      break;
  }
  Pump();
}

void BenchWorker::OnAssign(const wire::pb::Assign& assign) {
  Task& task = tasks_[TaskKey(assign.session_id(), assign.replica())];
  if (!task.session.empty() && task.epoch == assign.epoch()) return;  // a resend
  task = Task();
  task.session = assign.session_id();
  task.replica = assign.replica();
  task.epoch = assign.epoch();
  task.max_tokens = assign.sampling().max_tokens();
  task.max_unverified = assign.max_unverified_steps();
  // A replayed prefix is regenerated by the same rule, so its leaves match.
}

void BenchWorker::OnRollback(const wire::pb::Rollback& rollback) {
  auto it = tasks_.find(TaskKey(rollback.session_id(), rollback.replica()));
  if (it == tasks_.end()) return;
  Task& task = it->second;
  ++rollbacks_;
  task.epoch = rollback.new_epoch();
  task.next_step = rollback.to_step();
  task.tree = merkle::Frontier();
  for (uint64_t step = 0; step < task.next_step; ++step) {
    task.tree.Append(LeafHash(task, step, HonestDigest(task.session, step)), nullptr);
  }
}

void BenchWorker::ResendUnacknowledged(const std::string& session) {
  ++refused_;
  // Batch keys are session (16) replica (4) epoch (8) first step (8): find the session's, and
  // per replica the first unacknowledged step of its current epoch.
  std::map<uint32_t, uint64_t> first_unacknowledged;
  for (auto it = sent_.lower_bound(session); it != sent_.end() && it->first.starts_with(session);) {
    const uint8_t* key = reinterpret_cast<const uint8_t*>(it->first.data());
    const uint32_t replica = LoadU32(key + 16);
    const uint64_t epoch = LoadU64(key + 20);
    const uint64_t first_step = LoadU64(key + 28);
    auto task = tasks_.find(TaskKey(session, replica));
    if (task != tasks_.end() && task->second.epoch == epoch) {
      auto [entry, inserted] = first_unacknowledged.emplace(replica, first_step);
      if (!inserted) entry->second = std::min(entry->second, first_step);
    }
    it = sent_.erase(it);
    --in_flight_;
  }
  for (const auto& [replica, step] : first_unacknowledged) {
    Task& task = tasks_[TaskKey(session, replica)];
    task.next_step = step;
    task.tree = merkle::Frontier();
    for (uint64_t s = 0; s < step; ++s) {
      task.tree.Append(LeafHash(task, s, HonestDigest(task.session, s)), nullptr);
    }
  }
}

bool BenchWorker::SendBatch(Task& task) {
  const uint64_t limit = std::min(task.max_tokens, task.verified + task.max_unverified);
  if (task.next_step >= limit) return false;
  const uint64_t end = std::min<uint64_t>(task.next_step + options_.batch_steps, limit);
  wire::pb::Envelope envelope;
  wire::pb::LeafBatch* batch = envelope.mutable_leaf_batch();
  batch->set_session_id(task.session);
  batch->set_replica(task.replica);
  batch->set_epoch(task.epoch);
  batch->set_first_step(task.next_step);
  for (uint64_t step = task.next_step; step < end; ++step) {
    Hash digest = HonestDigest(task.session, step);
    if (static_cast<int64_t>(step) == options_.corrupt_step && !task.corrupted) {
      digest[0] ^= 1;
      task.corrupted = true;
    }
    wire::AppendStepLeaf(*batch, HonestToken(step), digest);
    task.tree.Append(LeafHash(task, step, digest), nullptr);
  }
  if (end == task.max_tokens) {
    batch->set_last(true);
    const Hash root = task.tree.Root();
    batch->set_session_root(std::string(root.begin(), root.end()));
  }
  sent_[BatchKey(task.session, task.replica, task.epoch, task.next_step)] = Clock::now();
  task.next_step = end;
  ++in_flight_;
  if (Status sent = connection_->Send(envelope); !sent.ok()) {
    NoteError(sent.ToString());
    connection_->Close(sent);
    return false;
  }
  return true;
}

void BenchWorker::Pump() {
  bool progress = true;
  while (progress && in_flight_ < options_.max_in_flight) {
    progress = false;
    for (auto& [key, task] : tasks_) {
      if (in_flight_ >= options_.max_in_flight) break;
      progress |= SendBatch(task);
    }
  }
}

BenchFleet::~BenchFleet() { StopWorkers(); }

std::string BenchFleet::WorkerName(size_t w) { return fmt::format("bench-{}", w); }

Status BenchFleet::Start(const std::string& certs_dir,
                         const std::vector<BenchWorkerOptions>& workers) {
  FP_CHECK(!work_.has_value());
  FP_CHECK(workers_.empty());
  work_.emplace(boost::asio::make_work_guard(io_));
  client_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "fp-bench-client");
    io_.run();
  });
  for (size_t w = 0; w < workers.size(); ++w) {
    FP_ASSIGN_OR_RETURN(
        auto tls, wire::MakeClientTlsContext(wire::TlsFilesForNode(certs_dir, WorkerName(w))));
    tls_.push_back(std::move(tls));
    workers_.push_back(std::make_unique<BenchWorker>(io_, *tls_.back(), workers[w]));
    workers_.back()->Start();
  }
  return OkStatus();
}

uint64_t BenchFleet::Sum(uint64_t (BenchWorker::*counter)() const) const {
  uint64_t total = 0;
  for (const auto& worker : workers_) total += (*worker.*counter)();
  return total;
}

uint64_t BenchFleet::AckedLeaves() const { return Sum(&BenchWorker::acked_leaves); }
uint64_t BenchFleet::VerifiedSessions() const { return Sum(&BenchWorker::verified_sessions); }
uint64_t BenchFleet::Errors() const { return Sum(&BenchWorker::errors); }
uint64_t BenchFleet::Refused() const { return Sum(&BenchWorker::refused); }

std::string BenchFleet::FirstError() const {
  for (const auto& worker : workers_) {
    if (std::string error = worker->first_error(); !error.empty()) return error;
  }
  return "";
}

std::vector<double> BenchFleet::Latencies(Clock::time_point from, Clock::time_point to) const {
  FP_CHECK(!client_thread_.joinable());
  std::vector<double> values;
  for (const auto& worker : workers_) {
    for (const auto& [latency, at] : worker->LatencySamples()) {
      if (at >= from && at < to) values.push_back(latency);
    }
  }
  return values;
}

void BenchFleet::StopWorkers() {
  if (!work_.has_value()) return;  // never started, or stopped already
  for (auto& worker : workers_) worker->Stop();
  // Stop() only posts each close: the client thread gets time to run them before it stops.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  work_.reset();
  io_.stop();
  if (client_thread_.joinable()) client_thread_.join();
}

}  // namespace fp::supervisor
