// `fieldprint bench ingest` and `fieldprint bench proofs`: load benchmarks of one standalone
// supervisor over loopback. Each starts a supervisor in-process on a fresh data directory (synced
// group commit, real mutual TLS), drives it with simulated workers (bench_worker.h) and HTTP
// clients, and prints one JSON object on stdout and a short table on stderr.
//
//   ingest: workers stream honest leaves for `sessions` sessions of R replicas; reports durable
//           leaves acknowledged per second and the send-to-Ack latency p50/p99, plus how far the
//           applier kept up.
//   proofs: after sessions are verified, `clients` keep-alive HTTP clients request step
//           inclusion proofs at random; reports requests per second and latency p50/p99.
//
// Thread-safety: registration happens once, before parsing; a benchmark runs on the main thread
// plus the threads it starts.
#pragma once

#include <CLI/CLI.hpp>

namespace fp::supervisor {

// Adds `ingest` and `proofs` under `bench`.
void AddBenchCommands(CLI::App& bench);

}  // namespace fp::supervisor
