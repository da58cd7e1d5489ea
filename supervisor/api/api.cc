// The HTTP API's pure handlers; see api.h.
#include "supervisor/api/api.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/base/log.h"
#include "common/crypto/sha256.h"
#include "common/merkle/merkle.h"
#include "common/metrics/metrics.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/ledger/proofs.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/queries.h"
#include "supervisor/state/session_request.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor {
namespace {

namespace json = boost::json;
using boost::beast::http::verb;

std::string Hex(std::string_view bytes) { return HexEncode(AsBytes(bytes)); }
std::string Hex(const Hash& hash) { return HexEncode(hash); }

HttpReply JsonReply(unsigned status, const json::value& value) {
  return HttpReply{status, "application/json", json::serialize(value) + "\n"};
}

HttpReply TextReply(unsigned status, std::string body) {
  return HttpReply{status, "text/plain; charset=utf-8", std::move(body)};
}

unsigned HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kUnauthenticated:
      return 401;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
    case StatusCode::kAborted:
    case StatusCode::kFailedPrecondition:
      return 409;
    case StatusCode::kResourceExhausted:
      return 429;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

// The value of `name` in a query string ("a=1&b=2"), undecoded; nullopt when absent.
std::optional<std::string_view> QueryValue(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const size_t end = query.find('&');
    std::string_view pair = query.substr(0, end);
    query = end == std::string_view::npos ? std::string_view() : query.substr(end + 1);
    const size_t equals = pair.find('=');
    if (pair.substr(0, equals) == name) {
      return equals == std::string_view::npos ? std::string_view() : pair.substr(equals + 1);
    }
  }
  return std::nullopt;
}

StatusOr<uint64_t> ParseDecimal(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
    return InvalidArgumentError(fmt::format("{} must be a decimal integer", what));
  }
  return value;
}

StatusOr<std::string> ParseSessionIdText(std::string_view text) {
  FP_ASSIGN_OR_RETURN(SessionId id, SessionIdFromHex(text));
  return std::string(id.begin(), id.end());
}

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> segments;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    const size_t end = path.find('/');
    segments.push_back(path.substr(0, end));
    path = end == std::string_view::npos ? std::string_view() : path.substr(end);
  }
  return segments;
}

// ---- JSON field readers: InvalidArgument naming the field on a wrong type or range. ----

StatusOr<std::optional<uint64_t>> GetUint(const json::object& object, std::string_view key,
                                          uint64_t max) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return std::optional<uint64_t>();
  std::optional<uint64_t> result;
  if (value->is_uint64()) result = value->get_uint64();
  if (value->is_int64() && value->get_int64() >= 0) result = value->get_int64();
  if (!result.has_value() || *result > max) {
    return InvalidArgumentError(fmt::format("{}: an integer in [0, {}] is required", key, max));
  }
  return result;
}

StatusOr<std::optional<double>> GetNumber(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return std::optional<double>();
  if (value->is_double()) return std::optional<double>(value->get_double());
  if (value->is_int64()) return std::optional<double>(static_cast<double>(value->get_int64()));
  if (value->is_uint64()) return std::optional<double>(static_cast<double>(value->get_uint64()));
  return InvalidArgumentError(fmt::format("{}: a number is required", key));
}

StatusOr<std::optional<std::string>> GetString(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return std::optional<std::string>();
  if (!value->is_string())
    return InvalidArgumentError(fmt::format("{}: a string is required", key));
  return std::optional<std::string>(std::string(value->get_string()));
}

Status GetTokens(const json::object& object, std::string_view key,
                 google::protobuf::RepeatedField<uint32_t>* out) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr || value->is_null()) return OkStatus();
  if (!value->is_array()) {
    return InvalidArgumentError(fmt::format("{}: an array of token ids is required", key));
  }
  if (value->get_array().size() > wire::kMaxSessionTokens) {
    return InvalidArgumentError(
        fmt::format("{}: more than {} tokens", key, wire::kMaxSessionTokens));
  }
  for (const json::value& token : value->get_array()) {
    std::optional<uint64_t> id;
    if (token.is_uint64()) id = token.get_uint64();
    if (token.is_int64() && token.get_int64() >= 0) id = token.get_int64();
    if (!id.has_value() || *id > UINT32_MAX) {
      return InvalidArgumentError(fmt::format("{}: token ids are integers in [0, 2^32)", key));
    }
    out->Add(static_cast<uint32_t>(*id));
  }
  return OkStatus();
}

StatusOr<std::string> GetHash(const json::object& object, std::string_view key,
                              std::string fallback) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> text, GetString(object, key));
  if (!text.has_value()) return fallback;
  StatusOr<Hash> hash = HashFromHex(*text);
  if (!hash.ok()) return InvalidArgumentError(fmt::format("{}: 64 hex characters", key));
  return HashString(*hash);
}

Status CheckKeys(const json::object& object, std::initializer_list<std::string_view> known) {
  for (const auto& entry : object) {
    if (std::find(known.begin(), known.end(), entry.key()) == known.end()) {
      return InvalidArgumentError(fmt::format("unknown field '{}'", std::string(entry.key())));
    }
  }
  return OkStatus();
}

