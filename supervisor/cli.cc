// Supervisor subcommands; see cli.h.
#include "supervisor/cli.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <signal.h>

#include "common/base/config.h"
#include "common/base/log.h"
#include "common/cli.h"
#include "common/crypto/sha256.h"
#include "common/wire/tls.h"
#include "supervisor/bench/bench.h"
#include "supervisor/cluster/bootstrap.h"
#include "supervisor/cluster/members.h"
#include "supervisor/fsck.h"
#include "supervisor/ledger/checkpoints.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/net/http_client.h"
#include "supervisor/runtime/supervisor.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_store.h"

namespace fp {
namespace {

using supervisor::SupervisorOptions;

inline constexpr size_t kMaxAdminTokenFileBytes = 4096;
inline constexpr size_t kMinAdminTokenBytes = 16;

struct RunArgs {
  SupervisorOptions options;
  std::vector<std::string> models;      // ID=PROFILE_HEX[:ANCHORS_HEX]
  std::vector<std::string> tokenizers;  // ID=DIR
  int64_t tick_interval_ms = 1000;
  int64_t checkpoint_interval_ms = 10'000;
  int64_t replica_deadline_ms = 120'000;
  int64_t worker_grace_ms = 30'000;
  int64_t drain_timeout_ms = 10'000;
  std::string admin_token_file;
  int64_t log_trim_interval_ms = 10'000;
  int64_t leader_ttl_ms = 5000;
  int64_t leader_margin_ms = 1000;
  int64_t leader_poll_ms = 200;
  int64_t member_publish_interval_ms = 5000;
  std::string log_backend = "rocksdb";
  std::string etcd_endpoints;  // comma-separated https URLs
  std::string etcd_ca_file;
  std::string etcd_cert_file;
  std::string etcd_key_file;
  std::string log_level = "info";
  std::string log_format = "text";
};

// "ID=PROFILE[:ANCHORS]" with 64-hex-character hashes.
Status ParseModels(const std::vector<std::string>& specs, supervisor::SessionDefaults& defaults) {
  for (const std::string& spec : specs) {
    const size_t equals = spec.find('=');
    if (equals == std::string::npos || equals == 0) {
      return InvalidArgumentError(fmt::format("--model '{}': expected ID=PROFILE[:ANCHORS]", spec));
    }
    const std::string hashes = spec.substr(equals + 1);
    const size_t colon = hashes.find(':');
    StatusOr<Hash> profile = HashFromHex(hashes.substr(0, colon));
    if (!profile.ok()) return profile.status().WithContext("--model " + spec);
    supervisor::SessionDefaults::ModelProfile model;
    model.numerics_profile = supervisor::HashString(*profile);
    if (colon != std::string::npos) {
      StatusOr<Hash> anchors = HashFromHex(hashes.substr(colon + 1));
      if (!anchors.ok()) return anchors.status().WithContext("--model " + spec);
      model.anchor_set_hash = supervisor::HashString(*anchors);
    }
    defaults.models[spec.substr(0, equals)] = model;
  }
  return OkStatus();
}

// The admin token: the first line of `path`, at least kMinAdminTokenBytes long.
StatusOr<std::string> ReadAdminToken(const std::string& path) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) return NotFoundError(fmt::format("admin token file {}: {}", path, error.message()));
  if (size > kMaxAdminTokenFileBytes) {
    return InvalidArgumentError(fmt::format("{} is too large to be an admin token file", path));
  }
  std::ifstream file(path);
  std::string token;
  std::getline(file, token);
  if (file.bad()) return UnavailableError(fmt::format("cannot read {}", path));
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.size() < kMinAdminTokenBytes) {
    return InvalidArgumentError(fmt::format("the admin token in {} is shorter than {} characters",
                                            path, kMinAdminTokenBytes));
  }
  return token;
}

// "ID=DIR": the folder of model ID's tokenizer.
Status ParseTokenizers(const std::vector<std::string>& specs,
                       std::map<std::string, std::string>& dirs) {
  for (const std::string& spec : specs) {
    const size_t equals = spec.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == spec.size()) {
      return InvalidArgumentError(fmt::format("--tokenizer '{}': expected ID=DIR", spec));
    }
    dirs[spec.substr(0, equals)] = spec.substr(equals + 1);
  }
  return OkStatus();
}

