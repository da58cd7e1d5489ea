// SupervisorClient; see supervisor_client.h.
#include "node/worker/supervisor_client.h"

#include <algorithm>
#include <charconv>

#include <boost/asio/post.hpp>

#include "common/base/log.h"
#include "common/wire/envelope.h"

namespace fp::node::worker {
namespace {

namespace asio = boost::asio;
constexpr char kComponent[] = "worker.client";

StatusOr<uint16_t> ParsePort(std::string_view text, std::string_view whole) {
  unsigned value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1 || value > 65535) {
    return InvalidArgumentError("supervisor address '" + std::string(whole) +
                                "' has no port in 1..65535");
  }
  return static_cast<uint16_t>(value);
}

}  // namespace

StatusOr<SupervisorAddress> ParseSupervisorAddress(std::string_view text) {
  SupervisorAddress address;
  std::string_view rest = text;
  if (const size_t at = rest.find('@'); at != std::string_view::npos) {
    address.server_name = std::string(rest.substr(0, at));
    rest = rest.substr(at + 1);
    if (address.server_name.empty()) {
      return InvalidArgumentError("supervisor address '" + std::string(text) + "' has no name");
    }
  }
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return InvalidArgumentError("supervisor address '" + std::string(text) +
                                "' is not [NAME@]HOST:PORT");
  }
  std::string_view host = rest.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return InvalidArgumentError("supervisor address '" + std::string(text) +
                                  "' has a malformed IPv6 literal");
    }
    host = host.substr(1, host.size() - 2);
  }
  address.host = std::string(host);
  FP_ASSIGN_OR_RETURN(address.port, ParsePort(rest.substr(colon + 1), text));
  if (address.server_name.empty()) address.server_name = address.host;
  return address;
}

std::string AddressString(const SupervisorAddress& address) {
  return address.server_name + "@" + address.host + ":" + std::to_string(address.port);
}

std::chrono::milliseconds ReconnectDelay(const ReconnectPolicy& policy, uint32_t failures,
                                         double jitter) {
  FP_CHECK(failures >= 1);
  FP_CHECK(jitter >= 0.0 && jitter < 1.0);
  const int64_t max = policy.max_delay.count();
  int64_t step = policy.initial_delay.count();
  for (uint32_t i = 1; i < failures && step < max; ++i) step *= 2;
  step = std::min(step, max);
  return std::chrono::milliseconds(
      std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(step) * (0.5 + 0.5 * jitter))));
}

SupervisorClient::SupervisorClient(asio::ssl::context& tls, SupervisorClientOptions options,
                                   ClientCallbacks callbacks, const WorkerMetrics* metrics)
    : tls_(tls),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      metrics_(metrics),
      work_(asio::make_work_guard(io_)),
      reconnect_timer_(io_),
      heartbeat_timer_(io_),
      rng_(options_.jitter_seed != 0 ? options_.jitter_seed : std::random_device{}()) {
  FP_CHECK(!options_.supervisors.empty());
  FP_CHECK(options_.supervisors.size() <= kMaxSupervisorAddresses);
  FP_CHECK(options_.heartbeat_interval.count() >= 1);
  FP_CHECK(options_.register_timeout.count() >= 1);
  FP_CHECK(options_.register_timeout <= kMaxRegisterTimeout);
  FP_CHECK(options_.reconnect.initial_delay.count() >= 1);
  FP_CHECK(options_.reconnect.max_delay >= options_.reconnect.initial_delay);
  FP_CHECK(options_.reconnect.max_delay <= kMaxReconnectDelay);
  FP_CHECK(callbacks_.registration && callbacks_.heartbeat && callbacks_.on_accepted &&
           callbacks_.on_lost && callbacks_.on_envelope);
  FP_CHECK(metrics_ != nullptr);
}

SupervisorClient::~SupervisorClient() { Stop(); }

void SupervisorClient::Start() {
  FP_CHECK(!thread_.joinable());
  asio::post(io_, [this] { Connect(); });
  thread_ = std::thread([this] { io_.run(); });
}

