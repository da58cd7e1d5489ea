// ApiClient; see api_client.h.
#include "supervisor/client/api_client.h"

#include <charconv>
#include <random>
#include <thread>

#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/merkle/merkle.h"

namespace fp::client {
namespace {

namespace json = boost::json;
using boost::beast::http::verb;
using Clock = std::chrono::steady_clock;

// Events a finished session's stream may hold: one per step plus the receipt.
constexpr size_t kMaxEvents = size_t{1} << 20;
constexpr char kIdempotencyHeader[] = "Idempotency-Key";

// Replies that say "not this supervisor, not now": draining or not ready (503), or the log did
// not answer in time (504). Other replies are answers and end the request.
bool RetryableReply(unsigned http_status) { return http_status == 503 || http_status == 504; }

bool RetryableError(const Status& status) {
  return status.code() == StatusCode::kUnavailable ||
         status.code() == StatusCode::kDeadlineExceeded;
}

// 128 random bits as hex: a fresh Idempotency-Key, unique without coordination.
std::string RandomIdempotencyKey() {
  std::random_device device;
  Bytes bytes;
  for (int i = 0; i < 4; ++i) AppendU32(bytes, device());
  return "fp-" + HexEncode(ByteSpan(bytes));
}

bool HasHeader(const supervisor::HttpHeaders& headers, std::string_view name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& header) { return header.first == name; });
}

Status Malformed(std::string_view what, std::string_view field) {
  return DataLossError(fmt::format("{}: field '{}' is missing or malformed", what, field));
}

StatusOr<json::object> ParseJsonObject(std::string_view text, std::string_view what) {
  boost::system::error_code error;
  json::value value = json::parse(text, error);
  if (error || !value.is_object()) {
    return DataLossError(fmt::format("{}: the reply is not a JSON object", what));
  }
  return std::move(value.get_object());
}

std::optional<uint64_t> AsU64(const json::value* value) {
  if (value == nullptr) return std::nullopt;
  if (value->is_uint64()) return value->get_uint64();
  if (value->is_int64() && value->get_int64() >= 0) return value->get_int64();
  return std::nullopt;
}

StatusOr<uint64_t> U64Field(const json::object& object, std::string_view key,
                            std::string_view what) {
  std::optional<uint64_t> value = AsU64(object.if_contains(key));
  if (!value.has_value()) return Malformed(what, key);
  return *value;
}

StatusOr<uint32_t> U32Field(const json::object& object, std::string_view key,
                            std::string_view what) {
  FP_ASSIGN_OR_RETURN(uint64_t value, U64Field(object, key, what));
  if (value > UINT32_MAX) return Malformed(what, key);
  return static_cast<uint32_t>(value);
}

StatusOr<std::string> StringField(const json::object& object, std::string_view key,
                                  std::string_view what) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr || !value->is_string()) return Malformed(what, key);
  return std::string(value->get_string());
}

StatusOr<Hash> HashField(const json::object& object, std::string_view key, std::string_view what) {
  FP_ASSIGN_OR_RETURN(std::string text, StringField(object, key, what));
  StatusOr<Hash> hash = HashFromHex(text);
  if (!hash.ok()) return Malformed(what, key);
  return *hash;
}

StatusOr<ReplicaView> ParseReplica(const json::value& value) {
  constexpr std::string_view kWhat = "session replica";
  if (!value.is_object()) return Malformed(kWhat, "replicas");
  const json::object& object = value.get_object();
  ReplicaView replica;
  FP_ASSIGN_OR_RETURN(replica.replica, U32Field(object, "replica", kWhat));
  FP_ASSIGN_OR_RETURN(replica.worker_id, StringField(object, "worker_id", kWhat));
  FP_ASSIGN_OR_RETURN(replica.epoch, U64Field(object, "epoch", kWhat));
  FP_ASSIGN_OR_RETURN(replica.stored_steps, U64Field(object, "stored_steps", kWhat));
  FP_ASSIGN_OR_RETURN(replica.next_step, U64Field(object, "next_step", kWhat));
  const json::value* finished = object.if_contains("finished");
  if (finished == nullptr || !finished->is_bool()) return Malformed(kWhat, "finished");
  replica.finished = finished->get_bool();
  return replica;
}

