// End-to-end tests of the verification loop with real processes on loopback: a supervisor and
// workers of the built `fieldprint` binary verify sessions; an injected bit flip is caught at its
// step and repaired by a rollback; a killed worker's replica is re-placed; a supervisor killed
// with SIGKILL and restarted loses no acknowledged leaf. Expected outputs and roots come from an
// independent single-process run (`fieldprint generate`), expected hashes from the formats.
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "common/base/bytes.h"
#include "common/crypto/sha256.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "supervisor/client/audit.h"
#include "tests/e2e/e2e_env.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace json = boost::json;
using client::SessionView;
using std::chrono::milliseconds;

// The output of `fieldprint generate`: one process, no supervisor, no replicas.
struct Reference {
  std::vector<uint32_t> tokens;
  std::string session_root;  // hex
};

// SHA-256 over the tokens, 4 bytes big-endian each (state.proto, SessionRecord.output_hash).
std::string OutputHashHex(const std::vector<uint32_t>& tokens) {
  Bytes bytes;
  for (uint32_t token : tokens) AppendU32(bytes, token);
  return HexEncode(Sha256(ByteSpan(bytes)));
}

class ClusterTest : public ClusterFixture {
 protected:
  // Runs the session's prompt through `fieldprint generate` with the session's id.
  StatusOr<Reference> Generate(const client::SubmitRequest& request, const std::string& id) {
    std::string ids;
    for (uint32_t token : request.prompt_token_ids) {
      ids += (ids.empty() ? "" : ",") + std::to_string(token);
    }
    FP_ASSIGN_OR_RETURN(
        std::string out,
        RunToCompletion({FieldprintBinary(), "generate", "--model",
                         cluster_->options().dir + "/model", "--prompt-ids", ids, "--max-tokens",
                         std::to_string(*request.max_tokens), "--session-id", id, "--leaves"},
                        dir_.path().string(), kEventTimeout));
    Reference reference;
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      unsigned long step = 0;
      unsigned token = 0;
      if (std::sscanf(line.c_str(), "%lu %u ", &step, &token) == 2 &&
          step == reference.tokens.size()) {
        reference.tokens.push_back(token);
      }
      if (line.starts_with("session_root ")) reference.session_root = line.substr(13);
    }
    return reference;
  }

  // Submits and waits until verified (ASSERT-style failures come back as a status).
  StatusOr<SessionView> RunSession(client::ApiClient& api, const client::SubmitRequest& request) {
    FP_ASSIGN_OR_RETURN(std::string id, api.Submit(request));
    return api.WaitDone(id, kSessionTimeout, {});
  }

  void ExpectAuditPasses(client::ApiClient& api, const std::string& id) {
    ASSERT_OK_AND_ASSIGN(tlog::NoteVerifier key,
                         client::LoadVerifierKey(cluster_->verifier_key(), ""));
    ASSERT_OK_AND_ASSIGN(client::AuditMaterial material,
                         client::FetchAuditMaterial(api, id, true, kEventTimeout));
    const client::AuditReport report = client::VerifyAudit(material, key, "");
    EXPECT_OK(report.status()) << client::FormatAuditReport(report);
    EXPECT_EQ(report.checks.size(), 5u);
  }

  static const client::ReplicaView* ReplicaOn(const SessionView& view, const std::string& worker) {
    for (const client::ReplicaView& replica : view.replicas) {
      if (replica.worker_id == worker) return &replica;
    }
    return nullptr;
  }

  std::string WorkerLog(uint32_t index) const {
    return cluster_->log_path(cluster_->worker_name(index));
  }
};