// Fields shared by /v1/sessions and /v1/completions (the prompt is read by the caller).
Status ReadSessionFields(const json::object& object, const SessionDefaults& defaults,
                         pb::SessionRequest& request) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> model, GetString(object, "model"));
  if (!model.has_value() || model->empty()) return InvalidArgumentError("model is required");
  request.set_model(*model);
  auto known = defaults.models.find(*model);
  const SessionDefaults::ModelProfile fallback =
      known != defaults.models.end() ? known->second : SessionDefaults::ModelProfile{};
  FP_ASSIGN_OR_RETURN(std::string profile,
                      GetHash(object, "numerics_profile", fallback.numerics_profile));
  if (profile.empty()) {
    return InvalidArgumentError(
        fmt::format("numerics_profile is required: model '{}' has no configured profile", *model));
  }
  request.set_numerics_profile(profile);
  const std::string no_anchors =
      fallback.anchor_set_hash.empty() ? std::string(kHashSize, '\0') : fallback.anchor_set_hash;
  FP_ASSIGN_OR_RETURN(std::string anchors, GetHash(object, "anchor_set_hash", no_anchors));
  request.set_anchor_set_hash(anchors);
  wire::pb::SamplingParams& sampling = *request.mutable_sampling();
  FP_ASSIGN_OR_RETURN(auto max_tokens, GetUint(object, "max_tokens", wire::kMaxSessionTokens));
  sampling.set_max_tokens(static_cast<uint32_t>(max_tokens.value_or(defaults.max_tokens)));
  FP_ASSIGN_OR_RETURN(auto temperature, GetNumber(object, "temperature"));
  sampling.set_temperature(static_cast<float>(temperature.value_or(0)));
  FP_ASSIGN_OR_RETURN(auto top_p, GetNumber(object, "top_p"));
  if (top_p.has_value() && *top_p != 1.0) sampling.set_top_p(static_cast<float>(*top_p));
  FP_ASSIGN_OR_RETURN(auto top_k, GetUint(object, "top_k", UINT32_MAX));
  sampling.set_top_k(static_cast<uint32_t>(top_k.value_or(0)));
  FP_ASSIGN_OR_RETURN(auto seed, GetUint(object, "seed", UINT64_MAX));
  sampling.set_seed(seed.value_or(0));
  FP_RETURN_IF_ERROR(GetTokens(object, "stop_token_ids", sampling.mutable_stop_token_ids()));
  FP_ASSIGN_OR_RETURN(auto replicas, GetUint(object, "replicas", wire::kMaxReplicas));
  request.set_replicas(static_cast<uint32_t>(replicas.value_or(defaults.replicas)));
  FP_ASSIGN_OR_RETURN(auto window, GetUint(object, "max_unverified_steps", UINT32_MAX));
  request.set_max_unverified_steps(
      static_cast<uint32_t>(window.value_or(defaults.max_unverified_steps)));
  FP_ASSIGN_OR_RETURN(auto scope, GetString(object, "digest_scope"));
  if (!scope.has_value() || *scope == "hidden") {
    request.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN);
  } else if (*scope == "hidden+kv") {
    request.set_digest_scope(wire::pb::DIGEST_SCOPE_HIDDEN_KV);
  } else {
    return InvalidArgumentError("digest_scope: \"hidden\" or \"hidden+kv\"");
  }
  FP_ASSIGN_OR_RETURN(auto bits, GetUint(object, "quantize_bits", wire::kMaxQuantizeBits));
  if (bits.has_value()) request.set_quantize_bits(static_cast<uint32_t>(*bits));
  return OkStatus();
}

StatusOr<json::object> ParseObject(const std::string& body) {
  boost::system::error_code error;
  json::value value = json::parse(body, error);
  if (error) return InvalidArgumentError("body is not JSON: " + error.message());
  if (!value.is_object()) return InvalidArgumentError("body must be a JSON object");
  return std::move(value.get_object());
}

// The OpenAI prompt: an array of token ids, or an array holding one such array; or, for a
// model with a tokenizer, a string (or an array holding one string), tokenised with BOS.
Status ReadCompletionPrompt(const json::object& object, const tokenizer::Tokenizer* tokens,
                            pb::SessionRequest& request) {
  const json::value* prompt = object.if_contains("prompt");
  if (prompt == nullptr) return InvalidArgumentError("prompt is required");
  const json::value* text = prompt;
  if (prompt->is_array() && prompt->get_array().size() == 1 && prompt->get_array()[0].is_string()) {
    text = &prompt->get_array()[0];
  }
  if (text->is_string()) {
    if (tokens == nullptr) {
      return InvalidArgumentError(fmt::format(
          "prompt: model '{}' has no tokenizer configured on this supervisor; send the prompt "
          "as an array of token ids",
          request.model()));
    }
    if (text->get_string().size() > wire::kMaxSessionTokens) {
      return InvalidArgumentError("prompt: text too long");
    }
    FP_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        tokens->Encode(std::string_view(text->get_string()), /*add_bos=*/true));
    for (int32_t id : ids) request.add_prompt_token_ids(static_cast<uint32_t>(id));
    return OkStatus();
  }
  json::object shim;
  if (prompt->is_array() && prompt->get_array().size() == 1 && prompt->get_array()[0].is_array()) {
    shim["prompt"] = prompt->get_array()[0];
  } else {
    shim["prompt"] = *prompt;
  }
  return GetTokens(shim, "prompt", request.mutable_prompt_token_ids());
}

// OpenAI parameters the supervisor cannot honour are refused rather than ignored.
Status CheckCompletionOptions(const json::object& object) {
  FP_ASSIGN_OR_RETURN(auto n, GetUint(object, "n", UINT32_MAX));
  if (n.value_or(1) != 1) return InvalidArgumentError("n: only 1 is supported");
  FP_ASSIGN_OR_RETURN(auto best_of, GetUint(object, "best_of", UINT32_MAX));
  if (best_of.value_or(1) != 1) return InvalidArgumentError("best_of: only 1 is supported");
  for (std::string_view key : {"stop", "suffix", "logprobs", "logit_bias"}) {
    const json::value* value = object.if_contains(key);
    if (value != nullptr && !value->is_null()) {
      return InvalidArgumentError(fmt::format("{} is not supported", key));
    }
  }
  for (std::string_view key : {"presence_penalty", "frequency_penalty"}) {
    FP_ASSIGN_OR_RETURN(auto penalty, GetNumber(object, key));
    if (penalty.value_or(0) != 0) return InvalidArgumentError(fmt::format("{} must be 0", key));
  }
  const json::value* echo = object.if_contains("echo");
  if (echo != nullptr && !(echo->is_bool() && !echo->get_bool()) && !echo->is_null()) {
    return InvalidArgumentError("echo is not supported");
  }
  return OkStatus();
}

const char* PhaseName(pb::SessionPhase phase) {
  switch (phase) {
    case pb::SESSION_PHASE_WAITING:
      return "waiting";
    case pb::SESSION_PHASE_RUNNING:
      return "running";
    case pb::SESSION_PHASE_VERIFIED:
      return "verified";
    case pb::SESSION_PHASE_FAILED:
      return "failed";
    default:
      return "unknown";
  }
}

