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
// BenchFleet: the benchmarks' workers together, on one io_context that one client thread runs,
// with the sums a report needs.
//
// Thread-safety: the worker's state lives on its connection's strand; the counters may be read
// from any thread; LatencySamples() and Acks() only after Stop() and the io_context's threads are
// done. A BenchFleet is driven from one thread (Start, StopWorkers, Latencies); once Start() has
// returned, its sums may be read from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>

#include "common/base/status.h"
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

// Simulated workers for a benchmark: owns them, their client TLS contexts, the io_context they
// run on and the thread ("fp-bench-client") that runs it.
class BenchFleet {
 public:
  BenchFleet() = default;
  // Stops the workers (StopWorkers()).
  ~BenchFleet();
  BenchFleet(const BenchFleet&) = delete;
  BenchFleet& operator=(const BenchFleet&) = delete;

  // The certificate name of worker `w` ("bench-<w>"): the caller issues it under the certificate
  // directory it passes to Start().
  static std::string WorkerName(size_t w);

  // Starts the client thread, then worker w for each workers[w], connecting with the client
  // certificate of WorkerName(w) from `certs_dir`. Fails if a certificate cannot be loaded; the
  // workers started until then run until StopWorkers() or destruction. Called once.
  Status Start(const std::string& certs_dir, const std::vector<BenchWorkerOptions>& workers);

  // Sums over the workers.
  uint64_t AckedLeaves() const;
  uint64_t VerifiedSessions() const;
  uint64_t Errors() const;
  uint64_t Refused() const;
  // The first worker's first error with one ("" while none).
  std::string FirstError() const;
  // Send-to-Ack latencies in seconds of the Acks received in [from, to). Only after
  // StopWorkers(): the samples are read without the workers' strands.
  std::vector<double> Latencies(std::chrono::steady_clock::time_point from,
                                std::chrono::steady_clock::time_point to) const;

  // Closes the workers' connections, waits 100 ms for the closes to run, then stops the
  // io_context and joins the client thread. Does nothing before Start() or a second time.
  void StopWorkers();

 private:
  // The sum of one counter over the workers.
  uint64_t Sum(uint64_t (BenchWorker::*counter)() const) const;

  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread client_thread_;
  std::vector<std::unique_ptr<boost::asio::ssl::context>> tls_;
  std::vector<std::unique_ptr<BenchWorker>> workers_;  // workers_[w] uses *tls_[w]
};

}  // namespace fp::supervisor
