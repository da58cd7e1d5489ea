// etcd::Client; see etcd_client.h.
#include "supervisor/log/etcd_client.h"

#include <charconv>
#include <optional>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <openssl/ssl.h>

#include "common/base/bytes.h"

namespace fp::supervisor::etcd {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

namespace {

// HTTP response headers are small; a larger header is not the gateway.
constexpr uint32_t kMaxResponseHeaderBytes = 16 * 1024;

std::string B64(const std::string& bytes) { return Base64Encode(AsBytes(bytes)); }

template <typename T>
StatusOr<T> WithContext(StatusOr<T> result, std::string_view context) {
  if (result.ok()) return result;
  return result.status().WithContext(context);
}

std::string Malformed(std::string_view what) {
  return fmt::format("malformed etcd gateway response: {}", what);
}

// int64 fields come as decimal strings (proto3 JSON); accept plain numbers too. Absent means 0.
StatusOr<int64_t> GetInt64(const json::object& object, std::string_view name) {
  const json::value* value = object.if_contains(name);
  if (value == nullptr) return int64_t{0};
  if (value->is_int64()) return value->as_int64();
  if (value->is_uint64() && value->as_uint64() <= uint64_t{INT64_MAX}) {
    return static_cast<int64_t>(value->as_uint64());
  }
  if (value->is_string()) {
    const json::string& text = value->as_string();
    int64_t parsed = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), parsed);
    if (error == std::errc() && end == text.data() + text.size() && !text.empty()) return parsed;
  }
  return InternalError(Malformed(fmt::format("\"{}\" is not a 64-bit integer", name)));
}

StatusOr<bool> GetBool(const json::object& object, std::string_view name) {
  const json::value* value = object.if_contains(name);
  if (value == nullptr) return false;
  if (!value->is_bool()) return InternalError(Malformed(fmt::format("\"{}\" is not a bool", name)));
  return value->as_bool();
}

StatusOr<std::string> GetBytes(const json::object& object, std::string_view name) {
  const json::value* value = object.if_contains(name);
  if (value == nullptr) return std::string();
  if (!value->is_string()) {
    return InternalError(Malformed(fmt::format("\"{}\" is not a string", name)));
  }
  StatusOr<Bytes> bytes = Base64Decode(value->as_string());
  if (!bytes.ok()) return InternalError(Malformed(fmt::format("\"{}\" is not base64", name)));
  return std::string(AsChars(*bytes));
}

StatusOr<json::object> ParseObject(const std::string& body) {
  boost::system::error_code error;
  json::value value = json::parse(body, error);
  if (error) return InternalError(Malformed("not JSON: " + error.message()));
  if (!value.is_object()) return InternalError(Malformed("not a JSON object"));
  return std::move(value.as_object());
}

// Every reply of a kv or lease call carries a header with the store's revision.
StatusOr<int64_t> HeaderRevision(const json::object& object) {
  const json::value* header = object.if_contains("header");
  if (header == nullptr || !header->is_object()) return InternalError(Malformed("no header"));
  return GetInt64(header->as_object(), "revision");
}

StatusOr<KeyValue> DecodeKeyValue(const json::value& value) {
  if (!value.is_object()) return InternalError(Malformed("a kv is not an object"));
  const json::object& object = value.as_object();
  KeyValue kv;
  FP_ASSIGN_OR_RETURN(kv.key, GetBytes(object, "key"));
  FP_ASSIGN_OR_RETURN(kv.value, GetBytes(object, "value"));
  FP_ASSIGN_OR_RETURN(kv.create_revision, GetInt64(object, "create_revision"));
  FP_ASSIGN_OR_RETURN(kv.mod_revision, GetInt64(object, "mod_revision"));
  FP_ASSIGN_OR_RETURN(kv.version, GetInt64(object, "version"));
  FP_ASSIGN_OR_RETURN(kv.lease, GetInt64(object, "lease"));
  if (kv.key.empty()) return InternalError(Malformed("a kv has no key"));
  return kv;
}

// The body of a range reply, either top-level or inside a txn's response_range.
StatusOr<RangeResponse> DecodeRangeObject(const json::object& object, bool need_header) {
  RangeResponse response;
  if (need_header) {
    FP_ASSIGN_OR_RETURN(response.revision, HeaderRevision(object));
  }
  FP_ASSIGN_OR_RETURN(response.more, GetBool(object, "more"));
  if (const json::value* kvs = object.if_contains("kvs")) {
    if (!kvs->is_array()) return InternalError(Malformed("\"kvs\" is not an array"));
    response.kvs.reserve(kvs->as_array().size());
    for (const json::value& kv : kvs->as_array()) {
      FP_ASSIGN_OR_RETURN(KeyValue decoded, DecodeKeyValue(kv));
      response.kvs.push_back(std::move(decoded));
    }
  }
  return response;
}

