// BenchWorker: a simulated worker that speaks the real worker protocol over mutual TLS. It
// registers, runs every replica it is assigned by emitting honest step leaves (equal on every
// replica, so sessions verify), keeps up to `max_in_flight` unacknowledged batches, honours the
// unverified window through Commits, follows Rollbacks, and records the latency from sending
// each batch to its Ack. An append the supervisor reports as unavailable or past its deadline is
// resent (from the session's first unacknowledged batch, under the same idempotency keys). Used by
// `fieldprint bench ingest|proofs`, fieldprint_cluster_bench and tests.
//
// Honest leaves of a session: token(step) = step % 32000, and the state digest holds the session
// id and the step, so replicas agree without running a model.
//
// Thread-safety: the worker's state lives on its connection's strand; the counters may be read
// from any thread; LatencySamples() and Acks() only after Stop() and the io_context's threads are
// done.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>

#include "common/merkle/merkle.h"
#include "common/wire/connection.h"

namespace fp::supervisor {

// Latency samples kept per worker (the first ones; enough for percentiles).
inline constexpr size_t kMaxLatencySamples = 1 << 20;

struct BenchWorkerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string server_name = "supervisor-0";
  std::string model = "bench";
  std::string numerics_profile_hash = std::string(32, 'w');
  uint32_t max_replicas = 1024;
  size_t batch_steps = 64;
  size_t max_in_flight = 32;  // unacknowledged batches on the connection
  // A worker that corrupts the digest of this step on its first attempt (-1: never).
  int64_t corrupt_step = -1;
};

class BenchWorker {
 public:
  // `io` and `tls` are borrowed and must outlive the worker.
  BenchWorker(boost::asio::io_context& io, boost::asio::ssl::context& tls,
              BenchWorkerOptions options);
  void Start();
  void Stop();

  uint64_t acked_leaves() const { return acked_leaves_.load(); }
  uint64_t errors() const { return errors_.load(); }
  // The first error counted in errors() ("" while none), for reports.
  std::string first_error() const;
  uint64_t verified_sessions() const { return verified_sessions_.load(); }
  uint64_t rollbacks() const { return rollbacks_.load(); }
  // Appends the supervisor reported as unavailable or past their deadline (each answered by
  // resending the session's unacknowledged batches).
  uint64_t refused() const { return refused_.load(); }
  bool open() const { return open_.load(); }
  // The Acks received (the first kMaxLatencySamples).
  const std::vector<wire::pb::Ack>& Acks() const { return acks_; }
  // Send-to-Ack latencies in seconds, and the steady-clock time of each Ack.
  const std::vector<std::pair<double, std::chrono::steady_clock::time_point>>& LatencySamples()
      const {
    return samples_;
  }

  // The honest leaf of `session` at `step`.
  static uint32_t HonestToken(uint64_t step);
  static Hash HonestDigest(const std::string& session, uint64_t step);

 private:
  struct Task {
    std::string session;
    uint32_t replica = 0;
    uint64_t epoch = 0;
    uint64_t max_tokens = 0;
    uint64_t next_step = 0;
    uint64_t verified = 0;
    uint64_t max_unverified = 0;
    bool corrupted = false;
    merkle::Frontier tree;
  };

  void OnEnvelope(const std::shared_ptr<wire::Connection>& connection, wire::pb::Envelope envelope);
  void OnAssign(const wire::pb::Assign& assign);
  void OnRollback(const wire::pb::Rollback& rollback);
  void Pump();
  bool SendBatch(Task& task);
  Hash LeafHash(const Task& task, uint64_t step, const Hash& digest) const;
  void NoteError(const std::string& what);
  void ResendUnacknowledged(const std::string& session);

  boost::asio::io_context& io_;     // borrowed
  boost::asio::ssl::context& tls_;  // borrowed
  const BenchWorkerOptions options_;
  std::shared_ptr<wire::Connection> connection_;
  // Strand-only state.
  std::map<std::string, Task> tasks_;                                  // session || replica
  std::map<std::string, std::chrono::steady_clock::time_point> sent_;  // idempotent key
  size_t in_flight_ = 0;
  std::vector<std::pair<double, std::chrono::steady_clock::time_point>> samples_;
  std::vector<wire::pb::Ack> acks_;
  std::atomic<uint64_t> acked_leaves_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> verified_sessions_{0};
  std::atomic<uint64_t> rollbacks_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<bool> open_{false};
  mutable std::mutex error_mutex_;
  std::string first_error_;  // guarded by error_mutex_
};

}  // namespace fp::supervisor