// Fills options.log_backend and options.etcd from the log-backend and etcd-* options.
Status ConfigureLogBackend(RunArgs& args) {
  SupervisorOptions& options = args.options;
  FP_ASSIGN_OR_RETURN(options.log_backend, supervisor::ParseLogBackend(args.log_backend));
  const bool any_etcd_option = !args.etcd_endpoints.empty() || !args.etcd_ca_file.empty() ||
                               !args.etcd_cert_file.empty() || !args.etcd_key_file.empty();
  if (options.log_backend != supervisor::LogBackend::kEtcd) {
    // A forgotten log-backend would otherwise run on a local log beside the cluster's.
    if (any_etcd_option) {
      return InvalidArgumentError("etcd-* options are set but log-backend is not \"etcd\"");
    }
    return OkStatus();
  }
  if (args.etcd_endpoints.empty()) {
    return InvalidArgumentError("log-backend \"etcd\" needs etcd-endpoints");
  }
  StatusOr<std::vector<supervisor::etcd::Endpoint>> endpoints =
      supervisor::ParseEtcdEndpoints(args.etcd_endpoints);
  if (!endpoints.ok()) return endpoints.status().WithContext("etcd-endpoints");
  options.etcd.client.endpoints = std::move(endpoints).value();
  // The endpoints are https URLs: etcd is always reached with mutual TLS.
  if (args.etcd_ca_file.empty() || args.etcd_cert_file.empty() || args.etcd_key_file.empty()) {
    return InvalidArgumentError(
        "log-backend \"etcd\" needs etcd-ca-file, etcd-cert-file and etcd-key-file (mutual TLS)");
  }
  options.etcd.client.tls =
      wire::TlsFiles{args.etcd_ca_file, args.etcd_cert_file, args.etcd_key_file};
  return OkStatus();
}

// Runs until SIGTERM/SIGINT (then drains) or a background failure.
Status RunSupervisor(RunArgs& args) {
  if (args.options.data_dir.empty()) return InvalidArgumentError("--data-dir is required");
  if (args.options.certs_dir.empty()) return InvalidArgumentError("--certs-dir is required");
  FP_ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(args.log_level));
  FP_ASSIGN_OR_RETURN(LogFormat format, ParseLogFormat(args.log_format));
  InitLogging(level, format);
  FP_RETURN_IF_ERROR(ParseModels(args.models, args.options.defaults));
  FP_RETURN_IF_ERROR(ParseTokenizers(args.tokenizers, args.options.tokenizer_dirs));
  FP_RETURN_IF_ERROR(ConfigureLogBackend(args));
  SupervisorOptions& options = args.options;
  options.tick_interval = std::chrono::milliseconds(args.tick_interval_ms);
  options.checkpoint_interval = std::chrono::milliseconds(args.checkpoint_interval_ms);
  options.replica_deadline = std::chrono::milliseconds(args.replica_deadline_ms);
  options.worker_grace = std::chrono::milliseconds(args.worker_grace_ms);
  options.drain_timeout = std::chrono::milliseconds(args.drain_timeout_ms);
  options.log_trim_interval = std::chrono::milliseconds(args.log_trim_interval_ms);
  options.leader_ttl = std::chrono::milliseconds(args.leader_ttl_ms);
  options.leader_margin = std::chrono::milliseconds(args.leader_margin_ms);
  options.leader_poll_interval = std::chrono::milliseconds(args.leader_poll_ms);
  options.member_publish_interval = std::chrono::milliseconds(args.member_publish_interval_ms);
  options.metrics_listener = options.metrics_port != 0;
  if (!args.admin_token_file.empty()) {
    FP_ASSIGN_OR_RETURN(options.admin_token, ReadAdminToken(args.admin_token_file));
  }
  // Block the signals in every thread; this thread takes them with sigtimedwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  prometheus::Registry registry;
  FP_ASSIGN_OR_RETURN(std::unique_ptr<supervisor::Supervisor> running,
                      supervisor::Supervisor::Start(options, registry));
  // Ports go to stdout so that scripts (and tests) can find ephemeral ones.
  std::printf("worker_port=%u http_port=%u metrics_port=%u\n", running->worker_port(),
              running->http_port(), running->metrics_port());
  std::fflush(stdout);
  const timespec poll = {0, 200'000'000};
  while (true) {
    const int signal = sigtimedwait(&signals, nullptr, &poll);
    if (signal == SIGINT || signal == SIGTERM) {
      LogInfo("supervisor", "signal received", {{"signal", signal}});
      break;
    }
    if (!running->health().ok()) break;
  }
  return running->Drain();
}

