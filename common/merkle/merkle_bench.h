// `fieldprint bench merkle`: SHA-256 throughput of fieldprint's hashing against `openssl speed`
// measured in the same run, Frontier appends per second, and proof generation and verification
// latency on a virtual 2^32-leaf tree. Prints one JSON object on stdout and a table on stderr;
// docs/performance.md records the results.
//
// Thread-safety: registration happens once, before parsing; the benchmark runs on one thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Adds the `merkle` subcommand (and its options) under `bench`, the binary's `bench` command.
// The CLI keeps the options alive; nothing is owned by the caller.
void AddMerkleBench(CLI::App& bench);

}  // namespace fp
