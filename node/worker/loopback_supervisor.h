// LoopbackSupervisor: a small in-process stand-in for the supervisor side of the worker protocol,
// over real mutual TLS on 127.0.0.1 (common/wire's Listener), for the worker's tests and
// `fieldprint bench worker`. One replica per session (R = 1), so every accepted leaf counts as
// verified.
//
// It follows the rules the real supervisor applies to a LeafBatch (supervisor/state/applier.cc):
// the replica's current epoch, first_step equal to the next expected step, nothing past
// verified + max_unverified_steps or max_tokens; a batch that breaks one is recorded as rejected
// but still acknowledged (an Ack means "durable", as in the real log). Like the real one it
// accepts a worker by answering its Register (here at once, with a RegisterAck), and after every
// registration it resends the Assign, any Rollback it ordered and the latest Commit of every
// session, which the worker must treat as repeats.
//
// Thread-safety: every public method is safe from any thread; handlers run on its own I/O thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>

#include "common/base/status.h"
#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "common/wire/connection.h"

namespace fp::node::worker {

struct LoopbackOptions {
  std::string certs_dir;  // ca.pem and <server_name>.pem/.key
  std::string server_name = "supervisor-0";
  bool auto_ack = true;
  bool auto_commit = true;      // a Commit after every accepted batch
  bool verify_sessions = true;  // with auto_commit: mark a finished session verified
};

class LoopbackSupervisor {
 public:
  struct Replica {
    wire::pb::Assign assign;                     // as last sent (its epoch is the current one)
    std::optional<wire::pb::Rollback> rollback;  // the latest order, resent on registration
    std::vector<leaf::StepLeaf> leaves;          // accepted leaves, in step order
    merkle::Frontier tree;                       // over `leaves`, for Commit roots
    uint64_t verified_steps = 0;
    bool finished = false;
    std::string claimed_root;  // the last batch's session root
  };

  // Listens on 127.0.0.1 (an ephemeral port). Errors of the TLS files and the listener. The
  // caller owns the result.
  static StatusOr<std::unique_ptr<LoopbackSupervisor>> Start(const LoopbackOptions& options);
  ~LoopbackSupervisor();
  LoopbackSupervisor(const LoopbackSupervisor&) = delete;
  LoopbackSupervisor& operator=(const LoopbackSupervisor&) = delete;

  uint16_t port() const { return port_; }

  // Records and sends an Assign to the registered worker. FailedPrecondition without one.
  Status Assign(const wire::pb::Assign& assign);
  // Orders a rollback of a known session to `to_step` with the next epoch, cutting the accepted
  // leaves (and the verified prefix) to to_step. NotFound for an unknown session.
  Status Rollback(const SessionId& session, uint64_t to_step, wire::pb::RollbackKind kind);
  // Sends a Commit for the session's current verified prefix (after SetAutoCommit(false)).
  Status CommitNow(const SessionId& session, uint64_t verified_steps);
  // Sends any frame to the registered worker.
  Status Send(const wire::pb::Envelope& envelope);
  // Closes the worker's connection, as a supervisor restart or a network failure would.
  void DropConnection();
  void SetAutoAck(bool on);
  void SetAutoCommit(bool on);

  // Waits until `done` returns true, or `timeout`; returns whether it did. `done` is called
  // without the lock (it may use the snapshots below), after every change and at least every
  // few milliseconds.
  bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout);

  // Snapshots.
  std::vector<wire::pb::LeafBatch> received() const;  // every LeafBatch, in arrival order
  std::optional<Replica> replica(const SessionId& session) const;
  // Sessions whose replica sent its last batch (cheap: copies nothing).
  size_t finished_sessions() const;
  std::vector<std::string> rejections() const;
  std::vector<wire::pb::Error> errors() const;
  int registrations() const;
  bool connected() const;

 private:
  explicit LoopbackSupervisor(const LoopbackOptions& options) : options_(options) {}
  wire::ConnectionHandlers Handlers();
  void OnEnvelope(const std::shared_ptr<wire::Connection>& connection,
                  const wire::pb::Envelope& envelope);
  // Accepts the worker (RegisterAck) and resends every replica's Assign, Rollback and Commit.
  void OnRegister(const std::shared_ptr<wire::Connection>& connection, uint32_t max_replicas);
  void OnLeafBatch(const std::shared_ptr<wire::Connection>& connection,
                   const wire::pb::LeafBatch& batch);
  // The reason a batch is refused, or empty.
  std::string Check(const wire::pb::LeafBatch& batch) const;
  wire::pb::Envelope CommitEnvelope(const std::string& session, const Replica& replica) const;
  Status SendLocked(const wire::pb::Envelope& envelope);

  const LoopbackOptions options_;
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
  std::shared_ptr<wire::Listener> listener_;
  uint16_t port_ = 0;
  std::thread thread_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::shared_ptr<wire::Connection> worker_;   // guarded by mutex_
  std::map<std::string, Replica> sessions_;    // guarded by mutex_; by 16-byte id
  std::vector<wire::pb::LeafBatch> received_;  // guarded by mutex_
  std::vector<std::string> rejections_;        // guarded by mutex_
  std::vector<wire::pb::Error> errors_;        // guarded by mutex_
  int registrations_ = 0;                      // guarded by mutex_
  bool auto_ack_ = true;                       // guarded by mutex_
  bool auto_commit_ = true;                    // guarded by mutex_
};

}  // namespace fp::node::worker