json::object RangeJson(const RangeRequest& request) {
  json::object object;
  object["key"] = B64(request.key);
  if (!request.range_end.empty()) object["range_end"] = B64(request.range_end);
  if (request.limit > 0) object["limit"] = std::to_string(request.limit);
  if (request.revision > 0) object["revision"] = std::to_string(request.revision);
  if (request.descending) {
    object["sort_order"] = "DESCEND";
    object["sort_target"] = "KEY";
  }
  if (request.keys_only) object["keys_only"] = true;
  if (request.serializable) object["serializable"] = true;
  return object;
}

const char* TargetName(Compare::Target target) {
  switch (target) {
    case Compare::Target::kCreate:
      return "CREATE";
    case Compare::Target::kMod:
      return "MOD";
    case Compare::Target::kVersion:
      return "VERSION";
    case Compare::Target::kValue:
      return "VALUE";
  }
  return "CREATE";
}

const char* ResultName(Compare::Result result) {
  switch (result) {
    case Compare::Result::kEqual:
      return "EQUAL";
    case Compare::Result::kGreater:
      return "GREATER";
    case Compare::Result::kLess:
      return "LESS";
    case Compare::Result::kNotEqual:
      return "NOT_EQUAL";
  }
  return "EQUAL";
}

json::object CompareJson(const Compare& compare) {
  json::object object;
  object["key"] = B64(compare.key);
  object["target"] = TargetName(compare.target);
  object["result"] = ResultName(compare.result);
  const std::string number = std::to_string(compare.number);
  switch (compare.target) {
    case Compare::Target::kCreate:
      object["create_revision"] = number;
      break;
    case Compare::Target::kMod:
      object["mod_revision"] = number;
      break;
    case Compare::Target::kVersion:
      object["version"] = number;
      break;
    case Compare::Target::kValue:
      object["value"] = B64(compare.value);
      break;
  }
  return object;
}

json::array OpsJson(const std::vector<TxnOp>& ops) {
  json::array array;
  for (const TxnOp& op : ops) {
    json::object inner;
    json::object wrapped;
    switch (op.kind) {
      case TxnOp::Kind::kPut:
        inner["key"] = B64(op.key);
        inner["value"] = B64(op.value);
        if (op.lease != 0) inner["lease"] = std::to_string(op.lease);
        wrapped["request_put"] = std::move(inner);
        break;
      case TxnOp::Kind::kRange:
        wrapped["request_range"] = RangeJson(op.range);
        break;
      case TxnOp::Kind::kDelete:
        inner["key"] = B64(op.key);
        if (!op.range_end.empty()) inner["range_end"] = B64(op.range_end);
        wrapped["request_delete_range"] = std::move(inner);
        break;
    }
    array.push_back(std::move(wrapped));
  }
  return array;
}

StatusOr<TxnOpResult> DecodeOpResult(const json::value& value, TxnOp::Kind kind) {
  if (!value.is_object()) return InternalError(Malformed("a txn response is not an object"));
  const json::object& object = value.as_object();
  const char* name = kind == TxnOp::Kind::kPut     ? "response_put"
                     : kind == TxnOp::Kind::kRange ? "response_range"
                                                   : "response_delete_range";
  const json::value* inner = object.if_contains(name);
  if (inner == nullptr || !inner->is_object()) {
    return InternalError(Malformed(fmt::format("txn response lacks \"{}\"", name)));
  }
  TxnOpResult result;
  if (kind == TxnOp::Kind::kRange) {
    FP_ASSIGN_OR_RETURN(result.range, DecodeRangeObject(inner->as_object(), false));
  } else if (kind == TxnOp::Kind::kDelete) {
    FP_ASSIGN_OR_RETURN(result.deleted, GetInt64(inner->as_object(), "deleted"));
  }
  return result;
}

// Maps a gateway error body ({"error", "code", "message"}) to a Status.
Status GatewayError(const std::string& path, unsigned http_status, const std::string& body) {
  StatusOr<json::object> object = ParseObject(body);
  int64_t code = 0;
  std::string message;
  if (object.ok()) {
    StatusOr<int64_t> parsed = GetInt64(*object, "code");
    code = parsed.ok() ? *parsed : 0;
    if (const json::value* text = object->if_contains("message"); text && text->is_string()) {
      message = std::string(text->as_string());
    } else if (const json::value* error = object->if_contains("error");
               error && error->is_string()) {
      message = std::string(error->as_string());
    }
  }
  if (code < 1 || code > 16 || message.empty()) {
    return InternalError(fmt::format("etcd {}: {} (HTTP {})", path,
                                     Malformed("error reply without a code and message"),
                                     http_status));
  }
  return Status(static_cast<StatusCode>(code), fmt::format("etcd {}: {}", path, message));
}

}  // namespace

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // etcd: "\0" as range_end means "to the end of the keyspace"
}