void SupervisorClient::Stop() {
  std::shared_ptr<wire::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    connection = current_;
  }
  asio::post(io_, [this] {
    reconnect_timer_.cancel();
    heartbeat_timer_.cancel();
  });
  if (connection != nullptr) connection->Close();
  {
    std::unique_lock lock(mutex_);
    closed_.wait_for(lock, kMaxCloseWait, [&] { return current_ == nullptr; });
  }
  work_.reset();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

void SupervisorClient::Connect() {
  const SupervisorAddress& address = options_.supervisors[address_index_];
  std::shared_ptr<wire::Connection> connection;
  uint64_t generation = 0;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    generation = ++generation_;
    accepted_ = false;
    wire::ConnectionHandlers handlers;
    handlers.on_open = [this, generation](const std::shared_ptr<wire::Connection>& opened) {
      OnOpen(generation, opened);
    };
    handlers.on_envelope = [this, generation](const std::shared_ptr<wire::Connection>&,
                                              wire::pb::Envelope envelope) {
      OnEnvelope(generation, std::move(envelope));
    };
    handlers.on_close = [this, generation](const std::shared_ptr<wire::Connection>&,
                                           const Status& status) { OnClose(generation, status); };
    connection =
        wire::Connection::Connect(io_, tls_, address.host, address.port, address.server_name,
                                  std::move(handlers), options_.connection);
    current_ = connection;
  }
  LogInfo(kComponent, "connecting", {{"supervisor", AddressString(address)}});
  connection->Start();
}

void SupervisorClient::OnOpen(uint64_t generation,
                              const std::shared_ptr<wire::Connection>& connection) {
  {
    std::lock_guard lock(mutex_);
    if (generation != generation_) return;
  }
  wire::pb::Envelope envelope;
  *envelope.mutable_registration() = callbacks_.registration();
  if (Status sent = connection->Send(envelope); !sent.ok()) {
    connection->Close(sent);
    return;
  }
  // The RegisterAck deadline; the heartbeats start once the registration is accepted.
  heartbeat_timer_.expires_after(options_.register_timeout);
  heartbeat_timer_.async_wait(
      [this, generation, weak = std::weak_ptr(connection)](const boost::system::error_code& error) {
        std::shared_ptr<wire::Connection> waiting = weak.lock();
        if (error || waiting == nullptr) return;
        {
          std::lock_guard lock(mutex_);
          if (generation != generation_ || accepted_) return;
        }
        waiting->Close(
            DeadlineExceededError("the supervisor did not acknowledge the registration within " +
                                  std::to_string(options_.register_timeout.count()) + " ms"));
      });
}

void SupervisorClient::OnRegisterAck(uint64_t generation, const wire::pb::Envelope& envelope) {
  std::shared_ptr<wire::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    connection = current_;
  }
  if (connection == nullptr) return;
  if (!envelope.has_register_ack()) {
    connection->Close(FailedPreconditionError(std::string("the supervisor sent ") +
                                              std::string(wire::BodyName(envelope)) +
                                              " before acknowledging the registration"));
    return;
  }
  const wire::pb::RegisterAck& ack = envelope.register_ack();
  const std::string supervisor = AddressString(options_.supervisors[address_index_]);
  if (!ack.accepted()) {
    wire::pb::Error error;
    error.set_code(ack.code());
    error.set_reason(ack.reason());
    const Status refusal = wire::StatusFromError(error).WithContext(
        "supervisor " + ack.supervisor_id() + " refused the registration");
    LogError(kComponent, "registration refused", {{"supervisor", supervisor}, {"status", refusal}});
    {
      std::lock_guard lock(mutex_);
      last_refusal_ = refusal;
    }
    if (callbacks_.on_refused) callbacks_.on_refused(refusal);
    connection->Close(refusal);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    if (generation != generation_ || stopping_) return;
    accepted_ = true;
    last_refusal_ = OkStatus();
    accepted_by_ = ack.supervisor_id();
    accepted_max_replicas_ = ack.max_replicas();
  }
  failures_ = 0;
  if (ever_accepted_) metrics_->reconnects->Increment();
  ever_accepted_ = true;
  LogInfo(kComponent, "accepted by the supervisor",
          {{"supervisor", supervisor},
           {"supervisor_id", ack.supervisor_id()},
           {"max_replicas", ack.max_replicas()},
           {"generation", generation}});
  ScheduleHeartbeat(generation, options_.heartbeat_interval);
  callbacks_.on_accepted(generation);
}