bool SameState(const SessionView& a, const SessionView& b) {
  if (a.phase != b.phase || a.verified_steps != b.verified_steps ||
      a.divergences != b.divergences || a.replicas.size() != b.replicas.size()) {
    return false;
  }
  for (size_t r = 0; r < a.replicas.size(); ++r) {
    if (a.replicas[r].worker_id != b.replicas[r].worker_id ||
        a.replicas[r].epoch != b.replicas[r].epoch) {
      return false;
    }
  }
  return true;
}

// One server-sent event: its name and data.
struct Event {
  std::string_view name;
  std::string_view data;
};

// Splits an event stream at blank lines; lines other than "event:" and "data:" are ignored.
StatusOr<std::vector<Event>> SplitEvents(std::string_view stream) {
  std::vector<Event> events;
  Event current;
  while (!stream.empty()) {
    const size_t end = stream.find('\n');
    std::string_view line = stream.substr(0, end);
    stream = end == std::string_view::npos ? std::string_view() : stream.substr(end + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      if (!current.name.empty() || !current.data.empty()) {
        if (events.size() >= kMaxEvents) return DataLossError("event stream: too many events");
        events.push_back(current);
      }
      current = Event();
    } else if (line.starts_with("event:")) {
      current.name = line.substr(6);
      if (current.name.starts_with(' ')) current.name.remove_prefix(1);
    } else if (line.starts_with("data:")) {
      current.data = line.substr(5);
      if (current.data.starts_with(' ')) current.data.remove_prefix(1);
    }
  }
  return events;
}

}  // namespace

std::string SupervisorUrl::ToString() const { return fmt::format("http://{}:{}", host, port); }

StatusOr<SupervisorUrl> ParseSupervisorUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  const auto bad = [&](std::string_view why) {
    return InvalidArgumentError(
        fmt::format("supervisor URL '{}': {} (expected http://HOST:PORT)", url, why));
  };
  if (!url.starts_with(kScheme)) return bad("only http:// is supported");
  std::string_view rest = url.substr(kScheme.size());
  if (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.find_first_of("/@?#") != std::string_view::npos) return bad("no path or user info");
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("a host and a port are required");
  const std::string_view port_text = rest.substr(colon + 1);
  unsigned port = 0;
  auto [end, error] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc() || end != port_text.data() + port_text.size() ||
      port == 0 || port > 65535) {
    return bad("the port must be in 1..65535");
  }
  return SupervisorUrl{std::string(rest.substr(0, colon)), static_cast<uint16_t>(port)};
}

