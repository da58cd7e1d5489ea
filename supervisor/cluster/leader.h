// LeaderElection: one supervisor of a cluster leads (placement, deadlines, checkpoints; DESIGN.md
// sections 5 and 7); this class elects it through etcd and fences a deposed leader's writes.
//
// Protocol. Each candidate holds an etcd lease of `ttl` and campaigns with one txn:
//   compare  create_revision(<prefix>/leader) == 0
//   success  put <prefix>/leader = identity, attached to the lease
//   failure  range <prefix>/leader (the current leader's identity and create_revision)
// The winner's key lives as long as its lease: the leader renews the lease every ttl/3 and the
// key disappears when the lease expires or is revoked, so another candidate's next campaign (every
// poll_interval) wins. The key's create_revision is the fencing token: it is unique to one term
// (etcd revisions never repeat) and every leader write can demand it (FencedTxn), so a leader that
// was deposed without noticing (paused, partitioned) cannot write.
//
// Local deadline. etcd starts a lease's TTL when it receives the grant or keepalive, which is after
// this process sent it; so the lease lives at least until send_time + ttl. A candidate counts
// itself leader only until send_time(last successful grant or keepalive) + ttl - safety_margin:
// IsLeader() turns false by the steady clock alone, even if the campaign thread is stuck, before
// etcd can have expired the lease and before another candidate can have won. A keepalive that
// etcd answers with "no such lease" ends the term at once; a keepalive that fails in transit is
// retried until the local deadline ends the term. (The margin covers the two clocks' rate
// difference and etcd's lease checker, which expires leases in batches; it is not a fake-able
// Clock because the deadline is meaningful only against etcd's real time.)
//
// Thread-safety: every public method is safe from any thread. One campaign thread per instance
// talks to etcd; FencedTxn uses a connection of its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/base/status.h"
#include "supervisor/log/etcd_client.h"

namespace fp::supervisor::cluster {

// Bounds of the options (etcd grants leases of at least ~1 s; a term longer than an hour would
// leave a cluster leaderless for that long after a crash).
inline constexpr std::chrono::seconds kMinLeaderTtl{1};
inline constexpr std::chrono::seconds kMaxLeaderTtl{3600};
inline constexpr size_t kMaxLeaderIdentityBytes = 256;
// Pause between failed grants or keepalives (a member down: the client moves to the next one).
inline constexpr std::chrono::milliseconds kMaxLeaderRetryPause{100};

struct LeaderOptions {
  etcd::ClientOptions client;          // endpoints, mTLS files, per-request timeout
  std::string prefix = "/fieldprint";  // the key is <prefix>/leader; no trailing '/'
  std::string identity;                // this candidate's name, 1..kMaxLeaderIdentityBytes
  std::chrono::seconds ttl{5};         // lease TTL, kMinLeaderTtl..kMaxLeaderTtl
  // The local term ends this long before the lease can expire at etcd; 0 < margin < 2/3 ttl
  // (a keepalive is sent at ttl/3, so a term survives one lost keepalive).
  std::chrono::milliseconds safety_margin{1000};
  std::chrono::milliseconds poll_interval{200};  // followers re-campaign this often
  // Whether this process can do its leader's work now (e.g. its leader thread is not stuck).
  // Consulted on every round of the campaign thread: while false the candidate does not
  // campaign, and a leader ends its term and revokes its lease, so that a member that can lead
  // takes over instead of a live lease held by a process that does nothing. Optional;
  // thread-safe; must not block.
  std::function<bool()> healthy;
};

// What a candidate knows about the leadership.
struct LeaderView {
  bool is_leader = false;  // this candidate leads and its local deadline has not passed
  std::string leader;      // the last known leader's identity; empty if none is known
  int64_t token = 0;       // that leader's fencing token (create_revision of the key); 0: none
};

// Adds "create_revision(leader_key) == token" to `request` and runs it on `client` (borrowed).
// Returns the response when the fence held (its `succeeded` then reflects the caller's own
// compares, and `results` only the caller's operations); FailedPrecondition when the fence failed:
// the key is gone or belongs to another term. The client's errors otherwise.
StatusOr<etcd::TxnResponse> FencedTxn(etcd::Client& client, const std::string& leader_key,
                                      int64_t token, etcd::TxnRequest request,
                                      std::optional<std::chrono::milliseconds> timeout);

class LeaderElection {
 public:
  // Validates the options and starts campaigning (no network call happens on this thread).
  // InvalidArgument for bad options, tls.h's errors for the TLS files. The caller owns the result.
  static StatusOr<std::unique_ptr<LeaderElection>> Start(const LeaderOptions& options);
  // Resign()s.
  ~LeaderElection();
  LeaderElection(const LeaderElection&) = delete;
  LeaderElection& operator=(const LeaderElection&) = delete;

  LeaderView View() const;
  bool IsLeader() const { return View().is_leader; }
  std::string leader_key() const { return options_.prefix + "/leader"; }

  // Blocks until this candidate leads; returns its token. DeadlineExceeded after `timeout`,
  // Cancelled after Resign.
  StatusOr<int64_t> WaitForLeadership(std::chrono::milliseconds timeout) const;

  // Ends the campaign: stops the campaign thread, ends the term locally, then revokes the lease
  // (deleting the key, so another candidate wins at its next poll; if the revoke fails, the lease
  // simply expires). Idempotent.
  void Resign();

  // A leader write: FailedPrecondition without sending when this candidate does not lead (by
  // the local deadline), else FencedTxn with this term's token, bounded by the local deadline.
  StatusOr<etcd::TxnResponse> FencedTxn(etcd::TxnRequest request);

  // Freezes (true) or thaws the campaign thread, like a process that is paused: no keepalive,
  // no campaign. IsLeader() still ends the term at the local deadline.
  void TEST_PauseCampaign(bool paused);

 private:
  LeaderElection(const LeaderOptions& options, std::unique_ptr<etcd::Client> campaign,
                 std::unique_ptr<etcd::Client> fence);
  void CampaignLoop();
  // One campaign txn; updates the view.
  Status Campaign();
  // Renews the lease; ends the term when etcd says the lease is gone or the key is not ours.
  Status KeepAlive();
  void EndTermLocked(const char* why);

  const LeaderOptions options_;
  const std::unique_ptr<etcd::Client> campaign_client_;  // campaign thread (and Resign after it)
  const std::unique_ptr<etcd::Client> fence_client_;     // FencedTxn

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;  // the view changed, or stop/pause changed
  bool stopping_ = false;                    // guarded by mutex_
  bool paused_ = false;                      // guarded by mutex_
  bool leading_ = false;                     // guarded by mutex_; see View() for the deadline
  std::chrono::steady_clock::time_point deadline_;  // guarded by mutex_; the local term's end
  std::string leader_;                              // guarded by mutex_
  int64_t token_ = 0;                               // guarded by mutex_
  int64_t lease_ = 0;                               // guarded by mutex_; 0: none
  // guarded by mutex_; when the lease's TTL last restarted at the latest (grant/keepalive sent)
  std::chrono::steady_clock::time_point lease_renewed_;

  std::thread thread_;
};

}  // namespace fp::supervisor::cluster
