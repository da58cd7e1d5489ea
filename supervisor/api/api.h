// The supervisor's HTTP API as pure request handlers: a request goes in, an ApiAction comes out.
// Spec: docs/supervisor.md, "HTTP API".
//
// The handlers never touch a socket or the log. They read the applied state (a local RocksDB
// read) and describe what the server must do: send a reply, append a record first (submissions),
// or follow a session (server-sent events, completions) by calling Poll until it is done. The
// server (http_server.h) carries actions out; tests call Handle and Poll directly.
//
// Routes:
//   POST /v1/sessions                         submit a session (JSON) -> 202 {session_id}
//   GET  /v1/sessions/{id}                    the session's state
//   GET  /v1/sessions/{id}/events             server-sent events of verified tokens
//   POST /v1/completions                      OpenAI-compatible completions (stream or not); the
//                                             prompt is token ids, or text for a model with a
//                                             configured tokenizer, which also fills `text`
//   GET  /v1/checkpoint                       the latest signed checkpoint (C2SP signed note)
//                                             with every stored cosignature line
//   GET  /v1/checkpoint/key                   the checkpoint verifier key (C2SP note vkey)
//   GET  /v1/checkpoint/cosigners             the registered cosigners' keys (C2SP
//                                             cosignature/v1 vkeys), one per line
//   GET  /v1/sessions/{id}/proof/step/{n}     inclusion of step n's leaf in the session root
//   GET  /v1/ledger/proof/session/{id}?size=N inclusion of the session record in a checkpoint
//   GET  /v1/ledger/consistency?from=A&to=B   consistency between two ledger sizes
//   GET  /v1/sessions/{id}/bundle             the session record's tlog-proof bundle
//   GET  /v1/workers                          registered workers
//   POST /v1/admin/workers/{id}/release       release a quarantined worker (admin token)
//   GET  /v1/cluster                          leadership, this supervisor's applied position, the
//                                             log's begin and end, the member table
//   GET  /v1/admin/snapshot[?member=NAME]     a snapshot of the state (cluster/snapshot.h), for
//                                             bootstrapping member NAME (admin token)
//   POST /v1/admin/members/{name}/remove      retire a member from the member table (admin token)
//   GET  /healthz, /readyz, /metrics
// POST /v1/sessions and /v1/completions honour an Idempotency-Key header: the session id is
// derived from the key (IdempotentSessionId), so a retry appends the same Admit, which the log
// deduplicates; the same key with a different request is a 409 from the log.
// Errors are JSON {"error": {"code": "INVALID_ARGUMENT", "message": "..."}} with a 4xx or 5xx
// status mapped from the Status code.
//
// Thread-safety: Api is immutable after construction; Handle and Poll are safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/beast/http/verb.hpp>

#include "common/base/status.h"
#include "common/leaf/session_id.h"
#include "common/tlog/note.h"
#include "common/tokenizer/tokenizer.h"
#include "supervisor/cluster/snapshot.h"
#include "supervisor/log/log.h"
#include "supervisor/store/rocks.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace fp::supervisor {

// Bounds on what one request may carry; the server enforces the byte limits before parsing.
inline constexpr size_t kMaxRequestBodyBytes = size_t{4} << 20;
inline constexpr size_t kMaxRequestHeaderBytes = 16 * 1024;
inline constexpr size_t kMaxRequestTargetBytes = 2048;
// Tokens sent per poll of a follow, so that one poll stays small.
inline constexpr size_t kMaxTokensPerPoll = 4096;
// Idempotency-Key header values: 1..kMaxIdempotencyKeyBytes printable ASCII characters.
inline constexpr size_t kMaxIdempotencyKeyBytes = 255;
// Divergence records listed in one GET /v1/sessions/{id} (the ledger keeps every one).
inline constexpr uint32_t kMaxReportedDivergences = 64;

struct HttpRequest {
  boost::beast::http::verb method = boost::beast::http::verb::get;
  std::string target;  // path and query, as received
  std::string body;
  std::string idempotency_key = {};  // the Idempotency-Key header; empty when absent
  std::string authorization = {};    // the Authorization header; empty when absent
};