const char* WorkerPhaseName(pb::WorkerState::Phase phase) {
  switch (phase) {
    case pb::WorkerState::PHASE_ACTIVE:
      return "active";
    case pb::WorkerState::PHASE_LOST:
      return "lost";
    case pb::WorkerState::PHASE_QUARANTINED:
      return "quarantined";
    default:
      return "unknown";
  }
}

json::array HashArray(const std::vector<Hash>& hashes) {
  json::array array;
  for (const Hash& hash : hashes) array.emplace_back(Hex(hash));
  return array;
}

StatusOr<std::optional<pb::SessionState>> ReadSession(const RocksStore& state,
                                                      const std::string& id) {
  return DbStateReader(&state).GetMessage<pb::SessionState>(kSessions, id);
}

// Verified tokens from `from` on, at most kMaxTokensPerPoll of them.
StatusOr<std::vector<uint32_t>> VerifiedTokens(const RocksStore& state,
                                               const pb::SessionState& session,
                                               const std::string& id, uint64_t from) {
  const uint64_t to = std::min<uint64_t>(session.verified_steps(), from + kMaxTokensPerPoll);
  return ReadVerifiedTokens(state, session, id, from, to);
}

// The verification receipt of a verified session: its ledger record and where to get proofs.
StatusOr<json::object> Receipt(const RocksStore& state, const std::string& id,
                               const pb::SessionState& session) {
  FP_ASSIGN_OR_RETURN(std::optional<std::string> bytes,
                      DbStateReader(&state).Get(kLedger, LedgerEntryKey(session.ledger_index())));
  pb::LedgerEntry entry;
  if (!bytes.has_value() || !entry.ParseFromString(*bytes) || !entry.has_session()) {
    return DataLossError("session record missing");
  }
  const pb::SessionRecord& record = entry.session();
  json::object receipt;
  receipt["session_id"] = Hex(id);
  receipt["model"] = record.model();
  receipt["numerics_profile"] = Hex(record.numerics_profile());
  receipt["anchor_set_hash"] = Hex(record.anchor_set_hash());
  receipt["prompt_hash"] = Hex(record.prompt_hash());
  receipt["output_hash"] = Hex(record.output_hash());
  receipt["session_root"] = Hex(record.session_root());
  receipt["steps"] = record.steps();
  receipt["replicas"] = record.replicas_size();
  receipt["divergences"] = record.divergences();
  receipt["ledger_index"] = session.ledger_index();
  receipt["ledger_leaf_hash"] = Hex(merkle::LeafHash(AsBytes(*bytes)));
  receipt["bundle"] = fmt::format("/v1/sessions/{}/bundle", Hex(id));
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(state);
  if (latest.ok() && latest->checkpoint.size > session.ledger_index()) {
    receipt["checkpoint"] = latest->note;
  } else {
    receipt["checkpoint"] = nullptr;  // the next checkpoint covers it; fetch the bundle then
  }
  return receipt;
}

const char* OrderKindName(pb::OrderKind kind) {
  switch (kind) {
    case pb::ORDER_KIND_TRUNCATE:
      return "truncate";
    case pb::ORDER_KIND_REBUILD:
      return "rebuild";
    case pb::ORDER_KIND_REPLACE:
      return "replace";
    default:
      return "unknown";
  }
}

json::object DivergenceJson(const pb::Divergence& divergence) {
  json::object item;
  item["step"] = divergence.step();
  item["log_position"] = divergence.position();
  item["unix_ms"] = divergence.unix_ms();
  json::array leaves;
  for (const pb::DivergentLeaf& leaf : divergence.leaves()) {
    json::object value;
    value["replica"] = leaf.replica();
    value["worker_id"] = leaf.worker_id();
    value["epoch"] = leaf.epoch();
    if (leaf.end() || leaf.bad_root()) {
      value["end"] = leaf.end();
      value["bad_root"] = leaf.bad_root();
    } else {
      value["token_id"] = leaf.token_id();
      value["state_digest"] = Hex(leaf.state_digest());
      value["leaf_hash"] = Hex(leaf.leaf_hash());
    }
    leaves.emplace_back(std::move(value));
  }
  item["replicas"] = std::move(leaves);
  item["majority_leaf_hash"] = divergence.majority_leaf_hash().empty()
                                   ? json::value(nullptr)
                                   : json::value(Hex(divergence.majority_leaf_hash()));
  json::array orders;
  for (int i = 0; i < divergence.minority_size() && i < divergence.orders_size(); ++i) {
    json::object order;
    order["replica"] = divergence.minority(i);
    order["kind"] = OrderKindName(divergence.orders(i));
    orders.emplace_back(std::move(order));
  }
  item["orders"] = std::move(orders);
  return item;
}

// The session's stored Divergence records (at most kMaxReportedDivergences, oldest first) as
// "divergence_records", and every replica's latest order as "rollbacks".
Status AddDivergenceHistory(const RocksStore& state, const std::string& id,
                            const pb::SessionState& session, json::object& body) {
  DbStateReader reader(&state);
  json::array records;
  const uint32_t count = std::min<uint32_t>(session.divergences(), kMaxReportedDivergences);
  for (uint32_t seq = 0; seq < count; ++seq) {
    FP_ASSIGN_OR_RETURN(std::optional<pb::Divergence> divergence,
                        reader.GetMessage<pb::Divergence>(kDivergences, DivergenceKey(id, seq)));
    if (!divergence.has_value()) return DataLossError(fmt::format("divergence {} missing", seq));
    records.emplace_back(DivergenceJson(*divergence));
  }
  body["divergence_records"] = std::move(records);
  body["divergence_records_truncated"] = session.divergences() > kMaxReportedDivergences;
  json::array rollbacks;
  for (uint32_t r = 0; r < static_cast<uint32_t>(session.replicas_size()); ++r) {
    FP_ASSIGN_OR_RETURN(std::optional<pb::Order> order,
                        reader.GetMessage<pb::Order>(kOrders, ReplicaKey(id, r)));
    if (!order.has_value()) continue;
    json::object item;
    item["replica"] = r;
    item["kind"] = OrderKindName(order->kind());
    item["to_step"] = order->to_step();
    item["new_epoch"] = order->new_epoch();
    item["worker_id"] = order->worker_id();
    item["log_position"] = order->position();
    rollbacks.emplace_back(std::move(item));
  }
  body["rollbacks"] = std::move(rollbacks);
  return OkStatus();
}

}  // namespace

