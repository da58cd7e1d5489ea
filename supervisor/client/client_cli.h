// The client subcommands of `fieldprint`:
//   submit  submit a session to a supervisor's HTTP API; with --wait, wait (bounded) until it is
//           verified and print its output and verification receipt;
//   audit   fetch a verified session's proofs and verify them offline against the supervisor's
//           pinned verifier key (supervisor/client/audit.h); non-zero exit on any failure;
//   verify  verify a saved tlog-proof bundle file offline against a pinned key;
//   demo    a real local cluster with an injected fault, end to end (supervisor/client/demo.h).
//
// Thread-safety: registration happens once, before parsing; each command runs on the main
// thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers `submit`, `audit`, `verify` and `demo` on `app`. The CLI keeps every option alive;
// the caller owns nothing.
void AddClientCommands(CLI::App& app);

}  // namespace fp
