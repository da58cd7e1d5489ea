// EtcdClient: a small synchronous etcd v3 client over etcd's HTTP/JSON gateway (the grpc-gateway
// every etcd 3.4 member serves on its client port), with Boost.Beast. It covers what the etcd
// log backend and leader election need: kv/range, kv/txn, kv/deleterange, kv/compaction and
// lease grant/keepalive/revoke. Gateway reference:
// https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/
//
// Why the gateway and not gRPC: the project has no gRPC dependency, and the gateway carries the
// same protobuf messages as JSON (bytes as base64, int64 as decimal strings), so one keep-alive
// HTTP/1.1 connection per client is enough for the log's one-request-at-a-time pattern.
//
// Bounds and deadlines: every request has a deadline (`request_timeout`, covering connect, TLS
// handshake, write and read: one Beast expiry for the whole exchange, with asynchronous
// operations, because Beast's timeouts do not apply to synchronous calls), request bodies are at
// most kMaxEtcdRequestBytes and response bodies at most `max_response_bytes`.
//
// Endpoints: the client talks to one member at a time. A transport failure (connect, TLS, reset,
// timeout) drops the connection and moves to the next endpoint for the next request. A request
// is never resent by the client: a txn that timed out may or may not have been applied, and only
// the caller knows whether resending it is safe (the log's txns are compare-guarded, so they are).
//
// Errors: Unavailable for transport failures and etcd's retryable errors (no leader, request
// timed out), DeadlineExceeded when the request deadline passed, the gateway's own gRPC code
// otherwise (gRPC codes and fp::StatusCode share numbers), and Internal with "malformed" in the
// message when a response is not what the gateway sends (bad JSON, a missing header, bad base64,
// a non-integer revision).
//
// Thread-safety: every method is safe from any thread; requests of one client are serialized by
// its mutex (use one client per thread that must not wait on another).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tls.h"

namespace fp::supervisor::etcd {

// Largest request body sent (JSON); etcd's own limit (--max-request-bytes, 1.5 MiB by default)
// applies to the decoded request and usually bites first.
inline constexpr size_t kMaxEtcdRequestBytes = size_t{8} << 20;
inline constexpr size_t kMaxEtcdEndpoints = 16;
// Operations in one Txn branch and compares: etcd's --max-txn-ops default, and the client's
// unless ClientOptions::max_txn_ops says the cluster allows more (up to kMaxTxnOpsLimit).
inline constexpr size_t kMaxTxnOps = 128;
inline constexpr size_t kMaxTxnOpsLimit = 4096;

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

struct ClientOptions {
  std::vector<Endpoint> endpoints;  // 1..kMaxEtcdEndpoints members of one cluster
  // mTLS (TLS 1.3, client certificate) when set, plain HTTP otherwise.
  std::optional<wire::TlsFiles> tls;
  std::chrono::milliseconds request_timeout{2000};
  // The cluster's --max-txn-ops: 1..kMaxTxnOpsLimit. Larger txns carry larger append groups.
  size_t max_txn_ops = kMaxTxnOps;
  size_t max_response_bytes = size_t{64} << 20;
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

struct RangeRequest {
  std::string key;
  std::string range_end;    // empty: just `key`; else the half-open range [key, range_end)
  int64_t limit = 0;        // 0: no limit
  int64_t revision = 0;     // 0: the newest
  bool descending = false;  // sort by key, descending (default: ascending by key)
  bool keys_only = false;
  bool serializable = false;  // false: linearizable (a quorum read)
};

struct RangeResponse {
  int64_t revision = 0;  // the store's revision when the range was served
  std::vector<KeyValue> kvs;
  bool more = false;  // more keys in the range than were returned
};

struct Compare {
  enum class Target { kCreate, kMod, kVersion, kValue };
  enum class Result { kEqual, kGreater, kLess, kNotEqual };
  std::string key;
  Target target = Target::kCreate;
  Result result = Result::kEqual;
  int64_t number = 0;  // the revision or version compared, for every target but kValue
  std::string value;   // for kValue
};

struct TxnOp {
  enum class Kind { kPut, kRange, kDelete };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;      // kPut
  int64_t lease = 0;      // kPut; 0: none
  RangeRequest range;     // kRange (its key and range_end are used instead of `key`)
  std::string range_end;  // kDelete: empty deletes `key` only
};

struct TxnOpResult {
  RangeResponse range;  // kRange
  int64_t deleted = 0;  // kDelete
};

struct TxnRequest {
  std::vector<Compare> compares;  // at most ClientOptions::max_txn_ops
  std::vector<TxnOp> success;     // at most ClientOptions::max_txn_ops
  std::vector<TxnOp> failure;     // at most ClientOptions::max_txn_ops
};

struct TxnResponse {
  int64_t revision = 0;
  bool succeeded = false;
  std::vector<TxnOpResult> results;  // one per op of the branch that ran
};

struct Lease {
  int64_t id = 0;
  int64_t ttl_seconds = 0;
};

// The smallest key greater than every key starting with `prefix` (etcd's "prefix end").
std::string PrefixEnd(const std::string& prefix);

// The request and response bodies of the gateway, kept apart from the transport so that they
// can be tested without a server. Errors as described at the top.
namespace internal {
std::string EncodeTxn(const TxnRequest& request);
StatusOr<TxnResponse> DecodeTxn(const std::string& body, const TxnRequest& request);
std::string EncodeRange(const RangeRequest& request);
StatusOr<RangeResponse> DecodeRange(const std::string& body);
}  // namespace internal

class Client {
 public:
  // Validates the options and builds the TLS context (no connection yet). InvalidArgument for no
  // or too many endpoints or a zero timeout; tls.h's errors for the TLS files. The caller owns
  // the result.
  static StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  StatusOr<RangeResponse> Range(const RangeRequest& request);
  // InvalidArgument (without sending) when a list exceeds the client's max_txn_ops. `timeout`, when
  // set and shorter than the client's request_timeout, bounds this request instead (a caller whose
  // own deadline is closer).
  StatusOr<TxnResponse> Txn(const TxnRequest& request,
                            std::optional<std::chrono::milliseconds> timeout);
  // The number of keys deleted.
  StatusOr<int64_t> DeleteRange(const std::string& key, const std::string& range_end);
  // Compacts the key-value history before `revision` (physical: waits until it is removed from
  // the backend). OutOfRange if `revision` is already compacted or is in the future.
  Status Compact(int64_t revision, bool physical);

  // A lease of `ttl_seconds` (etcd may grant a longer one). Its id and the granted TTL.
  StatusOr<Lease> LeaseGrant(int64_t ttl_seconds);
  // Renews the lease once; returns its remaining TTL. NotFound if the lease expired or was revoked.
  StatusOr<int64_t> LeaseKeepAlive(int64_t id);
  // Revokes the lease and deletes its keys. NotFound if it no longer exists.
  Status LeaseRevoke(int64_t id);

  // The endpoint the next request goes to ("host:port").
  std::string current_endpoint() const;

 private:
  class Transport;
  Client(std::unique_ptr<Transport> transport, size_t max_txn_ops);
  // POSTs `body` to `path` and returns the response body of a 200 reply; maps gateway errors.
  StatusOr<std::string> Post(const std::string& path, const std::string& body,
                             std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  std::unique_ptr<Transport> transport_;
  const size_t max_txn_ops_;
};

}  // namespace fp::supervisor::etcd