Api::Api(ApiContext context) : context_(std::move(context)) {
  FP_CHECK(context_.state != nullptr);
  FP_CHECK(context_.log != nullptr);
  FP_CHECK(context_.new_session_id != nullptr);
  FP_CHECK(context_.applied != nullptr);
}

HttpReply Api::ErrorReply(const Status& status) {
  FP_CHECK(!status.ok());
  json::object error;
  error["code"] = std::string(StatusCodeName(status.code()));
  error["message"] = std::string(status.message());
  json::object body;
  body["error"] = std::move(error);
  return JsonReply(HttpStatusFor(status.code()), body);
}

HttpReply Api::AppendFailed(const Status& status) const {
  // The only keyed records the API appends are Admits: a conflict is a reused Idempotency-Key.
  if (status.code() == StatusCode::kFailedPrecondition) {
    return ErrorReply(FailedPreconditionError(fmt::format(
        "Idempotency-Key was already used for a different request ({})", status.message())));
  }
  return ErrorReply(status);
}

std::string IdempotentSessionId(std::string_view key) {
  std::string input("fieldprint idempotency key");
  input.push_back('\0');
  input.append(key);
  const Hash hash = Sha256(AsBytes(input));
  return std::string(reinterpret_cast<const char*>(hash.data()), kSessionIdSize);
}

StatusOr<std::string> Api::SubmissionId(const HttpRequest& request) const {
  const std::string& key = request.idempotency_key;
  if (!key.empty()) {
    const bool printable = std::all_of(key.begin(), key.end(), [](char c) {
      return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
    });
    if (key.size() > kMaxIdempotencyKeyBytes || !printable) {
      return InvalidArgumentError(fmt::format("Idempotency-Key: 1..{} printable ASCII characters",
                                              kMaxIdempotencyKeyBytes));
    }
    return IdempotentSessionId(key);
  }
  FP_ASSIGN_OR_RETURN(SessionId id, context_.new_session_id());
  return std::string(id.begin(), id.end());
}

namespace {

// GET /v1/checkpoint/cosigners: the registered cosigners' vkeys, one per line, sorted by name.
HttpReply CosignersReply(const RocksStore& state) {
  StatusOr<pb::CosignerSet> set = RegisteredCosigners(DbStateReader(&state));
  if (!set.ok()) return Api::ErrorReply(set.status());
  std::string body;
  for (const pb::CosignerState& member : set->members()) body += member.cosigner_key() + "\n";
  return TextReply(200, std::move(body));
}

}  // namespace

HttpReply Api::CheckpointKey() const {
  if (!context_.verifier.has_value()) {
    return ErrorReply(UnavailableError("this supervisor has no checkpoint key"));
  }
  return TextReply(200, context_.verifier->ToString() + "\n");
}

Status Api::CheckAdmin(const HttpRequest& request) const {
  if (context_.admin_token.empty()) {
    return PermissionDeniedError(
        "admin routes are disabled: configure admin-token-file on the supervisor");
  }
  const std::string expected = "Bearer " + context_.admin_token;
  // Compare in constant time (for equal lengths), so the reply time does not leak the token.
  bool same = request.authorization.size() == expected.size();
  unsigned char difference = 0;
  for (size_t i = 0; same && i < expected.size(); ++i) {
    difference |= static_cast<unsigned char>(request.authorization[i] ^ expected[i]);
  }
  if (!same || difference != 0) {
    return UnauthenticatedError("admin routes need 'Authorization: Bearer <admin token>'");
  }
  return OkStatus();
}

HttpReply Api::Cluster() const {
  if (!context_.cluster_status) return ErrorReply(NotFoundError("no such route"));
  const ClusterStatus status = context_.cluster_status();
  json::object body;
  body["cluster"] = status.cluster;
  body["name"] = status.name;
  body["leader"] = status.leader.empty() ? json::value(nullptr) : json::value(status.leader);
  body["is_leader"] = status.is_leader;
  body["term"] = status.term;
  body["applied"] = status.applied;
  body["log_begin"] = status.log_begin;
  body["log_end"] = status.log_end;
  json::array members;
  for (const auto& [name, applied] : status.members) {
    json::object member;
    member["name"] = name;
    member["applied"] = applied;
    members.push_back(std::move(member));
  }
  body["members"] = std::move(members);
  return JsonReply(200, body);
}

ApiAction Api::Snapshot(const HttpRequest& request, std::string_view query) const {
  ApiAction action;
  auto fail = [&](const Status& status) {
    action.reply = ErrorReply(status);
    return action;
  };
  if (Status admin = CheckAdmin(request); !admin.ok()) return fail(admin);
  if (!context_.open_snapshot) return fail(NotFoundError("no such route"));
  const std::string member(QueryValue(query, "member").value_or(""));
  StatusOr<std::shared_ptr<cluster::SnapshotStream>> snapshot = context_.open_snapshot(member);
  if (!snapshot.ok()) return fail(snapshot.status());
  action.reply = HttpReply{200, "application/octet-stream", ""};
  action.follow.kind = Follow::Kind::kSnapshot;
  action.follow.snapshot = std::move(snapshot).value();
  return action;
}

PollResult Api::PollSnapshot(Follow& follow) const {
  PollResult result;
  StatusOr<std::string> chunk = follow.snapshot->Next(cluster::kMaxSnapshotChunkBytes);
  if (!chunk.ok()) {
    // The receiver sees a stream without its manifest and installs nothing.
    LogWarn("api", "snapshot stream ended by an error", {{"error", chunk.status()}});
    result.done = true;
    return result;
  }
  result.chunk = std::move(chunk).value();
  result.done = follow.snapshot->done();
  return result;
}

HttpReply Api::RemoveMember(const HttpRequest& request, std::string_view member) const {
  if (Status admin = CheckAdmin(request); !admin.ok()) return ErrorReply(admin);
  if (!context_.remove_member) return ErrorReply(NotFoundError("no such route"));
  StatusOr<bool> removed = context_.remove_member(std::string(member));
  if (!removed.ok()) return ErrorReply(removed.status());
  if (!*removed) return ErrorReply(NotFoundError("no such member in the member table"));
  json::object body;
  body["member"] = std::string(member);
  body["removed"] = true;
  body["note"] =
      "the log is no longer held back for this member; if it still runs, it publishes itself "
      "again";
  return JsonReply(200, body);
}

