// Valid sample envelopes of every body type, for the wire tests and the fuzz corpus generator
// (tests/fuzz/make_frame_corpus.cc). Part of the fp_wire_samples library, which production code
// does not link.
//
// Thread-safety: pure functions; each call returns fresh messages.
#pragma once

#include <cstddef>
#include <vector>

#include "common/wire/envelope.h"

namespace fp::wire {

// One valid envelope per body type, in the order of Envelope's oneof field numbers, with every
// field set to a non-default value so that a round trip that drops a field is noticed.
std::vector<pb::Envelope> SampleEnvelopes();

// A valid per-step LeafBatch of `steps` leaves (1..kMaxLeafBatchSteps, FP_CHECKed) starting at
// step 0, with token ids and digests derived from the step number.
pb::Envelope SampleLeafBatch(size_t steps);

}  // namespace fp::wire