TEST_F(ClusterTest, ThreeWorkersVerifySessions) {
  ASSERT_OK(StartCluster(Options()));
  client::ApiClient api = Api();
  constexpr uint32_t kTokens = 16;
  const std::vector<std::string> prompts = {"alpha", "zeta 9", "alpha"};
  std::vector<std::string> ids;
  for (const std::string& prompt : prompts) {
    ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(TinyRequest(prompt, kTokens)));
    ids.push_back(id);
  }
  std::vector<std::vector<uint32_t>> outputs;
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(SessionView view, api.WaitDone(ids[i], kSessionTimeout, {}));
    ASSERT_EQ(view.phase, "verified") << view.failure;
    EXPECT_EQ(view.verified_steps, kTokens);
    EXPECT_EQ(view.divergences, 0u);
    std::set<std::string> workers;
    for (const client::ReplicaView& replica : view.replicas) {
      workers.insert(replica.worker_id);
      EXPECT_EQ(replica.epoch, 0u);
      EXPECT_TRUE(replica.finished);
    }
    EXPECT_EQ(workers, (std::set<std::string>{"worker-0", "worker-1", "worker-2"}));
    ASSERT_OK_AND_ASSIGN(client::SessionOutput output, api.Output(ids[i]));
    EXPECT_EQ(output.token_ids.size(), kTokens);
    EXPECT_EQ(output.receipt.at("output_hash").as_string(), OutputHashHex(output.token_ids));
    // Three replicas on three processes agree with one process running the session alone.
    ASSERT_OK_AND_ASSIGN(Reference reference, Generate(TinyRequest(prompts[i], kTokens), ids[i]));
    EXPECT_EQ(output.token_ids, reference.tokens);
    EXPECT_EQ(view.session_root, reference.session_root);
    outputs.push_back(output.token_ids);
    ExpectAuditPasses(api, ids[i]);
  }
  EXPECT_EQ(outputs[0], outputs[2]);  // greedy decoding of one prompt
  EXPECT_NE(outputs[0], outputs[1]);

  // The command-line client, as a process: submit and wait, then audit.
  ASSERT_OK_AND_ASSIGN(std::string submitted,
                       RunToCompletion({FieldprintBinary(), "submit", "--supervisor",
                                        cluster_->api_url(), "--prompt", "alpha", "--max-tokens",
                                        std::to_string(kTokens), "--wait", "--json"},
                                       dir_.path().string(), kSessionTimeout));
  const json::object reply = json::parse(submitted).as_object();
  EXPECT_EQ(reply.at("phase").as_string(), "verified");
  std::vector<uint32_t> cli_tokens;
  for (const json::value& token : reply.at("output_token_ids").as_array()) {
    cli_tokens.push_back(token.to_number<uint32_t>());
  }
  EXPECT_EQ(cli_tokens, outputs[0]);
  EXPECT_TRUE(reply.at("receipt_checks").at("prompt_hash").as_bool());
  EXPECT_TRUE(reply.at("receipt_checks").at("output_hash").as_bool());
  ASSERT_OK_AND_ASSIGN(
      std::string audited,
      RunToCompletion({FieldprintBinary(), "audit", "--supervisor", cluster_->api_url(),
                       "--session", std::string(reply.at("session_id").as_string()), "--key-file",
                       cluster_->verifier_key_file(), "--json"},
                      dir_.path().string(), kSessionTimeout));
  EXPECT_TRUE(json::parse(audited).at("verified").as_bool());
}

TEST_F(ClusterTest, BitFlipIsCaughtAtItsStepAndRolledBack) {
  constexpr int64_t kFaultStep = 3;
  constexpr uint32_t kTokens = 12;
  client::LocalClusterOptions options = Options();
  options.fault = client::WorkerFault{2, "hidden-bit", 0, kFaultStep, 14, 0};
  ASSERT_OK(StartCluster(options));
  client::ApiClient api = Api();
  // The first session worker-2 runs is the faulty one.
  ASSERT_OK_AND_ASSIGN(SessionView faulty, RunSession(api, TinyRequest("flip", kTokens)));
  ASSERT_EQ(faulty.phase, "verified") << faulty.failure;
  EXPECT_EQ(faulty.verified_steps, kTokens);
  EXPECT_EQ(faulty.divergences, 1u);
  const client::ReplicaView* bad = ReplicaOn(faulty, "worker-2");
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(bad->epoch, 1u);
  EXPECT_EQ(faulty.epochs_advanced(), 1u);  // only the faulty replica rolled back

  // The worker flipped the bit at kFaultStep and was ordered back to exactly that step.
  EXPECT_OK(WaitForLogEvent(
                WorkerLog(2),
                [&](const json::object& e) {
                  return IsEvent(e, "fault injected", {{"step", kFaultStep}});
                },
                kEventTimeout)
                .status());
  ASSERT_OK_AND_ASSIGN(
      json::object rollback,
      WaitForLogEvent(
          WorkerLog(2), [](const json::object& e) { return IsEvent(e, "rollback"); },
          kEventTimeout));
  EXPECT_EQ(rollback.at("to_step").to_number<int64_t>(), kFaultStep);
  EXPECT_EQ(rollback.at("epoch").to_number<uint64_t>(), 1u);
  EXPECT_EQ(rollback.at("kind").as_string(), "truncate");
  for (uint32_t honest : {0u, 1u}) {
    for (const json::object& event : ReadJsonLog(WorkerLog(honest))) {
      EXPECT_FALSE(IsEvent(event, "rollback")) << "worker-" << honest << " was rolled back";
    }
  }
  ASSERT_OK_AND_ASSIGN(std::string metrics, api.GetText("/metrics"));
  EXPECT_EQ(*MetricValue(metrics, "fieldprint_supervisor_divergences_total"), 1.0);
  EXPECT_EQ(
      *MetricValue(metrics,
                   "fieldprint_supervisor_rollbacks_ordered_total{kind=\"ORDER_KIND_TRUNCATE\"}"),
      1.0);
  ASSERT_OK_AND_ASSIGN(std::vector<client::WorkerView> workers, api.Workers());
  for (const client::WorkerView& worker : workers) {
    EXPECT_EQ(worker.phase, "active");
    EXPECT_EQ(worker.divergences, worker.worker_id == "worker-2" ? 1u : 0u);
  }

  // The repaired output is the fault-free one; a second session is not targeted.
  ASSERT_OK_AND_ASSIGN(Reference reference,
                       Generate(TinyRequest("flip", kTokens), faulty.session_id));
  ASSERT_OK_AND_ASSIGN(client::SessionOutput output, api.Output(faulty.session_id));
  EXPECT_EQ(output.token_ids, reference.tokens);
  EXPECT_EQ(faulty.session_root, reference.session_root);
  ASSERT_OK_AND_ASSIGN(SessionView clean, RunSession(api, TinyRequest("flip", kTokens)));
  EXPECT_EQ(clean.phase, "verified");
  EXPECT_EQ(clean.divergences, 0u);
  ExpectAuditPasses(api, faulty.session_id);
}