Status RunFsck(const std::string& data_dir) {
  const std::filesystem::path dir(data_dir);
  if (!std::filesystem::exists(dir / "state")) {
    return NotFoundError(fmt::format("{} holds no supervisor state", data_dir));
  }
  FP_ASSIGN_OR_RETURN(auto state, supervisor::OpenStateStore((dir / "state").string()));
  FP_ASSIGN_OR_RETURN(supervisor::FsckReport report, supervisor::Fsck(*state));
  FP_ASSIGN_OR_RETURN(supervisor::AppliedMeta meta,
                      supervisor::ReadAppliedMeta(supervisor::DbStateReader(state.get())));
  if (std::filesystem::exists(dir / "log")) {
    FP_ASSIGN_OR_RETURN(auto log, supervisor::RocksLog::Open((dir / "log").string()));
    if (meta.applied > log->End()) {
      ++report.problem_count;
      report.problems.push_back(
          fmt::format("state applied {} records but the log holds {}", meta.applied, log->End()));
    }
    std::fprintf(stderr, "log: %lu records, %lu applied\n", static_cast<unsigned long>(log->End()),
                 static_cast<unsigned long>(meta.applied));
  }
  std::fprintf(
      stderr,
      "sessions %lu, replica trees %lu, leaves %lu, ledger entries %lu, checkpoints %lu "
      "(%lu signed)\n",
      static_cast<unsigned long>(report.sessions), static_cast<unsigned long>(report.replica_trees),
      static_cast<unsigned long>(report.leaves), static_cast<unsigned long>(report.ledger_entries),
      static_cast<unsigned long>(report.checkpoints),
      static_cast<unsigned long>(report.signed_checkpoints));
  for (const std::string& problem : report.problems)
    std::fprintf(stderr, "MISMATCH %s\n", problem.c_str());
  if (!report.clean()) {
    return DataLossError(fmt::format("fsck found {} problem(s)", report.problem_count));
  }
  std::fprintf(stderr, "fsck: clean\n");
  return OkStatus();
}

// `supervisor key`: the verifier key of the data directory's signer key, for clients to pin.
Status PrintVerifierKey(const RunArgs& args, bool create) {
  if (args.options.data_dir.empty()) return InvalidArgumentError("--data-dir is required");
  const std::filesystem::path file =
      std::filesystem::path(args.options.data_dir) / supervisor::kCheckpointKeyFile;
  if (create) {
    std::error_code error;
    std::filesystem::create_directories(args.options.data_dir, error);
    if (error) {
      return UnavailableError(
          fmt::format("cannot create {}: {}", args.options.data_dir, error.message()));
    }
  }
  StatusOr<tlog::NoteSigner> signer =
      create ? supervisor::LoadOrCreateSigner(file.string(), args.options.origin)
             : supervisor::LoadSigner(file.string(), args.options.origin);
  if (signer.status().code() == StatusCode::kNotFound) {
    return NotFoundError(fmt::format("{}; `--create` makes one", signer.status().message()));
  }
  FP_RETURN_IF_ERROR(signer.status());
  std::printf("%s\n", signer->Verifier().ToString().c_str());
  return OkStatus();
}