ApiAction Api::ReleaseWorker(const HttpRequest& request, std::string_view worker_id) const {
  ApiAction action;
  auto fail = [&](const Status& status) {
    action.reply = ErrorReply(status);
    return action;
  };
  if (Status admin = CheckAdmin(request); !admin.ok()) return fail(admin);
  std::string reason;
  if (!request.body.empty()) {
    StatusOr<json::object> object = ParseObject(request.body);
    if (!object.ok()) return fail(object.status());
    if (Status keys = CheckKeys(*object, {"reason"}); !keys.ok()) return fail(keys);
    StatusOr<std::optional<std::string>> text = GetString(*object, "reason");
    if (!text.ok()) return fail(text.status());
    reason = text->value_or("");
    if (reason.size() > kMaxReleaseReasonBytes) {
      return fail(
          InvalidArgumentError(fmt::format("reason: at most {} bytes", kMaxReleaseReasonBytes)));
    }
  }
  StatusOr<std::optional<pb::WorkerState>> worker =
      DbStateReader(context_.state).GetMessage<pb::WorkerState>(kWorkers, std::string(worker_id));
  if (!worker.ok()) return fail(worker.status());
  if (!worker->has_value()) return fail(NotFoundError("no such worker"));
  if ((*worker)->phase() != pb::WorkerState::PHASE_QUARANTINED) {
    return fail(FailedPreconditionError("the worker is not quarantined"));
  }
  pb::LogRecord record;
  record.mutable_worker_released()->set_worker_id(std::string(worker_id));
  record.mutable_worker_released()->set_reason(reason);
  json::object body;
  body["worker_id"] = std::string(worker_id);
  body["released"] = true;
  body["note"] =
      "the supervisor closes the worker's stream; the worker is active again once it registers";
  action.reply = JsonReply(202, body);
  action.append = std::move(record);
  return action;
}

ApiAction Api::Handle(const HttpRequest& request) const {
  ApiAction action;
  if (request.target.size() > kMaxRequestTargetBytes) {
    action.reply = ErrorReply(InvalidArgumentError("request target too long"));
    return action;
  }
  const size_t question = request.target.find('?');
  const std::string_view path = std::string_view(request.target).substr(0, question);
  const std::string_view query = question == std::string::npos
                                     ? std::string_view()
                                     : std::string_view(request.target).substr(question + 1);
  const std::vector<std::string_view> s = Segments(path);
  const bool get = request.method == verb::get || request.method == verb::head;
  const bool post = request.method == verb::post;
  auto reply = [&](HttpReply r) {
    action.reply = std::move(r);
    return action;
  };
  if (s.size() == 1 && s[0] == "healthz" && get) return reply(TextReply(200, "ok\n"));
  if (s.size() == 1 && s[0] == "readyz" && get) return reply(Ready());
  if (s.size() == 1 && s[0] == "metrics" && get) return reply(Metrics());
  if (s.empty() || s[0] != "v1") return reply(ErrorReply(NotFoundError("no such route")));
  if (s.size() == 2 && s[1] == "sessions" && post) return SubmitSession(request);
  if (s.size() == 2 && s[1] == "completions" && post) return SubmitCompletion(request);
  if (s.size() == 2 && s[1] == "checkpoint" && get) return reply(Checkpoint());
  if (s.size() == 3 && s[1] == "checkpoint" && s[2] == "key" && get) {
    return reply(CheckpointKey());
  }
  if (s.size() == 3 && s[1] == "checkpoint" && s[2] == "cosigners" && get) {
    return reply(CosignersReply(*context_.state));
  }
  if (s.size() == 5 && s[1] == "admin" && s[2] == "workers" && s[4] == "release" && post) {
    return ReleaseWorker(request, s[3]);
  }
  if (s.size() == 2 && s[1] == "cluster" && get) return reply(Cluster());
  if (s.size() == 3 && s[1] == "admin" && s[2] == "snapshot" && get) {
    return Snapshot(request, query);
  }
  if (s.size() == 5 && s[1] == "admin" && s[2] == "members" && s[4] == "remove" && post) {
    return reply(RemoveMember(request, s[3]));
  }
  if (s.size() == 2 && s[1] == "workers" && get) return reply(Workers());
  if (s.size() == 3 && s[1] == "ledger" && s[2] == "consistency" && get) {
    return reply(Consistency(query));
  }
  const bool session_route = s.size() >= 3 && s[1] == "sessions";
  const bool ledger_route =
      s.size() == 5 && s[1] == "ledger" && s[2] == "proof" && s[3] == "session";
  if (!session_route && !ledger_route) return reply(ErrorReply(NotFoundError("no such route")));
  StatusOr<std::string> id = ParseSessionIdText(ledger_route ? s[4] : s[2]);
  if (!id.ok()) return reply(ErrorReply(id.status()));
  if (!get) return reply(ErrorReply(InvalidArgumentError("method not allowed")));
  if (ledger_route) return reply(LedgerProof(*id, query));
  if (s.size() == 3) return reply(SessionState(*id));
  if (s.size() == 4 && s[3] == "events") return FollowEvents(*id);
  if (s.size() == 4 && s[3] == "bundle") return reply(Bundle(*id));
  if (s.size() == 6 && s[3] == "proof" && s[4] == "step") return reply(StepProof(*id, s[5]));
  return reply(ErrorReply(NotFoundError("no such route")));
}

