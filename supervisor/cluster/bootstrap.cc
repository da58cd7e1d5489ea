// Bootstrap and Backup; see bootstrap.h.
#include "supervisor/cluster/bootstrap.h"

#include <array>
#include <filesystem>
#include <optional>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <rocksdb/db.h>
#include <unistd.h>

#include "common/base/log.h"
#include "supervisor/cluster/members.h"
#include "supervisor/cluster/snapshot.h"
#include "supervisor/fsck.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_store.h"
#include "supervisor/state/state_txn.h"

namespace fp::supervisor::cluster {
namespace {

namespace fs = std::filesystem;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

// Bytes read from the socket per piece of a snapshot stream.
constexpr size_t kReadPieceBytes = size_t{256} << 10;

Status SyncDirectory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return UnavailableError(fmt::format("open {} to sync it failed", dir.string()));
  const int synced = ::fsync(fd);
  ::close(fd);
  if (synced != 0) return UnavailableError(fmt::format("fsync {} failed", dir.string()));
  return OkStatus();
}

// Removes what a failed Bootstrap or Backup created, leaving everything else as it was.
class Cleanup {
 public:
  Cleanup(fs::path partial, std::optional<fs::path> created_dir)
      : partial_(std::move(partial)), created_dir_(std::move(created_dir)) {}
  ~Cleanup() {
    if (committed_) return;
    std::error_code ignored;
    fs::remove_all(partial_, ignored);
    if (created_dir_.has_value()) fs::remove_all(*created_dir_, ignored);
  }
  Cleanup(const Cleanup&) = delete;
  Cleanup& operator=(const Cleanup&) = delete;
  void Commit() { committed_ = true; }

 private:
  fs::path partial_;
  std::optional<fs::path> created_dir_;
  bool committed_ = false;
};

// Checks a downloaded or copied state: its applied position and a full fsck.
Status VerifyState(const fs::path& state_dir, std::optional<uint64_t> expected_applied,
                   uint64_t* applied) {
  FP_ASSIGN_OR_RETURN(std::unique_ptr<RocksStore> state, OpenStateStore(state_dir.string()));
  FP_ASSIGN_OR_RETURN(AppliedMeta meta, ReadAppliedMeta(DbStateReader(state.get())));
  if (expected_applied.has_value() && meta.applied != *expected_applied) {
    return DataLossError(fmt::format("snapshot: the state applied {} records, the manifest says {}",
                                     meta.applied, *expected_applied));
  }
  FP_ASSIGN_OR_RETURN(FsckReport report, Fsck(*state));
  if (!report.clean()) {
    return DataLossError(fmt::format("the state fails fsck ({} problems; first: {})",
                                     report.problem_count,
                                     report.problems.empty() ? "?" : report.problems.front()));
  }
  *applied = meta.applied;
  return OkStatus();
}

// Runs `io` until the pending operation completes; the stream's expiry bounds it.
void RunIo(boost::asio::io_context& io) {
  io.restart();
  io.run();
}

Status NetworkError(const beast::error_code& error, std::string_view step) {
  if (error == beast::error::timeout) {
    return DeadlineExceededError(fmt::format("bootstrap: {} timed out", step));
  }
  return UnavailableError(fmt::format("bootstrap: {}: {}", step, error.message()));
}

// The peer's refusal as a Status, quoting its JSON error message when there is one.
Status PeerRefusal(unsigned status, const std::string& body) {
  std::string message = body.substr(0, 512);
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) message.pop_back();
  const std::string text = fmt::format("the peer answered {}: {}", status, message);
  switch (status) {
    case 401:
      return UnauthenticatedError(text + " (check the admin token file)");
    case 403:
      return PermissionDeniedError(text);
    case 404:
      return NotFoundError(text + " (is the peer a fieldprint supervisor of this version?)");
    case 503:
      return UnavailableError(text);
    default:
      return FailedPreconditionError(text);
  }
}