// POSTs `body` to an admin route of the running supervisor (the config's http-port, with the
// admin token), prints the reply and expects `expected_status`.
Status AdminPost(const RunArgs& args, const std::string& target, const std::string& body,
                 unsigned expected_status) {
  if (args.admin_token_file.empty()) {
    return InvalidArgumentError("--admin-token-file is required (the supervisor's admin token)");
  }
  FP_ASSIGN_OR_RETURN(std::string token, ReadAdminToken(args.admin_token_file));
  const SupervisorOptions& o = args.options;
  // A wildcard listen address is reached through loopback.
  const std::string host =
      o.http_address == "0.0.0.0" || o.http_address == "::" ? "127.0.0.1" : o.http_address;
  if (o.http_port == 0) return InvalidArgumentError("--http-port is required");
  supervisor::HttpClient http(host, o.http_port);
  FP_ASSIGN_OR_RETURN(supervisor::HttpResponse response,
                      http.Request(boost::beast::http::verb::post, target, body,
                                   {{"Authorization", "Bearer " + token}}));
  std::printf("%s", response.body.c_str());
  if (response.status != expected_status) {
    return AbortedError(fmt::format("the supervisor answered {}", response.status));
  }
  return OkStatus();
}

// `supervisor release-worker`: asks the running supervisor to append a WorkerReleased record.
Status ReleaseWorker(const RunArgs& args, const std::string& worker, const std::string& reason) {
  boost::json::object body;
  body["reason"] = reason;
  return AdminPost(args, fmt::format("/v1/admin/workers/{}/release", worker),
                   boost::json::serialize(body), 202);
}

// `supervisor remove-member`: retires a member of the cluster from the member table (through any
// running member), so that trimming no longer waits for it.
Status RemoveMember(const RunArgs& args, const std::string& member) {
  FP_RETURN_IF_ERROR(supervisor::cluster::ValidateMemberName(member));
  return AdminPost(args, fmt::format("/v1/admin/members/{}/remove", member), "", 200);
}

// `supervisor bootstrap`: installs a running peer's snapshot into this member's empty data
// directory (the config's data-dir and tls-name, the peer's admin token).
Status BootstrapMember(const RunArgs& args, const std::string& from) {
  if (args.admin_token_file.empty()) {
    return InvalidArgumentError("--admin-token-file is required (the peer's admin token)");
  }
  supervisor::cluster::BootstrapOptions options;
  options.from = from;
  options.data_dir = args.options.data_dir;
  options.member = args.options.tls_name;
  FP_ASSIGN_OR_RETURN(options.admin_token, ReadAdminToken(args.admin_token_file));
  FP_ASSIGN_OR_RETURN(supervisor::cluster::BootstrapResult result,
                      supervisor::cluster::Bootstrap(options));
  std::printf("bootstrapped %s: state at applied position %llu (%zu files, %llu bytes) from %s\n",
              options.data_dir.c_str(), static_cast<unsigned long long>(result.applied),
              result.files, static_cast<unsigned long long>(result.bytes), from.c_str());
  std::printf("start the supervisor with its ledger key in %s/%s; it catches up from the log\n",
              options.data_dir.c_str(), std::string(supervisor::kCheckpointKeyFile).c_str());
  return OkStatus();
}

// `supervisor backup`: a verified offline copy of a stopped supervisor's data directory.
Status BackupDataDir(const std::string& data_dir, const std::string& out) {
  FP_ASSIGN_OR_RETURN(supervisor::cluster::BackupResult result,
                      supervisor::cluster::Backup(data_dir, out));
  std::printf("backed up %s to %s: state at applied position %llu%s, fsck clean\n",
              data_dir.c_str(), out.c_str(), static_cast<unsigned long long>(result.applied),
              result.with_log ? " and the log" : "");
  std::printf("keys are not copied: back up %s/*.key separately\n", data_dir.c_str());
  return OkStatus();
}

