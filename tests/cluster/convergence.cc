// CheckpointWatcher and CheckConvergence; see convergence.h.
#include "tests/cluster/convergence.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/cosignature.h"

namespace fp::cluster_test {
namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kRetryInterval{100};
constexpr milliseconds kReadTimeout{2'000};
// `fieldprint generate` runs of one check, each bounded.
constexpr milliseconds kGenerateTimeout{30'000};

struct Signed {
  uint64_t size = 0;
  Hash root{};
};

std::string Short(const Hash& hash) { return HexEncode(ByteSpan(hash.data(), 8)); }

// The latest checkpoint of one supervisor, verified against its own key.
StatusOr<Signed> ReadCheckpoint(const SupervisorCluster& cluster, size_t supervisor,
                                const tlog::NoteVerifier& key) {
  client::ApiClient api = cluster.Api(supervisor, kReadTimeout);
  FP_ASSIGN_OR_RETURN(std::string note, api.GetText("/v1/checkpoint"));
  const std::vector<tlog::NoteVerifier> keys = {key};
  FP_ASSIGN_OR_RETURN(tlog::OpenedCheckpoint opened, tlog::OpenCheckpoint(note, keys, key.name()));
  return Signed{opened.checkpoint.size, opened.checkpoint.root};
}

// The "proof" array of a consistency reply.
StatusOr<std::vector<Hash>> ParseProof(const std::string& body) {
  boost::system::error_code error;
  const json::value value = json::parse(body, error);
  const json::value* proof =
      !error && value.is_object() ? value.get_object().if_contains("proof") : nullptr;
  if (proof == nullptr || !proof->is_array()) return DataLossError("malformed consistency reply");
  std::vector<Hash> hashes;
  for (const json::value& item : proof->get_array()) {
    if (!item.is_string()) return DataLossError("malformed consistency proof");
    FP_ASSIGN_OR_RETURN(Hash hash, HashFromHex(item.get_string()));
    hashes.push_back(hash);
  }
  return hashes;
}

bool Passed(Clock::time_point deadline) { return Clock::now() >= deadline; }

void CheckApplied(const SupervisorCluster& cluster, Clock::time_point deadline,
                  ConvergenceReport& report) {
  std::string last;
  while (true) {
    std::vector<uint64_t> applied;
    for (size_t s = 0; s < cluster.size(); ++s) {
      StatusOr<MemberView> view = cluster.Member(s);
      if (!view.ok()) {
        last = view.status().ToString();
        break;
      }
      applied.push_back(view->applied);
    }
    if (applied.size() == cluster.size()) {
      report.applied = applied;
      if (std::adjacent_find(applied.begin(), applied.end(), std::not_equal_to<>()) ==
          applied.end()) {
        return;
      }
      last = fmt::format("applied positions {}", fmt::join(applied, ", "));
    }
    if (Passed(deadline)) {
      report.violations.push_back(
          fmt::format("the supervisors never showed one applied position ({})", last));
      return;
    }
    std::this_thread::sleep_for(kRetryInterval);
  }
}

// One write on every supervisor: waits until it is verified everywhere or (a write that was not
// acknowledged) absent everywhere, then compares. Returns true when it was present.
bool CheckWrite(const SupervisorCluster& cluster, const WriteRecord& write,
                Clock::time_point deadline, ConvergenceReport& report) {
  const bool acknowledged = write.outcome == WriteOutcome::kAcknowledged;
  std::string state;
  while (true) {
    std::vector<client::SessionView> views;
    size_t missing = 0;
    state.clear();
    for (size_t s = 0; s < cluster.size(); ++s) {
      StatusOr<client::SessionView> view = cluster.Api(s, kReadTimeout).Session(write.session_id);
      if (view.ok()) {
        state += fmt::format(" {}={}", cluster.name(s), view->phase);
        views.push_back(std::move(*view));
      } else {
        state += fmt::format(" {}={}", cluster.name(s), StatusCodeName(view.status().code()));
        missing += view.status().code() == StatusCode::kNotFound ? 1 : 0;
      }
    }
    report.session_reads += views.size();
    const bool all_done = views.size() == cluster.size() &&
                          std::all_of(views.begin(), views.end(),
                                      [](const client::SessionView& v) { return v.done(); });
    if (!acknowledged && missing == cluster.size()) return false;
    if (all_done) {
      for (const client::SessionView& view : views) {
        if (view.phase != "verified" || view.session_root != views[0].session_root ||
            view.verified_steps != views[0].verified_steps ||
            view.ledger_index != views[0].ledger_index) {
          report.violations.push_back(
              fmt::format("{} session {} differs between supervisors or did not verify:{}",
                          WriteOutcomeName(write.outcome), write.session_id, state));
          break;
        }
      }
      return true;
    }
    if (Passed(deadline)) {
      report.violations.push_back(fmt::format("{} session {} (key {}) not settled:{}",
                                              WriteOutcomeName(write.outcome), write.session_id,
                                              write.idempotency_key, state));
      return missing < cluster.size();
    }
    std::this_thread::sleep_for(kRetryInterval);
  }
}

void CheckWrites(const SupervisorCluster& cluster, const std::vector<WriteRecord>& writes,
                 Clock::time_point deadline, ConvergenceReport& report) {
  // Acknowledged first: by the time the others are read, any append still in flight when the
  // load stopped has ended one way or the other.
  for (const WriteRecord& write : writes) {
    if (write.outcome != WriteOutcome::kAcknowledged) continue;
    ++report.acknowledged;
    CheckWrite(cluster, write, deadline, report);
  }
  for (const WriteRecord& write : writes) {
    if (write.outcome == WriteOutcome::kAcknowledged) continue;
    if (write.outcome == WriteOutcome::kRejected) {
      ++report.rejected;
      report.violations.push_back(
          fmt::format("write {} was rejected: {}", write.idempotency_key, write.error));
    } else {
      ++report.indeterminate;
    }
    if (CheckWrite(cluster, write, deadline, report)) ++report.indeterminate_admitted;
  }
}

// Every supervisor's cosigner key (GET /v1/checkpoint/cosigners: one vkey per line).
StatusOr<std::vector<tlog::CosignatureVerifier>> ReadCosigners(const SupervisorCluster& cluster) {
  FP_ASSIGN_OR_RETURN(std::string text,
                      cluster.Api(0, kReadTimeout).GetText("/v1/checkpoint/cosigners"));
  std::vector<tlog::CosignatureVerifier> cosigners;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    FP_ASSIGN_OR_RETURN(tlog::CosignatureVerifier cosigner, tlog::CosignatureVerifier::Parse(line));
    cosigners.push_back(std::move(cosigner));
  }
  return cosigners;
}

// The final checkpoint is cosigned by every supervisor and served as the same bytes by all.
void CheckCosignatures(const SupervisorCluster& cluster, const CheckpointWatcher& watcher,
                       uint64_t size, Clock::time_point deadline, ConvergenceReport& report) {
  StatusOr<std::vector<tlog::CosignatureVerifier>> cosigners = ReadCosigners(cluster);
  if (!cosigners.ok() || cosigners->size() != cluster.size()) {
    report.violations.push_back(fmt::format(
        "the cluster registers {} cosigners for {} supervisors ({})",
        cosigners.ok() ? cosigners->size() : 0, cluster.size(), cosigners.status().ToString()));
    return;
  }
  report.cosigners = cosigners->size();
  tlog::CosignaturePolicy policy;
  policy.cosigners = *cosigners;
  policy.required = cosigners->size();
  std::string last;
  while (true) {
    std::vector<std::string> notes;
    last.clear();
    for (size_t s = 0; s < cluster.size(); ++s) {
      StatusOr<std::string> note = cluster.Api(s, kReadTimeout).GetText("/v1/checkpoint");
      const std::vector<tlog::NoteVerifier> key = {watcher.keys()[s]};
      Status opened = note.status();
      if (note.ok()) {
        StatusOr<tlog::CosignedCheckpoint> cosigned =
            tlog::OpenCosignedCheckpoint(*note, key, key[0].name(), policy);
        opened = !cosigned.ok()                      ? cosigned.status()
                 : cosigned->checkpoint.size != size ? InternalError("another size")
                                                     : OkStatus();
      }
      if (opened.ok()) {
        notes.push_back(*note);
      } else {
        last += fmt::format(" {}: {}", cluster.name(s), opened.ToString());
      }
    }
    if (notes.size() == cluster.size() &&
        std::all_of(notes.begin(), notes.end(),
                    [&](const std::string& n) { return n == notes[0]; })) {
      return;
    }
    if (Passed(deadline)) {
      report.violations.push_back(
          fmt::format("checkpoint {} is not served cosigned by all {} supervisors as one note:{}",
                      size, cluster.size(), last.empty() ? " the notes differ" : last));
      return;
    }
    std::this_thread::sleep_for(kRetryInterval);
  }
}

// Waits until every supervisor serves a checkpoint of one size, then checks the roots and the
// consistency of every size seen during the run with it.
void CheckCheckpoints(const SupervisorCluster& cluster, CheckpointWatcher& watcher,
                      Clock::time_point deadline, ConvergenceReport& report) {
  report.checkpoints_observed = watcher.Roots().size();
  std::vector<Signed> latest(cluster.size());
  std::string last;
  while (true) {
    last.clear();
    bool equal = true;
    for (size_t s = 0; s < cluster.size(); ++s) {
      StatusOr<Signed> read = ReadCheckpoint(cluster, s, watcher.keys()[s]);
      if (!read.ok()) {
        last += fmt::format(" {}: {}", cluster.name(s), read.status().ToString());
        equal = false;
        continue;
      }
      latest[s] = *read;
      last += fmt::format(" {}: {}", cluster.name(s), read->size);
      equal = equal && read->size == latest[0].size;
    }
    if (equal) break;
    if (Passed(deadline)) {
      report.violations.push_back("the supervisors' latest checkpoints never agreed:" + last);
      return;
    }
    std::this_thread::sleep_for(kRetryInterval);
  }
  watcher.SampleOnce();
  const Signed final_checkpoint = latest[0];
  report.final_checkpoint_size = final_checkpoint.size;
  for (size_t s = 1; s < cluster.size(); ++s) {
    if (latest[s].root != final_checkpoint.root) {
      report.violations.push_back(fmt::format(
          "checkpoint {}: {} has root {}, {} has {}", final_checkpoint.size, cluster.name(0),
          Short(final_checkpoint.root), cluster.name(s), Short(latest[s].root)));
    }
  }
  CheckCosignatures(cluster, watcher, final_checkpoint.size, deadline, report);
  const std::map<uint64_t, Hash> roots = watcher.Roots();
  report.checkpoints_observed = roots.size();
  client::ApiClient api = cluster.Api(0, kReadTimeout);
  for (const auto& [size, root] : roots) {
    if (size == 0 || size > final_checkpoint.size) continue;
    StatusOr<std::string> body = api.GetText(
        fmt::format("/v1/ledger/consistency?from={}&to={}", size, final_checkpoint.size));
    Status checked = body.status();
    if (body.ok()) {
      StatusOr<std::vector<Hash>> proof = ParseProof(*body);
      checked = proof.ok() ? merkle::VerifyConsistency(size, final_checkpoint.size, *proof, root,
                                                       final_checkpoint.root)
                           : proof.status();
    }
    if (!checked.ok()) {
      report.violations.push_back(
          fmt::format("checkpoint {} seen during the run is not a prefix "
                      "of checkpoint {}: {}",
                      size, final_checkpoint.size, checked.ToString()));
    }
    ++report.consistency_proofs;
  }
}

// `fieldprint generate` of one write's session, in one process: (output tokens, session root).
StatusOr<std::pair<std::vector<uint32_t>, std::string>> Generate(const SupervisorCluster& cluster,
                                                                 const WriteRecord& write,
                                                                 size_t index) {
  const std::filesystem::path dir(cluster.options().dir);
  std::string ids;
  for (uint32_t token : write.prompt_token_ids) {
    ids += (ids.empty() ? "" : ",") + std::to_string(token);
  }
  client::ProcessOptions process;
  process.argv = {cluster.options().binary,
                  "generate",
                  "--model",
                  cluster.model_dir(),
                  "--prompt-ids",
                  ids,
                  "--max-tokens",
                  std::to_string(write.max_tokens),
                  "--session-id",
                  write.session_id,
                  "--leaves"};
  process.stdout_path = (dir / "logs" / fmt::format("generate-{}.out", index)).string();
  process.stderr_path = (dir / "logs" / fmt::format("generate-{}.log", index)).string();
  FP_ASSIGN_OR_RETURN(auto child, client::ChildProcess::Spawn("generate", process));
  FP_ASSIGN_OR_RETURN(int status, child->WaitExit(kGenerateTimeout));
  if (status != 0) return InternalError("generate " + client::DescribeWaitStatus(status));
  std::ifstream out(process.stdout_path);
  std::pair<std::vector<uint32_t>, std::string> result;
  std::string line;
  while (std::getline(out, line)) {
    unsigned long step = 0;
    unsigned token = 0;
    if (std::sscanf(line.c_str(), "%lu %u ", &step, &token) == 2 && step == result.first.size()) {
      result.first.push_back(token);
    }
    if (line.starts_with("session_root ")) result.second = line.substr(13);
  }
  return result;
}

void CheckReferences(const SupervisorCluster& cluster, const std::vector<WriteRecord>& writes,
                     size_t samples, ConvergenceReport& report) {
  std::vector<const WriteRecord*> acknowledged;
  for (const WriteRecord& write : writes) {
    if (write.outcome == WriteOutcome::kAcknowledged) acknowledged.push_back(&write);
  }
  const size_t count = std::min(samples, acknowledged.size());
  for (size_t i = 0; i < count; ++i) {
    // Spread over the run: the first, the last, and evenly between.
    const WriteRecord& write =
        *acknowledged[count == 1 ? 0 : i * (acknowledged.size() - 1) / (count - 1)];
    StatusOr<std::pair<std::vector<uint32_t>, std::string>> reference = Generate(cluster, write, i);
    const size_t supervisor = i % cluster.size();
    client::ApiClient api = cluster.Api(supervisor, kReadTimeout);
    StatusOr<client::SessionView> view = api.Session(write.session_id);
    StatusOr<client::SessionOutput> output = api.Output(write.session_id);
    if (!reference.ok() || !view.ok() || !output.ok()) {
      report.violations.push_back(fmt::format(
          "reference check of {}: {} / {} / {}", write.session_id, reference.status().ToString(),
          view.status().ToString(), output.status().ToString()));
      continue;
    }
    ++report.reference_checked;
    if (view->session_root != reference->second || output->token_ids != reference->first) {
      report.violations.push_back(fmt::format(
          "session {} on {}: root {} and {} tokens, but a single-process run gives root {} and "
          "{} tokens",
          write.session_id, cluster.name(supervisor), view->session_root, output->token_ids.size(),
          reference->second, reference->first.size()));
    }
  }
}

}  // namespace

StatusOr<std::unique_ptr<CheckpointWatcher>> CheckpointWatcher::Start(
    const SupervisorCluster& cluster, milliseconds interval) {
  std::vector<tlog::NoteVerifier> keys;
  for (size_t s = 0; s < cluster.size(); ++s) {
    FP_ASSIGN_OR_RETURN(std::string text,
                        cluster.Api(s, kReadTimeout).GetText("/v1/checkpoint/key"));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    FP_ASSIGN_OR_RETURN(tlog::NoteVerifier key, tlog::NoteVerifier::Parse(text));
    keys.push_back(std::move(key));
  }
  std::unique_ptr<CheckpointWatcher> watcher(new CheckpointWatcher(cluster, std::move(keys)));
  watcher->thread_ = std::thread([raw = watcher.get(), interval] {
    while (!raw->stopping_) {
      raw->SampleOnce();
      std::this_thread::sleep_for(interval);
    }
  });
  return watcher;
}

CheckpointWatcher::~CheckpointWatcher() { Stop(); }

void CheckpointWatcher::Stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

void CheckpointWatcher::SampleOnce() {
  for (size_t s = 0; s < keys_.size(); ++s) {
    // A supervisor that is down, paused or cut off simply gives no sample.
    StatusOr<std::string> note =
        cluster_.Api(s, std::chrono::milliseconds(500)).GetText("/v1/checkpoint");
    if (note.ok()) Record(s, *note);
  }
  samples_.fetch_add(1);
}

void CheckpointWatcher::Record(size_t supervisor, const std::string& note) {
  const std::vector<tlog::NoteVerifier> key = {keys_[supervisor]};
  StatusOr<tlog::OpenedCheckpoint> opened =
      tlog::OpenCheckpoint(note, key, keys_[supervisor].name());
  std::lock_guard lock(mutex_);
  if (!opened.ok()) {
    violations_.push_back(fmt::format("{} served a checkpoint its key does not verify: {}",
                                      cluster_.name(supervisor), opened.status().ToString()));
    return;
  }
  const tlog::Checkpoint& checkpoint = opened->checkpoint;
  if (checkpoint.size < last_size_[supervisor]) {
    violations_.push_back(fmt::format("{} went back from checkpoint {} to {}",
                                      cluster_.name(supervisor), last_size_[supervisor],
                                      checkpoint.size));
  }
  last_size_[supervisor] = std::max(last_size_[supervisor], checkpoint.size);
  auto [it, inserted] =
      roots_.emplace(checkpoint.size, std::make_pair(supervisor, checkpoint.root));
  if (!inserted && it->second.second != checkpoint.root) {
    violations_.push_back(fmt::format("fork at checkpoint {}: {} signed root {}, {} signed {}",
                                      checkpoint.size, cluster_.name(it->second.first),
                                      Short(it->second.second), cluster_.name(supervisor),
                                      Short(checkpoint.root)));
  }
  if (roots_.size() > kMaxWatchedCheckpoints) roots_.erase(roots_.begin());
}

std::map<uint64_t, Hash> CheckpointWatcher::Roots() const {
  std::lock_guard lock(mutex_);
  std::map<uint64_t, Hash> roots;
  for (const auto& [size, seen] : roots_) roots.emplace(size, seen.second);
  return roots;
}

std::vector<std::string> CheckpointWatcher::Violations() const {
  std::lock_guard lock(mutex_);
  return violations_;
}

ConvergenceReport CheckConvergence(const SupervisorCluster& cluster,
                                   const std::vector<WriteRecord>& writes,
                                   CheckpointWatcher& watcher, const ConvergenceOptions& options) {
  ConvergenceReport report;
  const auto deadline = Clock::now() + options.timeout;
  for (size_t s = 0; s < cluster.size(); ++s) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    Status ready = cluster.Api(s).WaitReady(std::max(left, milliseconds(1)));
    if (!ready.ok()) report.violations.push_back(ready.ToString());
  }
  CheckApplied(cluster, deadline, report);
  CheckWrites(cluster, writes, deadline, report);
  CheckCheckpoints(cluster, watcher, deadline, report);
  CheckReferences(cluster, writes, options.reference_samples, report);
  for (const std::string& violation : watcher.Violations()) report.violations.push_back(violation);
  return report;
}

}  // namespace fp::cluster_test
