// ApiClient: a typed client of the supervisor's HTTP API (supervisor/api/api.h) for `fieldprint
// submit`, `audit` and `demo`: submit a session, read its state, wait until it is verified, read
// its verified output and receipt, and fetch the proofs an audit checks.
//
// Failover. A client may hold several supervisors of one cluster (they serve the same log). A
// request goes to the current supervisor; on a connection failure, a timeout, or a 503/504 reply
// (draining, not ready, the log unavailable) it moves on to the next one, round robin, and the
// one that answers becomes current. Every request is bounded twice: at most `max_attempts`
// attempts, and all of them within `request_deadline` (an attempt connects within
// `attempt_timeout` and then sends and reads within `attempt_timeout`, each cut to half of what
// is left of the deadline when less is left). A POST is resent only when it carries an
// Idempotency-Key: Submit always sends one when the client may retry (a random one unless the
// caller gave its own), so the supervisor that gets the resend admits the same session (the id is
// derived from the key) and a failover never admits twice.
//
// The client trusts nothing it reads for verification: it only parses. Checking proofs against a
// pinned key is audit.h's job, offline.
//
// Error codes: a reply with an error body keeps the supervisor's code (NOT_FOUND, ...);
// Unavailable or DeadlineExceeded from the network; DataLoss for a reply that does not parse as
// the documented JSON.
//
// Thread-safety: an ApiClient is used by one thread (it owns one kept-alive connection).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

#include "common/base/status.h"
#include "common/crypto/sha256.h"
#include "supervisor/net/http_client.h"

