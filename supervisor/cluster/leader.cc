// LeaderElection; see leader.h.
#include "supervisor/cluster/leader.h"

#include <algorithm>

#include <fmt/format.h>
#include <pthread.h>

#include "common/base/log.h"

namespace fp::supervisor::cluster {
namespace {

using SteadyClock = std::chrono::steady_clock;
using etcd::Compare;
using etcd::TxnOp;

// A run of failed requests is logged at its first failure and then every this many.
constexpr uint64_t kFailuresPerWarning = 50;

}  // namespace

StatusOr<etcd::TxnResponse> FencedTxn(etcd::Client& client, const std::string& leader_key,
                                      int64_t token, etcd::TxnRequest request,
                                      std::optional<std::chrono::milliseconds> timeout) {
  FP_CHECK(token > 0);
  request.compares.push_back(
      {leader_key, Compare::Target::kCreate, Compare::Result::kEqual, token, ""});
  etcd::RangeRequest leader;
  leader.key = leader_key;
  request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, leader, ""});
  FP_ASSIGN_OR_RETURN(etcd::TxnResponse response, client.Txn(request, timeout));
  if (response.succeeded) return response;
  const std::vector<etcd::KeyValue>& current = response.results.back().range.kvs;
  if (current.empty() || current[0].create_revision != token) {
    return FailedPreconditionError(fmt::format(
        "fenced: leadership term {} is over (leader key {})", token,
        current.empty() ? std::string("is absent")
                        : fmt::format("belongs to term {}", current[0].create_revision)));
  }
  response.results.pop_back();
  return response;
}

StatusOr<std::unique_ptr<LeaderElection>> LeaderElection::Start(const LeaderOptions& options) {
  if (options.prefix.empty() || options.prefix.back() == '/') {
    return InvalidArgumentError("leader: prefix must be non-empty without a trailing '/'");
  }
  if (options.identity.empty() || options.identity.size() > kMaxLeaderIdentityBytes) {
    return InvalidArgumentError(
        fmt::format("leader: identity must have 1..{} bytes", kMaxLeaderIdentityBytes));
  }
  if (options.ttl < kMinLeaderTtl || options.ttl > kMaxLeaderTtl) {
    return InvalidArgumentError(fmt::format("leader: ttl must be in {}..{} s",
                                            kMinLeaderTtl.count(), kMaxLeaderTtl.count()));
  }
  if (options.safety_margin <= std::chrono::milliseconds::zero() ||
      options.safety_margin * 3 >= options.ttl * 2) {
    return InvalidArgumentError("leader: safety_margin must be in (0, 2/3 ttl)");
  }
  if (options.poll_interval <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("leader: poll_interval must be positive");
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> campaign, etcd::Client::Create(options.client));
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> fence, etcd::Client::Create(options.client));
  return std::unique_ptr<LeaderElection>(
      new LeaderElection(options, std::move(campaign), std::move(fence)));
}

LeaderElection::LeaderElection(const LeaderOptions& options, std::unique_ptr<etcd::Client> campaign,
                               std::unique_ptr<etcd::Client> fence)
    : options_(options), campaign_client_(std::move(campaign)), fence_client_(std::move(fence)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "fp-leader");
    CampaignLoop();
  });
}

LeaderElection::~LeaderElection() { Resign(); }

LeaderView LeaderElection::View() const {
  std::lock_guard lock(mutex_);
  LeaderView view;
  view.is_leader = leading_ && SteadyClock::now() < deadline_;
  view.leader = leader_;
  view.token = token_;
  return view;
}

StatusOr<int64_t> LeaderElection::WaitForLeadership(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  const bool leads = changed_.wait_for(
      lock, timeout, [&] { return stopping_ || (leading_ && SteadyClock::now() < deadline_); });
  if (stopping_) return CancelledError("leader: resigned");
  if (!leads) {
    return DeadlineExceededError(fmt::format("leader: not elected within {} ms", timeout.count()));
  }
  return token_;
}

void LeaderElection::TEST_PauseCampaign(bool paused) {
  {
    std::lock_guard lock(mutex_);
    paused_ = paused;
  }
  changed_.notify_all();
}

void LeaderElection::Resign() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    paused_ = false;
    if (leading_) EndTermLocked("resigned");
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  int64_t lease = 0;
  {
    std::lock_guard lock(mutex_);
    std::swap(lease, lease_);
  }
  if (lease == 0) return;
  Status revoked = campaign_client_->LeaseRevoke(lease);
  if (!revoked.ok()) {
    LogWarn("leader", "lease revoke failed; it will expire", {{"error", revoked}});
  }
}

StatusOr<etcd::TxnResponse> LeaderElection::FencedTxn(etcd::TxnRequest request) {
  int64_t token = 0;
  std::chrono::milliseconds left{0};
  {
    std::lock_guard lock(mutex_);
    const SteadyClock::time_point now = SteadyClock::now();
    if (!leading_ || now >= deadline_) {
      return FailedPreconditionError(
          fmt::format("leader: {} is not the leader", options_.identity));
    }
    token = token_;
    left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now);
  }
  return cluster::FencedTxn(*fence_client_, leader_key(), token, std::move(request),
                            std::max(left, std::chrono::milliseconds(1)));
}

void LeaderElection::EndTermLocked(const char* why) {
  if (leading_) {
    LogInfo("leader", "leadership ended",
            {{"identity", options_.identity}, {"token", token_}, {"why", why}});
  }
  leading_ = false;
  leader_.clear();
  token_ = 0;
  changed_.notify_all();
}

