// SupervisorClient: the worker's one long-lived mTLS stream to a supervisor (DESIGN.md section
// 5.2; docs/formats.md, "Wire frames").
//
// Per connection: TCP + TLS 1.3 to the next supervisor address (the server's certificate must
// carry that supervisor's name; the worker's own identity is its certificate), then Register
// (capacity, models, numerics profile hash). The supervisor answers with a RegisterAck once the
// registration is durable in its log; the client waits for it at most register_timeout (then the
// connection is abandoned and the next address tried). An accepted RegisterAck makes the
// connection accepted: frames are handed to the worker, LeafBatches may be sent (on_accepted
// tells the streaming thread to resend its outbox) and heartbeats start, one every
// heartbeat_interval. A refusing RegisterAck (a quarantined worker, a draining supervisor) is
// logged as an error with the supervisor's reason, reported through on_refused and kept as
// last_refusal(); the supervisor closes the connection and the client retries like after any
// failed attempt. Any other frame before the RegisterAck is a protocol error that closes the
// connection.
//
// Failure: when a connection fails before acceptance, the next attempt goes to the next address
// in the list (fail-over); when an accepted connection drops, the same address is tried first.
// Attempts are spaced by exponential backoff with jitter: after n consecutive failures the delay
// is min(max_delay, initial_delay * 2^(n-1)) scaled by a uniform factor in [0.5, 1). Retries are
// unbounded in number (a worker outlives supervisor outages) and bounded in rate.
//
// Thread-safety: Send, Room, accepted_generation, Start and Stop are safe from any thread
// (Start/Stop from the owner). Callbacks run on the client's I/O thread, one at a time, and must
// not block.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/base/status.h"
#include "common/wire/connection.h"
#include "node/worker/streamer.h"
#include "node/worker/worker_metrics.h"

namespace fp::node::worker {

inline constexpr size_t kMaxSupervisorAddresses = 64;
inline constexpr std::chrono::milliseconds kMaxReconnectDelay{60'000};
inline constexpr std::chrono::milliseconds kMaxRegisterTimeout{300'000};
// Stop waits at most this long for the connection's clean close.
inline constexpr std::chrono::milliseconds kMaxCloseWait{3'000};

struct SupervisorAddress {
  std::string server_name;  // the name the supervisor's certificate must carry
  std::string host;
  uint16_t port = 0;
};

// "NAME@HOST:PORT", or "HOST:PORT" (the certificate must then carry HOST); HOST may be an IPv6
// literal in brackets. InvalidArgument for anything else or a port outside 1..65535.
StatusOr<SupervisorAddress> ParseSupervisorAddress(std::string_view text);
// "NAME@HOST:PORT".
std::string AddressString(const SupervisorAddress& address);

struct ReconnectPolicy {
  std::chrono::milliseconds initial_delay{100};  // >= 1
  std::chrono::milliseconds max_delay{5'000};    // initial_delay..kMaxReconnectDelay
};

// The delay before the next attempt after `failures` (>= 1) consecutive failures, with `jitter`
// (in [0, 1)) choosing the point in [0.5, 1) of the exponential step. Pure.
std::chrono::milliseconds ReconnectDelay(const ReconnectPolicy& policy, uint32_t failures,
                                         double jitter);

struct SupervisorClientOptions {
  std::vector<SupervisorAddress> supervisors;  // 1..kMaxSupervisorAddresses, tried in order
  wire::ConnectionOptions connection;
  std::chrono::milliseconds heartbeat_interval{5'000};
  // How long a new connection waits for the supervisor's RegisterAck (1..kMaxRegisterTimeout).
  std::chrono::milliseconds register_timeout{10'000};
  ReconnectPolicy reconnect;
  uint64_t jitter_seed = 0;  // 0: seeded from std::random_device
};

struct ClientCallbacks {
  std::function<wire::pb::Register()> registration;  // the Register of a new connection
  std::function<wire::pb::Heartbeat()> heartbeat;    // replica counts; the client numbers them
  std::function<void(uint64_t generation)> on_accepted;
  std::function<void()> on_lost;  // an accepted connection closed
  // The supervisor refused the registration (the status carries its code and reason). Optional.
  std::function<void(const Status& refusal)> on_refused;
  // Every frame of an accepted connection except heartbeats, in order.
  std::function<void(uint64_t generation, wire::pb::Envelope envelope)> on_envelope;
};

class SupervisorClient : public LeafTransport {
 public:
  // `tls` (a client context, see wire::MakeClientTlsContext) and `metrics` are borrowed and must
  // outlive the client. FP_CHECKs the options and that every callback is set.
  SupervisorClient(boost::asio::ssl::context& tls, SupervisorClientOptions options,
                   ClientCallbacks callbacks, const WorkerMetrics* metrics);
  ~SupervisorClient();
  SupervisorClient(const SupervisorClient&) = delete;
  SupervisorClient& operator=(const SupervisorClient&) = delete;

  // Starts the I/O thread and the first connection attempt.
  void Start();
  // Closes the connection (cleanly, waiting at most kMaxCloseWait), stops reconnecting and joins
  // the I/O thread. Idempotent.
  void Stop();

  // LeafTransport. Send also closes the connection when the frame cannot be queued, so that
  // nothing is sent after a frame that was not.
  Status Send(uint64_t generation, const wire::pb::Envelope& envelope) override;
  size_t Room(uint64_t generation) const override;

  // The accepted connection's generation, 0 while there is none.
  uint64_t accepted_generation() const;
  // The last refusal of a registration since the last acceptance, or OK.
  Status last_refusal() const;
  // The supervisor id and capacity of the last accepted RegisterAck (empty and 0 before one).
  std::string accepted_by() const;
  uint32_t accepted_max_replicas() const;

 private:
  void Connect();
  void OnOpen(uint64_t generation, const std::shared_ptr<wire::Connection>& connection);
  void OnEnvelope(uint64_t generation, wire::pb::Envelope envelope);
  // The first frame of a connection: must be a RegisterAck.
  void OnRegisterAck(uint64_t generation, const wire::pb::Envelope& envelope);
  void OnClose(uint64_t generation, const Status& status);
  void ScheduleHeartbeat(uint64_t generation, std::chrono::milliseconds delay);
  void SendHeartbeat(uint64_t generation);

  boost::asio::ssl::context& tls_;  // borrowed
  const SupervisorClientOptions options_;
  const ClientCallbacks callbacks_;
  const WorkerMetrics* const metrics_;  // borrowed

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::steady_timer reconnect_timer_;  // I/O thread only
  boost::asio::steady_timer heartbeat_timer_;  // I/O thread only; also the RegisterAck deadline
  std::mt19937_64 rng_;                        // I/O thread only
  uint64_t heartbeat_sequence_ = 0;            // I/O thread only
  bool ever_accepted_ = false;                 // I/O thread only
  uint32_t failures_ = 0;                      // I/O thread only
  size_t address_index_ = 0;                   // I/O thread only

  mutable std::mutex mutex_;
  std::condition_variable closed_;
  std::shared_ptr<wire::Connection> current_;  // guarded by mutex_
  uint64_t generation_ = 0;                    // guarded by mutex_
  bool accepted_ = false;                      // guarded by mutex_
  bool stopping_ = false;                      // guarded by mutex_
  Status last_refusal_;                        // guarded by mutex_
  std::string accepted_by_;                    // guarded by mutex_
  uint32_t accepted_max_replicas_ = 0;         // guarded by mutex_
  std::thread thread_;
};

}  // namespace fp::node::worker