void AddRunOptions(CLI::App* command, RunArgs& args) {
  SupervisorOptions& o = args.options;
  command->add_option("--data-dir", o.data_dir,
                      "Directory of the log, state and signing key (required)");
  command->add_option("--log-backend", args.log_backend,
                      "Where the log lives: rocksdb (DATA_DIR/log) or etcd (--etcd-endpoints)");
  command->add_option("--etcd-endpoints", args.etcd_endpoints,
                      "etcd members, comma-separated https://HOST:PORT URLs (log-backend etcd)");
  command->add_option("--etcd-prefix", o.etcd.prefix,
                      "Key prefix of the log in etcd, without a trailing '/'");
  command->add_option("--etcd-ca-file", args.etcd_ca_file, "CA certificate of etcd's members");
  command->add_option("--etcd-cert-file", args.etcd_cert_file,
                      "Client certificate for etcd (mutual TLS)");
  command->add_option("--etcd-key-file", args.etcd_key_file, "Key of --etcd-cert-file");
  command->add_option("--origin", o.origin, "Checkpoint origin (the ledger's name)");
  command->add_option("--certs-dir", o.certs_dir, "`fieldprint certs init` directory (required)");
  command->add_option("--tls-name", o.tls_name, "This supervisor's certificate name");
  command->add_option("--worker-address", o.worker_address, "Worker listener address");
  command->add_option("--worker-port", o.worker_port, "Worker listener port (0: any)");
  command->add_option("--http-address", o.http_address, "HTTP API address");
  command->add_option("--http-port", o.http_port, "HTTP API port (0: any)");
  command->add_option("--metrics-address", o.metrics_address, "Separate metrics listener address");
  command->add_option("--metrics-port", o.metrics_port,
                      "Separate metrics listener port (0: metrics only at the API's /metrics)");
  command->add_option("--io-threads", o.io_threads, "Network threads")
      ->check(CLI::Range(1u, supervisor::kMaxIoThreads));
  command->add_option("--replicas", o.defaults.replicas, "Default replicas per session")
      ->check(CLI::Range(1u, wire::kMaxReplicas));
  command
      ->add_option("--max-unverified-steps", o.defaults.max_unverified_steps,
                   "Default steps a replica may run past its verified prefix")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--default-max-tokens", o.defaults.max_tokens,
                   "max_tokens when a request names none")
      ->check(CLI::PositiveNumber);
  command->add_option("--model", args.models,
                      "Served model: ID=NUMERICS_PROFILE_HEX[:ANCHOR_SET_HEX] (repeatable)");
  command->add_option("--tokenizer", args.tokenizers,
                      "A model's tokenizer folder, for text prompts at /v1/completions: ID=DIR "
                      "(repeatable)");
  command
      ->add_option("--quarantine-divergences", o.applier.quarantine_divergences,
                   "Divergences after which a worker is quarantined")
      ->check(CLI::PositiveNumber);
  command->add_option("--tick-interval-ms", args.tick_interval_ms, "Leader clock tick period")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--checkpoint-every", o.checkpoint_every_entries,
                   "Ledger entries between checkpoints")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--checkpoint-interval-ms", args.checkpoint_interval_ms,
                   "Longest time between checkpoints while the ledger grows")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--replica-deadline-ms", args.replica_deadline_ms,
                   "A session without progress this long gets its slowest replicas re-placed")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--worker-grace-ms", args.worker_grace_ms,
                   "A disconnected worker is lost after this long")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--drain-timeout-ms", args.drain_timeout_ms,
                   "How long a drain waits for open HTTP requests")
      ->check(CLI::PositiveNumber);
  command->add_option("--placement-timeout-ms", o.applier.placement_timeout_ms,
                      "A session that cannot be placed this long fails (0: never)");
  command->add_option("--log-retention-records", o.log_retention_records,
                      "Keep this many applied, checkpointed records when trimming the log (0: "
                      "never trim)");
  command
      ->add_option("--log-trim-interval-ms", args.log_trim_interval_ms,
                   "How often the log is trimmed (with --log-retention-records)")
      ->check(CLI::PositiveNumber);
  command->add_option("--admin-token-file", args.admin_token_file,
                      "File holding the bearer token of the /v1/admin/ routes (unset: disabled)");
  command
      ->add_option("--leader-ttl-ms", args.leader_ttl_ms,
                   "Cluster: TTL of the leader's etcd lease, whole seconds (a dead leader is "
                   "replaced within about this long)")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--leader-margin-ms", args.leader_margin_ms,
                   "Cluster: a leader stops acting this long before its lease can expire")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--leader-poll-ms", args.leader_poll_ms,
                   "Cluster: how often a follower tries to become the leader")
      ->check(CLI::PositiveNumber);
  command
      ->add_option("--member-publish-interval-ms", args.member_publish_interval_ms,
                   "Cluster: how often this member publishes its applied position (trimming "
                   "waits for every member's)")
      ->check(CLI::PositiveNumber);
  command->add_option("--log-level", args.log_level, "debug, info, warn or error");
  command->add_option("--log-format", args.log_format, "text or json");
}

}  // namespace