TEST_F(ClusterTest, KilledWorkersReplicaIsReplacedAndTheSessionVerifies) {
  constexpr uint32_t kTokens = 16;
  client::LocalClusterOptions options = Options();
  options.workers = 4;
  options.replicas = 3;
  // worker-0 (placement's first choice) stalls at step 4 of its first session: it is surely
  // mid-session when it is killed.
  options.fault = client::WorkerFault{0, "stall", 0, 4, 0, 0, 60'000};
  ASSERT_OK(StartCluster(options));
  client::ApiClient api = Api();
  const client::SubmitRequest request = TinyRequest("replace me", kTokens);
  ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(request));
  ASSERT_OK(WaitForLogEvent(
                WorkerLog(0),
                [](const json::object& e) {
                  return IsEvent(e, "fault injected", {{"step", 4}});
                },
                kEventTimeout)
                .status());
  ASSERT_OK_AND_ASSIGN(SessionView before, api.Session(id));
  ASSERT_NE(ReplicaOn(before, "worker-0"), nullptr);
  EXPECT_EQ(ReplicaOn(before, "worker-3"), nullptr);
  EXPECT_EQ(before.phase, "running");
  uint32_t victim_replica = ReplicaOn(before, "worker-0")->replica;
  ASSERT_OK(cluster_->KillWorker(0, SIGKILL));

  ASSERT_OK_AND_ASSIGN(SessionView after, api.WaitDone(id, kSessionTimeout, {}));
  ASSERT_EQ(after.phase, "verified") << after.failure;
  EXPECT_EQ(after.verified_steps, kTokens);
  EXPECT_EQ(after.divergences, 0u);
  ASSERT_LT(victim_replica, after.replicas.size());
  EXPECT_EQ(after.replicas[victim_replica].worker_id, "worker-3");
  EXPECT_GE(after.replicas[victim_replica].epoch, 1u);
  ASSERT_OK_AND_ASSIGN(std::vector<client::WorkerView> workers, api.Workers());
  for (const client::WorkerView& worker : workers) {
    if (worker.worker_id == "worker-0") {
      EXPECT_EQ(worker.phase, "lost");
    }
  }
  ASSERT_OK_AND_ASSIGN(Reference reference, Generate(request, id));
  ASSERT_OK_AND_ASSIGN(client::SessionOutput output, api.Output(id));
  EXPECT_EQ(output.token_ids, reference.tokens);
  EXPECT_EQ(after.session_root, reference.session_root);
  ExpectAuditPasses(api, id);
}

// Sum of the stored leaves of every replica of `sessions`.
uint64_t StoredLeaves(const std::vector<SessionView>& sessions) {
  uint64_t total = 0;
  for (const SessionView& view : sessions) {
    for (const client::ReplicaView& replica : view.replicas) total += replica.stored_steps;
  }
  return total;
}

