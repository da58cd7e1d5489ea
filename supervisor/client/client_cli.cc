// Client subcommands; see client_cli.h.
#include "supervisor/client/client_cli.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include <boost/json.hpp>
#include <fmt/format.h>

#include "common/base/bytes.h"
#include "common/cli.h"
#include "common/tlog/proof_bundle.h"
#include "common/wire/envelope.h"
#include "supervisor/client/api_client.h"
#include "supervisor/client/audit.h"
#include "supervisor/client/demo.h"
#include "supervisor/client/local_cluster.h"

namespace fp {
namespace {

namespace json = boost::json;
using client::ApiClient;

// The longest --timeout-s a command accepts.
constexpr int kMaxTimeoutSeconds = 24 * 3600;

struct SubmitArgs {
  std::string supervisor;
  std::string model = client::kLocalModelName;
  std::string prompt;
  std::vector<uint32_t> prompt_ids;
  uint32_t max_tokens = 0;  // 0: the supervisor's default
  uint32_t replicas = 0;    // 0: the supervisor's default
  double temperature = 0;
  uint64_t seed = 0;
  bool wait = false;
  int timeout_s = 120;
  bool json = false;
};

// --cosigner (repeatable) and --min-cosigners of `audit` and `verify`.
struct CosignerArgs {
  std::vector<std::string> keys;
  int min_cosigners = -1;  // -1: not given (every pinned cosigner)
};

struct AuditArgs {
  std::string supervisor;
  std::string session;
  std::string key;
  std::string key_file;
  std::string origin;
  CosignerArgs cosigners;
  bool no_steps = false;
  int timeout_s = 30;
  bool json = false;
};

struct VerifyArgs {
  std::string bundle_file;
  std::string key;
  std::string key_file;
  std::string origin;
  std::string leaf_hash;
  CosignerArgs cosigners;
  bool json = false;
};

// A client of the --supervisor list: one URL keeps the single-attempt client; several fail over
// (api_client.h), with Submit's Idempotency-Key making a resend admit nothing twice.
StatusOr<ApiClient> ClientFor(const std::string& supervisors) {
  FP_ASSIGN_OR_RETURN(std::vector<client::SupervisorUrl> urls,
                      client::ParseSupervisorUrls(supervisors));
  if (urls.size() == 1) return ApiClient(urls[0]);
  return ApiClient(std::move(urls), client::FailoverOptions{});
}

void PrintJson(const json::value& value) {
  std::printf("%s\n", json::serialize(value).c_str());
  std::fflush(stdout);
}

std::string ReceiptString(const json::object& receipt, std::string_view key) {
  const json::value* value = receipt.if_contains(key);
  return value != nullptr && value->is_string() ? std::string(value->get_string()) : "";
}

void PrintProgress(const client::SessionView& view) {
  std::fprintf(stderr, "session %s: %s, %lu/%lu steps verified, %u divergences\n",
               view.session_id.c_str(), view.phase.c_str(),
               static_cast<unsigned long>(view.verified_steps),
               static_cast<unsigned long>(view.max_tokens), view.divergences);
}

// Prints a verified session's output and receipt, after checking the receipt's hashes against
// the prompt sent and the tokens received.
Status ReportVerified(const SubmitArgs& args, const std::vector<uint32_t>& prompt,
                      const client::SessionView& view, const client::SessionOutput& output) {
  const bool prompt_ok =
      ReceiptString(output.receipt, "prompt_hash") == HexEncode(client::TokenHash(prompt));
  const bool output_ok = ReceiptString(output.receipt, "output_hash") ==
                         HexEncode(client::TokenHash(output.token_ids));
  if (args.json) {
    json::array tokens;
    for (uint32_t token : output.token_ids) tokens.emplace_back(token);
    PrintJson(json::object{
        {"session_id", view.session_id},
        {"phase", view.phase},
        {"output_text", client::ByteOutputText(output.token_ids)},
        {"output_token_ids", std::move(tokens)},
        {"receipt", output.receipt},
        {"receipt_checks", json::object{{"prompt_hash", prompt_ok}, {"output_hash", output_ok}}}});
  } else {
    std::printf("session     %s (verified)\n", view.session_id.c_str());
    std::printf("output      %s\n", client::ByteOutputText(output.token_ids).c_str());
    std::printf("receipt\n");
    for (const auto& field : output.receipt) {
      if (field.key() == "checkpoint") continue;  // a multi-line note; the bundle carries it
      std::printf("  %-18s %s\n", std::string(field.key()).c_str(),
                  field.value().is_string() ? std::string(field.value().get_string()).c_str()
                                            : json::serialize(field.value()).c_str());
    }
    std::printf("  prompt hash %s, output hash %s\n", prompt_ok ? "matches" : "DIFFERS",
                output_ok ? "matches" : "DIFFERS");
    std::printf("audit: fieldprint audit --supervisor %s --session %s --key SUPERVISOR_KEY\n",
                args.supervisor.c_str(), view.session_id.c_str());
  }
  if (!prompt_ok || !output_ok) {
    return DataLossError("the receipt's hashes do not match the prompt sent or the output read");
  }
  return OkStatus();
}

Status RunSubmit(const SubmitArgs& args) {
  FP_ASSIGN_OR_RETURN(ApiClient api, ClientFor(args.supervisor));
  if (args.prompt.empty() == args.prompt_ids.empty()) {
    return InvalidArgumentError("give exactly one of --prompt and --prompt-ids");
  }
  client::SubmitRequest request;
  request.model = args.model;
  request.prompt_token_ids =
      args.prompt.empty() ? args.prompt_ids : client::BytePromptTokens(args.prompt);
  if (args.max_tokens > 0) request.max_tokens = args.max_tokens;
  if (args.replicas > 0) request.replicas = args.replicas;
  request.temperature = args.temperature;
  request.seed = args.seed;
  FP_ASSIGN_OR_RETURN(std::string id, api.Submit(request));
  if (!args.wait) {
    const std::string state = fmt::format("{}/v1/sessions/{}", api.url().ToString(), id);
    if (args.json) {
      PrintJson(json::object{{"session_id", id}, {"state", state}});
    } else {
      std::printf("session %s submitted\nstate   %s\n", id.c_str(), state.c_str());
    }
    return OkStatus();
  }
  FP_ASSIGN_OR_RETURN(client::SessionView view,
                      api.WaitDone(id, std::chrono::seconds(args.timeout_s), PrintProgress));
  if (view.phase != "verified") {
    return AbortedError(fmt::format("session {} failed: {}", id, view.failure));
  }
  FP_ASSIGN_OR_RETURN(client::SessionOutput output, api.Output(id));
  return ReportVerified(args, request.prompt_token_ids, view, output);
}

StatusOr<client::CosignerPolicy> PolicyFor(const CosignerArgs& args) {
  std::optional<size_t> min_cosigners;
  if (args.min_cosigners >= 0) min_cosigners = static_cast<size_t>(args.min_cosigners);
  return client::MakeCosignerPolicy(args.keys, min_cosigners);
}

Status RunAudit(const AuditArgs& args) {
  FP_ASSIGN_OR_RETURN(ApiClient api, ClientFor(args.supervisor));
  FP_ASSIGN_OR_RETURN(tlog::NoteVerifier key, client::LoadVerifierKey(args.key, args.key_file));
  FP_ASSIGN_OR_RETURN(client::CosignerPolicy cosigners, PolicyFor(args.cosigners));
  FP_ASSIGN_OR_RETURN(client::AuditMaterial material,
                      client::FetchAuditMaterial(api, args.session, !args.no_steps,
                                                 std::chrono::seconds(args.timeout_s), cosigners));
  const client::AuditReport report = client::VerifyAudit(material, key, args.origin, cosigners);
  if (args.json) {
    PrintJson(client::AuditReportJson(report));
  } else {
    std::printf("audit of session %s, offline, against %s\n", material.session_id.c_str(),
                report.key.c_str());
    std::fputs(client::FormatAuditReport(report).c_str(), stdout);
  }
  return report.status();
}

Status RunVerify(const VerifyArgs& args) {
  FP_ASSIGN_OR_RETURN(tlog::NoteVerifier key, client::LoadVerifierKey(args.key, args.key_file));
  FP_ASSIGN_OR_RETURN(client::CosignerPolicy cosigners, PolicyFor(args.cosigners));
  std::optional<Hash> leaf_hash;
  if (!args.leaf_hash.empty()) {
    StatusOr<Hash> parsed = HashFromHex(args.leaf_hash);
    if (!parsed.ok()) return InvalidArgumentError("--leaf-hash: 64 hex characters");
    leaf_hash = *parsed;
  }
  std::ifstream file(args.bundle_file, std::ios::binary);
  if (!file) return NotFoundError(fmt::format("cannot read {}", args.bundle_file));
  std::ostringstream text;
  text << file.rdbuf();
  if (text.str().size() > tlog::kMaxBundleBytes) {
    return InvalidArgumentError(
        fmt::format("{} is larger than any proof bundle", args.bundle_file));
  }
  const client::AuditReport report =
      client::VerifyBundle(text.str(), leaf_hash, key, args.origin, cosigners);
  if (args.json) {
    PrintJson(client::AuditReportJson(report));
  } else {
    std::printf("bundle %s, offline, against %s\n", args.bundle_file.c_str(), report.key.c_str());
    std::fputs(client::FormatAuditReport(report).c_str(), stdout);
  }
  return report.status();
}

void AddKeyOptions(CLI::App* command, std::string& key, std::string& key_file,
                   std::string& origin) {
  CLI::Option* text = command->add_option(
      "--key", key, "The supervisor's verifier key (NAME+KEYID+BASE64), pinned beforehand");
  CLI::Option* file = command->add_option("--key-file", key_file, "A file holding that key");
  text->excludes(file);
  command->add_option("--origin", origin, "The ledger's origin (default: the key's name)");
}

void AddCosignerOptions(CLI::App* command, CosignerArgs& args) {
  command->add_option("--cosigner", args.keys,
                      "A supervisor's cosigner key (NAME+KEYID+BASE64, cosignature/v1), pinned "
                      "beforehand; repeat for each");
  command
      ->add_option("--min-cosigners", args.min_cosigners,
                   "Pinned cosigners that must vouch for the checkpoint (default: all pinned)")
      ->check(CLI::Range(0, static_cast<int>(tlog::kMaxNoteSignatures)));
}

void AddSubmitCommand(CLI::App& app) {
  auto args = std::make_shared<SubmitArgs>();
  CLI::App* cmd = app.add_subcommand("submit", "Submit a session to a supervisor's HTTP API");
  cmd->add_option("--supervisor", args->supervisor,
                  "http://HOST:PORT, or a comma-separated list of a cluster's supervisors "
                  "(fail over between them)")
      ->required();
  cmd->add_option("--model", args->model, "Model id the supervisor serves")->capture_default_str();
  CLI::Option* text = cmd->add_option("--prompt", args->prompt,
                                      "Prompt text (byte-level models: one token per UTF-8 byte)");
  CLI::Option* ids =
      cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt token ids: 1,2,3")->delimiter(',');
  text->excludes(ids);
  cmd->add_option("--max-tokens", args->max_tokens, "Output tokens (default: the supervisor's)")
      ->check(CLI::Range(uint32_t{1}, static_cast<uint32_t>(wire::kMaxSessionTokens)));
  cmd->add_option("--replicas", args->replicas, "Replicas (default: the supervisor's)")
      ->check(CLI::Range(uint32_t{1}, wire::kMaxReplicas));
  cmd->add_option("--temperature", args->temperature, "0: greedy")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--seed", args->seed, "Sampling seed");
  cmd->add_flag("--wait", args->wait, "Wait until verified; print the output and receipt");
  cmd->add_option("--timeout-s", args->timeout_s, "Longest wait with --wait")
      ->check(CLI::Range(1, kMaxTimeoutSeconds))
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "JSON on stdout");
  SetAction(cmd, [args] { return RunSubmit(*args); });
}

void AddAuditCommand(CLI::App& app) {
  auto args = std::make_shared<AuditArgs>();
  CLI::App* cmd = app.add_subcommand(
      "audit", "Verify a session's proofs offline against the supervisor's pinned key");
  cmd->add_option("--supervisor", args->supervisor,
                  "http://HOST:PORT, or a comma-separated list of a cluster's supervisors")
      ->required();
  cmd->add_option("--session", args->session, "Session id (32 hex characters)")->required();
  AddKeyOptions(cmd, args->key, args->key_file, args->origin);
  AddCosignerOptions(cmd, args->cosigners);
  cmd->add_flag("--no-steps", args->no_steps, "Skip the per-step leaf and output checks");
  cmd->add_option("--timeout-s", args->timeout_s, "Longest wait for a covering checkpoint")
      ->check(CLI::Range(1, kMaxTimeoutSeconds))
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "JSON on stdout");
  SetAction(cmd, [args] { return RunAudit(*args); });
}

