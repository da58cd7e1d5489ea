// The verification overhead benchmark behind `fieldprint bench worker`: output tokens per second
// of the same sessions run (off) by the bare engine on the calling thread, and (on) by a whole
// worker: generation loop, streaming thread (leaves, session trees, W/T batches, the fsync'd
// outbox) and mutual TLS to an in-process loopback supervisor that acknowledges and commits
// every batch. "On" is timed from the first Assign to the last leaf arriving at the supervisor.
// Both runs compute state digests (the backend always does); the host cost of one step's digest
// is measured separately to show its share.
//
// Thread-safety: a call uses only its arguments (and temporary directories it removes).
#pragma once

#include <cstdint>
#include <string>

#include "common/base/status.h"

namespace fp::node::worker {

struct WorkerBenchOptions {
  std::string model_dir;  // empty: a fresh default tiny model
  int sessions = 8;       // 1..256
  int prompt_tokens = 32;
  int max_tokens = 128;  // every session generates exactly this many (no stop token)
  int threads = 1;
  uint32_t window_steps = 16;
  int64_t window_ms = 50;
  uint32_t max_unverified_steps = 64;
  // Off and on alternate this many times. Medians are reported, and the overhead is taken from
  // the median of the on/off time ratios of adjacent runs (robust to a shared machine's load).
  int repeats = 5;
};

struct WorkerBenchResult {
  int64_t output_tokens = 0;  // per run
  double off_seconds = 0;     // medians over the runs
  double off_tokens_per_second = 0;
  double on_seconds = 0;
  double on_tokens_per_second = 0;
  double overhead = 0;  // 1 - 1 / median(on seconds / off seconds)
  int64_t batches = 0;  // LeafBatches the supervisor received in the last "on" run
  // Process CPU time (medians): "on" includes the loopback supervisor's threads, so the
  // difference is an upper bound on the worker's verification CPU cost. CPU time hardly depends
  // on how busy the machine is, unlike wall time.
  double off_cpu_seconds = 0;
  double on_cpu_seconds = 0;
  double digest_seconds_per_step = 0;  // host SHA-256 state digest of one hidden row
  int64_t hidden_size = 0;
};

// Runs the benchmark. InvalidArgument for options out of range; errors of the model, the
// certificates, the worker and the loopback supervisor; DeadlineExceeded if an "on" run does not
// finish within a minute.
StatusOr<WorkerBenchResult> RunWorkerBench(const WorkerBenchOptions& options);

}  // namespace fp::node::worker
