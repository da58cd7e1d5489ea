// fieldprint: one binary, one subcommand per role. Each module registers its own subcommands;
// this file only wires them together and runs the chosen one.
#include <CLI/CLI.hpp>

#include "common/cli.h"
#include "node/cli.h"
#include "supervisor/cli.h"
#include "supervisor/client/client_cli.h"

int main(int argc, char** argv) {
  CLI::App app{"fieldprint: verification service for LLM inference"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fieldprint 0.1.0");
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (JSON on stdout, a table on stderr)");
  bench->require_subcommand(1);
  fp::AddCommonCommands(app, *bench);
  fp::AddNodeCommands(app, *bench);
  fp::AddSupervisorCommands(app, *bench);
  fp::AddClientCommands(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