void LeaderElection::CampaignLoop() {
  const auto keepalive_period = std::chrono::duration_cast<SteadyClock::duration>(options_.ttl) / 3;
  uint64_t failures = 0;  // consecutive failed requests
  while (true) {
    int64_t lease = 0;
    SteadyClock::time_point renewed;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || !paused_; });
      if (stopping_) return;
      if (leading_ && SteadyClock::now() >= deadline_) EndTermLocked("local deadline passed");
      lease = lease_;
      renewed = lease_renewed_;
    }
    Status status;
    const SteadyClock::time_point now = SteadyClock::now();
    if (options_.healthy && !options_.healthy()) {
      {
        std::lock_guard lock(mutex_);
        if (leading_) EndTermLocked("this process cannot do the leader's work");
        lease_ = 0;
      }
      if (lease != 0) campaign_client_->LeaseRevoke(lease).IgnoreError();  // else it expires
      std::unique_lock lock(mutex_);
      changed_.wait_for(lock, options_.poll_interval, [&] { return stopping_; });
      continue;
    }
    if (lease == 0) {
      StatusOr<etcd::Lease> granted = campaign_client_->LeaseGrant(options_.ttl.count());
      status = granted.status();
      if (granted.ok()) {
        std::lock_guard lock(mutex_);
        lease_ = granted->id;
        lease_renewed_ = now;
      }
    } else if (now >= renewed + keepalive_period) {
      status = KeepAlive();
    }
    bool leading = false;
    {
      std::lock_guard lock(mutex_);
      lease = lease_;
      leading = leading_;
    }
    if (status.ok() && lease != 0 && !leading) status = Campaign();
    if (status.ok()) {
      failures = 0;
    } else if (++failures == 1 || failures % kFailuresPerWarning == 0) {
      LogWarn("leader", "etcd request failed", {{"error", status}, {"failures", failures}});
    }
    std::unique_lock lock(mutex_);
    const SteadyClock::time_point after = SteadyClock::now();
    SteadyClock::time_point wake = leading_ ? deadline_ : after + options_.poll_interval;
    if (lease_ != 0) wake = std::min(wake, lease_renewed_ + keepalive_period);
    // A failed request is retried after a pause, not at once (connection refused is instant).
    if (!status.ok()) {
      wake = after + kMaxLeaderRetryPause;
      if (leading_ && deadline_ > after) wake = std::min(wake, deadline_);  // end the term on time
    }
    changed_.wait_until(lock, wake, [&] { return stopping_ || paused_; });
  }
}

Status LeaderElection::KeepAlive() {
  int64_t lease = 0;
  {
    std::lock_guard lock(mutex_);
    lease = lease_;
  }
  const SteadyClock::time_point sent = SteadyClock::now();
  StatusOr<int64_t> ttl = campaign_client_->LeaseKeepAlive(lease);
  if (!ttl.ok()) {
    if (ttl.status().code() == StatusCode::kNotFound) {
      std::lock_guard lock(mutex_);
      lease_ = 0;
      EndTermLocked("lease expired or was revoked");
    }
    return ttl.status();  // in transit: retried until the local deadline ends the term
  }
  int64_t token = 0;
  {
    std::lock_guard lock(mutex_);
    lease_renewed_ = sent;
    if (!leading_) return OkStatus();
    deadline_ = sent + options_.ttl - options_.safety_margin;
    token = token_;
  }
  // The lease lives, but the key may have been deleted by hand: then this term is over too.
  etcd::RangeRequest get;
  get.key = leader_key();
  FP_ASSIGN_OR_RETURN(etcd::RangeResponse current, campaign_client_->Range(get));
  if (current.kvs.empty() || current.kvs[0].create_revision != token) {
    std::lock_guard lock(mutex_);
    if (token_ == token) EndTermLocked("leader key is gone");
  }
  return OkStatus();
}

Status LeaderElection::Campaign() {
  int64_t lease = 0;
  {
    std::lock_guard lock(mutex_);
    lease = lease_;
  }
  etcd::TxnRequest request;
  request.compares.push_back(
      {leader_key(), Compare::Target::kCreate, Compare::Result::kEqual, 0, ""});
  request.success.push_back({TxnOp::Kind::kPut, leader_key(), options_.identity, lease, {}, ""});
  etcd::RangeRequest get;
  get.key = leader_key();
  request.failure.push_back({TxnOp::Kind::kRange, "", "", 0, get, ""});
  FP_ASSIGN_OR_RETURN(etcd::TxnResponse response, campaign_client_->Txn(request, std::nullopt));
  std::lock_guard lock(mutex_);
  if (lease_ != lease) return OkStatus();  // the lease was lost meanwhile: campaign again
  int64_t token = 0;
  if (response.succeeded) {
    token = response.revision;  // the put's create_revision
  } else if (!response.results[0].range.kvs.empty()) {
    const etcd::KeyValue& kv = response.results[0].range.kvs[0];
    leader_ = kv.value;
    token_ = kv.create_revision;
    // Our own key under our lease: an earlier campaign was applied, its reply lost.
    if (kv.lease == lease) token = kv.create_revision;
  } else {
    leader_.clear();
    token_ = 0;
  }
  if (token != 0) {
    leading_ = true;
    token_ = token;
    leader_ = options_.identity;
    deadline_ = lease_renewed_ + options_.ttl - options_.safety_margin;
    LogInfo("leader", "leadership won", {{"identity", options_.identity}, {"token", token}});
  }
  changed_.notify_all();
  return OkStatus();
}

}  // namespace fp::supervisor::cluster
