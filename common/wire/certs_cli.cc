// The `fieldprint certs` subcommands; see certs_cli.h.
#include "common/wire/certs_cli.h"

#include <cstdio>
#include <memory>
#include <string>

#include "common/cli.h"
#include "common/wire/certs.h"

namespace fp {
namespace {

struct CertsFlags {
  std::string dir;
  wire::CertsOptions options;
};

// Adds DIR, --names, --days and --force to `command`, writing into `flags`.
void AddFlags(CLI::App* command, CertsFlags* flags) {
  command->add_option("dir", flags->dir, "Directory of ca.pem, ca.key and <name>.pem/.key")
      ->required();
  command
      ->add_option("--names", flags->options.names,
                   "Comma-separated node names (certificate CN and DNS SAN)")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("--days", flags->options.validity_days, "Node certificate validity")
      ->check(CLI::Range(1, wire::kMaxCertValidityDays))
      ->capture_default_str();
  command->add_flag("--force", flags->options.force, "Overwrite existing files");
}

void PrintWritten(const CertsFlags& flags, bool with_ca) {
  if (with_ca) std::printf("%s/ca.pem\n%s/ca.key\n", flags.dir.c_str(), flags.dir.c_str());
  for (const std::string& name : flags.options.names) {
    std::printf("%s/%s.pem\n%s/%s.key\n", flags.dir.c_str(), name.c_str(), flags.dir.c_str(),
                name.c_str());
  }
}

}  // namespace

void AddCertsCommand(CLI::App& app) {
  CLI::App* certs = app.add_subcommand("certs", "Certificates for mutual TLS between nodes");
  certs->require_subcommand(1);

  CLI::App* init = certs->add_subcommand(
      "init", "Create a CA and certificates for the named nodes (default: a local cluster)");
  auto init_flags = std::make_shared<CertsFlags>();
  AddFlags(init, init_flags.get());
  SetAction(init, [init_flags]() -> Status {
    FP_RETURN_IF_ERROR(wire::InitCerts(init_flags->dir, init_flags->options));
    PrintWritten(*init_flags, /*with_ca=*/true);
    return OkStatus();
  });

  CLI::App* issue =
      certs->add_subcommand("issue", "Add node certificates signed by DIR's existing CA");
  auto issue_flags = std::make_shared<CertsFlags>();
  AddFlags(issue, issue_flags.get());
  issue->get_option("--names")->required();
  SetAction(issue, [issue_flags]() -> Status {
    FP_RETURN_IF_ERROR(wire::IssueCerts(issue_flags->dir, issue_flags->options));
    PrintWritten(*issue_flags, /*with_ca=*/false);
    return OkStatus();
  });
}

}  // namespace fp