namespace internal {

std::string EncodeRange(const RangeRequest& request) { return json::serialize(RangeJson(request)); }

StatusOr<RangeResponse> DecodeRange(const std::string& body) {
  FP_ASSIGN_OR_RETURN(json::object object, ParseObject(body));
  return DecodeRangeObject(object, true);
}

std::string EncodeTxn(const TxnRequest& request) {
  json::object object;
  json::array compares;
  for (const Compare& compare : request.compares) compares.push_back(CompareJson(compare));
  object["compare"] = std::move(compares);
  object["success"] = OpsJson(request.success);
  object["failure"] = OpsJson(request.failure);
  return json::serialize(object);
}

StatusOr<TxnResponse> DecodeTxn(const std::string& body, const TxnRequest& request) {
  FP_ASSIGN_OR_RETURN(json::object object, ParseObject(body));
  TxnResponse response;
  FP_ASSIGN_OR_RETURN(response.revision, HeaderRevision(object));
  FP_ASSIGN_OR_RETURN(response.succeeded, GetBool(object, "succeeded"));
  const std::vector<TxnOp>& ops = response.succeeded ? request.success : request.failure;
  const json::value* responses = object.if_contains("responses");
  const size_t count =
      responses != nullptr && responses->is_array() ? responses->as_array().size() : 0;
  if ((responses != nullptr && !responses->is_array()) || count != ops.size()) {
    return InternalError(
        Malformed(fmt::format("txn has {} responses for {} operations", count, ops.size())));
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    FP_ASSIGN_OR_RETURN(TxnOpResult result, DecodeOpResult(responses->as_array()[i], ops[i].kind));
    response.results.push_back(std::move(result));
  }
  return response;
}

}  // namespace internal

// One keep-alive connection to the current endpoint; see the header for the deadline scheme.
class Client::Transport {
 public:
  Transport(const ClientOptions& options, std::unique_ptr<asio::ssl::context> tls)
      : options_(options), tls_context_(std::move(tls)) {}

  // The status and body of one POST; Unavailable / DeadlineExceeded / Unauthenticated on
  // transport failures (the connection is dropped and the next endpoint is used next time).
  StatusOr<std::pair<unsigned, std::string>> Post(const std::string& path, const std::string& body,
                                                  std::chrono::milliseconds timeout) {
    std::lock_guard lock(mutex_);
    deadline_ = SteadyClock::now() + std::min(timeout, options_.request_timeout);
    const Endpoint& endpoint = options_.endpoints[current_];
    StatusOr<std::pair<unsigned, std::string>> reply =
        WithContext(Exchange(endpoint, path, body),
                    fmt::format("etcd {}:{} {}", endpoint.host, endpoint.port, path));
    if (!reply.ok()) {
      Disconnect();
      current_ = (current_ + 1) % options_.endpoints.size();
    }
    return reply;
  }

  std::string current_endpoint() const {
    std::lock_guard lock(mutex_);
    const Endpoint& endpoint = options_.endpoints[current_];
    return fmt::format("{}:{}", endpoint.host, endpoint.port);
  }

 private:
  // Runs the asynchronous operation `initiate` starts until it completes; the stream's expiry
  // (set to deadline_) bounds it.
  template <typename Initiate>
  beast::error_code Run(Initiate&& initiate) {
    bool done = false;
    beast::error_code result;
    initiate([&](beast::error_code error, auto&&...) {
      result = error;
      done = true;
    });
    io_.restart();
    while (!done && io_.run_one() > 0) {
    }
    FP_CHECK(done);  // an initiated operation always completes, at the latest at the deadline
    return result;
  }

  beast::tcp_stream& Lowest() {
    return tls_stream_.has_value() ? tls_stream_->next_layer() : *plain_stream_;
  }

  Status Failure(std::string_view step, const beast::error_code& error) {
    if (error == beast::error::timeout) {
      return DeadlineExceededError(fmt::format("{}: request deadline passed", step));
    }
    if (error.category() == asio::error::get_ssl_category()) {
      return UnauthenticatedError(fmt::format("{}: {}", step, error.message()));
    }
    return UnavailableError(fmt::format("{}: {}", step, error.message()));
  }

