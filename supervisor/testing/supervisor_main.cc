// A test binary with the supervisor's subcommands only (`supervisor`, `supervisor fsck`,
// `bench ingest|proofs`, and common's `certs`): what the crash-recovery and end-to-end tests start
// as real processes, without linking the worker (node/) into them.
#include <CLI/CLI.hpp>

#include "common/cli.h"
#include "supervisor/cli.h"

int main(int argc, char** argv) {
  CLI::App app{"fieldprint supervisor (test binary)"};
  app.require_subcommand(1);
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (JSON on stdout, a table on stderr)");
  bench->require_subcommand(1);
  fp::AddCommonCommands(app, *bench);
  fp::AddSupervisorCommands(app, *bench);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
