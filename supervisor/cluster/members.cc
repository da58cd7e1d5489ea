// ClusterMembers; see members.h.
#include "supervisor/cluster/members.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

namespace fp::supervisor::cluster {

using etcd::Compare;
using etcd::TxnOp;

Status ValidateMemberName(std::string_view name) {
  const bool valid_chars = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (name.empty() || name.size() > kMaxMemberNameBytes || !valid_chars || name == "." ||
      name == "..") {
    return InvalidArgumentError(fmt::format("member name '{}': 1..{} characters of [A-Za-z0-9._-]",
                                            name.substr(0, 200), kMaxMemberNameBytes));
  }
  return OkStatus();
}

StatusOr<uint64_t> ParseMemberPosition(std::string_view value) {
  uint64_t position = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), position);
  if (value.empty() || error != std::errc() || end != value.data() + value.size()) {
    return DataLossError(
        fmt::format("member entry '{}' is not a decimal position", value.substr(0, 64)));
  }
  return position;
}

StatusOr<std::unique_ptr<ClusterMembers>> ClusterMembers::Create(const etcd::ClientOptions& client,
                                                                 const std::string& prefix) {
  if (prefix.empty() || prefix.back() == '/') {
    return InvalidArgumentError("members: prefix must be non-empty without a trailing '/'");
  }
  FP_ASSIGN_OR_RETURN(std::unique_ptr<etcd::Client> created, etcd::Client::Create(client));
  return std::unique_ptr<ClusterMembers>(new ClusterMembers(std::move(created), prefix));
}

Status ClusterMembers::Publish(const std::string& name, uint64_t applied) {
  FP_RETURN_IF_ERROR(ValidateMemberName(name));
  etcd::TxnRequest put;
  put.success.push_back({TxnOp::Kind::kPut, MemberKey(name), std::to_string(applied), 0, {}, ""});
  return client_->Txn(put, std::nullopt).status();
}

Status ClusterMembers::Reserve(const std::string& name, uint64_t position) {
  FP_RETURN_IF_ERROR(ValidateMemberName(name));
  const std::string key = MemberKey(name);
  for (int attempt = 0; attempt < kMaxReserveAttempts; ++attempt) {
    etcd::RangeRequest get;
    get.key = key;
    FP_ASSIGN_OR_RETURN(etcd::RangeResponse current, client_->Range(get));
    etcd::TxnRequest swap;
    if (current.kvs.empty()) {
      swap.compares.push_back({key, Compare::Target::kCreate, Compare::Result::kEqual, 0, ""});
    } else {
      FP_ASSIGN_OR_RETURN(uint64_t stored, ParseMemberPosition(current.kvs[0].value));
      if (stored <= position) return OkStatus();
      swap.compares.push_back(
          {key, Compare::Target::kMod, Compare::Result::kEqual, current.kvs[0].mod_revision, ""});
    }
    swap.success.push_back({TxnOp::Kind::kPut, key, std::to_string(position), 0, {}, ""});
    FP_ASSIGN_OR_RETURN(etcd::TxnResponse done, client_->Txn(swap, std::nullopt));
    if (done.succeeded) return OkStatus();
  }
  return AbortedError(fmt::format("members: the entry of {} kept changing", name));
}

StatusOr<std::map<std::string, uint64_t>> ClusterMembers::List() {
  const std::string members = prefix_ + "/members/";
  etcd::RangeRequest all;
  all.key = members;
  all.range_end = etcd::PrefixEnd(members);
  all.limit = kMaxClusterMembers + 1;
  FP_ASSIGN_OR_RETURN(etcd::RangeResponse found, client_->Range(all));
  if (found.kvs.size() > kMaxClusterMembers) {
    return FailedPreconditionError(
        fmt::format("more than {} member entries under {}: remove retired members",
                    kMaxClusterMembers, members));
  }
  std::map<std::string, uint64_t> positions;
  for (const etcd::KeyValue& kv : found.kvs) {
    FP_ASSIGN_OR_RETURN(uint64_t position, ParseMemberPosition(kv.value));
    positions[kv.key.substr(members.size())] = position;
  }
  return positions;
}

StatusOr<bool> ClusterMembers::Remove(const std::string& name) {
  FP_RETURN_IF_ERROR(ValidateMemberName(name));
  FP_ASSIGN_OR_RETURN(int64_t deleted, client_->DeleteRange(MemberKey(name), ""));
  return deleted > 0;
}

}  // namespace fp::supervisor::cluster
