// The `fieldprint certs` subcommands: `certs init DIR` (a new CA and node certificates) and
// `certs issue DIR` (more node certificates from DIR's existing CA). See certs.h.
//
// Thread-safety: registration happens once at startup, on the main thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers `certs` and its subcommands on `app`. The callbacks run from CLI11_PARSE (see
// SetAction in common/cli.h); they print the files written to stdout.
void AddCertsCommand(CLI::App& app);

}  // namespace fp
