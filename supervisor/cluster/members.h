// ClusterMembers: the supervisors of a cluster and how far each has durably applied the log, kept
// in etcd beside the log (docs/supervisor.md, "Cluster"):
//
//   <prefix>/members/<name>  ->  the member's durably applied position, decimal ASCII
//
// Every supervisor publishes its own entry periodically (after flushing its state store, so the
// position survives a crash). The entries are deliberately not attached to a lease: a member that
// is down keeps its last position, and the leader trims the log only below the smallest position
// of all members, so a stopped member can catch up when it returns. An operator who retires a
// member for good removes its entry (`fieldprint supervisor remove-member`); a member that is still
// running publishes itself again at its next period. A snapshot for a member being bootstrapped
// reserves the snapshot's position under the new member's name before the bytes leave the peer,
// so trimming cannot overtake the new member before it starts.
//
// Values are decimal so that `etcdctl get --prefix <prefix>/members/` is readable as it stands.
//
// Thread-safety: every method is safe from any thread; requests are serialized on one etcd client.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/status.h"
#include "supervisor/log/etcd_client.h"

namespace fp::supervisor::cluster {

// Members listed at most (a cluster is 3 or 5 supervisors; more entries are a misconfiguration).
inline constexpr size_t kMaxClusterMembers = 64;
// A member's name is its TLS name: 1..kMaxMemberNameBytes of [A-Za-z0-9._-].
inline constexpr size_t kMaxMemberNameBytes = 128;
// Compare-and-swap attempts of one Reserve against concurrent publishers.
inline constexpr int kMaxReserveAttempts = 8;

// InvalidArgument unless `name` is a valid member name (see kMaxMemberNameBytes). Pure.
Status ValidateMemberName(std::string_view name);

class ClusterMembers {
 public:
  // Validates the prefix (non-empty, no trailing '/') and creates the etcd client; no request is
  // sent. InvalidArgument for bad options, tls.h's errors for the TLS files. The caller owns it.
  static StatusOr<std::unique_ptr<ClusterMembers>> Create(const etcd::ClientOptions& client,
                                                          const std::string& prefix);
  ClusterMembers(const ClusterMembers&) = delete;
  ClusterMembers& operator=(const ClusterMembers&) = delete;

  // Writes `name`'s applied position. InvalidArgument for a bad name; etcd's errors (Unavailable,
  // DeadlineExceeded) otherwise.
  Status Publish(const std::string& name, uint64_t applied);

  // Makes `name`'s entry at most `position`: creates it, or lowers a higher one; a lower entry is
  // kept. Aborted when concurrent writers kept changing the entry; errors as Publish.
  Status Reserve(const std::string& name, uint64_t position);

  // Every member's entry. DataLoss for a value that is not a decimal position; FailedPrecondition
  // for more than kMaxClusterMembers entries; etcd's errors otherwise.
  StatusOr<std::map<std::string, uint64_t>> List();

  // Deletes `name`'s entry; true when there was one. Errors as Publish.
  StatusOr<bool> Remove(const std::string& name);

  std::string MemberKey(const std::string& name) const { return prefix_ + "/members/" + name; }

 private:
  ClusterMembers(std::unique_ptr<etcd::Client> client, std::string prefix)
      : client_(std::move(client)), prefix_(std::move(prefix)) {}

  const std::unique_ptr<etcd::Client> client_;
  const std::string prefix_;
};

// A member entry's value: the decimal position, or DataLoss. Pure.
StatusOr<uint64_t> ParseMemberPosition(std::string_view value);

}  // namespace fp::supervisor::cluster