  Status Connect(const Endpoint& endpoint) {
    tcp::resolver resolver(io_);
    tcp::resolver::results_type endpoints;
    beast::error_code error = Run([&](auto handler) {
      resolver.async_resolve(endpoint.host, std::to_string(endpoint.port),
                             [&, handler](beast::error_code e, tcp::resolver::results_type r) {
                               endpoints = std::move(r);
                               handler(e);
                             });
    });
    if (error) return Failure("resolve", error);
    if (tls_context_ != nullptr) {
      tls_stream_.emplace(io_, *tls_context_);
    } else {
      plain_stream_.emplace(io_);
    }
    Lowest().expires_at(deadline_);
    error = Run([&](auto handler) { Lowest().async_connect(endpoints, handler); });
    if (error) return Failure("connect", error);
    Lowest().socket().set_option(tcp::no_delay(true), error);
    if (tls_stream_.has_value()) {
      SSL* ssl = tls_stream_->native_handle();
      if (SSL_set_tlsext_host_name(ssl, endpoint.host.c_str()) != 1) {
        return InternalError("cannot set the TLS server name");
      }
      tls_stream_->set_verify_callback(asio::ssl::host_name_verification(endpoint.host));
      error = Run([&](auto handler) {
        tls_stream_->async_handshake(asio::ssl::stream_base::client, handler);
      });
      if (error) return Failure("TLS handshake", error);
    }
    connected_ = true;
    return OkStatus();
  }

  void Disconnect() {
    beast::error_code ignored;
    if (tls_stream_.has_value()) tls_stream_->next_layer().socket().close(ignored);
    if (plain_stream_.has_value()) plain_stream_->socket().close(ignored);
    // Handlers of the closed socket (cancelled reads, expiry timers) run here, not later.
    io_.restart();
    io_.poll();
    tls_stream_.reset();
    plain_stream_.reset();
    buffer_.clear();
    connected_ = false;
  }

  StatusOr<std::pair<unsigned, std::string>> Exchange(const Endpoint& endpoint,
                                                      const std::string& path,
                                                      const std::string& body) {
    if (!connected_) FP_RETURN_IF_ERROR(Connect(endpoint));
    Lowest().expires_at(deadline_);
    http::request<http::string_body> request{http::verb::post, path, 11};
    request.set(http::field::host, endpoint.host);
    request.set(http::field::content_type, "application/json");
    request.keep_alive(true);
    request.body() = body;
    request.prepare_payload();
    http::response_parser<http::string_body> parser;
    parser.header_limit(kMaxResponseHeaderBytes);
    parser.body_limit(options_.max_response_bytes);
    auto exchange = [&](auto& stream) {
      beast::error_code error =
          Run([&](auto handler) { http::async_write(stream, request, handler); });
      if (error) return Failure("write", error);
      error = Run([&](auto handler) { http::async_read(stream, buffer_, parser, handler); });
      if (error == http::error::body_limit) {
        return ResourceExhaustedError(
            fmt::format("response body over {} bytes", options_.max_response_bytes));
      }
      if (error) return Failure("read", error);
      return OkStatus();
    };
    FP_RETURN_IF_ERROR(tls_stream_.has_value() ? exchange(*tls_stream_) : exchange(*plain_stream_));
    if (!parser.get().keep_alive()) Disconnect();
    return std::make_pair(parser.get().result_int(), std::move(parser.get().body()));
  }

  const ClientOptions options_;
  const std::unique_ptr<asio::ssl::context> tls_context_;  // null for plain HTTP

  mutable std::mutex mutex_;  // serializes requests; guards everything below
  asio::io_context io_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_stream_;
  std::optional<beast::tcp_stream> plain_stream_;
  beast::flat_buffer buffer_;
  bool connected_ = false;
  size_t current_ = 0;  // index into options_.endpoints
  SteadyClock::time_point deadline_;
};

StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.endpoints.empty() || options.endpoints.size() > kMaxEtcdEndpoints) {
    return InvalidArgumentError(
        fmt::format("etcd client: 1..{} endpoints required", kMaxEtcdEndpoints));
  }
  for (const Endpoint& endpoint : options.endpoints) {
    if (endpoint.host.empty() || endpoint.port == 0) {
      return InvalidArgumentError("etcd client: an endpoint needs a host and a port");
    }
  }
  if (options.request_timeout <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("etcd client: request_timeout must be positive");
  }
  if (options.max_txn_ops < 1 || options.max_txn_ops > kMaxTxnOpsLimit) {
    return InvalidArgumentError(
        fmt::format("etcd client: max_txn_ops must be in 1..{}", kMaxTxnOpsLimit));
  }
  std::unique_ptr<asio::ssl::context> tls;
  if (options.tls.has_value()) {
    FP_ASSIGN_OR_RETURN(tls, wire::MakeClientTlsContext(*options.tls));
  }
  return std::unique_ptr<Client>(
      new Client(std::make_unique<Transport>(options, std::move(tls)), options.max_txn_ops));
}

