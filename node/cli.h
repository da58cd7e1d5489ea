// Subcommands provided by node/: `model mk-tiny`, `anchors build`, `generate` (a local session,
// no supervisor) and `bench engine`.
//
// Thread-safety: registration happens once, on the main thread, before parsing.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers node's subcommands on `app` and its benchmarks under `bench`. The callbacks run from
// CLI11_PARSE; a failing command prints its Status to stderr and exits 1 (common/cli.h).
void AddNodeCommands(CLI::App& app, CLI::App& bench);

}  // namespace fp