StatusOr<std::vector<SupervisorUrl>> ParseSupervisorUrls(std::string_view urls) {
  std::vector<SupervisorUrl> parsed;
  std::string_view rest = urls;
  while (true) {
    const size_t comma = rest.find(',');
    std::string_view entry = rest.substr(0, comma);
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    if (parsed.size() == kMaxSupervisorUrls) {
      return InvalidArgumentError(
          fmt::format("more than {} supervisor URLs in '{}'", kMaxSupervisorUrls, urls));
    }
    FP_ASSIGN_OR_RETURN(SupervisorUrl url, ParseSupervisorUrl(entry));
    parsed.push_back(std::move(url));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return parsed;
}

std::string SessionIdForIdempotencyKey(std::string_view key) {
  std::string input("fieldprint idempotency key");
  input.push_back('\0');
  input.append(key);
  const Hash hash = Sha256(AsBytes(input));
  return HexEncode(ByteSpan(hash.data(), 16));
}

json::object SubmitBody(const SubmitRequest& request) {
  json::object body;
  body["model"] = request.model;
  json::array prompt;
  for (uint32_t token : request.prompt_token_ids) prompt.emplace_back(token);
  body["prompt_token_ids"] = std::move(prompt);
  if (request.max_tokens.has_value()) body["max_tokens"] = *request.max_tokens;
  if (request.replicas.has_value()) body["replicas"] = *request.replicas;
  body["temperature"] = request.temperature;
  body["seed"] = request.seed;
  return body;
}

uint64_t SessionView::epochs_advanced() const {
  uint64_t total = 0;
  for (const ReplicaView& replica : replicas) total += replica.epoch;
  return total;
}

StatusOr<SessionView> ParseSessionView(std::string_view json_text) {
  constexpr std::string_view kWhat = "session state";
  FP_ASSIGN_OR_RETURN(json::object object, ParseJsonObject(json_text, kWhat));
  SessionView view;
  FP_ASSIGN_OR_RETURN(view.session_id, StringField(object, "session_id", kWhat));
  FP_ASSIGN_OR_RETURN(view.phase, StringField(object, "phase", kWhat));
  FP_ASSIGN_OR_RETURN(view.model, StringField(object, "model", kWhat));
  FP_ASSIGN_OR_RETURN(view.verified_steps, U64Field(object, "verified_steps", kWhat));
  FP_ASSIGN_OR_RETURN(view.max_tokens, U64Field(object, "max_tokens", kWhat));
  FP_ASSIGN_OR_RETURN(view.divergences, U32Field(object, "divergences", kWhat));
  const json::value* replicas = object.if_contains("replicas");
  if (replicas == nullptr || !replicas->is_array()) return Malformed(kWhat, "replicas");
  for (const json::value& replica : replicas->get_array()) {
    FP_ASSIGN_OR_RETURN(ReplicaView parsed, ParseReplica(replica));
    view.replicas.push_back(std::move(parsed));
  }
  if (view.phase == "verified") {
    FP_ASSIGN_OR_RETURN(view.session_root, StringField(object, "session_root", kWhat));
    FP_ASSIGN_OR_RETURN(view.ledger_index, U64Field(object, "ledger_index", kWhat));
  }
  if (const json::value* failure = object.if_contains("failure");
      failure != nullptr && failure->is_string()) {
    view.failure = std::string(failure->get_string());
  }
  return view;
}

StatusOr<SessionOutput> ParseEventStream(std::string_view stream) {
  FP_ASSIGN_OR_RETURN(std::vector<Event> events, SplitEvents(stream));
  SessionOutput output;
  for (const Event& event : events) {
    if (event.name == "error") {
      return AbortedError(fmt::format("the supervisor ended the stream: {}", event.data));
    }
    if (event.name == "token") {
      FP_ASSIGN_OR_RETURN(json::object data, ParseJsonObject(event.data, "token event"));
      FP_ASSIGN_OR_RETURN(uint64_t step, U64Field(data, "step", "token event"));
      FP_ASSIGN_OR_RETURN(uint32_t token, U32Field(data, "token_id", "token event"));
      if (step != output.token_ids.size()) {
        return DataLossError(fmt::format("token event for step {} where step {} was due", step,
                                         output.token_ids.size()));
      }
      output.token_ids.push_back(token);
    } else if (event.name == "verified") {
      FP_ASSIGN_OR_RETURN(output.receipt, ParseJsonObject(event.data, "verified event"));
      return output;
    }
  }
  return DataLossError("the event stream ended without a verified receipt");
}

std::vector<uint32_t> BytePromptTokens(std::string_view text) {
  std::vector<uint32_t> tokens;
  tokens.reserve(text.size());
  for (char c : text) tokens.push_back(static_cast<uint8_t>(c));
  return tokens;
}

std::string ByteOutputText(const std::vector<uint32_t>& token_ids) {
  std::string text;
  for (uint32_t token : token_ids) {
    if (token < 256) {
      text.push_back(static_cast<char>(token));
    } else {
      text += fmt::format("<{}>", token);
    }
  }
  return text;
}

Hash TokenHash(const std::vector<uint32_t>& token_ids) {
  Bytes bytes;
  bytes.reserve(token_ids.size() * 4);
  for (uint32_t token : token_ids) AppendU32(bytes, token);
  return Sha256(ByteSpan(bytes));
}

StatusOr<StepProofView> ParseStepProof(std::string_view json_text) {
  constexpr std::string_view kWhat = "step proof";
  FP_ASSIGN_OR_RETURN(json::object object, ParseJsonObject(json_text, kWhat));
  StepProofView view;
  FP_ASSIGN_OR_RETURN(view.step, U64Field(object, "step", kWhat));
  FP_ASSIGN_OR_RETURN(view.tree_size, U64Field(object, "tree_size", kWhat));
  FP_ASSIGN_OR_RETURN(view.root, HashField(object, "root", kWhat));
  const json::value* leaf = object.if_contains("leaf");
  if (leaf == nullptr || !leaf->is_object()) return Malformed(kWhat, "leaf");
  FP_ASSIGN_OR_RETURN(view.token_id, U32Field(leaf->get_object(), "token_id", kWhat));
  FP_ASSIGN_OR_RETURN(view.state_digest, HashField(leaf->get_object(), "state_digest", kWhat));
  FP_ASSIGN_OR_RETURN(view.leaf_hash, HashField(leaf->get_object(), "leaf_hash", kWhat));
  const json::value* proof = object.if_contains("proof");
  if (proof == nullptr || !proof->is_array() ||
      proof->get_array().size() > static_cast<size_t>(merkle::kMaxLevels)) {
    return Malformed(kWhat, "proof");
  }
  for (const json::value& hash : proof->get_array()) {
    if (!hash.is_string()) return Malformed(kWhat, "proof");
    StatusOr<Hash> parsed = HashFromHex(std::string_view(hash.get_string()));
    if (!parsed.ok()) return Malformed(kWhat, "proof");
    view.proof.push_back(*parsed);
  }
  return view;
}

Status StatusFromReply(unsigned http_status, std::string_view body) {
  boost::system::error_code error;
  json::value value = json::parse(body, error);
  if (!error && value.is_object()) {
    const json::value* inner = value.get_object().if_contains("error");
    if (inner != nullptr && inner->is_object()) {
      const json::object& fields = inner->get_object();
      const json::value* code = fields.if_contains("code");
      const json::value* message = fields.if_contains("message");
      const std::string text =
          message != nullptr && message->is_string() ? std::string(message->get_string()) : "";
      for (int c = 1; c <= static_cast<int>(StatusCode::kUnauthenticated); ++c) {
        const StatusCode candidate = static_cast<StatusCode>(c);
        if (code != nullptr && code->is_string() &&
            code->get_string() == StatusCodeName(candidate)) {
          return Status(candidate, text);
        }
      }
    }
  }
  const std::string text = fmt::format("HTTP {}: {}", http_status, body.substr(0, 200));
  switch (http_status) {
    case 400:
      return InvalidArgumentError(text);
    case 404:
      return NotFoundError(text);
    case 409:
      return FailedPreconditionError(text);
    case 429:
      return ResourceExhaustedError(text);
    case 503:
      return UnavailableError(text);
    case 504:
      return DeadlineExceededError(text);
    default:
      return InternalError(text);
  }
}

ApiClient::ApiClient(const SupervisorUrl& url, std::chrono::milliseconds timeout)
    : ApiClient(std::vector<SupervisorUrl>{url},
                FailoverOptions{.attempt_timeout = timeout,
                                .request_deadline = 2 * timeout,
                                .max_attempts = 1,
                                .round_pause = std::chrono::milliseconds(0)}) {}

ApiClient::ApiClient(std::vector<SupervisorUrl> urls, const FailoverOptions& options)
    : urls_(std::move(urls)), options_(options) {
  FP_CHECK(!urls_.empty());
  FP_CHECK(urls_.size() <= kMaxSupervisorUrls);
  FP_CHECK(options_.max_attempts >= 1);
  FP_CHECK(options_.max_attempts <= kMaxFailoverAttempts);
  http_.resize(urls_.size());
}

ApiClient::~ApiClient() = default;
ApiClient::ApiClient(ApiClient&&) noexcept = default;
ApiClient& ApiClient::operator=(ApiClient&&) noexcept = default;

StatusOr<supervisor::HttpResponse> ApiClient::Attempt(verb method, const std::string& target,
                                                      const std::string& body,
                                                      const supervisor::HttpHeaders& headers,
                                                      std::chrono::milliseconds budget) {
  const SupervisorUrl& url = urls_[current_];
  // An attempt has two phases (connect, then request and reply), each bounded by the client's
  // timeout: when less than two full timeouts are left, a one-off client with half of the rest
  // keeps the attempt inside the request's deadline.
  if (budget < 2 * options_.attempt_timeout) {
    supervisor::HttpClient once(url.host, url.port,
                                std::max(std::chrono::milliseconds(1), budget / 2));
    return once.Request(method, target, body, headers);
  }
  if (http_[current_] == nullptr) {
    http_[current_] =
        std::make_unique<supervisor::HttpClient>(url.host, url.port, options_.attempt_timeout);
  }
  return http_[current_]->Request(method, target, body, headers);
}

StatusOr<std::string> ApiClient::Call(verb method, const std::string& target,
                                      const std::string& body,
                                      const supervisor::HttpHeaders& headers) {
  // A POST without an Idempotency-Key may have been applied before its reply was lost: it is
  // never resent. GETs and keyed POSTs are.
  const bool resendable =
      method == verb::get || method == verb::head || HasHeader(headers, kIdempotencyHeader);
  const auto deadline = Clock::now() + options_.request_deadline;
  Status last;
  uint32_t attempts = 0;
  size_t failed_in_round = 0;
  while (attempts < options_.max_attempts) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left <= std::chrono::milliseconds(0)) break;
    ++attempts;
    StatusOr<supervisor::HttpResponse> response = Attempt(method, target, body, headers, left);
    const std::string where = urls_[current_].ToString() + target;
    if (response.ok() && !RetryableReply(response->status)) {
      if (response->status < 200 || response->status >= 300) {
        return StatusFromReply(response->status, response->body).WithContext(where);
      }
      return std::move(response->body);
    }
    last = response.ok() ? StatusFromReply(response->status, response->body).WithContext(where)
                         : response.status().WithContext(where);
    if (!resendable || !RetryableError(last) || attempts == options_.max_attempts) break;
    current_ = (current_ + 1) % urls_.size();
    ++failovers_;
    if (++failed_in_round == urls_.size()) {
      failed_in_round = 0;
      const auto pause = std::min<Clock::duration>(options_.round_pause, deadline - Clock::now());
      if (pause > Clock::duration::zero()) std::this_thread::sleep_for(pause);
    }
  }
  if (last.ok()) {
    return DeadlineExceededError(
        fmt::format("{}: no attempt left within {} ms", target, options_.request_deadline.count()));
  }
  if (attempts <= 1) return last;
  return Status(last.code(), fmt::format("{} (after {} attempts on {} supervisors)", last.message(),
                                         attempts, urls_.size()));
}

