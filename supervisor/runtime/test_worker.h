// Test-only: a worker connection speaking the wire protocol to an in-process supervisor over
// mutual TLS, for the runtime's tests (supervisor_test.cc, cluster_test.cc). Received envelopes
// queue up for the test to take; Registration and Leaves build the frames a real worker sends.
//
// Thread-safety: Send, Next and WaitClosed may be called from any thread; the connection's
// handlers run on the io_context's thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>

#include "common/crypto/sha256.h"
#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "common/wire/connection.h"
#include "common/wire/envelope.h"

namespace fp::supervisor::testing {

inline constexpr auto kTestWorkerWait = std::chrono::seconds(10);

class TestWorker {
 public:
  // Connects to 127.0.0.1:`port`, expecting the supervisor's certificate name `supervisor`. `io`
  // and `tls` are borrowed and must outlive the worker.
  TestWorker(boost::asio::io_context& io, boost::asio::ssl::context& tls, uint16_t port,
             const std::string& supervisor = "supervisor-0") {
    wire::ConnectionHandlers handlers;
    handlers.on_envelope = [this](const std::shared_ptr<wire::Connection>&,
                                  wire::pb::Envelope envelope) {
      std::lock_guard lock(mutex_);
      received_.push_back(std::move(envelope));
      changed_.notify_all();
    };
    handlers.on_close = [this](const std::shared_ptr<wire::Connection>&, const Status& status) {
      std::lock_guard lock(mutex_);
      closed_ = status;
      changed_.notify_all();
    };
    connection_ = wire::Connection::Connect(io, tls, "127.0.0.1", port, supervisor,
                                            std::move(handlers), wire::ConnectionOptions());
    connection_->Start();
  }
  // Waits for the close handler, which writes into this object, before the object goes away.
  ~TestWorker() {
    connection_->Close();
    WaitClosed();
  }
  TestWorker(const TestWorker&) = delete;
  TestWorker& operator=(const TestWorker&) = delete;

  void Send(const wire::pb::Envelope& envelope) { FP_CHECK_OK(connection_->Send(envelope)); }

  // The oldest envelope with this body (others stay queued); nullopt on timeout.
  std::optional<wire::pb::Envelope> Next(wire::pb::Envelope::BodyCase body,
                                         std::chrono::milliseconds wait = kTestWorkerWait) {
    std::unique_lock lock(mutex_);
    std::optional<wire::pb::Envelope> found;
    changed_.wait_for(lock, wait, [&] {
      for (auto it = received_.begin(); it != received_.end(); ++it) {
        if (it->body_case() == body) {
          found = std::move(*it);
          received_.erase(it);
          return true;
        }
      }
      return false;
    });
    return found;
  }

  std::optional<Status> WaitClosed() {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, kTestWorkerWait, [&] { return closed_.has_value(); });
    return closed_;
  }

 private:
  std::shared_ptr<wire::Connection> connection_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<wire::pb::Envelope> received_;  // guarded by mutex_
  std::optional<Status> closed_;             // guarded by mutex_
};

// A worker's Register frame: model "tiny", 4 replicas, a fixed numerics profile hash.
inline wire::pb::Envelope Registration() {
  wire::pb::Envelope envelope;
  envelope.mutable_registration()->set_max_replicas(4);
  envelope.mutable_registration()->add_models("tiny");
  envelope.mutable_registration()->set_numerics_profile_hash(std::string(32, 'p'));
  return envelope;
}

// The whole output of an assigned replica: `steps` leaves (token 40 + step, a digest salted by
// `salt`), marked last, with the session root of the test's own tree.
inline wire::pb::Envelope Leaves(const wire::pb::Assign& assign, uint64_t steps,
                                 const std::string& salt = "") {
  wire::pb::Envelope envelope;
  wire::pb::LeafBatch* batch = envelope.mutable_leaf_batch();
  batch->set_session_id(assign.session_id());
  batch->set_replica(assign.replica());
  batch->set_epoch(assign.epoch());
  merkle::Frontier tree;
  for (uint64_t step = 0; step < steps; ++step) {
    leaf::StepLeaf leaf;
    std::copy(assign.session_id().begin(), assign.session_id().end(), leaf.session_id.begin());
    leaf.step = step;
    leaf.token_id = 40 + static_cast<uint32_t>(step);
    leaf.state_digest = Sha256(salt + "state " + std::to_string(step));
    wire::AppendStepLeaf(*batch, leaf.token_id, leaf.state_digest);
    tree.Append(leaf::StepLeafHash(leaf), nullptr);
  }
  batch->set_last(true);
  const Hash root = tree.Root();
  batch->set_session_root(std::string(root.begin(), root.end()));
  return envelope;
}

}  // namespace fp::supervisor::testing
