// Subcommands of the supervisor: `supervisor` (run one standalone supervisor), `supervisor fsck`
// (check a data directory offline), and the benchmarks `bench ingest` and `bench proofs`.
//
// Thread-safety: registration happens once, before parsing; each command runs on the main
// thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers `supervisor` (with `fsck`) under `app` and `ingest` and `proofs` under `bench`. The
// CLI keeps every option alive; the caller owns nothing.
void AddSupervisorCommands(CLI::App& app, CLI::App& bench);

}  // namespace fp