namespace fp::client {

// How often waits poll the session state.
inline constexpr std::chrono::milliseconds kSessionPollInterval{100};
// Supervisor URLs one client holds, and attempts one request may make across them.
inline constexpr size_t kMaxSupervisorUrls = 16;
inline constexpr uint32_t kMaxFailoverAttempts = 64;

struct SupervisorUrl {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const;  // "http://host:port"
};

// Parses "http://HOST:PORT" (a trailing "/" is allowed; HOST is a name or an IPv4 literal).
// InvalidArgument otherwise: https, paths and user info are not supported.
StatusOr<SupervisorUrl> ParseSupervisorUrl(std::string_view url);
// Parses a comma-separated list of such URLs (spaces around entries are ignored), 1 to
// kMaxSupervisorUrls of them. InvalidArgument naming the bad entry, or for an empty list.
StatusOr<std::vector<SupervisorUrl>> ParseSupervisorUrls(std::string_view urls);

struct FailoverOptions {
  std::chrono::milliseconds attempt_timeout{10'000};   // one attempt on one supervisor
  std::chrono::milliseconds request_deadline{30'000};  // all attempts of one request
  uint32_t max_attempts = 6;                           // 1..kMaxFailoverAttempts
  // Pause after a round in which every supervisor failed (bounded by the deadline).
  std::chrono::milliseconds round_pause{200};
};

struct SubmitRequest {
  std::string model;
  std::vector<uint32_t> prompt_token_ids;
  std::optional<uint32_t> max_tokens;  // the supervisor's default when absent
  std::optional<uint32_t> replicas;    // the supervisor's default when absent
  double temperature = 0;              // 0: greedy
  uint64_t seed = 0;
  // Sent as Idempotency-Key (1..255 printable ASCII). Empty: the client makes a random one when
  // it may resend the request (max_attempts > 1), else sends none.
  std::string idempotency_key;
};

// The session id a supervisor derives from an Idempotency-Key (docs/supervisor.md, HTTP API):
// the first 16 bytes of SHA-256("fieldprint idempotency key" || 0x00 || key), as 32 hex digits.
// Lets a client that lost the reply find out whether its submission was admitted.
std::string SessionIdForIdempotencyKey(std::string_view key);

// The request body of POST /v1/sessions.
boost::json::object SubmitBody(const SubmitRequest& request);

struct ReplicaView {
  uint32_t replica = 0;
  std::string worker_id;  // empty while the replica waits for placement
  uint64_t epoch = 0;     // advances on every rollback and re-placement
  uint64_t stored_steps = 0;
  uint64_t next_step = 0;
  bool finished = false;
};

struct SessionView {
  std::string session_id;  // 32 hex characters
  std::string phase;       // "waiting", "running", "verified" or "failed"
  std::string model;
  uint64_t verified_steps = 0;
  uint64_t max_tokens = 0;
  uint32_t divergences = 0;
  std::vector<ReplicaView> replicas;
  std::string session_root;  // hex, once verified
  std::optional<uint64_t> ledger_index;
  std::string failure;

  bool done() const { return phase == "verified" || phase == "failed"; }
  // Rollbacks and re-placements of all replicas: the sum of their epochs.
  uint64_t epochs_advanced() const;
};

// Parses the JSON of GET /v1/sessions/{id}. DataLoss when a documented field is missing or of the
// wrong type.
StatusOr<SessionView> ParseSessionView(std::string_view json_text);

struct SessionOutput {
  std::vector<uint32_t> token_ids;
  boost::json::object receipt;  // the "verified" event's data
};

// Parses the server-sent events of GET /v1/sessions/{id}/events for a finished session: the
// "token" events in step order, then the "verified" receipt. Aborted for an "error" event;
// DataLoss for a stream that skips a step or ends without a receipt.
StatusOr<SessionOutput> ParseEventStream(std::string_view stream);

struct StepProofView {
  uint64_t step = 0;
  uint64_t tree_size = 0;
  Hash root{};
  uint32_t token_id = 0;
  Hash state_digest{};
  Hash leaf_hash{};
  std::vector<Hash> proof;
};

// Prompts as text for byte-level models (the tiny models of `fieldprint model mk-tiny`): one
// token id per UTF-8 byte, no special tokens. Other models take token ids.
std::vector<uint32_t> BytePromptTokens(std::string_view text);
// The text of byte-level output tokens: ids below 256 are bytes; others (special tokens) are
// shown as "<id>".
std::string ByteOutputText(const std::vector<uint32_t>& token_ids);
// SHA-256 over the token ids, 4 bytes big-endian each: the session record's prompt and output
// hashes (supervisor/state/state.proto).
Hash TokenHash(const std::vector<uint32_t>& token_ids);

// Parses the JSON of GET /v1/sessions/{id}/proof/step/{n}; DataLoss when malformed.
StatusOr<StepProofView> ParseStepProof(std::string_view json_text);

struct WorkerView {
  std::string worker_id;
  std::string phase;  // "active", "lost" or "quarantined"
  uint32_t replicas = 0;
  uint32_t divergences = 0;
};

class ApiClient {
 public:
  // One supervisor, one attempt per request: each request must finish within `timeout`.
  explicit ApiClient(const SupervisorUrl& url,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Several supervisors of one cluster with failover (see the top of this file). `urls` holds
  // 1..kMaxSupervisorUrls entries and options.max_attempts is 1..kMaxFailoverAttempts (FP_CHECK:
  // ParseSupervisorUrls and the CLI bound them).
  ApiClient(std::vector<SupervisorUrl> urls, const FailoverOptions& options);
  ~ApiClient();
  ApiClient(ApiClient&&) noexcept;
  ApiClient& operator=(ApiClient&&) noexcept;

  // The supervisor the next request goes to first.
  const SupervisorUrl& url() const { return urls_[current_]; }
  const std::vector<SupervisorUrl>& urls() const { return urls_; }
  // Times a request moved on to another supervisor, over this client's life.
  uint64_t failovers() const { return failovers_; }

  // POST /v1/sessions; returns the new session's id (32 hex characters). With an Idempotency-Key
  // (given or made, see SubmitRequest) a resend after a lost reply returns the same session.
  // An error after the request may have reached a supervisor (DeadlineExceeded, Unavailable) is
  // indeterminate: SessionIdForIdempotencyKey names the session to look for.
  StatusOr<std::string> Submit(const SubmitRequest& request);
  // Submit, reporting the Idempotency-Key it sent (empty: none) in `key_sent` even on failure.
  StatusOr<std::string> Submit(const SubmitRequest& request, std::string& key_sent);
  // GET /v1/sessions/{id}.
  StatusOr<SessionView> Session(const std::string& session_id);
  // Polls the state until the session is verified or failed, calling `on_change` (may be empty)
  // whenever the state differs from the previous poll. Returns the final state (a failed session
  // is returned, not an error); DeadlineExceeded when `timeout` passes first. A session that is
  // not found is polled again until it is first seen (a submission is acknowledged when durable,
  // and can be read once applied), then NotFound is an error; with several supervisors NotFound
  // moves the poll to the next supervisor until the timeout (the one asked may have applied less,
  // or be cut off from the log).
  StatusOr<SessionView> WaitDone(const std::string& session_id, std::chrono::milliseconds timeout,
                                 const std::function<void(const SessionView&)>& on_change);
  // The verified tokens and receipt of a verified session (GET /v1/sessions/{id}/events).
  StatusOr<SessionOutput> Output(const std::string& session_id);
  // GET /v1/sessions/{id}/bundle: the tlog-proof bundle text. FailedPrecondition until a signed
  // checkpoint covers the session record.
  StatusOr<std::string> Bundle(const std::string& session_id);
  // GET /v1/sessions/{id}/proof/step/{step}.
  StatusOr<StepProofView> StepProof(const std::string& session_id, uint64_t step);
  // GET /v1/workers.
  StatusOr<std::vector<WorkerView>> Workers();
  // GET of a plain-text route (/v1/checkpoint, /metrics, /readyz, /healthz): the body of a 200.
  StatusOr<std::string> GetText(const std::string& path);
  // Polls /readyz until it answers 200; DeadlineExceeded (with the last answer) after `timeout`.
  Status WaitReady(std::chrono::milliseconds timeout);

 private:
  // The body of a 2xx reply; the reply's error otherwise, after failover as described above.
  StatusOr<std::string> Call(boost::beast::http::verb method, const std::string& target,
                             const std::string& body, const supervisor::HttpHeaders& headers = {});
  // One attempt on the current supervisor, within `budget`.
  StatusOr<supervisor::HttpResponse> Attempt(boost::beast::http::verb method,
                                             const std::string& target, const std::string& body,
                                             const supervisor::HttpHeaders& headers,
                                             std::chrono::milliseconds budget);

  std::vector<SupervisorUrl> urls_;
  FailoverOptions options_;
  size_t current_ = 0;
  uint64_t failovers_ = 0;
  // One kept-alive connection per supervisor (attempt_timeout each), made on first use.
  std::vector<std::unique_ptr<supervisor::HttpClient>> http_;
};

// The Status an error reply stands for: the code named in its JSON error body, or one derived
// from the HTTP status when the body is not a JSON error.
Status StatusFromReply(unsigned http_status, std::string_view body);

}  // namespace fp::client