ApiAction Api::SubmitSession(const HttpRequest& request) const {
  ApiAction action;
  auto fail = [&](const Status& status) {
    action.reply = ErrorReply(status);
    return action;
  };
  StatusOr<json::object> object = ParseObject(request.body);
  if (!object.ok()) return fail(object.status());
  Status keys = CheckKeys(
      *object, {"model", "prompt_token_ids", "max_tokens", "temperature", "top_p", "top_k", "seed",
                "stop_token_ids", "replicas", "numerics_profile", "anchor_set_hash", "digest_scope",
                "quantize_bits", "max_unverified_steps"});
  if (!keys.ok()) return fail(keys);
  pb::LogRecord record;
  pb::SessionRequest& session = *record.mutable_admit()->mutable_request();
  if (Status read = ReadSessionFields(*object, context_.defaults, session); !read.ok()) {
    return fail(read);
  }
  Status prompt = GetTokens(*object, "prompt_token_ids", session.mutable_prompt_token_ids());
  if (!prompt.ok()) return fail(prompt);
  StatusOr<std::string> id = SubmissionId(request);
  if (!id.ok()) return fail(id.status());
  session.set_session_id(*id);
  if (Status valid = ValidateSessionRequest(session); !valid.ok()) return fail(valid);
  const std::string hex = Hex(*id);
  json::object body;
  body["session_id"] = hex;
  body["phase"] = "waiting";
  body["state"] = fmt::format("/v1/sessions/{}", hex);
  body["events"] = fmt::format("/v1/sessions/{}/events", hex);
  action.reply = JsonReply(202, body);
  action.append = std::move(record);
  return action;
}

ApiAction Api::SubmitCompletion(const HttpRequest& request) const {
  ApiAction action;
  auto fail = [&](const Status& status) {
    action.reply = ErrorReply(status);
    return action;
  };
  StatusOr<json::object> object = ParseObject(request.body);
  if (!object.ok()) return fail(object.status());
  if (Status options = CheckCompletionOptions(*object); !options.ok()) return fail(options);
  pb::LogRecord record;
  pb::SessionRequest& session = *record.mutable_admit()->mutable_request();
  if (Status read = ReadSessionFields(*object, context_.defaults, session); !read.ok()) {
    return fail(read);
  }
  Status prompt = ReadCompletionPrompt(*object, TokenizerFor(session.model()), session);
  if (!prompt.ok()) return fail(prompt);
  StatusOr<std::string> id = SubmissionId(request);
  if (!id.ok()) return fail(id.status());
  session.set_session_id(*id);
  if (Status valid = ValidateSessionRequest(session); !valid.ok()) return fail(valid);
  const json::value* stream = object->if_contains("stream");
  const bool streaming = stream != nullptr && stream->is_bool() && stream->get_bool();
  action.follow.kind = streaming ? Follow::Kind::kCompletionStream : Follow::Kind::kCompletion;
  action.follow.session_id = session.session_id();
  action.follow.model = session.model();
  action.reply.status = 200;
  action.reply.content_type = streaming ? "text/event-stream" : "application/json";
  action.append = std::move(record);
  return action;
}

HttpReply Api::SessionState(const std::string& id) const {
  StatusOr<std::optional<pb::SessionState>> session = ReadSession(*context_.state, id);
  if (!session.ok()) return ErrorReply(session.status());
  if (!session->has_value()) return ErrorReply(NotFoundError("no such session"));
  const pb::SessionState& state = **session;
  json::object body;
  body["session_id"] = Hex(id);
  body["phase"] = PhaseName(state.phase());
  body["model"] = state.request().model();
  body["verified_steps"] = state.verified_steps();
  body["max_tokens"] = state.request().sampling().max_tokens();
  body["divergences"] = state.divergences();
  body["admitted_unix_ms"] = state.admitted_unix_ms();
  json::array replicas;
  for (int r = 0; r < state.replicas_size(); ++r) {
    const pb::ReplicaState& replica = state.replicas(r);
    json::object item;
    item["replica"] = r;
    item["worker_id"] = replica.worker_id();
    item["epoch"] = replica.epoch();
    item["stored_steps"] = replica.stored();
    item["next_step"] = replica.next_step();
    item["finished"] = replica.finished();
    replicas.emplace_back(std::move(item));
  }
  body["replicas"] = std::move(replicas);
  if (state.phase() == pb::SESSION_PHASE_VERIFIED) {
    body["session_root"] = Hex(state.session_root());
    body["ledger_index"] = state.ledger_index();
    body["verified_unix_ms"] = state.verified_unix_ms();
  }
  if (!state.failure().empty()) body["failure"] = state.failure();
  if (Status history = AddDivergenceHistory(*context_.state, id, state, body); !history.ok()) {
    return ErrorReply(history);
  }
  return JsonReply(200, body);
}

ApiAction Api::FollowEvents(const std::string& id) const {
  ApiAction action;
  StatusOr<std::optional<pb::SessionState>> session = ReadSession(*context_.state, id);
  if (!session.ok() || !session->has_value()) {
    action.reply = ErrorReply(session.ok() ? NotFoundError("no such session") : session.status());
    return action;
  }
  action.reply.content_type = "text/event-stream";
  action.follow.kind = Follow::Kind::kEvents;
  action.follow.session_id = id;
  action.follow.model = (*session)->request().model();
  return action;
}

HttpReply Api::Checkpoint() const {
  StatusOr<SignedCheckpoint> latest = LatestSignedCheckpoint(*context_.state);
  if (!latest.ok()) return ErrorReply(latest.status());
  return TextReply(200, latest->note);
}

HttpReply Api::StepProof(const std::string& id, std::string_view step_text) const {
  StatusOr<uint64_t> step = ParseDecimal(step_text, "step");
  if (!step.ok()) return ErrorReply(step.status());
  DbStateReader reader(context_.state);
  StatusOr<supervisor::StepProof> proof = ProveStep(reader, id, *step);
  if (!proof.ok()) return ErrorReply(proof.status());
  json::object leaf;
  leaf["token_id"] = proof->leaf.token_id;
  leaf["state_digest"] = Hex(proof->leaf.state_digest);
  leaf["leaf_hash"] = Hex(proof->leaf.leaf_hash);
  json::object body;
  body["session_id"] = Hex(id);
  body["step"] = proof->step;
  body["tree_size"] = proof->size;
  body["root"] = Hex(proof->root);
  body["session_verified"] = proof->session_verified;
  body["leaf"] = std::move(leaf);
  body["proof"] = HashArray(proof->proof);
  return JsonReply(200, body);
}