Client::Client(std::unique_ptr<Transport> transport, size_t max_txn_ops)
    : transport_(std::move(transport)), max_txn_ops_(max_txn_ops) {}
Client::~Client() = default;

std::string Client::current_endpoint() const { return transport_->current_endpoint(); }

StatusOr<std::string> Client::Post(const std::string& path, const std::string& body,
                                   std::optional<std::chrono::milliseconds> timeout) {
  if (body.size() > kMaxEtcdRequestBytes) {
    return InvalidArgumentError(fmt::format("etcd {}: request of {} bytes over {}", path,
                                            body.size(), kMaxEtcdRequestBytes));
  }
  FP_ASSIGN_OR_RETURN(
      auto reply, transport_->Post(path, body, timeout.value_or(std::chrono::milliseconds::max())));
  if (reply.first != 200) return GatewayError(path, reply.first, reply.second);
  return std::move(reply.second);
}

StatusOr<RangeResponse> Client::Range(const RangeRequest& request) {
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/range", internal::EncodeRange(request)));
  return WithContext(internal::DecodeRange(body), "etcd /v3/kv/range");
}

StatusOr<TxnResponse> Client::Txn(const TxnRequest& request,
                                  std::optional<std::chrono::milliseconds> timeout) {
  if (request.compares.size() > max_txn_ops_ || request.success.size() > max_txn_ops_ ||
      request.failure.size() > max_txn_ops_) {
    return InvalidArgumentError(fmt::format("etcd txn: more than {} operations", max_txn_ops_));
  }
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/txn", internal::EncodeTxn(request), timeout));
  return WithContext(internal::DecodeTxn(body, request), "etcd /v3/kv/txn");
}

StatusOr<int64_t> Client::DeleteRange(const std::string& key, const std::string& range_end) {
  json::object object;
  object["key"] = B64(key);
  if (!range_end.empty()) object["range_end"] = B64(range_end);
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/deleterange", json::serialize(object)));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseObject(body));
  FP_RETURN_IF_ERROR(HeaderRevision(reply).status());
  return GetInt64(reply, "deleted");
}

Status Client::Compact(int64_t revision, bool physical) {
  json::object object;
  object["revision"] = std::to_string(revision);
  if (physical) object["physical"] = true;
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/compaction", json::serialize(object)));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseObject(body));
  return HeaderRevision(reply).status();
}

StatusOr<Lease> Client::LeaseGrant(int64_t ttl_seconds) {
  json::object object;
  object["TTL"] = std::to_string(ttl_seconds);
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/grant", json::serialize(object)));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseObject(body));
  FP_RETURN_IF_ERROR(HeaderRevision(reply).status());
  Lease lease;
  FP_ASSIGN_OR_RETURN(lease.id, GetInt64(reply, "ID"));
  FP_ASSIGN_OR_RETURN(lease.ttl_seconds, GetInt64(reply, "TTL"));
  if (lease.id == 0) return InternalError(Malformed("lease grant without an ID"));
  return lease;
}

StatusOr<int64_t> Client::LeaseKeepAlive(int64_t id) {
  json::object object;
  object["ID"] = std::to_string(id);
  // The gateway streams keepalive replies; one request body yields one {"result": ...} object.
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/keepalive", json::serialize(object)));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseObject(body));
  const json::value* result = reply.if_contains("result");
  if (result == nullptr || !result->is_object()) {
    if (reply.contains("error")) return GatewayError("/v3/lease/keepalive", 200, body);
    return InternalError(Malformed("keepalive without a result"));
  }
  FP_ASSIGN_OR_RETURN(int64_t ttl, GetInt64(result->as_object(), "TTL"));
  if (ttl <= 0) return NotFoundError(fmt::format("etcd lease {:x} expired or was revoked", id));
  return ttl;
}

Status Client::LeaseRevoke(int64_t id) {
  json::object object;
  object["ID"] = std::to_string(id);
  FP_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/revoke", json::serialize(object)));
  FP_ASSIGN_OR_RETURN(json::object reply, ParseObject(body));
  return HeaderRevision(reply).status();
}

}  // namespace fp::supervisor::etcd
