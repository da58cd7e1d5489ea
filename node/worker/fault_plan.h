// Fault injection plans for tests and the demo: which fault a worker injects, where and when,
// and the guard that keeps it out of production.
//
// Kinds (each fires once per targeted session, the first time that session reaches the step):
//   hidden-bit    flip bit `bit` of element `element` of the final hidden state at step `step`
//                 (before it is digested; the token is sampled from the uncorrupted logits, so
//                 exactly that step's digest changes): a transient fault, which a rollback
//                 (truncate) repairs;
//   kv-row        before step `step`, overwrite the cached K/V rows (every layer) of the session's
//                 token `kv_row` with those of a different token: corruption at rest, which every
//                 later step reads and a truncating rollback keeps; only a rebuild repairs it.
//                 (The Backend interface has no way to write one cache element, so the fault
//                 rewrites a whole row through a forward pass; see faulty_backend.h);
//   weight-bit    flip bit `bit` of element `element` of weight tensor `tensor` when the model is
//                 loaded: a persistent fault, every step of every session differs;
//   stall         sleep `stall_ms` before the forward pass that produces step `step`;
//   crash         abort the process before that forward pass;
//   wrong-digest  the streaming thread flips bit `bit` of step `step`'s state digest before it
//                 builds the leaf (a dishonest or buggy node; the engine computed correctly).
// `session` is the ordinal of the session on this worker process (0 for the first Assign), or
// kAllSessions.
//
// The guard: fault injection is on only when the config file has a [faults] section AND the
// command line has --unsafe-fault-injection; either one alone refuses to start.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fp::node::worker {

inline constexpr int64_t kAllSessions = -1;
// A stall longer than this is a hang, which `crash` models better.
inline constexpr int64_t kMaxFaultStallMs = 600'000;

enum class FaultKind : uint8_t {
  kHiddenBit = 0,
  kKvRow = 1,
  kWeightBit = 2,
  kStall = 3,
  kCrash = 4,
  kWrongDigest = 5,
};

// "hidden-bit", "kv-row", "weight-bit", "stall", "crash", "wrong-digest".
std::string_view FaultKindName(FaultKind kind);
// Inverse of FaultKindName; InvalidArgument (listing the kinds) otherwise.
StatusOr<FaultKind> ParseFaultKind(std::string_view name);

struct FaultPlan {
  FaultKind kind = FaultKind::kHiddenBit;
  int64_t session = kAllSessions;  // ordinal of the targeted session, or kAllSessions
  uint64_t step = 0;               // all but weight-bit
  int32_t bit = 6;                 // hidden-bit, weight-bit (in the element), wrong-digest (0..255)
  int64_t element = 0;             // hidden-bit, weight-bit
  int64_t kv_row = 0;              // kv-row: the session's token index whose rows are rewritten
  std::string tensor = "model.layers.0.self_attn.q_proj.weight";  // weight-bit
  int64_t stall_ms = 100;                                         // stall

  // True if the session with this ordinal is a target.
  bool Targets(uint64_t ordinal) const {
    return session == kAllSessions || static_cast<uint64_t>(session) == ordinal;
  }
};

// Checks what can be checked without the model (the backend checks element and bit against the
// model's shapes and dtype): session >= kAllSessions, bit >= 0 (and < 256 for wrong-digest),
// element >= 0, kv_row >= 0, a tensor name for weight-bit, 0 <= stall_ms <= kMaxFaultStallMs.
// InvalidArgument naming the field.
Status ValidateFaultPlan(const FaultPlan& plan);

// The guard. `section_in_file`: the --config file has a [faults] section; `unsafe_flag`:
// --unsafe-fault-injection was given on the command line; `options_set`: some fault option has
// a value (from either place); `kind_set`: the kind option has one. Returns whether fault injection
// is on. FailedPrecondition when only one of the two switches is present; InvalidArgument when
// fault options were given without a [faults] section (on the command line only) or the section
// sets no kind.
StatusOr<bool> FaultInjectionEnabled(bool section_in_file, bool unsafe_flag, bool options_set,
                                     bool kind_set);

}  // namespace fp::node::worker
