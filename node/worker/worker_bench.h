// The verification overhead benchmark behind `fieldprint bench worker`: output tokens per second
// of the same sessions run
//   off  by the bare engine on the calling thread, state digests skipped (plain generation; the
//        engine still hashes each 61-byte step leaf, which the result prices separately), and
//   on   by a whole worker: generation loop with state digests, streaming thread (leaves,
//        session trees, W/T batches, the fsync'd outbox) and mutual TLS to an in-process loopback
//        supervisor that acknowledges and commits every batch.
// "On" is timed from the first Assign to the last generated token (the generation rate, which is
// what verification may slow) and, separately, to the last leaf arriving at the supervisor.
//
// Runs are interleaved off, on, on, off per repetition: the on/off ratio of a repetition divides
// sums of runs that straddle each other, so a machine whose speed drifts linearly cancels out,
// and the same repetition gives the noise floor (second on / first on, second off / first off).
// By default the model is a random-weight LLaMA generated for the run (`hidden_size` etc.).
//
// Thread-safety: a call uses only its arguments (and temporary directories it removes).
#pragma once

#include <cstdint>
#include <string>

#include "common/base/status.h"

namespace fp::node::worker {

struct WorkerBenchOptions {
  std::string model_dir;  // empty: a fresh random-weight model of the shape below
  int64_t hidden_size = 256;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t intermediate_size = 640;
  int sessions = 8;  // 1..256
  int prompt_tokens = 32;
  int max_tokens = 128;  // every session generates exactly this many (no stop token)
  int threads = 1;
  uint32_t window_steps = 16;
  int64_t window_ms = 50;
  uint32_t max_unverified_steps = 64;
  int repeats = 5;  // repetitions of (off, on, on, off)
};

// Median, smallest and largest of a figure over the repetitions.
struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
};

struct WorkerBenchResult {
  int64_t output_tokens = 0;  // per run
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  Spread off_tokens_per_second;  // over every off run
  Spread on_tokens_per_second;   // generation rate, over every on run
  Spread on_delivered_seconds;   // first Assign to the last leaf at the supervisor
  // Per repetition: 1 - (off_a + off_b) / (on_a + on_b), the fraction of generation rate that
  // verification costs (negative: on was faster).
  Spread overhead;
  // Per repetition: 1 - on_a / on_b and 1 - off_a / off_b, what the same mode differs from itself.
  Spread noise_on;
  Spread noise_off;
  // Process CPU seconds per run (medians): "on" includes the loopback supervisor's threads, so
  // the difference is an upper bound on the worker's verification CPU cost.
  double off_cpu_seconds = 0;
  double on_cpu_seconds = 0;
  int64_t batches = 0;                    // LeafBatches the supervisor received in the last on run
  double digest_seconds_per_step = 0;     // host SHA-256 state digest of one hidden row
  double leaf_hash_seconds_per_step = 0;  // the step leaf hash, which off runs still compute
};

// Runs the benchmark. InvalidArgument for options out of range; errors of the model, the
// certificates, the worker and the loopback supervisor; DeadlineExceeded if an "on" run does not
// finish within a minute.
StatusOr<WorkerBenchResult> RunWorkerBench(const WorkerBenchOptions& options);

}  // namespace fp::node::worker