// Connects to the peer, sends the snapshot request and feeds the body to `sink`.
Status Download(const BootstrapOptions& options, const PeerAddress& peer,
                const SnapshotSink& sink) {
  boost::asio::io_context io;
  beast::tcp_stream stream(io);
  tcp::resolver resolver(io);
  beast::error_code error;
  tcp::resolver::results_type endpoints;
  resolver.async_resolve(peer.host, std::to_string(peer.port),
                         [&](beast::error_code e, tcp::resolver::results_type results) {
                           error = e;
                           endpoints = std::move(results);
                         });
  io.run_for(options.io_timeout);
  if (!io.stopped()) {
    resolver.cancel();
    RunIo(io);
    return DeadlineExceededError(fmt::format("bootstrap: resolve {} timed out", peer.host));
  }
  if (error) return NetworkError(error, "resolve " + peer.host);
  stream.expires_after(options.io_timeout);
  stream.async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint&) { error = e; });
  RunIo(io);
  if (error) return NetworkError(error, fmt::format("connect {}:{}", peer.host, peer.port));
  std::string target = "/v1/admin/snapshot";
  if (!options.member.empty()) target += "?member=" + options.member;
  http::request<http::empty_body> request{http::verb::get, target, 11};
  request.set(http::field::host, peer.host);
  request.set(http::field::authorization, "Bearer " + options.admin_token);
  stream.expires_after(options.io_timeout);
  http::async_write(stream, request, [&](beast::error_code e, size_t) { error = e; });
  RunIo(io);
  if (error) return NetworkError(error, "send the request");
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);  // the snapshot format bounds itself (kMaxSnapshotBytes)
  stream.expires_after(options.io_timeout);
  http::async_read_header(stream, buffer, parser, [&](beast::error_code e, size_t) { error = e; });
  RunIo(io);
  if (error) return NetworkError(error, "read the reply header");
  const unsigned status = parser.get().result_int();
  std::string refusal;
  std::vector<char> piece(kReadPieceBytes);
  while (!parser.is_done()) {
    parser.get().body().data = piece.data();
    parser.get().body().size = piece.size();
    stream.expires_after(options.io_timeout);
    http::async_read(stream, buffer, parser, [&](beast::error_code e, size_t) { error = e; });
    RunIo(io);
    if (error == http::error::need_buffer) error = {};
    if (error) {
      // A stream cut short is reported by the receiver as truncated, with what did arrive.
      if (status == 200 && error != beast::error::timeout) break;
      return NetworkError(error, "read the snapshot");
    }
    const size_t got = piece.size() - parser.get().body().size;
    if (status != 200) {
      refusal.append(piece.data(), std::min(got, kMaxSnapshotErrorReplyBytes - refusal.size()));
      continue;
    }
    FP_RETURN_IF_ERROR(sink(std::string_view(piece.data(), got)));
  }
  if (status != 200) return PeerRefusal(status, refusal);
  return OkStatus();
}

// Copies a RocksDB database of unknown column families (the log) as a checkpoint.
Status CheckpointAnyRocksDb(const fs::path& from, const fs::path& to) {
  std::vector<std::string> names;
  rocksdb::DBOptions db_options;
  FP_RETURN_IF_ERROR(FromRocks(rocksdb::DB::ListColumnFamilies(db_options, from.string(), &names),
                               "list the column families of " + from.string()));
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : names) families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  FP_RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::Open(db_options, from.string(), families, &handles, &raw),
                "open " + from.string()));
  std::unique_ptr<rocksdb::DB> db(raw);
  Status copied = CreateRocksCheckpoint(db.get(), to.string());
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  return copied;
}

}  // namespace

StatusOr<PeerAddress> ParsePeerUrl(std::string_view url) {
  const auto bad = [&](std::string_view why) {
    return InvalidArgumentError(
        fmt::format("--from '{}': {} (expected http://HOST:PORT)", url.substr(0, 200), why));
  };
  constexpr std::string_view kHttp = "http://";
  if (url.starts_with("https://")) {
    return bad(
        "the supervisor's HTTP API serves plain HTTP; use http://, through a tunnel or a "
        "TLS-terminating proxy across untrusted networks");
  }
  if (!url.starts_with(kHttp)) return bad("not an http URL");
  std::string_view rest = url.substr(kHttp.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty() || host.find_first_of("/[]@?#") != std::string_view::npos) {
    return bad("bad host");
  }
  const std::string_view digits = rest.substr(colon + 1);
  uint32_t port = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9' || port > 65535) return bad("bad port");
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (digits.empty() || port == 0 || port > 65535) return bad("bad port");
  return PeerAddress{std::string(host), static_cast<uint16_t>(port)};
}

Status CheckBootstrapTarget(const std::string& data_dir) {
  std::error_code error;
  if (!fs::exists(data_dir, error)) return OkStatus();
  if (!fs::is_directory(data_dir, error)) {
    return FailedPreconditionError(fmt::format("{} is not a directory", data_dir));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(data_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name == kBootstrapPartialDir) continue;
    if (entry.is_regular_file() && name.ends_with(".key")) continue;
    return FailedPreconditionError(fmt::format(
        "{} is not empty (it holds '{}'): bootstrap installs a state only into a new data "
        "directory; a member that has a state catches up from the log by itself",
        data_dir, name));
  }
  if (error) return UnavailableError(fmt::format("list {}: {}", data_dir, error.message()));
  return OkStatus();
}