void AddVerifyCommand(CLI::App& app) {
  auto args = std::make_shared<VerifyArgs>();
  CLI::App* cmd =
      app.add_subcommand("verify", "Verify a tlog-proof bundle file offline against a pinned key");
  cmd->add_option("bundle", args->bundle_file, "The bundle (c2sp.org/tlog-proof@v1)")->required();
  AddKeyOptions(cmd, args->key, args->key_file, args->origin);
  AddCosignerOptions(cmd, args->cosigners);
  cmd->add_option("--leaf-hash", args->leaf_hash,
                  "The leaf's RFC 6962 hash (default: the hash of the bundle's extra data)");
  cmd->add_flag("--json", args->json, "JSON on stdout");
  SetAction(cmd, [args] { return RunVerify(*args); });
}

void AddDemoCommand(CLI::App& app) {
  auto options = std::make_shared<client::DemoOptions>();
  auto timeout_s = std::make_shared<int>(45);
  CLI::App* cmd = app.add_subcommand(
      "demo", "Run a local cluster with an injected fault, end to end, and audit a session");
  cmd->add_flag("--keep", options->keep, "Leave the cluster running afterwards");
  cmd->add_option("--sessions", options->sessions, "Sessions to submit")
      ->check(CLI::Range(1u, client::kMaxDemoSessions))
      ->capture_default_str();
  cmd->add_option("--workers", options->workers, "Worker processes")
      ->check(CLI::Range(3u, client::kMaxLocalWorkers))
      ->capture_default_str();
  cmd->add_option("--max-tokens", options->max_tokens, "Tokens per session")
      ->check(CLI::Range(2u, client::kMaxDemoTokens))
      ->capture_default_str();
  cmd->add_option("--timeout-s", *timeout_s, "Longest wait for the sessions")
      ->check(CLI::Range(1, kMaxTimeoutSeconds))
      ->capture_default_str();
  SetAction(cmd, [options, timeout_s] {
    options->timeout = std::chrono::seconds(*timeout_s);
    return client::RunDemo(*options, stdout);
  });
}

}  // namespace

void AddClientCommands(CLI::App& app) {
  AddSubmitCommand(app);
  AddAuditCommand(app);
  AddVerifyCommand(app);
  AddDemoCommand(app);
}

}  // namespace fp