void SupervisorClient::OnEnvelope(uint64_t generation, wire::pb::Envelope envelope) {
  bool accepted = false;
  {
    std::lock_guard lock(mutex_);
    if (generation != generation_ || stopping_) return;
    accepted = accepted_;
  }
  if (!accepted) return OnRegisterAck(generation, envelope);
  if (envelope.has_heartbeat() || envelope.has_register_ack()) return;
  callbacks_.on_envelope(generation, std::move(envelope));
}

void SupervisorClient::OnClose(uint64_t generation, const Status& status) {
  bool was_accepted = false;
  bool stopping = false;
  {
    std::lock_guard lock(mutex_);
    if (generation != generation_) return;
    current_.reset();
    was_accepted = accepted_;
    accepted_ = false;
    stopping = stopping_;
  }
  closed_.notify_all();
  heartbeat_timer_.cancel();
  if (was_accepted) callbacks_.on_lost();
  if (stopping) return;
  if (was_accepted) {
    failures_ = 1;  // the same supervisor first, after the shortest delay
  } else {
    ++failures_;
    address_index_ = (address_index_ + 1) % options_.supervisors.size();  // fail over
  }
  const double jitter = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  const std::chrono::milliseconds delay = ReconnectDelay(options_.reconnect, failures_, jitter);
  LogInfo(kComponent, "connection closed; reconnecting",
          {{"status", status},
           {"next", AddressString(options_.supervisors[address_index_])},
           {"delay_seconds", static_cast<double>(delay.count()) / 1000.0}});
  reconnect_timer_.expires_after(delay);
  reconnect_timer_.async_wait([this](const boost::system::error_code& error) {
    if (!error) Connect();
  });
}

void SupervisorClient::ScheduleHeartbeat(uint64_t generation, std::chrono::milliseconds delay) {
  heartbeat_timer_.expires_after(delay);
  heartbeat_timer_.async_wait([this, generation](const boost::system::error_code& error) {
    if (!error) SendHeartbeat(generation);
  });
}

void SupervisorClient::SendHeartbeat(uint64_t generation) {
  std::shared_ptr<wire::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    if (generation != generation_ || current_ == nullptr || stopping_) return;
    connection = current_;
  }
  wire::pb::Envelope envelope;
  *envelope.mutable_heartbeat() = callbacks_.heartbeat();
  envelope.mutable_heartbeat()->set_sequence(++heartbeat_sequence_);
  if (Status sent = connection->Send(envelope); !sent.ok()) {
    connection->Close(sent);  // the supervisor is not reading
    return;
  }
  ScheduleHeartbeat(generation, options_.heartbeat_interval);
}

Status SupervisorClient::Send(uint64_t generation, const wire::pb::Envelope& envelope) {
  std::shared_ptr<wire::Connection> connection;
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || !accepted_ || generation != generation_ || current_ == nullptr) {
      return UnavailableError("not connected to a supervisor");
    }
    connection = current_;
  }
  Status sent = connection->Send(envelope);
  if (!sent.ok()) connection->Close(sent);
  return sent;
}

size_t SupervisorClient::Room(uint64_t generation) const {
  std::lock_guard lock(mutex_);
  if (stopping_ || !accepted_ || generation != generation_ || current_ == nullptr) return 0;
  const size_t queued = current_->queued_frames();
  const size_t limit = options_.connection.max_send_queue_frames;
  return queued >= limit ? 0 : limit - queued;
}

uint64_t SupervisorClient::accepted_generation() const {
  std::lock_guard lock(mutex_);
  return accepted_ ? generation_ : 0;
}

Status SupervisorClient::last_refusal() const {
  std::lock_guard lock(mutex_);
  return last_refusal_;
}

std::string SupervisorClient::accepted_by() const {
  std::lock_guard lock(mutex_);
  return accepted_by_;
}

uint32_t SupervisorClient::accepted_max_replicas() const {
  std::lock_guard lock(mutex_);
  return accepted_max_replicas_;
}

}  // namespace fp::node::worker
