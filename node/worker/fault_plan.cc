// Fault plans and the fault injection guard; see fault_plan.h.
#include "node/worker/fault_plan.h"

#include <array>
#include <utility>

namespace fp::node::worker {
namespace {

constexpr std::array<std::pair<FaultKind, std::string_view>, 6> kKindNames = {{
    {FaultKind::kHiddenBit, "hidden-bit"},
    {FaultKind::kKvRow, "kv-row"},
    {FaultKind::kWeightBit, "weight-bit"},
    {FaultKind::kStall, "stall"},
    {FaultKind::kCrash, "crash"},
    {FaultKind::kWrongDigest, "wrong-digest"},
}};

}  // namespace

std::string_view FaultKindName(FaultKind kind) {
  for (const auto& [k, name] : kKindNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

StatusOr<FaultKind> ParseFaultKind(std::string_view name) {
  for (const auto& [kind, text] : kKindNames) {
    if (text == name) return kind;
  }
  return InvalidArgumentError("unknown fault kind '" + std::string(name) +
                              "' (hidden-bit, kv-row, weight-bit, stall, crash, wrong-digest)");
}

Status ValidateFaultPlan(const FaultPlan& plan) {
  if (plan.session < kAllSessions) {
    return InvalidArgumentError("faults.session must be a session ordinal >= 0, or -1 for all");
  }
  if (plan.bit < 0) return InvalidArgumentError("faults.bit must be >= 0");
  if (plan.kind == FaultKind::kWrongDigest && plan.bit >= 256) {
    return InvalidArgumentError("faults.bit must be < 256 for a 32-byte digest");
  }
  if (plan.element < 0) return InvalidArgumentError("faults.element must be >= 0");
  if (plan.kv_row < 0) return InvalidArgumentError("faults.kv-row must be >= 0");
  if (plan.kind == FaultKind::kWeightBit && plan.tensor.empty()) {
    return InvalidArgumentError("faults.tensor must name a weight tensor");
  }
  if (plan.stall_ms < 0 || plan.stall_ms > kMaxFaultStallMs) {
    return InvalidArgumentError("faults.stall-ms must be in [0, " +
                                std::to_string(kMaxFaultStallMs) + "]");
  }
  return OkStatus();
}

StatusOr<bool> FaultInjectionEnabled(bool section_in_file, bool unsafe_flag, bool options_set,
                                     bool kind_set) {
  if (section_in_file && !unsafe_flag) {
    return FailedPreconditionError(
        "the config file has a [faults] section but --unsafe-fault-injection is not on the "
        "command line; refusing to start (fault injection is for tests and demos only)");
  }
  if (unsafe_flag && !section_in_file) {
    return FailedPreconditionError(
        "--unsafe-fault-injection needs a [faults] section in the --config file; refusing to "
        "start");
  }
  if (!section_in_file) {
    if (options_set) {
      return InvalidArgumentError(
          "fault options are read only from a [faults] section of the --config file");
    }
    return false;
  }
  if (!kind_set) return InvalidArgumentError("the [faults] section must set kind");
  return true;
}

}  // namespace fp::node::worker