void AddSupervisorCommands(CLI::App& app, CLI::App& bench) {
  CLI::App* command = app.add_subcommand(
      "supervisor", "Run a supervisor (RocksDB log, or an etcd log with --log-backend etcd)");
  command->require_subcommand(0, 1);
  auto args = std::make_shared<RunArgs>();
  AddRunOptions(command, *args);
  AddConfigOption(*command);

  CLI::App* fsck = command->add_subcommand(
      "fsck", "Recompute every stored root of a stopped supervisor's data directory");
  auto fsck_dir = std::make_shared<std::string>();
  fsck->add_option("--data-dir", *fsck_dir, "The supervisor's data directory")->required();
  SetAction(fsck, [fsck_dir] { return RunFsck(*fsck_dir); });

  // `key` and `release-worker` read the supervisor's own options (--config FILE, --data-dir,
  // --http-port, ...), which fall through to the `supervisor` command.
  CLI::App* key = command->add_subcommand(
      "key", "Print the checkpoint verifier key (for `fieldprint audit --key`) from the data dir");
  key->fallthrough();
  auto create = std::make_shared<bool>(false);
  key->add_flag("--create", *create,
                "Create the ledger key (checkpoint.key, for the --origin) when the data dir has "
                "none: a new cluster's shared key, copied to every member before its first start");
  SetAction(key, [args, create] { return PrintVerifierKey(*args, *create); });
  CLI::App* release = command->add_subcommand(
      "release-worker", "Release a quarantined worker (the running supervisor's admin route)");
  release->fallthrough();
  auto worker = std::make_shared<std::string>();
  auto reason = std::make_shared<std::string>();
  release->add_option("--worker", *worker, "The worker's id (its certificate name)")->required();
  release->add_option("--reason", *reason, "A note kept in the worker's state");
  SetAction(release, [args, worker, reason] { return ReleaseWorker(*args, *worker, *reason); });

  CLI::App* remove = command->add_subcommand(
      "remove-member",
      "Retire a cluster member for good: trimming stops waiting for it (any running member's "
      "admin route)");
  remove->fallthrough();
  auto member = std::make_shared<std::string>();
  remove->add_option("--member", *member, "The member's name (its tls-name)")->required();
  SetAction(remove, [args, member] { return RemoveMember(*args, *member); });

  CLI::App* bootstrap = command->add_subcommand(
      "bootstrap",
      "Install a running member's state snapshot into this member's empty data dir (then start "
      "it: it catches up from the log)");
  bootstrap->fallthrough();
  auto from = std::make_shared<std::string>();
  bootstrap->add_option("--from", *from, "The peer's HTTP API: http://HOST:PORT")->required();
  SetAction(bootstrap, [args, from] { return BootstrapMember(*args, *from); });

  CLI::App* backup = command->add_subcommand(
      "backup", "Copy a stopped supervisor's data dir (state and log, not keys) and fsck the copy");
  auto backup_dir = std::make_shared<std::string>();
  auto backup_out = std::make_shared<std::string>();
  backup->add_option("--data-dir", *backup_dir, "The supervisor's data directory")->required();
  backup->add_option("--out", *backup_out, "A new or empty directory for the copy")->required();
  SetAction(backup, [backup_dir, backup_out] { return BackupDataDir(*backup_dir, *backup_out); });
  // The subcommands must not also start a supervisor, so the run's required options are checked
  // by RunSupervisor rather than by CLI11.
  SetAction(command, [args, fsck, key, release, remove, bootstrap, backup]() -> Status {
    for (const CLI::App* sub : {fsck, key, release, remove, bootstrap, backup}) {
      if (sub->parsed()) return OkStatus();
    }
    return RunSupervisor(*args);
  });
  supervisor::AddBenchCommands(bench);
}

}  // namespace fp
