// `fieldprint demo`; see demo.h.
#include "supervisor/client/demo.h"

#include <atomic>
#include <filesystem>
#include <map>
#include <thread>
#include <vector>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>

#include "common/base/bytes.h"
#include "common/base/temp_dir.h"
#include "supervisor/client/api_client.h"
#include "supervisor/client/audit.h"
#include "supervisor/client/local_cluster.h"
#include "supervisor/ledger/checkpoints.h"

namespace fp::client {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kPrompts[] = {
    "The quick brown fox",  "Replicas agree when",   "An auditor checks the",
    "Silent corruption is", "Every step commits to", "A checkpoint is signed",
};
constexpr size_t kPromptCount = sizeof(kPrompts) / sizeof(kPrompts[0]);
// How long the audit waits for a signed, cosigned checkpoint that covers the session.
constexpr std::chrono::milliseconds kAuditTimeout{10'000};

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

// SIGINT and SIGTERM set g_interrupted while the demo runs; the previous handlers come back after.
class InterruptGuard {
 public:
  InterruptGuard() {
    struct sigaction action {};
    action.sa_handler = OnSignal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~InterruptGuard() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

Status CheckInterrupted() {
  if (g_interrupted.load()) return CancelledError("interrupted");
  return OkStatus();
}

// Lines on `out`, each prefixed with the time since the demo started.
class Printer {
 public:
  explicit Printer(std::FILE* out) : out_(out), start_(Clock::now()) {}
  void Event(const std::string& text) {
    const std::chrono::duration<double> elapsed = Clock::now() - start_;
    std::fprintf(out_, "  [%5.1fs] %s\n", elapsed.count(), text.c_str());
    std::fflush(out_);
  }
  void Line(const std::string& text) { Raw(text + "\n"); }
  void Raw(const std::string& text) {
    std::fputs(text.c_str(), out_);
    std::fflush(out_);
  }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  std::FILE* out_;
  Clock::time_point start_;
};

// Printable text of model output: control bytes and quotes escaped, at most `max_chars` bytes.
std::string Quoted(const std::string& text, size_t max_chars) {
  std::string quoted = "\"";
  for (size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      quoted += fmt::format("\\x{:02x}", c);
    } else {
      quoted += static_cast<char>(c);
    }
  }
  quoted += text.size() > max_chars ? "\"..." : "\"";
  return quoted;
}

std::string ShortId(const std::string& session_id) { return session_id.substr(0, 8); }

// What changed between two polls of a session, as event lines.
std::vector<std::string> DescribeChange(const std::optional<SessionView>& before,
                                        const SessionView& now) {
  std::vector<std::string> events;
  const std::string id = ShortId(now.session_id);
  const bool phase_changed = !before.has_value() || before->phase != now.phase;
  if (phase_changed && now.phase == "running") {
    std::string workers;
    for (const ReplicaView& replica : now.replicas) {
      workers += (workers.empty() ? "" : ", ") + replica.worker_id;
    }
    events.push_back(fmt::format("{} running: replicas on {}", id, workers));
  }
  if (phase_changed && now.phase == "waiting" && before.has_value()) {
    events.push_back(fmt::format("{} waiting: a replica needs a new worker", id));
  }
  if (before.has_value() && now.divergences > before->divergences) {
    events.push_back(
        fmt::format("{} DIVERGENCE #{}: replicas disagree on a step leaf", id, now.divergences));
  }
  for (size_t r = 0; before.has_value() && r < now.replicas.size() && r < before->replicas.size();
       ++r) {
    const ReplicaView& old_replica = before->replicas[r];
    const ReplicaView& replica = now.replicas[r];
    if (replica.epoch <= old_replica.epoch) continue;
    if (replica.worker_id == old_replica.worker_id) {
      events.push_back(
          fmt::format("{} replica {} on {} rolled back (epoch {}): it regenerates "
                      "from the divergent step",
                      id, r, replica.worker_id, replica.epoch));
    } else {
      events.push_back(
          fmt::format("{} replica {} moved from {} to {} (epoch {})", id, r, old_replica.worker_id,
                      replica.worker_id.empty() ? "(none yet)" : replica.worker_id, replica.epoch));
    }
  }
  if (phase_changed && now.phase == "verified") {
    events.push_back(fmt::format("{} VERIFIED: {} steps, all replicas agree, session root {}...",
                                 id, now.verified_steps, now.session_root.substr(0, 16)));
  }
  if (phase_changed && now.phase == "failed") {
    events.push_back(fmt::format("{} FAILED: {}", id, now.failure));
  }
  return events;
}

struct DemoSession {
  std::string id;
  std::string prompt;
  std::optional<SessionView> state;
  SessionOutput output;
};

Status SubmitSessions(ApiClient& api, const DemoOptions& options, Printer& printer,
                      std::vector<DemoSession>& sessions) {
  for (uint32_t i = 0; i < options.sessions; ++i) {
    SubmitRequest request;
    request.model = kLocalModelName;
    request.prompt_token_ids = BytePromptTokens(kPrompts[i % kPromptCount]);
    request.max_tokens = options.max_tokens;
    request.seed = i;
    FP_ASSIGN_OR_RETURN(std::string id, api.Submit(request));
    printer.Event(fmt::format("{} submitted: {} ({} tokens, 3 replicas)", ShortId(id),
                              Quoted(kPrompts[i % kPromptCount], 40), options.max_tokens));
    sessions.push_back(DemoSession{id, kPrompts[i % kPromptCount], std::nullopt, {}});
  }
  return OkStatus();
}

// Polls every session until all are verified or failed, printing what changes.
Status FollowSessions(ApiClient& api, const DemoOptions& options, Printer& printer,
                      std::vector<DemoSession>& sessions) {
  const auto deadline = Clock::now() + options.timeout;
  while (true) {
    FP_RETURN_IF_ERROR(CheckInterrupted());
    bool all_done = true;
    for (DemoSession& session : sessions) {
      if (session.state.has_value() && session.state->done()) continue;
      StatusOr<SessionView> polled = api.Session(session.id);
      // Acknowledged (durable) but not applied yet: it shows up on a later poll.
      if (!session.state.has_value() && polled.status().code() == StatusCode::kNotFound) {
        all_done = false;
        continue;
      }
      FP_ASSIGN_OR_RETURN(SessionView now, std::move(polled));
      for (const std::string& event : DescribeChange(session.state, now)) printer.Event(event);
      all_done = all_done && now.done();
      session.state = std::move(now);
    }
    if (all_done) return OkStatus();
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("sessions still running after {} ms", options.timeout.count()));
    }
    std::this_thread::sleep_for(kSessionPollInterval);
  }
}

void PrintTable(const std::vector<DemoSession>& sessions, Printer& printer) {
  printer.Line("\nSessions");
  printer.Line(fmt::format("  {:<32}  {:<8}  {:>5}  {:>11}  {:>9}  {}", "session", "phase", "steps",
                           "divergences", "rollbacks", "verified root"));
  for (const DemoSession& session : sessions) {
    const SessionView& state = *session.state;
    printer.Line(
        fmt::format("  {:<32}  {:<8}  {:>5}  {:>11}  {:>9}  {}", state.session_id, state.phase,
                    state.verified_steps, state.divergences, state.epochs_advanced(),
                    state.session_root.empty() ? "-" : state.session_root.substr(0, 16) + "..."));
  }
  printer.Line("  (rollbacks: replica epochs advanced, by rollback or re-placement)");
  for (const DemoSession& session : sessions) {
    if (session.state->phase != "verified") continue;
    printer.Line(fmt::format("  {}  {} -> {}", ShortId(session.id), Quoted(session.prompt, 40),
                             Quoted(ByteOutputText(session.output.token_ids), 48)));
  }
}

// Reads every verified session's output and checks it against its receipt's output hash.
Status ReadOutputs(ApiClient& api, std::vector<DemoSession>& sessions) {
  for (DemoSession& session : sessions) {
    if (session.state->phase != "verified") {
      return AbortedError(fmt::format("session {} failed: {}", session.id, session.state->failure));
    }
    FP_ASSIGN_OR_RETURN(session.output, api.Output(session.id));
    const boost::json::value* hash = session.output.receipt.if_contains("output_hash");
    if (hash == nullptr || !hash->is_string() ||
        hash->get_string() != HexEncode(TokenHash(session.output.token_ids))) {
      return DataLossError(fmt::format(
          "session {}: the receipt's output hash does not match its tokens", session.id));
    }
  }
  return OkStatus();
}

// The supervisor's cosigner key, read from its data directory (offline, like the ledger key).
StatusOr<tlog::CosignatureVerifier> SupervisorCosigner(const LocalCluster& cluster) {
  const fs::path file = fs::path(cluster.verifier_key_file()).parent_path() / "supervisor" /
                        supervisor::kCosignerKeyFile;
  FP_ASSIGN_OR_RETURN(tlog::Cosigner cosigner,
                      supervisor::LoadCosigner(file.string(), kLocalSupervisorName));
  return cosigner.Verifier();
}

// The audit the `audit` command runs, against the cluster's pinned key and its supervisor's
// pinned cosigner key (one cosignature demanded).
Status AuditOne(ApiClient& api, const LocalCluster& cluster, const DemoSession& session,
                Printer& printer) {
  FP_ASSIGN_OR_RETURN(tlog::CosignatureVerifier cosigner_key, SupervisorCosigner(cluster));
  printer.Line(fmt::format("\nAudit of session {} (offline, pinned key {}, pinned cosigner {})",
                           session.id, cluster.verifier_key(), cosigner_key.ToString()));
  FP_ASSIGN_OR_RETURN(tlog::NoteVerifier key, LoadVerifierKey(cluster.verifier_key(), ""));
  FP_ASSIGN_OR_RETURN(CosignerPolicy cosigners, MakeCosignerPolicy({cosigner_key.ToString()}, 1));
  FP_ASSIGN_OR_RETURN(AuditMaterial material,
                      FetchAuditMaterial(api, session.id,
                                         /*with_steps=*/true, kAuditTimeout, cosigners));
  const AuditReport report = VerifyAudit(material, key, "", cosigners);
  printer.Raw(FormatAuditReport(report));
  FP_RETURN_IF_ERROR(report.status());
  if (report.output_tokens != session.output.token_ids) {
    return DataLossError("the audited output differs from the output the client received");
  }
  printer.Line("  the output the client received is the output the ledger vouches for");
  return OkStatus();
}

void PrintEndpoints(const LocalCluster& cluster, const std::string& session_id, Printer& printer) {
  const std::string url = cluster.api_url();
  printer.Line("\nEndpoints");
  printer.Line(fmt::format("  API          {}   (curl {}/v1/sessions/{})", url, url, session_id));
  printer.Line(
      fmt::format("  checkpoint   curl {}/v1/checkpoint  (cosigners: curl "
                  "{}/v1/checkpoint/cosigners)",
                  url, url));
  printer.Line(fmt::format("  bundle       curl {}/v1/sessions/{}/bundle", url, session_id));
  printer.Line(fmt::format("  metrics      {}/metrics (supervisor)", url));
  for (const ProcessInfo& worker : cluster.worker_infos()) {
    printer.Line(fmt::format("               http://127.0.0.1:{}/metrics ({})", worker.metrics_port,
                             worker.name));
  }
  printer.Line(fmt::format("  key          {}  (in {})", cluster.verifier_key(),
                           cluster.verifier_key_file()));
  printer.Line(
      fmt::format("  obtain key   curl {}/v1/checkpoint/key  (offline: fieldprint supervisor "
                  "key --data-dir {}/supervisor); compare it once, then pin the file",
                  url, fs::path(cluster.verifier_key_file()).parent_path().string()));
  StatusOr<tlog::CosignatureVerifier> cosigner = SupervisorCosigner(cluster);
  printer.Line(
      fmt::format("  audit        fieldprint audit --supervisor {} --session {} --key-file {}{}",
                  url, session_id, cluster.verifier_key_file(),
                  cosigner.ok() ? " --cosigner " + cosigner->ToString() : std::string()));
}

void PrintKept(const LocalCluster& cluster, const std::string& dir, Printer& printer) {
  const ProcessInfo supervisor = cluster.supervisor_info();
  std::string pids = std::to_string(supervisor.pid);
  printer.Line("\nThe cluster keeps running (--keep):");
  printer.Line(fmt::format("  {:<12} pid {}  log {}", supervisor.name, supervisor.pid,
                           cluster.log_path(supervisor.name)));
  for (const ProcessInfo& worker : cluster.worker_infos()) {
    printer.Line(fmt::format("  {:<12} pid {}  log {}", worker.name, worker.pid,
                             cluster.log_path(worker.name)));
    pids += " " + std::to_string(worker.pid);
  }
  printer.Line(fmt::format("  stop it with: kill -TERM {} && rm -rf {}", pids, dir));
}

// The demo proper, once the cluster runs.
Status RunSessions(const DemoOptions& options, LocalCluster& cluster, Printer& printer) {
  ApiClient api(SupervisorUrl{"127.0.0.1", cluster.http_port()});
  std::vector<DemoSession> sessions;
  printer.Line(fmt::format("\nSubmitting {} sessions to {}", options.sessions, cluster.api_url()));
  FP_RETURN_IF_ERROR(SubmitSessions(api, options, printer, sessions));
  FP_RETURN_IF_ERROR(FollowSessions(api, options, printer, sessions));
  FP_RETURN_IF_ERROR(ReadOutputs(api, sessions));
  PrintTable(sessions, printer);
  const DemoSession* audited = &sessions.front();
  for (const DemoSession& session : sessions) {
    if (session.state->divergences > 0) {
      audited = &session;
      break;
    }
  }
  if (audited->state->divergences == 0) {
    return FailedPreconditionError("the injected bit flip was not detected: no session diverged");
  }
  FP_RETURN_IF_ERROR(AuditOne(api, cluster, *audited, printer));
  PrintEndpoints(cluster, audited->id, printer);
  return OkStatus();
}

Status CheckOptions(const DemoOptions& options) {
  if (options.sessions == 0 || options.sessions > kMaxDemoSessions) {
    return InvalidArgumentError(fmt::format("--sessions must be in 1..{}", kMaxDemoSessions));
  }
  if (options.workers < 3 || options.workers > kMaxLocalWorkers) {
    return InvalidArgumentError(fmt::format("--workers must be in 3..{}", kMaxLocalWorkers));
  }
  if (options.max_tokens < 2 || options.max_tokens > kMaxDemoTokens) {
    return InvalidArgumentError(fmt::format("--max-tokens must be in 2..{}", kMaxDemoTokens));
  }
  return OkStatus();
}

}  // namespace

