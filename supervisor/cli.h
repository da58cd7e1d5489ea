// Subcommands of the supervisor: `supervisor` (run a standalone supervisor or a cluster member),
// its operator commands (`fsck`, `key`, `release-worker`, `remove-member`, `bootstrap`, `backup`),
// and the benchmarks `bench ingest` and `bench proofs`.
//
// Thread-safety: registration happens once, before parsing; each command runs on the main
// thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers `supervisor` (with its operator subcommands) under `app` and `ingest` and `proofs`
// under `bench`. The CLI keeps every option alive; the caller owns nothing.
void AddSupervisorCommands(CLI::App& app, CLI::App& bench);

}  // namespace fp
