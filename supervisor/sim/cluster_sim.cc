// ClusterSim; see cluster_sim.h. One Simulation object per run holds the event queue (ordered by
// time, then by scheduling order, so equal times replay in the same order), the log model, the
// nodes, the proposals and the workload; each event kind has one handler below.
#include "supervisor/sim/cluster_sim.h"

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <tuple>

#include <fmt/format.h>
#include <unistd.h>

#include "supervisor/ledger/checkpoints.h"
#include "supervisor/sim/sim_log.h"
#include "supervisor/state/state_store.h"
#include "supervisor/testing/sim_driver.h"

namespace fp::supervisor::sim {
namespace {

constexpr std::string_view kOrigin = "sim.fieldprint.example/ledger";
// Dedup keys of unkeyed records: "unkeyed NODE INCARNATION PROPOSAL", unique per backend instance.
constexpr std::string_view kUnkeyedPrefix = "unkeyed ";
// How often the leader looks whether the next round can start.
constexpr uint64_t kRoundPollMs = 5;
// A worker reconnects to another supervisor this long after its supervisor crashed.
constexpr uint64_t kMinRerouteMs = 10;
constexpr uint64_t kMaxRerouteMs = 100;

// Portable draws over mt19937_64, whose sequence the standard fixes (the std distributions are
// implementation-defined, so they would not replay across standard libraries).
class SimRandom {
 public:
  explicit SimRandom(uint64_t seed) : engine_(seed) {}
  uint64_t Below(uint64_t n) {
    FP_CHECK(n > 0);
    return engine_() % n;
  }
  uint64_t Range(uint64_t low, uint64_t high) {
    FP_CHECK(low <= high);
    return low + Below(high - low + 1);
  }
  bool Chance(double probability) {
    return static_cast<double>(engine_() >> 11) * 0x1.0p-53 < probability;
  }

