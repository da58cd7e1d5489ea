// LoadGenerator: clients that keep submitting sessions of the tiny model to a supervisor cluster
// through failover clients (supervisor/client/api_client.h), each submission with its own
// Idempotency-Key, and record the outcome of every write:
//   acknowledged   the cluster answered with the session's id: it is durable and must be present
//                  (and verified) on every supervisor after any fault;
//   indeterminate  the request ran out of attempts or time after it may have reached a supervisor
//                  (timeout, connection lost, 503/504): it must end up on every supervisor or on
//                  none; its session id follows from its key (SessionIdForIdempotencyKey);
//   rejected       any other answer (400, 409, ...): a bug in a healthy cluster, reported.
// The workers drive the leaf traffic: every admitted session is placed and run by them.
//
// Thread-safety: Start, Stop and the readers may be called from any thread; the clients run on
// threads of their own.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "supervisor/client/api_client.h"

namespace fp::cluster_test {

inline constexpr uint32_t kMaxLoadClients = 16;
inline constexpr size_t kMaxLoadWrites = 100'000;

enum class WriteOutcome { kAcknowledged, kIndeterminate, kRejected };
const char* WriteOutcomeName(WriteOutcome outcome);

struct WriteRecord {
  std::string idempotency_key;
  std::string session_id;  // hex: from the reply, or derived from the key when not acknowledged
  WriteOutcome outcome = WriteOutcome::kIndeterminate;
  std::string error;  // the failure, when not acknowledged
  std::vector<uint32_t> prompt_token_ids;
  uint32_t max_tokens = 0;
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point finished;
};

struct LoadOptions {
  std::vector<client::SupervisorUrl> urls;  // the cluster's supervisors
  uint32_t clients = 2;                     // 1..kMaxLoadClients
  std::chrono::milliseconds pause{250};     // between one client's submissions
  uint32_t max_tokens = 8;
  std::string run_id = "load";  // prefix of the keys: make it unique per cluster
  client::FailoverOptions failover;
  size_t max_writes = 10'000;  // all clients together, 1..kMaxLoadWrites
};

class LoadGenerator {
 public:
  explicit LoadGenerator(LoadOptions options);
  ~LoadGenerator();  // Stop()
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  void Start();
  // Stops the clients after their current request (each bounded by its deadline). Idempotent.
  void Stop();

  std::vector<WriteRecord> Records() const;
  // The first write acknowledged after `since` among those started at or after it, if any.
  std::optional<WriteRecord> FirstAckStartedAfter(
      std::chrono::steady_clock::time_point since) const;

 private:
  void Client(uint32_t index);

  const LoadOptions options_;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> issued_{0};
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::vector<WriteRecord> records_;  // guarded by mutex_
};

}  // namespace fp::cluster_test