StatusOr<std::string> ApiClient::Submit(const SubmitRequest& request) {
  std::string key_sent;
  return Submit(request, key_sent);
}

StatusOr<std::string> ApiClient::Submit(const SubmitRequest& request, std::string& key_sent) {
  key_sent = request.idempotency_key;
  if (key_sent.empty() && options_.max_attempts > 1) key_sent = RandomIdempotencyKey();
  supervisor::HttpHeaders headers;
  if (!key_sent.empty()) headers.emplace_back(kIdempotencyHeader, key_sent);
  FP_ASSIGN_OR_RETURN(std::string body, Call(verb::post, "/v1/sessions",
                                             json::serialize(SubmitBody(request)), headers));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseJsonObject(body, "submission"));
  return StringField(reply, "session_id", "submission");
}

StatusOr<SessionView> ApiClient::Session(const std::string& session_id) {
  FP_ASSIGN_OR_RETURN(std::string body, Call(verb::get, "/v1/sessions/" + session_id, ""));
  return ParseSessionView(body);
}

StatusOr<SessionView> ApiClient::WaitDone(
    const std::string& session_id, std::chrono::milliseconds timeout,
    const std::function<void(const SessionView&)>& on_change) {
  const auto deadline = Clock::now() + timeout;
  std::optional<SessionView> last;
  while (true) {
    StatusOr<SessionView> polled = Session(session_id);
    // The supervisor acknowledges a submission once its Admit record is durable, which can be
    // just before the record is applied: until then the session reads as NotFound.
    // With several supervisors, the one asked may not have applied it yet (it lags, or it is cut
    // off from the log): ask the next one.
    if ((!last.has_value() || urls_.size() > 1) &&
        polled.status().code() == StatusCode::kNotFound && Clock::now() < deadline) {
      if (urls_.size() > 1) {
        current_ = (current_ + 1) % urls_.size();
        ++failovers_;
      }
      std::this_thread::sleep_for(kSessionPollInterval);
      continue;
    }
    FP_ASSIGN_OR_RETURN(SessionView view, std::move(polled));
    if (on_change && (!last.has_value() || !SameState(*last, view))) on_change(view);
    if (view.done()) return view;
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("session {} is still {} ({} steps verified) after {} ms", session_id,
                      view.phase, view.verified_steps, timeout.count()));
    }
    last = std::move(view);
    std::this_thread::sleep_for(kSessionPollInterval);
  }
}