HttpReply Api::LedgerProof(const std::string& id, std::string_view query) const {
  std::optional<uint64_t> size;
  if (std::optional<std::string_view> text = QueryValue(query, "size"); text.has_value()) {
    StatusOr<uint64_t> parsed = ParseDecimal(*text, "size");
    if (!parsed.ok()) return ErrorReply(parsed.status());
    size = *parsed;
  }
  StatusOr<supervisor::LedgerProof> proof = ProveSessionRecord(*context_.state, id, size);
  if (!proof.ok()) return ErrorReply(proof.status());
  json::object body;
  body["session_id"] = Hex(id);
  body["index"] = proof->index;
  body["tree_size"] = proof->checkpoint.checkpoint.size;
  body["root"] = Hex(proof->checkpoint.checkpoint.root);
  body["entry"] = Base64Encode(AsBytes(proof->entry));
  body["leaf_hash"] = Hex(merkle::LeafHash(AsBytes(proof->entry)));
  body["proof"] = HashArray(proof->proof);
  body["checkpoint"] = proof->checkpoint.note;
  return JsonReply(200, body);
}

HttpReply Api::Consistency(std::string_view query) const {
  std::optional<std::string_view> from_text = QueryValue(query, "from");
  std::optional<std::string_view> to_text = QueryValue(query, "to");
  if (!from_text.has_value() || !to_text.has_value()) {
    return ErrorReply(InvalidArgumentError("from and to are required"));
  }
  StatusOr<uint64_t> from = ParseDecimal(*from_text, "from");
  StatusOr<uint64_t> to = ParseDecimal(*to_text, "to");
  if (!from.ok()) return ErrorReply(from.status());
  if (!to.ok()) return ErrorReply(to.status());
  StatusOr<ConsistencyProofResult> proof = ProveConsistency(*context_.state, *from, *to);
  if (!proof.ok()) return ErrorReply(proof.status());
  json::object body;
  body["from"] = *from;
  body["to"] = *to;
  body["from_root"] = Hex(proof->from_root);
  body["to_root"] = Hex(proof->to_root);
  body["proof"] = HashArray(proof->proof);
  return JsonReply(200, body);
}

HttpReply Api::Bundle(const std::string& id) const {
  if (!context_.verifier.has_value()) {
    return ErrorReply(UnavailableError("this supervisor has no checkpoint key"));
  }
  StatusOr<std::string> bundle =
      SessionBundle(*context_.state, id, *context_.verifier, context_.origin);
  if (!bundle.ok()) return ErrorReply(bundle.status());
  return TextReply(200, std::move(*bundle));
}

HttpReply Api::Workers() const {
  json::array workers;
  std::unique_ptr<rocksdb::Iterator> it = context_.state->NewIterator(kWorkers);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    pb::WorkerState worker;
    if (!worker.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return ErrorReply(DataLossError("stored worker does not parse"));
    }
    json::object item;
    item["worker_id"] = worker.registration().worker_id();
    item["phase"] = WorkerPhaseName(worker.phase());
    json::array models;
    for (const std::string& model : worker.registration().models()) models.emplace_back(model);
    item["models"] = std::move(models);
    item["numerics_profile_hash"] = Hex(worker.registration().numerics_profile_hash());
    item["max_replicas"] = worker.registration().max_replicas();
    item["replicas"] = worker.replicas_size();
    item["divergences"] = worker.divergences();
    item["software_version"] = worker.registration().software_version();
    if (!worker.quarantine_reason().empty()) {
      item["quarantine_reason"] = worker.quarantine_reason();
    }
    workers.emplace_back(std::move(item));
  }
  if (!it->status().ok()) return ErrorReply(FromRocks(it->status(), "scan workers"));
  json::object body;
  body["workers"] = std::move(workers);
  return JsonReply(200, body);
}

HttpReply Api::Ready() const {
  if (context_.draining != nullptr && context_.draining->load()) {
    return TextReply(503, "draining\n");
  }
  const uint64_t end = context_.log->End();
  const uint64_t applied = context_.applied();
  if (applied < context_.recovery_position) {
    return TextReply(503, fmt::format("recovering: applied {} of {} records\n", applied,
                                      context_.recovery_position));
  }
  if (end > applied + context_.max_ready_lag) {
    return TextReply(503, fmt::format("applier is {} records behind\n", end - applied));
  }
  if (!context_.cluster_status) return TextReply(200, "ready\n");
  const ClusterStatus cluster = context_.cluster_status();
  if (!cluster.log_reachable) return TextReply(503, "the log (etcd) is unreachable\n");
  return TextReply(200, fmt::format("ready\nleader: {}\napplied: {}\nlog_end: {}\n",
                                    cluster.leader.empty() ? "none" : cluster.leader,
                                    cluster.applied, cluster.log_end));
}

HttpReply Api::Metrics() const {
  if (context_.registry == nullptr) return ErrorReply(NotFoundError("metrics are not served"));
  return HttpReply{200, "text/plain; version=0.0.4", metrics::RenderText(*context_.registry)};
}

PollResult Api::Poll(Follow& follow) const {
  switch (follow.kind) {
    case Follow::Kind::kEvents:
      return PollEvents(follow);
    case Follow::Kind::kCompletion:
      return PollCompletion(follow, false);
    case Follow::Kind::kCompletionStream:
      return PollCompletion(follow, true);
    case Follow::Kind::kSnapshot:
      return PollSnapshot(follow);
    case Follow::Kind::kNone:
      break;
  }
  return PollResult{{}, std::nullopt, true};
}

namespace {

std::string Event(std::string_view name, const json::value& data) {
  return fmt::format("event: {}\ndata: {}\n\n", name, json::serialize(data));
}

std::string ErrorEvent(const Status& status) {
  json::object data;
  data["code"] = std::string(StatusCodeName(status.code()));
  data["message"] = std::string(status.message());
  return Event("error", data);
}

}  // namespace

const tokenizer::Tokenizer* Api::TokenizerFor(const std::string& model) const {
  auto it = context_.tokenizers.find(model);
  return it == context_.tokenizers.end() ? nullptr : it->second.get();
}

namespace {

// Bytes at the end of `text` that start a UTF-8 sequence not yet complete.
size_t IncompleteUtf8Tail(std::string_view text) {
  for (size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const auto byte = static_cast<unsigned char>(text[text.size() - back]);
    if ((byte & 0xc0) == 0x80) continue;  // a continuation byte: look further back
    const size_t length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return length > back ? back : 0;
  }
  return 0;
}

}  // namespace