Status RunDemo(const DemoOptions& options, std::FILE* out) {
  FP_RETURN_IF_ERROR(CheckOptions(options));
  InterruptGuard interrupts;
  Printer printer(out);
  LocalClusterOptions cluster_options;
  if (options.binary.empty()) {
    FP_ASSIGN_OR_RETURN(cluster_options.binary, SelfExecutable());
  } else {
    cluster_options.binary = options.binary;
  }
  // The cluster owns the folder from here on: it removes it after a clean stop and keeps it
  // (for the logs) after a failure or with --keep.
  FP_ASSIGN_OR_RETURN(std::unique_ptr<ScopedTempDir> temp,
                      ScopedTempDir::Create("fieldprint-demo"));
  cluster_options.dir = temp->Release().string();
  cluster_options.workers = options.workers;
  cluster_options.replicas = 3;
  cluster_options.default_max_tokens = options.max_tokens;
  cluster_options.die_with_parent = !options.keep;
  cluster_options.log_level = "warn";
  // One transient fault: the last worker flips a bit of the hidden state of its first session.
  cluster_options.fault = WorkerFault{
      options.workers - 1, "hidden-bit", 0, std::min<uint64_t>(5, options.max_tokens / 2), 14, 0};
  printer.Line(fmt::format(
      "fieldprint demo: 1 supervisor and {} workers as separate processes on loopback (CPU "
      "engine)\n  directory {}",
      options.workers, cluster_options.dir));
  StatusOr<std::unique_ptr<LocalCluster>> cluster =
      LocalCluster::Start(cluster_options, [&](const std::string& line) { printer.Event(line); });
  Status result = cluster.ok() ? RunSessions(options, **cluster, printer) : cluster.status();
  if (result.ok() && options.keep) {
    (*cluster)->Keep();
    PrintKept(**cluster, cluster_options.dir, printer);
    return OkStatus();
  }
  printer.Line(fmt::format("\nShutting down (SIGTERM; SIGKILL after {} s)",
                           cluster_options.stop_grace.count() / 1000));
  if (cluster.ok()) {
    for (const std::string& line : (*cluster)->Stop()) printer.Line("  " + line);
  }
  if (!result.ok()) {
    printer.Line(fmt::format("  logs kept in {}/logs", cluster_options.dir));
    return result;
  }
  std::error_code error;
  fs::remove_all(cluster_options.dir, error);
  printer.Line(fmt::format("  removed {}{}", cluster_options.dir,
                           error ? " (failed: " + error.message() + ")" : ""));
  printer.Line(
      fmt::format("\ndemo finished in {:.1f} s: every session verified, the injected "
                  "fault was caught and repaired, and the audit passed",
                  printer.seconds()));
  return OkStatus();
}

}  // namespace fp::client
