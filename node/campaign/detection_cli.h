// `fieldprint bench detection`: the detection campaign's command line (detection_campaign.h).
//
// Thread-safety: registration runs once, on the main thread.
#pragma once

#include <CLI/CLI.hpp>

namespace fp {

// Registers `bench detection` on `bench`. The callback prints one JSON object on stdout and a
// table on stderr, and fails (exit 1) on an error or when an invariant of the campaign is broken
// (a false divergence, or a fault that changed a hidden state without changing its leaf).
void AddDetectionBench(CLI::App& bench);

}  // namespace fp