StatusOr<std::string> Api::NextText(Follow& follow, const std::vector<uint32_t>& tokens,
                                    bool final) const {
  const tokenizer::Tokenizer* tokens_of = TokenizerFor(follow.model);
  if (tokens_of == nullptr) return std::string();
  for (uint32_t token : tokens) {
    if (token > static_cast<uint32_t>(INT32_MAX)) {
      return InternalError(fmt::format("verified token {} is outside the tokenizer", token));
    }
    follow.streamed_tokens.push_back(static_cast<int32_t>(token));
  }
  StatusOr<std::string> text = tokens_of->Decode(follow.streamed_tokens);
  if (!text.ok())
    return InternalError("cannot detokenize the verified output: " +
                         std::string(text.status().message()));
  size_t end = text->size();
  if (!final) end -= IncompleteUtf8Tail(*text);
  if (end <= follow.streamed_text_bytes) return std::string();
  std::string next = text->substr(follow.streamed_text_bytes, end - follow.streamed_text_bytes);
  follow.streamed_text_bytes = end;
  return next;
}

PollResult Api::PollEvents(Follow& follow) const {
  PollResult result;
  StatusOr<std::optional<pb::SessionState>> session =
      ReadSession(*context_.state, follow.session_id);
  if (!session.ok() || !session->has_value()) {
    result.chunk = ErrorEvent(session.ok() ? NotFoundError("no such session") : session.status());
    result.done = true;
    return result;
  }
  const pb::SessionState& state = **session;
  StatusOr<std::vector<uint32_t>> tokens =
      VerifiedTokens(*context_.state, state, follow.session_id, follow.next_step);
  if (!tokens.ok()) {
    result.chunk = ErrorEvent(tokens.status());
    result.done = true;
    return result;
  }
  for (uint32_t token : *tokens) {
    json::object data;
    data["step"] = follow.next_step++;
    data["token_id"] = token;
    result.chunk += Event("token", data);
  }
  if (follow.next_step < state.verified_steps()) return result;  // more on the next poll
  if (state.phase() == pb::SESSION_PHASE_VERIFIED) {
    StatusOr<json::object> receipt = Receipt(*context_.state, follow.session_id, state);
    result.chunk += receipt.ok() ? Event("verified", *receipt) : ErrorEvent(receipt.status());
    result.done = true;
  } else if (state.phase() == pb::SESSION_PHASE_FAILED) {
    result.chunk += ErrorEvent(AbortedError("session failed: " + state.failure()));
    result.done = true;
  }
  return result;
}

PollResult Api::PollCompletion(Follow& follow, bool stream) const {
  PollResult result;
  StatusOr<std::optional<pb::SessionState>> session =
      ReadSession(*context_.state, follow.session_id);
  if (!session.ok()) {
    result.reply = ErrorReply(session.status());
    result.done = true;
    return result;
  }
  if (!session->has_value()) return result;  // the Admit is durable but not applied yet
  const pb::SessionState& state = **session;
  const std::string id = fmt::format("cmpl-{}", Hex(follow.session_id));
  const uint64_t created = state.admitted_unix_ms() / 1000;
  auto choice = [&](const std::vector<uint32_t>& tokens, std::string text, json::value finish) {
    json::object item;
    item["index"] = 0;
    item["text"] = std::move(text);  // empty without a tokenizer: token_ids carry the output
    json::array ids;
    for (uint32_t token : tokens) ids.emplace_back(token);
    item["token_ids"] = std::move(ids);
    item["logprobs"] = nullptr;
    item["finish_reason"] = std::move(finish);
    json::object body;
    body["id"] = id;
    body["object"] = "text_completion";
    body["created"] = created;
    body["model"] = follow.model;
    body["choices"] = json::array{std::move(item)};
    return body;
  };
  const bool verified = state.phase() == pb::SESSION_PHASE_VERIFIED;
  const bool failed = state.phase() == pb::SESSION_PHASE_FAILED;
  if (failed) {
    Status status = AbortedError("session failed: " + state.failure());
    if (stream) {
      std::string error = ErrorReply(status).body;
      error.pop_back();  // JsonReply ends the body with a newline; an SSE line must not
      result.chunk = "data: " + error + "\n\n";
    }
    if (!stream) result.reply = ErrorReply(status);
    result.done = true;
    return result;
  }
  if (!stream && !verified) return result;
  std::vector<uint32_t> tokens;
  while (true) {
    StatusOr<std::vector<uint32_t>> chunk =
        VerifiedTokens(*context_.state, state, follow.session_id, follow.next_step);
    if (!chunk.ok()) {
      result.reply = ErrorReply(chunk.status());
      result.done = true;
      return result;
    }
    if (chunk->empty()) break;
    follow.next_step += chunk->size();
    tokens.insert(tokens.end(), chunk->begin(), chunk->end());
    if (stream) break;  // one chunk per poll keeps each write bounded
  }
  const bool finished = verified && follow.next_step == state.verified_steps();
  const char* reason =
      state.verified_steps() >= state.request().sampling().max_tokens() ? "length" : "stop";
  StatusOr<std::string> text = NextText(follow, tokens, finished);
  if (!text.ok()) {
    result.reply = ErrorReply(text.status());
    result.done = true;
    return result;
  }
  json::object body =
      choice(tokens, std::move(*text), finished ? json::value(reason) : json::value(nullptr));
  if (finished) {
    StatusOr<json::object> receipt = Receipt(*context_.state, follow.session_id, state);
    if (!receipt.ok()) {
      result.reply = ErrorReply(receipt.status());
      result.done = true;
      return result;
    }
    body["fieldprint_receipt"] = std::move(*receipt);
  }
  if (!stream) {
    json::object usage;
    usage["prompt_tokens"] = state.request().prompt_token_ids_size();
    usage["completion_tokens"] = follow.next_step;
    usage["total_tokens"] = state.request().prompt_token_ids_size() + follow.next_step;
    body["usage"] = std::move(usage);
    result.reply = JsonReply(200, body);
    result.done = true;
    return result;
  }
  if (!tokens.empty() || finished) result.chunk = "data: " + json::serialize(body) + "\n\n";
  if (finished) {
    result.chunk += "data: [DONE]\n\n";
    result.done = true;
  }
  return result;
}

}  // namespace fp::supervisor