StatusOr<SessionOutput> ApiClient::Output(const std::string& session_id) {
  FP_ASSIGN_OR_RETURN(std::string body,
                      Call(verb::get, "/v1/sessions/" + session_id + "/events", ""));
  return ParseEventStream(body);
}

StatusOr<std::string> ApiClient::Bundle(const std::string& session_id) {
  return Call(verb::get, "/v1/sessions/" + session_id + "/bundle", "");
}

StatusOr<StepProofView> ApiClient::StepProof(const std::string& session_id, uint64_t step) {
  FP_ASSIGN_OR_RETURN(
      std::string body,
      Call(verb::get, fmt::format("/v1/sessions/{}/proof/step/{}", session_id, step), ""));
  return ParseStepProof(body);
}

StatusOr<std::vector<WorkerView>> ApiClient::Workers() {
  constexpr std::string_view kWhat = "workers";
  FP_ASSIGN_OR_RETURN(std::string body, Call(verb::get, "/v1/workers", ""));
  FP_ASSIGN_OR_RETURN(json::object object, ParseJsonObject(body, kWhat));
  const json::value* list = object.if_contains("workers");
  if (list == nullptr || !list->is_array()) return Malformed(kWhat, "workers");
  std::vector<WorkerView> workers;
  for (const json::value& item : list->get_array()) {
    if (!item.is_object()) return Malformed(kWhat, "workers");
    const json::object& fields = item.get_object();
    WorkerView worker;
    FP_ASSIGN_OR_RETURN(worker.worker_id, StringField(fields, "worker_id", kWhat));
    FP_ASSIGN_OR_RETURN(worker.phase, StringField(fields, "phase", kWhat));
    FP_ASSIGN_OR_RETURN(worker.replicas, U32Field(fields, "replicas", kWhat));
    FP_ASSIGN_OR_RETURN(worker.divergences, U32Field(fields, "divergences", kWhat));
    workers.push_back(std::move(worker));
  }
  return workers;
}

StatusOr<std::string> ApiClient::GetText(const std::string& path) {
  return Call(verb::get, path, "");
}

Status ApiClient::WaitReady(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    StatusOr<std::string> ready = GetText("/readyz");
    if (ready.ok()) return OkStatus();
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(fmt::format("{} not ready after {} ms: {}", url().ToString(),
                                               timeout.count(), ready.status().ToString()));
    }
    std::this_thread::sleep_for(kSessionPollInterval);
  }
}

}  // namespace fp::client
