// `fieldprint demo`: the whole verification loop on one machine, for a first look.
//
// It starts a LocalCluster (local_cluster.h) in a fresh temporary directory: one supervisor and
// N workers as separate processes on loopback, the last worker injecting one hidden-state bit
// flip into its first session. It submits sessions over the HTTP API, prints one line per event
// (placement, divergence, rollback, verification) while they run, then a table per session, an
// offline audit of one session against the supervisor's pinned ledger key and its pinned cosigner
// key, demanding its cosignature (audit.h), and where the API
// and the metrics are. Without --keep it stops every process (SIGTERM, then SIGKILL after a
// deadline) and removes the directory; with --keep it leaves the cluster running and prints how
// to stop it.
//
// The demo fails (non-OK) when a session does not verify, when the injected fault goes
// undetected, or when the audit fails: it is also an end-to-end check.
//
// Thread-safety: RunDemo runs on the main thread; it installs SIGINT/SIGTERM handlers for its
// duration so that an interrupted demo still stops its processes.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "common/base/status.h"

namespace fp::client {

inline constexpr uint32_t kMaxDemoSessions = 64;
inline constexpr uint32_t kMaxDemoTokens = 4096;

struct DemoOptions {
  std::string binary;  // the fieldprint executable; empty: this process's own
  bool keep = false;
  uint32_t sessions = 4;  // 1..kMaxDemoSessions
  uint32_t workers = 3;   // 3..kMaxLocalWorkers: a majority outvotes the faulty replica
  uint32_t max_tokens = 24;
  std::chrono::milliseconds timeout{45'000};  // for the sessions to verify
};

// Runs the demo, writing to `out` (borrowed). InvalidArgument for bad options; the first failure
// otherwise (see above).
Status RunDemo(const DemoOptions& options, std::FILE* out);

}  // namespace fp::client