TEST_F(ClusterTest, SupervisorKilledMidSessionLosesNoAcknowledgedLeaf) {
  constexpr uint32_t kTokens = 32;
  constexpr int64_t kStallStep = 6;
  client::LocalClusterOptions options = Options();
  // worker-2's second session stalls long enough for the supervisor to die and come back.
  options.fault = client::WorkerFault{2, "stall", 1, kStallStep, 0, 0, 5'000};
  ASSERT_OK(StartCluster(options));
  client::ApiClient api = Api();
  ASSERT_OK_AND_ASSIGN(SessionView first, RunSession(api, TinyRequest("before", kTokens)));
  ASSERT_EQ(first.phase, "verified");
  std::vector<std::string> ids;
  for (const char* prompt : {"during one", "during two"}) {
    ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(TinyRequest(prompt, kTokens)));
    ids.push_back(id);
  }
  ASSERT_OK(WaitForLogEvent(
                WorkerLog(2),
                [&](const json::object& e) {
                  return IsEvent(e, "fault injected", {{"step", kStallStep}});
                },
                kEventTimeout)
                .status());
  // Mid-session: the honest replicas ran ahead of the stalled one, and not to the end.
  std::vector<SessionView> before;
  for (const std::string& id : {first.session_id, ids[0], ids[1]}) {
    ASSERT_OK_AND_ASSIGN(SessionView view, api.Session(id));
    before.push_back(view);
  }
  EXPECT_EQ(before[1].phase, "running");
  EXPECT_LT(before[1].verified_steps, kTokens);
  ASSERT_OK_AND_ASSIGN(std::string metrics, api.GetText("/metrics"));
  ASSERT_OK_AND_ASSIGN(double acknowledged,
                       MetricValue(metrics, "fieldprint_supervisor_leaves_ingested_total"));
  ASSERT_OK_AND_ASSIGN(std::string checkpoint_before, api.GetText("/v1/checkpoint"));

  ASSERT_OK(cluster_->KillSupervisor(SIGKILL));
  ASSERT_OK(cluster_->RestartSupervisor());

  // Every leaf acknowledged before the crash is in a replica tree after recovery.
  std::vector<SessionView> recovered;
  for (const SessionView& view : before) {
    ASSERT_OK_AND_ASSIGN(SessionView now, api.Session(view.session_id));
    for (size_t r = 0; r < view.replicas.size(); ++r) {
      EXPECT_GE(now.replicas[r].stored_steps, view.replicas[r].stored_steps);
    }
    EXPECT_GE(now.verified_steps, view.verified_steps);
    recovered.push_back(now);
  }
  EXPECT_GE(static_cast<double>(StoredLeaves(recovered)), acknowledged);
  EXPECT_EQ(recovered[0].session_root, first.session_root);
  // The ledger after the restart extends the one checkpointed before the crash.
  ASSERT_OK_AND_ASSIGN(tlog::NoteVerifier key,
                       client::LoadVerifierKey(cluster_->verifier_key(), ""));
  const std::span<const tlog::NoteVerifier> keys(&key, 1);
  ASSERT_OK_AND_ASSIGN(tlog::OpenedCheckpoint old_head,
                       tlog::OpenCheckpoint(checkpoint_before, keys, key.name()));
  ASSERT_OK_AND_ASSIGN(std::string checkpoint_after, api.GetText("/v1/checkpoint"));
  ASSERT_OK_AND_ASSIGN(tlog::OpenedCheckpoint new_head,
                       tlog::OpenCheckpoint(checkpoint_after, keys, key.name()));
  ASSERT_GE(new_head.checkpoint.size, old_head.checkpoint.size);
  ASSERT_GT(old_head.checkpoint.size, 0u);
  ASSERT_OK_AND_ASSIGN(
      std::string consistency,
      api.GetText(fmt::format("/v1/ledger/consistency?from={}&to={}", old_head.checkpoint.size,
                              new_head.checkpoint.size)));
  std::vector<Hash> proof;
  for (const json::value& hash : json::parse(consistency).at("proof").as_array()) {
    ASSERT_OK_AND_ASSIGN(Hash parsed, HashFromHex(std::string_view(hash.as_string())));
    proof.push_back(parsed);
  }
  EXPECT_OK(merkle::VerifyConsistency(old_head.checkpoint.size, new_head.checkpoint.size, proof,
                                      old_head.checkpoint.root, new_head.checkpoint.root));

  // The sessions that were running finish.
  for (const std::string& id : ids) {
    ASSERT_OK_AND_ASSIGN(SessionView done, api.WaitDone(id, kSessionTimeout, {}));
    EXPECT_EQ(done.phase, "verified") << done.failure;
    EXPECT_EQ(done.verified_steps, kTokens);
    ExpectAuditPasses(api, id);
  }
}

}  // namespace
}  // namespace fp::e2e