 private:
  std::mt19937_64 engine_;
};

enum class MessageKind { kAppend, kKeepAlive, kCampaign, kTrim, kPublish };

const char* MessageName(MessageKind kind) {
  switch (kind) {
    case MessageKind::kAppend:
      return "append";
    case MessageKind::kKeepAlive:
      return "keepalive";
    case MessageKind::kCampaign:
      return "campaign";
    case MessageKind::kTrim:
      return "trim";
    case MessageKind::kPublish:
      return "publish";
  }
  return "?";
}

// A request from a node to the log, or the log's response to it.
struct Message {
  MessageKind kind = MessageKind::kAppend;
  bool response = false;
  int node = 0;
  uint64_t incarnation = 0;  // of the sending node; responses to older ones are dropped
  uint64_t proposal = 0;     // kAppend
  std::string dedup_key;     // kAppend
  uint64_t term = kNoTerm;   // leader writes and keepalives
  uint64_t value = 0;        // position, granted term, trim point or published position
  uint64_t sent_ms = 0;      // when the request left the node
  StatusCode code = StatusCode::kOk;
  bool term_over = false;  // a refused leader write: the term had ended
};

enum class EventKind {
  kDeliver,
  kRetry,
  kReroute,
  kApply,
  kFlush,
  kLease,
  kTrim,
  kRound,
  kCrash,
  kRestart,
  kPause,
};

struct Event {
  EventKind kind = EventKind::kRound;
  int node = -1;
  uint64_t incarnation = 0;
  uint64_t proposal = 0;
  uint32_t attempt = 0;
  Message message;
};

Event Timer(EventKind kind, int node = -1) {
  Event event;
  event.kind = kind;
  event.node = node;
  return event;
}

Event ForProposal(EventKind kind, int node, uint64_t incarnation, uint64_t proposal,
                  uint32_t attempt) {
  Event event = Timer(kind, node);
  event.incarnation = incarnation;
  event.proposal = proposal;
  event.attempt = attempt;
  return event;
}

enum class Outcome { kPending, kAcked, kRefused, kAbandoned };

// One record some proposer wants in the log, and what became of it.
struct Proposal {
  bool leader = false;
  bool own = false;          // the relay's own record (its signer's): it dies with the relay
  Log::AppendCallback done;  // own records: the signer's callback, run once when settled
  std::string route;         // the worker (or "client") that owns a record that is not the leader's
  pb::LogRecord record;
  std::string bytes;
  std::optional<std::string> key;  // idempotency key
  uint64_t term = kNoTerm;
  int relay = -1;  // the node that sends it to the log
  uint64_t relay_incarnation = 0;
  std::string dedup_key;
  uint32_t attempts = 0;
  Outcome outcome = Outcome::kPending;
  uint64_t position = 0;
};

struct Node {
  std::unique_ptr<SimLog> log;  // declared first: the node's signer borrows it
  std::unique_ptr<SimNode> sim;
  bool failed = false;  // an operation failed: the node stays down
  uint64_t incarnation = 0;
  uint64_t term = kNoTerm;         // the term this node believes it leads; kNoTerm: it follows
  uint64_t newest_term = kNoTerm;  // the newest term it was ever granted
  uint64_t lease_deadline_ms = 0;
  uint64_t last_keepalive_ms = 0;
  uint64_t paused_until_ms = 0;
  uint64_t durable_at_crash = 0;
};

std::string RouteOf(const pb::LogRecord& record) {
  if (record.has_leaf_batch()) return record.leaf_batch().worker_id();
  if (record.has_worker_registered()) return record.worker_registered().worker_id();
  return "client";
}

// Idempotency keys are binary (hex, shortened); the keys this file makes for unkeyed records are
// text.
std::string ShortKey(std::string_view key) {
  if (key.starts_with(kUnkeyedPrefix)) return std::string(key);
  return HexEncode(AsBytes(key)).substr(0, 16);
}

class Simulation final : public SimLogHost {
 public:
  explicit Simulation(const ClusterSimOptions& options)
      : options_(options),
        random_(options.seed ^ 0x9e37'79b9'7f4a'7c15ULL),
        model_(options.lease_ttl_ms, options.model_bug),
        fleet_(options.seed, options.fleet),
        root_(std::filesystem::path(options.dir) / fmt::format("sim-{}", options.seed)) {}
  ~Simulation() override {
    nodes_.clear();
    std::error_code error;
    std::filesystem::remove_all(root_, error);
  }

  StatusOr<ClusterSimResult> Run();

  // SimLogHost: the nodes' signers append, trim and close through these.
  void HostAppend(int node, pb::LogRecord record, Log::AppendCallback done) override;
  uint64_t HostTrim(int node, uint64_t below) override;
  void HostClose(int node) override;
  const LogModel& model() const override { return model_; }

 private:
  Status Setup();
  void Dispatch(Event& event);
  void Schedule(uint64_t delay_ms, Event event);
  void Trace(std::string_view text);
  void Violation(std::string what);

  // Network.
  void Send(const Message& message);
  void HandleRequest(const Message& message);
  void HandleAppend(const Message& message);
  void Respond(const Message& request, StatusCode code, uint64_t value, bool term_over);
  void HandleResponse(const Message& message);

  // Appends.
  void Propose(int leader, pb::LogRecord record);
  void Route(uint64_t id);
  void SendAppend(uint64_t id);
  void OnRetry(const Event& event);
  void OnReroute(uint64_t id);
  void OnAppendAnswer(const Message& answer);
  void Settle(uint64_t id, Outcome outcome);

  // Leadership.
  bool Leads(int node);
  void StepDown(int node, std::string_view why);
  void OnLease(int node);
  void OnLeaseAnswer(const Message& answer);
  void OnPause();

  // Nodes and workload.
  void StartNode(int node);
  // A supervisor operation failed: reported, and the node goes down for good.
  void NodeFailed(int node, const Status& status);
  // What every way down shares (after StepDown): the node's own and leader appends are abandoned,
  // its workers reconnect elsewhere, responses to it are dropped.
  void TakeDown(int node);
  void OnApply(int node);
  void OnFlush(int node);
  void OnCrash();
  void OnRestart(int node);
  void OnTrim();
  Status TrimBelow(int leader);
  void CheckTrim(uint64_t begin);
  void OnRound();
  Status NextRound(int leader);
  void Finish(ClusterSimResult& result);
  void CatchUp(int node);
  Status Summarize(ClusterSimResult& result);

  const ClusterSimOptions options_;
  SimRandom random_;
  LogModel model_;
  testing::SimFleet fleet_;
  const std::filesystem::path root_;
  std::vector<Node> nodes_;

  uint64_t now_ms_ = 0;
  uint64_t sequence_ = 0;
  std::map<std::pair<uint64_t, uint64_t>, Event> queue_;
  Sha256Stream trace_hash_;

  std::vector<Proposal> proposals_;
  uint64_t pending_ = 0;
  std::map<std::string, int> route_;  // worker -> the node it talks to
  // A worker's keyed records as first sent: a resend carries exactly these bytes.
  std::map<std::string, std::string> outbox_;
  std::vector<AppendAnswer> answers_;
  // By (dedup key, bytes, term): one write's answers must agree.
  std::map<std::tuple<std::string, std::string, uint64_t>, std::pair<bool, uint64_t>> first_answer_;
  std::map<uint64_t, uint64_t> ledger_at_;  // applied position -> ledger size, first seen

  std::vector<std::string> violations_;
  std::string stall_;
  ClusterSimResult stats_;
  uint32_t crashes_left_ = 0;
  uint32_t pauses_left_ = 0;
  int joining_ = -1;  // the node whose start waits for its CosignerJoined append
  bool finished_ = false;
  uint64_t drain_until_ms_ = 0;
};

void Simulation::Schedule(uint64_t delay_ms, Event event) {
  queue_.emplace(std::make_pair(now_ms_ + delay_ms, sequence_++), std::move(event));
}

void Simulation::Trace(std::string_view text) {
  const std::string line = fmt::format("{:>7} {}", now_ms_, text);
  trace_hash_.Update(line);
  trace_hash_.Update("\n");
  if (options_.trace) options_.trace(line);
}

void Simulation::Violation(std::string what) {
  Trace("VIOLATION " + what);
  if (violations_.size() < kMaxReportedViolations) {
    violations_.push_back(fmt::format("t={}ms: {}", now_ms_, what));
  }
}

Status Simulation::Setup() {
  if (options_.supervisors < 1 || options_.supervisors > kMaxSimSupervisors) {
    return InvalidArgumentError(fmt::format("supervisors must be 1..{}", kMaxSimSupervisors));
  }
  if (options_.min_delay_ms > options_.max_delay_ms || options_.max_apply_group == 0 ||
      options_.lease_margin_ms >= options_.lease_ttl_ms ||
      options_.restart_min_ms > options_.restart_max_ms) {
    return InvalidArgumentError("inconsistent simulation options");
  }
  Trace(fmt::format("seed {}: {} supervisors", options_.seed, options_.supervisors));
  const ApplierOptions applier{.quarantine_divergences = 6};
  // One ledger key for the cluster; a cosigner key per supervisor (checkpoints.h).
  const Hash ledger = Sha256(fmt::format("sim ledger key {}", options_.seed));
  for (int i = 0; i < options_.supervisors; ++i) {
    const Hash cosigner = Sha256(fmt::format("sim cosigner key {} {}", options_.seed, i));
    Node& node = nodes_.emplace_back();
    node.log = std::make_unique<SimLog>(this, i);
    node.sim = std::make_unique<SimNode>(
        (root_ / fmt::format("s{}", i)).string(), options_.store_template, std::string(kOrigin),
        Bytes(ledger.begin(), ledger.end()), fmt::format("sim-s{}", i),
        Bytes(cosigner.begin(), cosigner.end()), applier,
        i == 1 ? options_.node_bug : NodeBug::kNone);
  }
  for (int i = 0; i < options_.supervisors; ++i) {
    StartNode(i);
    Schedule(random_.Range(1, options_.apply_every_max_ms), Timer(EventKind::kApply, i));
    Schedule(random_.Range(1, options_.flush_every_ms), Timer(EventKind::kFlush, i));
    Schedule(random_.Range(0, options_.campaign_every_ms), Timer(EventKind::kLease, i));
  }
  Schedule(0, Timer(EventKind::kRound));
  Schedule(options_.trim_every_ms, Timer(EventKind::kTrim));
  crashes_left_ = static_cast<uint32_t>(random_.Below(options_.max_crashes + 1));
  pauses_left_ = static_cast<uint32_t>(random_.Below(options_.max_pauses + 1));
  if (crashes_left_ > 0) Schedule(random_.Range(50, 800), Timer(EventKind::kCrash));
  if (pauses_left_ > 0) Schedule(random_.Range(200, 1500), Timer(EventKind::kPause));
  Trace(fmt::format("{} crashes, {} pauses to come", crashes_left_, pauses_left_));
  return OkStatus();
}

StatusOr<ClusterSimResult> Simulation::Run() {
  FP_RETURN_IF_ERROR(Setup());
  uint64_t events = 0;
  while (!queue_.empty()) {
    auto next = queue_.begin();
    now_ms_ = next->first.first;
    Event event = std::move(next->second);
    queue_.erase(next);
    if (finished_ && now_ms_ > drain_until_ms_) break;
    if (!finished_ && now_ms_ > options_.max_time_ms) {
      stall_ = fmt::format("the workload did not finish in {} ms (round {})", options_.max_time_ms,
                           stats_.rounds);
      Trace("STALL " + stall_);
      break;
    }
    if (++events > kMaxSimEvents) {
      Violation(fmt::format("more than {} events", kMaxSimEvents));
      break;
    }
    Dispatch(event);
  }
  ClusterSimResult result = stats_;
  result.events = events;
  result.end_ms = now_ms_;
  Finish(result);
  FP_RETURN_IF_ERROR(Summarize(result));
  return result;
}

void Simulation::Dispatch(Event& event) {
  switch (event.kind) {
    case EventKind::kDeliver:
      event.message.response ? HandleResponse(event.message) : HandleRequest(event.message);
      return;
    case EventKind::kRetry:
      return OnRetry(event);
    case EventKind::kReroute:
      return OnReroute(event.proposal);
    case EventKind::kApply:
      return OnApply(event.node);
    case EventKind::kFlush:
      return OnFlush(event.node);
    case EventKind::kLease:
      return OnLease(event.node);
    case EventKind::kTrim:
      return OnTrim();
    case EventKind::kRound:
      return OnRound();
    case EventKind::kCrash:
      return OnCrash();
    case EventKind::kRestart:
      return OnRestart(event.node);
    case EventKind::kPause:
      return OnPause();
  }
}

// ---- Network ----------------------------------------------------------------------------------

void Simulation::Send(const Message& message) {
  const std::string what =
      fmt::format("{} {} node {}", MessageName(message.kind),
                  message.response ? "response to" : "request from", message.node);
  if (random_.Chance(message.response ? options_.lose_response : options_.lose_request)) {
    ++stats_.messages_lost;
    Trace("net: lost " + what);
    return;
  }
  const int copies = !message.response && random_.Chance(options_.duplicate_request) ? 2 : 1;
  if (copies == 2) {
    ++stats_.messages_duplicated;
    Trace("net: duplicated " + what);
  }
  for (int copy = 0; copy < copies; ++copy) {
    uint64_t delay = random_.Range(options_.min_delay_ms, options_.max_delay_ms);
    if (random_.Chance(options_.late_message)) {
      ++stats_.messages_late;
      delay += random_.Range(options_.late_extra_ms / 2, options_.late_extra_ms);
      Trace(fmt::format("net: {} is late by {} ms", what, delay));
    }
    Event event = Timer(EventKind::kDeliver);
    event.message = message;
    Schedule(delay, std::move(event));
  }
}

void Simulation::HandleRequest(const Message& message) {
  switch (message.kind) {
    case MessageKind::kAppend:
      HandleAppend(message);
      return;
    case MessageKind::kKeepAlive: {
      const Status kept = model_.KeepAlive(message.term, now_ms_);
      Trace(fmt::format("log: keepalive term {} from node {}: {}", message.term, message.node,
                        kept.ok() ? "ok" : "lease gone"));
      Respond(message, kept.code(), 0, !kept.ok());
      return;
    }
    case MessageKind::kCampaign: {
      const StatusOr<uint64_t> term = model_.Campaign(message.node, now_ms_);
      if (term.ok()) {
        ++stats_.terms;
        Trace(fmt::format("log: term {} granted to node {}", *term, message.node));
      }
      Respond(message, term.status().code(), term.ok() ? *term : 0, false);
      return;
    }
    case MessageKind::kTrim: {
      const StatusOr<uint64_t> begin = model_.Trim(message.value, message.term, now_ms_);
      Trace(fmt::format("log: trim below {} by term {}: {}", message.value, message.term,
                        begin.ok() ? fmt::format("begins at {}", *begin) : "fenced"));
      if (begin.ok()) CheckTrim(*begin);
      return;
    }
    case MessageKind::kPublish:
      model_.PublishApplied(message.node, message.value);
      return;
  }
}

void Simulation::HandleAppend(const Message& message) {
  const Proposal& proposal = proposals_[message.proposal];
  const bool term_over = message.term != kNoTerm && !model_.Fenced(message.term, now_ms_);
  const StatusOr<uint64_t> position = model_.Append(
      ModelAppend{proposal.record, proposal.bytes, message.dedup_key, message.term}, now_ms_);
  if (!position.ok() && term_over) ++stats_.fenced;
  Trace(fmt::format(
      "log: append #{} {} key {} term {}: {}", message.proposal, RecordTypeName(proposal.record),
      ShortKey(message.dedup_key), message.term,
      position.ok() ? fmt::format("at {}", *position) : std::string(position.status().message())));
  Respond(message, position.status().code(), position.ok() ? *position : 0,
          !position.ok() && term_over);
}

void Simulation::Respond(const Message& request, StatusCode code, uint64_t value, bool term_over) {
  Message response = request;
  response.response = true;
  response.code = code;
  response.value = value;
  response.term_over = term_over;
  Send(response);
}

void Simulation::HandleResponse(const Message& message) {
  Node& node = nodes_[message.node];
  if (!node.sim->up() || node.incarnation != message.incarnation) {
    Trace(fmt::format("node {}: drops a {} response for an earlier incarnation", message.node,
                      MessageName(message.kind)));
    return;
  }
  if (message.kind == MessageKind::kAppend) {
    OnAppendAnswer(message);
  } else {
    OnLeaseAnswer(message);
  }
}

// ---- Appends ----------------------------------------------------------------------------------

void Simulation::Propose(int leader, pb::LogRecord record) {
  Proposal proposal;
  proposal.leader = IsLeaderRecord(record);
  proposal.key = IdempotencyKey(record);
  FP_CHECK(record.SerializeToString(&proposal.bytes));
  if (!proposal.leader && proposal.key.has_value()) {
    // A worker resends what it buffered under this key, never something new under the same key.
    auto [buffered, inserted] = outbox_.emplace(*proposal.key, proposal.bytes);
    if (!inserted && buffered->second != proposal.bytes) {
      proposal.bytes = buffered->second;
      FP_CHECK(record.ParseFromString(proposal.bytes));
    }
  }
  proposal.record = std::move(record);
  const uint64_t id = proposals_.size();
  if (proposal.leader) {
    proposal.term = nodes_[leader].term;
    proposal.relay = leader;
    proposal.relay_incarnation = nodes_[leader].incarnation;
    proposal.dedup_key = proposal.key.value_or(
        fmt::format("{}{} {} {}", kUnkeyedPrefix, leader, nodes_[leader].incarnation, id));
  } else {
    proposal.route = RouteOf(proposal.record);
  }
  proposals_.push_back(std::move(proposal));
  ++pending_;
  if (proposals_[id].leader) {
    SendAppend(id);
  } else {
    Route(id);
  }
}

void Simulation::Route(uint64_t id) {
  Proposal& proposal = proposals_[id];
  auto routed = route_.find(proposal.route);
  int relay = routed != route_.end() && nodes_[routed->second].sim->up() ? routed->second : -1;
  if (relay < 0) {
    std::vector<int> up;
    for (int i = 0; i < options_.supervisors; ++i) {
      if (nodes_[i].sim->up()) up.push_back(i);
    }
    if (up.empty()) {
      Schedule(random_.Range(kMinRerouteMs, kMaxRerouteMs),
               ForProposal(EventKind::kReroute, -1, 0, id, 0));
      return;
    }
    relay = up[random_.Below(up.size())];
    route_[proposal.route] = relay;
  }
  proposal.relay = relay;
  proposal.relay_incarnation = nodes_[relay].incarnation;
  // Records without an idempotency key get a key unique to the sending backend instance.
  proposal.dedup_key = proposal.key.value_or(
      fmt::format("{}{} {} {}", kUnkeyedPrefix, relay, proposal.relay_incarnation, id));
  SendAppend(id);
}

void Simulation::SendAppend(uint64_t id) {
  Proposal& proposal = proposals_[id];
  if (++proposal.attempts > kMaxAppendAttempts) {
    Violation(fmt::format("append #{} was not answered after {} sends", id, kMaxAppendAttempts));
    Settle(id, Outcome::kAbandoned);
    return;
  }
  if (proposal.attempts > 1) ++stats_.resends;
  Trace(fmt::format("node {}: sends #{} {} (attempt {})", proposal.relay, id,
                    RecordTypeName(proposal.record), proposal.attempts));
  Message request;
  request.kind = MessageKind::kAppend;
  request.node = proposal.relay;
  request.incarnation = proposal.relay_incarnation;
  request.proposal = id;
  request.dedup_key = proposal.dedup_key;
  request.term = proposal.term;
  request.sent_ms = now_ms_;
  Send(request);
  Schedule(options_.retry_timeout_ms,
           ForProposal(EventKind::kRetry, proposal.relay, proposal.relay_incarnation, id,
                       proposal.attempts));
}

void Simulation::OnRetry(const Event& event) {
  const Proposal& proposal = proposals_[event.proposal];
  if (proposal.outcome != Outcome::kPending || proposal.relay != event.node ||
      proposal.relay_incarnation != event.incarnation || proposal.attempts != event.attempt ||
      nodes_[event.node].incarnation != event.incarnation) {
    return;  // answered, already resent or rerouted, or its relay went down
  }
  if (proposal.leader) {
    // A leader resends only while it still leads in the record's term (FencedTxn refuses
    // without sending otherwise); Leads() steps down, which abandons the record.
    if (!Leads(event.node) || nodes_[event.node].term != proposal.term) {
      if (proposals_[event.proposal].outcome == Outcome::kPending) {
        Settle(event.proposal, Outcome::kAbandoned);
      }
      return;
    }
  }
  SendAppend(event.proposal);
}

void Simulation::OnReroute(uint64_t id) {
  const Proposal& proposal = proposals_[id];
  if (proposal.outcome != Outcome::kPending) return;
  if (proposal.relay >= 0 && nodes_[proposal.relay].sim->up() &&
      nodes_[proposal.relay].incarnation == proposal.relay_incarnation) {
    return;
  }
  Trace(fmt::format("{}: reconnects to resend #{}", proposal.route, id));
  Route(id);
}

void Simulation::OnAppendAnswer(const Message& answer) {
  Proposal& proposal = proposals_[answer.proposal];
  const bool acked = answer.code == StatusCode::kOk;
  answers_.push_back(AppendAnswer{answer.dedup_key, proposal.bytes, acked, answer.value,
                                  proposal.leader, proposal.term});
  const std::pair<bool, uint64_t> seen{acked, acked ? answer.value : 0};
  auto [first, inserted] =
      first_answer_.emplace(std::make_tuple(answer.dedup_key, proposal.bytes, proposal.term), seen);
  if (!inserted && first->second != seen) {
    Violation(fmt::format("answers to #{} (key {}) disagree: {} {} then {} {}", answer.proposal,
                          ShortKey(answer.dedup_key), first->second.first ? "acked at" : "refused",
                          first->second.second, acked ? "acked at" : "refused", answer.value));
  }
  if (proposal.outcome != Outcome::kPending || answer.dedup_key != proposal.dedup_key) return;
  proposal.position = answer.value;
  Settle(answer.proposal, acked ? Outcome::kAcked : Outcome::kRefused);
  if (acked) return;
  if (!proposal.leader && proposal.key.has_value()) {
    // Workers and signers resend what they sent before under a key: the log never refuses them.
    Violation(fmt::format("record #{} {} (not the leader's) was refused", answer.proposal,
                          RecordTypeName(proposal.record)));
  }
  if (proposal.leader && answer.term_over) StepDown(proposal.relay, "a write was fenced");
}

void Simulation::Settle(uint64_t id, Outcome outcome) {
  Proposal& proposal = proposals_[id];
  FP_CHECK(proposal.outcome == Outcome::kPending);
  FP_CHECK(outcome != Outcome::kPending);
  proposal.outcome = outcome;
  --pending_;
  StatusOr<uint64_t> answer = proposal.position;
  switch (outcome) {
    case Outcome::kAcked:
      ++stats_.appends_acked;
      Trace(fmt::format("node {}: #{} acknowledged at {}", proposal.relay, id, proposal.position));
      break;
    case Outcome::kRefused:
      ++stats_.appends_refused;
      answer = FailedPreconditionError("the log refused the record");
      Trace(fmt::format("node {}: #{} refused", proposal.relay, id));
      break;
    default:
      ++stats_.appends_abandoned;
      answer = UnavailableError("the append was not answered before its proposer gave up");
      Trace(fmt::format("node {}: #{} abandoned (indeterminate)", proposal.relay, id));
      break;
  }
  if (proposal.done) {
    // Moved out first: the callback may append again, which may move proposals_.
    Log::AppendCallback done = std::move(proposal.done);
    proposal.done = nullptr;
    done(std::move(answer));
  }
}

void Simulation::HostAppend(int node, pb::LogRecord record, Log::AppendCallback done) {
  Proposal proposal;
  proposal.own = true;
  proposal.key = IdempotencyKey(record);
  FP_CHECK(record.SerializeToString(&proposal.bytes));
  proposal.record = std::move(record);
  proposal.relay = node;
  proposal.relay_incarnation = nodes_[node].incarnation;
  proposal.done = std::move(done);
  const uint64_t id = proposals_.size();
  proposal.dedup_key = proposal.key.value_or(
      fmt::format("{}{} {} {}", kUnkeyedPrefix, node, proposal.relay_incarnation, id));
  proposals_.push_back(std::move(proposal));
  ++pending_;
  if (joining_ != node) {
    SendAppend(id);
    return;
  }
  // A starting supervisor waits for its CosignerJoined (CheckpointSigner::Join): this one append
  // reaches the log at once and is answered before Append returns.
  Proposal& joining = proposals_[id];
  const StatusOr<uint64_t> position = model_.Append(
      ModelAppend{joining.record, joining.bytes, joining.dedup_key, kNoTerm}, now_ms_);
  Trace(fmt::format(
      "log: node {} appends #{} {} at once: {}", node, id, RecordTypeName(joining.record),
      position.ok() ? fmt::format("at {}", *position) : std::string(position.status().message())));
  answers_.push_back(AppendAnswer{joining.dedup_key, joining.bytes, position.ok(),
                                  position.ok() ? *position : 0, false});
  joining.position = position.ok() ? *position : 0;
  Settle(id, position.ok() ? Outcome::kAcked : Outcome::kRefused);
}

uint64_t Simulation::HostTrim(int node, uint64_t below) {
  Message trim;
  trim.kind = MessageKind::kTrim;
  trim.node = node;
  trim.incarnation = nodes_[node].incarnation;
  trim.term = nodes_[node].term;
  trim.value = below;
  trim.sent_ms = now_ms_;
  Send(trim);
  return model_.Begin();
}

void Simulation::HostClose(int node) {
  for (uint64_t id = 0; id < proposals_.size(); ++id) {
    const Proposal& proposal = proposals_[id];
    if (proposal.own && proposal.relay == node && proposal.outcome == Outcome::kPending) {
      Settle(id, Outcome::kAbandoned);
    }
  }
}

// ---- Leadership -------------------------------------------------------------------------------

bool Simulation::Leads(int index) {
  Node& node = nodes_[index];
  if (node.term == kNoTerm) return false;
  if (node.sim->up() && now_ms_ < node.lease_deadline_ms) return true;
  StepDown(index, "its local lease deadline passed");
  return false;
}

void Simulation::StepDown(int index, std::string_view why) {
  Node& node = nodes_[index];
  if (node.term == kNoTerm) return;
  Trace(fmt::format("node {}: leaves term {}: {}", index, node.term, why));
  node.term = kNoTerm;
  for (uint64_t id = 0; id < proposals_.size(); ++id) {
    const Proposal& proposal = proposals_[id];
    if (proposal.leader && proposal.relay == index && proposal.outcome == Outcome::kPending) {
      Settle(id, Outcome::kAbandoned);
    }
  }
}

void Simulation::OnLease(int index) {
  Schedule(options_.campaign_every_ms, Timer(EventKind::kLease, index));
  Node& node = nodes_[index];
  if (!node.sim->up() || now_ms_ < node.paused_until_ms) return;
  Message request;
  request.node = index;
  request.incarnation = node.incarnation;
  request.sent_ms = now_ms_;
  if (Leads(index)) {
    if (now_ms_ - node.last_keepalive_ms < options_.keepalive_every_ms) return;
    node.last_keepalive_ms = now_ms_;
    request.kind = MessageKind::kKeepAlive;
    request.term = node.term;
  } else {
    request.kind = MessageKind::kCampaign;
  }
  Send(request);
}

void Simulation::OnLeaseAnswer(const Message& answer) {
  Node& node = nodes_[answer.node];
  const uint64_t deadline = answer.sent_ms + options_.lease_ttl_ms - options_.lease_margin_ms;
  if (answer.kind == MessageKind::kCampaign) {
    if (answer.code != StatusCode::kOk || answer.value <= node.newest_term) return;
    node.newest_term = answer.value;
    if (deadline <= now_ms_) return;  // granted too long ago: the term may be over already
    if (node.term != kNoTerm) StepDown(answer.node, "granted a newer term");
    node.term = answer.value;
    node.lease_deadline_ms = deadline;
    node.last_keepalive_ms = answer.sent_ms;
    Trace(fmt::format("node {}: leads term {} until {}", answer.node, node.term, deadline));
    return;
  }
  if (answer.term != node.term || node.term == kNoTerm) return;
  if (answer.code == StatusCode::kOk) {
    node.lease_deadline_ms = std::max(node.lease_deadline_ms, deadline);
  } else {
    StepDown(answer.node, "its lease is gone");
  }
}

void Simulation::OnPause() {
  if (finished_) return;
  for (int i = 0; i < options_.supervisors; ++i) {
    if (!Leads(i)) continue;
    nodes_[i].paused_until_ms =
        now_ms_ + random_.Range(options_.lease_ttl_ms, 2 * options_.lease_ttl_ms);
    Trace(fmt::format("node {}: paused until {} (no keepalives)", i, nodes_[i].paused_until_ms));
  }
  if (--pauses_left_ > 0) Schedule(random_.Range(200, 1500), Timer(EventKind::kPause));
}

// ---- Nodes ------------------------------------------------------------------------------------

void Simulation::StartNode(int index) {
  Node& node = nodes_[index];
  joining_ = index;
  const Status started = node.sim->Start(node.log.get());
  joining_ = -1;
  if (!started.ok()) return NodeFailed(index, started);
  Trace(fmt::format("node {}: starts at applied {}", index, node.sim->applied()));
}

void Simulation::NodeFailed(int index, const Status& status) {
  Violation(fmt::format("node {} failed: {}", index, status.ToString()));
  Node& node = nodes_[index];
  node.failed = true;
  if (!node.sim->up()) return;
  StepDown(index, "it failed");
  node.sim->Stop();
  TakeDown(index);
}

void Simulation::TakeDown(int index) {
  Node& node = nodes_[index];
  node.log->Close();
  ++node.incarnation;
  for (uint64_t id = 0; id < proposals_.size(); ++id) {
    const Proposal& proposal = proposals_[id];
    if (proposal.outcome != Outcome::kPending || proposal.relay != index) continue;
    if (proposal.leader || proposal.own) {
      Settle(id, Outcome::kAbandoned);
    } else {
      Schedule(random_.Range(kMinRerouteMs, kMaxRerouteMs),
               ForProposal(EventKind::kReroute, -1, 0, id, 0));
    }
  }
}

void Simulation::OnApply(int index) {
  Schedule(random_.Range(1, options_.apply_every_max_ms), Timer(EventKind::kApply, index));
  SimNode& node = *nodes_[index].sim;
  if (!node.up()) return;
  const uint64_t from = node.applied();
  StatusOr<size_t> applied = node.ApplyNext(model_, random_.Range(1, options_.max_apply_group));
  if (applied.status().code() == StatusCode::kOutOfRange) {
    Violation(
        fmt::format("node {} needs position {}: {}", index, from, applied.status().message()));
    return;
  }
  if (!applied.ok()) return NodeFailed(index, applied.status());
  if (*applied == 0) return;
  Trace(fmt::format("node {}: applied [{}, {}), ledger {}", index, from, node.applied(),
                    node.ledger_size()));
  auto [seen, inserted] = ledger_at_.emplace(node.applied(), node.ledger_size());
  if (!inserted && seen->second != node.ledger_size()) {
    Violation(fmt::format("node {} has {} ledger entries at position {}, another node had {}",
                          index, node.ledger_size(), node.applied(), seen->second));
  }
}

void Simulation::OnFlush(int index) {
  Schedule(options_.flush_every_ms, Timer(EventKind::kFlush, index));
  Node& node = nodes_[index];
  if (!node.sim->up()) return;
  StatusOr<uint64_t> durable = node.sim->Flush();
  if (!durable.ok()) return NodeFailed(index, durable.status());
  Message publish;
  publish.kind = MessageKind::kPublish;
  publish.node = index;
  publish.incarnation = node.incarnation;
  publish.value = *durable;
  publish.sent_ms = now_ms_;
  Send(publish);
}

void Simulation::OnCrash() {
  if (finished_) return;
  if (--crashes_left_ > 0) Schedule(random_.Range(50, 800), Timer(EventKind::kCrash));
  std::vector<int> up;
  for (int i = 0; i < options_.supervisors; ++i) {
    if (nodes_[i].sim->up()) up.push_back(i);
  }
  if (up.empty()) return;
  const int index = up[random_.Below(up.size())];
  Node& node = nodes_[index];
  ++stats_.crashes;
  Trace(fmt::format("node {}: CRASH (applied {}, flushed {})", index, node.sim->applied(),
                    node.sim->durable_applied()));
  StepDown(index, "it crashed");
  node.durable_at_crash = node.sim->durable_applied();
  const Status crashed = node.sim->Crash();
  TakeDown(index);
  if (!crashed.ok()) {
    Violation(fmt::format("node {} could not crash: {}", index, crashed.ToString()));
    node.failed = true;
    return;
  }
  Schedule(random_.Range(options_.restart_min_ms, options_.restart_max_ms),
           Timer(EventKind::kRestart, index));
}

void Simulation::OnRestart(int index) {
  Node& node = nodes_[index];
  if (node.failed || node.sim->up()) return;
  StartNode(index);
  if (!node.sim->up()) return;
  const uint64_t applied = node.sim->applied();
  if (applied < node.durable_at_crash) {
    Violation(fmt::format("node {} lost flushed state: applied {} after a crash at {}", index,
                          applied, node.durable_at_crash));
  }
  if (applied < model_.Begin()) {
    Violation(fmt::format("node {} restarted at {} but the log was trimmed to {}", index, applied,
                          model_.Begin()));
  }
}

void Simulation::OnTrim() {
  Schedule(options_.trim_every_ms, Timer(EventKind::kTrim));
  for (int i = 0; i < options_.supervisors; ++i) {
    if (!Leads(i)) continue;
    const Status trimmed = TrimBelow(i);
    if (!trimmed.ok()) NodeFailed(i, trimmed);
    return;
  }
}

Status Simulation::TrimBelow(int leader) {
  const RocksStore& store = nodes_[leader].sim->store();
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(store);
  if (latest.status().code() == StatusCode::kNotFound) return OkStatus();
  FP_RETURN_IF_ERROR(latest.status());
  DbStateReader reader(&store);
  FP_ASSIGN_OR_RETURN(
      std::optional<pb::CheckpointBody> body,
      reader.GetMessage<pb::CheckpointBody>(kCheckpoints, U64Key(latest->checkpoint.size)));
  if (!body.has_value()) return DataLossError("signed checkpoint without its body");
  // As the standalone supervisor's TrimLog: below the signed checkpoint's request, and (the
  // cluster's rule) below what every supervisor has durably applied.
  const uint64_t below =
      std::min(body->position() + 1, model_.MinPublishedApplied(options_.supervisors));
  if (below <= model_.Begin()) return OkStatus();
  return nodes_[leader].log->Trim(below).status();
}

void Simulation::CheckTrim(uint64_t begin) {
  for (int i = 0; i < options_.supervisors; ++i) {
    const Node& node = nodes_[i];
    const uint64_t durable = node.sim->up() ? node.sim->durable_applied() : node.durable_at_crash;
    if (durable < begin) {
      Violation(fmt::format("trim to {} passes node {}, which durably applied only {}", begin, i,
                            durable));
    }
  }
}

void Simulation::OnRound() {
  if (finished_) return;
  Schedule(kRoundPollMs, Timer(EventKind::kRound));
  int leader = -1;
  int leaders = 0;
  for (int i = 0; i < options_.supervisors; ++i) {
    if (!Leads(i)) continue;
    leader = i;
    ++leaders;
  }
  if (leaders > 1) Violation(fmt::format("{} nodes lead at once", leaders));
  if (leader < 0 || pending_ > 0) return;
  if (nodes_[leader].sim->applied() < model_.End()) return;
  const Status round = NextRound(leader);
  if (!round.ok()) NodeFailed(leader, round);
}

Status Simulation::NextRound(int leader) {
  const RocksStore& store = nodes_[leader].sim->store();
  FP_ASSIGN_OR_RETURN(bool done, fleet_.Done(store));
  if (done || stats_.rounds >= options_.max_rounds) {
    finished_ = true;
    stats_.workload_done = done;
    drain_until_ms_ = now_ms_ + options_.late_extra_ms + 2 * options_.max_delay_ms + 1;
    Trace(fmt::format("workload {} after {} rounds", done ? "done" : "stopped", stats_.rounds));
    return OkStatus();
  }
  FP_ASSIGN_OR_RETURN(std::vector<pb::LogRecord> records, fleet_.NextRound(store));
  ++stats_.rounds;
  Trace(fmt::format("round {}: node {} (term {}) proposes {} records", stats_.rounds, leader,
                    nodes_[leader].term, records.size()));
  for (pb::LogRecord& record : records) Propose(leader, std::move(record));
  return OkStatus();
}

// ---- End of run -------------------------------------------------------------------------------

void Simulation::Finish(ClusterSimResult& result) {
  if (!result.workload_done && stall_.empty()) {
    stall_ = fmt::format("the workload did not finish in {} rounds", result.rounds);
    Trace("STALL " + stall_);
  }
  for (int i = 0; i < options_.supervisors; ++i) {
    OnRestart(i);
    if (nodes_[i].sim->up()) CatchUp(i);
  }
  // The run is over: appends still unanswered stay indeterminate.
  for (uint64_t id = 0; id < proposals_.size(); ++id) {
    if (proposals_[id].outcome == Outcome::kPending) Settle(id, Outcome::kAbandoned);
  }
  for (std::string& violation : CheckLog(model_.history(), answers_)) {
    Violation(std::move(violation));
  }
  std::vector<const SimNode*> nodes;
  for (const Node& node : nodes_) nodes.push_back(node.sim.get());
  for (std::string& violation : CheckNodes(nodes, model_.End())) Violation(std::move(violation));
}

void Simulation::CatchUp(int index) {
  SimNode& node = *nodes_[index].sim;
  while (node.applied() < model_.End()) {
    StatusOr<size_t> applied = node.ApplyNext(model_, kMaxModelReadRecords);
    if (!applied.ok()) {
      return Violation(
          fmt::format("node {} cannot catch up: {}", index, applied.status().ToString()));
    }
    if (*applied == 0) return;
  }
}

Status Simulation::Summarize(ClusterSimResult& result) {
  Sha256Stream state;
  for (const ModelEntry& entry : model_.history()) {
    state.Update(entry.dedup_key);
    state.Update(entry.bytes);
  }
  result.log_records = model_.End();
  result.log_begin = model_.Begin();
  result.trace_hash = trace_hash_.Finish();
  result.violations = violations_;
  result.stall = stall_;
  const Node* reference = nullptr;
  for (const Node& node : nodes_) {
    if (node.sim->up()) {
      reference = &node;
      break;
    }
  }
  if (reference == nullptr) {
    result.state_hash = state.Finish();
    return OkStatus();
  }
  const RocksStore& store = reference->sim->store();
  for (const auto& [family, key, value] : testing::DumpStore(store)) {
    state.Update(family);
    state.Update(key);
    state.Update(value);
  }
  result.state_hash = state.Finish();
  FP_ASSIGN_OR_RETURN(AppliedMeta meta, ReadAppliedMeta(DbStateReader(&store)));
  result.verified_sessions = meta.phases.verified();
  std::unique_ptr<rocksdb::Iterator> it = store.NewIterator(kDivergences);
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++result.divergences;
  return FromRocks(it->status(), "scan divergences");
}

}  // namespace

testing::SimOptions ClusterSimOptions::SmallFleet() {
  testing::SimOptions fleet;
  fleet.workers = 5;
  fleet.sessions = 3;
  fleet.min_steps = 6;
  fleet.max_steps = 12;
  fleet.batch_steps = 3;
  fleet.max_unverified_steps = 8;
  fleet.fault_rate = 0.02;
  fleet.bad_fault_rate = 0.15;
  fleet.deadline_rate = 0.01;
  fleet.lose_worker_at_round = 4;
  return fleet;
}

std::string ClusterSimResult::Summary(uint64_t seed) const {
  std::string text = fmt::format("seed {}: {} violation(s)", seed, violations.size());
  for (const std::string& violation : violations) text += "\n  " + violation;
  if (!stall.empty()) text += "\n  stalled: " + stall;
  return text;
}

StatusOr<std::unique_ptr<SimScratch>> SimScratch::Create() {
  std::error_code error;
  const std::filesystem::path shm = "/dev/shm";
  const bool in_memory =
      std::filesystem::is_directory(shm, error) && ::access(shm.c_str(), W_OK) == 0;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ScopedTempDir> dir,
                      ScopedTempDir::Create("fp-sim", in_memory ? shm : std::filesystem::path()));
  std::unique_ptr<SimScratch> scratch(new SimScratch(std::move(dir)));
  FP_RETURN_IF_ERROR(CreateStoreTemplate(scratch->path() + "/template"));
  return scratch;
}

ClusterSimOptions SimScratch::Options(uint64_t seed) const {
  ClusterSimOptions options;
  options.seed = seed;
  options.dir = path();
  options.store_template = path() + "/template";
  return options;
}

StatusOr<ClusterSimResult> RunClusterSim(const ClusterSimOptions& options) {
  Simulation simulation(options);
  return simulation.Run();
}

}  // namespace fp::supervisor::sim