StatusOr<BootstrapResult> InstallSnapshot(const std::string& data_dir,
                                          const SnapshotProducer& produce) {
  FP_RETURN_IF_ERROR(CheckBootstrapTarget(data_dir));
  const fs::path dir(data_dir);
  std::error_code error;
  std::optional<fs::path> created;
  if (!fs::exists(dir, error)) {
    if (!fs::create_directories(dir, error) || error) {
      return UnavailableError(fmt::format("create {}: {}", data_dir, error.message()));
    }
    created = dir;
  }
  const fs::path partial = dir / kBootstrapPartialDir;
  fs::remove_all(partial, error);  // an earlier bootstrap's leftovers
  Cleanup cleanup(partial, created);
  FP_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReceiver> receiver,
                      SnapshotReceiver::Create(partial.string()));
  FP_RETURN_IF_ERROR(produce([&](std::string_view piece) { return receiver->Feed(piece); }));
  FP_ASSIGN_OR_RETURN(SnapshotManifest manifest, receiver->Finish());
  BootstrapResult result;
  result.files = manifest.files.size();
  for (const SnapshotFile& file : manifest.files) result.bytes += file.size;
  FP_RETURN_IF_ERROR(VerifyState(partial, manifest.applied, &result.applied));
  fs::rename(partial, dir / "state", error);
  if (error) return UnavailableError(fmt::format("install the state: {}", error.message()));
  FP_RETURN_IF_ERROR(SyncDirectory(dir));
  cleanup.Commit();
  return result;
}

StatusOr<BootstrapResult> Bootstrap(const BootstrapOptions& options) {
  FP_ASSIGN_OR_RETURN(PeerAddress peer, ParsePeerUrl(options.from));
  if (options.data_dir.empty()) return InvalidArgumentError("--data-dir is required");
  if (options.admin_token.empty()) {
    return InvalidArgumentError("the peer's admin token is required (--admin-token-file)");
  }
  if (!options.member.empty()) FP_RETURN_IF_ERROR(ValidateMemberName(options.member));
  if (options.io_timeout <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("bootstrap: the timeout must be positive");
  }
  // Refused before anything is downloaded, so a wrong directory costs no transfer.
  FP_RETURN_IF_ERROR(CheckBootstrapTarget(options.data_dir));
  return InstallSnapshot(options.data_dir,
                         [&](const SnapshotSink& sink) { return Download(options, peer, sink); });
}

StatusOr<BackupResult> Backup(const std::string& data_dir, const std::string& out) {
  const fs::path source(data_dir);
  const fs::path target(out);
  std::error_code error;
  if (!fs::exists(source / "state", error)) {
    return FailedPreconditionError(fmt::format("{} holds no supervisor state", data_dir));
  }
  std::optional<fs::path> created;
  if (fs::exists(target, error)) {
    if (!fs::is_directory(target, error) || !fs::is_empty(target, error)) {
      return FailedPreconditionError(fmt::format("{} exists and is not an empty directory", out));
    }
  } else {
    if (!fs::create_directories(target, error) || error) {
      return UnavailableError(fmt::format("create {}: {}", out, error.message()));
    }
    created = target;
  }
  Cleanup cleanup(target / "state", created);
  BackupResult result;
  {
    StatusOr<std::unique_ptr<RocksStore>> state = OpenStateStore((source / "state").string());
    if (!state.ok()) {
      return state.status().WithContext(
          "open the state (a running supervisor holds its lock: stop it first, or take a "
          "snapshot of it with GET /v1/admin/snapshot)");
    }
    FP_RETURN_IF_ERROR((*state)->Flush());  // the state has no WAL
    FP_RETURN_IF_ERROR(CreateRocksCheckpoint((*state)->db(), (target / "state").string()));
  }
  if (fs::exists(source / "log", error)) {
    Status log = CheckpointAnyRocksDb(source / "log", target / "log");
    if (!log.ok()) {
      fs::remove_all(target / "log", error);
      return log.WithContext("copy the log");
    }
    result.with_log = true;
  }
  Status verified = VerifyState(target / "state", std::nullopt, &result.applied);
  if (!verified.ok()) {
    fs::remove_all(target / "log", error);
    return verified.WithContext("the copy");
  }
  FP_RETURN_IF_ERROR(SyncDirectory(target));
  cleanup.Commit();
  return result;
}

}  // namespace fp::supervisor::cluster
