// Subcommands provided by common/: `certs` and `bench merkle`.
//
// Each Add*Commands function registers subcommands on the binary's CLI11 app; the callbacks run
// from CLI11_PARSE and exit the process with the command's exit code.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

#include "common/base/status.h"

namespace fp {

// Makes `action` the subcommand's callback. A non-OK Status is printed to stderr and the process
// exits with code 1; OK exits 0.
void SetAction(CLI::App* command, std::function<Status()> action);

// Registers `certs` and the common benchmarks (`bench merkle`) under `bench`.
void AddCommonCommands(CLI::App& app, CLI::App& bench);

}  // namespace fp
