// Subcommand plumbing and the subcommands of common/; see cli.h.
#include "common/cli.h"

#include <cstdio>

#include "common/merkle/merkle_bench.h"
#include "common/wire/certs_cli.h"

namespace fp {

void SetAction(CLI::App* command, std::function<Status()> action) {
  command->callback([action = std::move(action)] {
    Status status = action();
    if (!status.ok()) {
      std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
      throw CLI::RuntimeError(1);
    }
  });
}

void AddCommonCommands(CLI::App& app, CLI::App& bench) {
  (void)app;
  (void)bench;
  AddMerkleBench(bench);
  AddCertsCommand(app);
}

}  // namespace fp