struct HttpReply {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// A session the server keeps following after the reply's headers went out.
struct Follow {
  enum class Kind {
    kNone,
    kEvents,            // text/event-stream of verified tokens, then a receipt
    kCompletion,        // one JSON reply once the session is verified
    kCompletionStream,  // OpenAI streaming chunks, then [DONE]
    kSnapshot,          // the bytes of a state snapshot (application/octet-stream)
  };
  Kind kind = Kind::kNone;
  std::string session_id;  // 16 bytes
  uint64_t next_step = 0;  // first token not yet sent
  std::string model;       // echoed in completion responses
  // Completions of a model with a tokenizer: the tokens streamed so far and the bytes of their
  // text already sent (the text of a token depends on its neighbours, so each chunk's text is
  // the growth of the whole output's text).
  std::vector<int32_t> streamed_tokens;
  size_t streamed_text_bytes = 0;
  // kSnapshot: the stream being sent (shared by the copies of the follow; closing the last one
  // deletes the snapshot's files).
  std::shared_ptr<cluster::SnapshotStream> snapshot;
};

struct ApiAction {
  HttpReply reply;
  // Append this record first; send `reply` (and follow) only once it is durable.
  std::optional<pb::LogRecord> append;
  Follow follow;
};

struct PollResult {
  std::string chunk;               // stream bytes to write now (may be empty)
  std::optional<HttpReply> reply;  // kCompletion: the reply, once there is one
  bool done = false;               // the follow is over
};

// Defaults for submitted sessions; every supervisor of a cluster should share them.
struct SessionDefaults {
  uint32_t replicas = 3;
  uint32_t max_unverified_steps = 64;
  uint32_t max_tokens = 16;
  // Per model: the numerics profile and anchor set hashes used when a request names none.
  struct ModelProfile {
    std::string numerics_profile;  // 32 bytes
    std::string anchor_set_hash;   // 32 bytes
  };
  std::map<std::string, ModelProfile> models;
};

// What GET /v1/cluster and /readyz report about the cluster this supervisor belongs to.
struct ClusterStatus {
  bool cluster = false;  // a member of a cluster on an etcd log (else a standalone supervisor)
  std::string name;      // this supervisor's name (its TLS name)
  std::string leader;    // the leader's name; empty while none is known
  bool is_leader = false;
  int64_t term = 0;  // the leader's term (fencing token); 0 for a standalone supervisor
  uint64_t applied = 0;
  uint64_t log_begin = 0;
  uint64_t log_end = 0;
  // The member table as last read (name -> durably applied position); empty when standalone.
  std::map<std::string, uint64_t> members;
  // False while this member cannot write to etcd (its member publications fail): /readyz fails
  // and workers are sent to another member.
  bool log_reachable = true;
};

struct ApiContext {
  const RocksStore* state = nullptr;               // borrowed: the applied state
  const Log* log = nullptr;                        // borrowed: End() for readiness
  const prometheus::Registry* registry = nullptr;  // borrowed; null serves no /metrics
  std::string origin;                              // the ledger's checkpoint origin
  std::optional<tlog::NoteVerifier> verifier;      // verifies bundles before they are served
  SessionDefaults defaults;
  // Randomness: a fresh session id per submission.
  std::function<StatusOr<SessionId>()> new_session_id;
  // Borrowed: the applied position (the applier's) and whether the process is draining.
  std::function<uint64_t()> applied;
  const std::atomic<bool>* draining = nullptr;
  // /readyz fails until the applier has reached this position (the log's end when the process
  // started: recovery is done), and while it is more than max_ready_lag records behind the log.
  uint64_t recovery_position = 0;
  uint64_t max_ready_lag = 100'000;
  // The operator's bearer token for /v1/admin/ routes; empty disables them (403).
  std::string admin_token;
  // Per model: the tokenizer of text prompts and completion text (shared, immutable).
  std::map<std::string, std::shared_ptr<const tokenizer::Tokenizer>> tokenizers;
  // Cluster routes, provided by the runtime (each may be null: the route then answers 404 or, for
  // /readyz, omits the cluster lines). They run on the HTTP server's threads and must be
  // thread-safe. `open_snapshot` takes a snapshot of the state (an empty member name reserves
  // nothing; see cluster/members.h); `remove_member` deletes a member's entry, true if there was
  // one, FailedPrecondition for a supervisor that is not in a cluster.
  std::function<ClusterStatus()> cluster_status;
  std::function<StatusOr<std::shared_ptr<cluster::SnapshotStream>>(const std::string& member)>
      open_snapshot;
  std::function<StatusOr<bool>(const std::string& member)> remove_member;
};

// The session id a submission with Idempotency-Key `key` gets: the first 16 bytes of
// SHA-256("fieldprint idempotency key\0" || key). Pure.
std::string IdempotentSessionId(std::string_view key);

class Api {
 public:
  // FP_CHECKs that state, log, new_session_id and applied are set.
  explicit Api(ApiContext context);

  ApiAction Handle(const HttpRequest& request) const;
  // The reply for a request whose append failed.
  HttpReply AppendFailed(const Status& status) const;
  // Advances a follow: what to send now, and whether it is over.
  PollResult Poll(Follow& follow) const;

  // The JSON error reply for a Status (code mapped to an HTTP status).
  static HttpReply ErrorReply(const Status& status);

 private:
  ApiAction SubmitSession(const HttpRequest& request) const;
  ApiAction SubmitCompletion(const HttpRequest& request) const;
  HttpReply SessionState(const std::string& id) const;
  ApiAction FollowEvents(const std::string& id) const;
  HttpReply Checkpoint() const;
  HttpReply StepProof(const std::string& id, std::string_view step) const;
  HttpReply LedgerProof(const std::string& id, std::string_view query) const;
  HttpReply Consistency(std::string_view query) const;
  HttpReply Bundle(const std::string& id) const;
  HttpReply Workers() const;
  HttpReply CheckpointKey() const;
  ApiAction ReleaseWorker(const HttpRequest& request, std::string_view worker_id) const;
  // PermissionDenied while admin routes are disabled, Unauthenticated without the right token.
  Status CheckAdmin(const HttpRequest& request) const;
  HttpReply Cluster() const;
  ApiAction Snapshot(const HttpRequest& request, std::string_view query) const;
  HttpReply RemoveMember(const HttpRequest& request, std::string_view member) const;
  PollResult PollSnapshot(Follow& follow) const;
  // The session id of a submission: derived from its Idempotency-Key, else fresh.
  StatusOr<std::string> SubmissionId(const HttpRequest& request) const;
  HttpReply Ready() const;
  HttpReply Metrics() const;
  PollResult PollEvents(Follow& follow) const;
  PollResult PollCompletion(Follow& follow, bool stream) const;
  // The model's tokenizer, or null when none is configured.
  const tokenizer::Tokenizer* TokenizerFor(const std::string& model) const;
  // The text of `tokens` appended to the follow's output, as described at Follow; with `final`
  // an incomplete UTF-8 sequence at the end is sent too.
  StatusOr<std::string> NextText(Follow& follow, const std::vector<uint32_t>& tokens,
                                 bool final) const;

  ApiContext context_;
};

}  // namespace fp::supervisor
