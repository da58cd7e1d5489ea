// Subcommand plumbing and the subcommands of common/; see cli.h.
#include "common/cli.h"

#include <cstdio>

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
}

}  // namespace fp
