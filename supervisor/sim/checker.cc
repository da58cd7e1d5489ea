// Simulation invariants; see checker.h.
#include "supervisor/sim/checker.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "common/tlog/note.h"
#include "supervisor/state/state_store.h"
#include "supervisor/testing/sim_driver.h"

namespace fp::supervisor::sim {
namespace {

void Add(std::vector<std::string>& violations, std::string violation) {
  if (violations.size() < kMaxReportedViolations) violations.push_back(std::move(violation));
}

// Binary idempotency keys in shortened hex; the simulation's keys for unkeyed records are text.
std::string KeyText(std::string_view key) {
  const bool text =
      std::all_of(key.begin(), key.end(), [](char c) { return c >= ' ' && c <= '~'; });
  return text ? std::string(key) : HexEncode(AsBytes(key)).substr(0, 24);
}

std::string Describe(const ModelEntry& entry) {
  return fmt::format("{} (key {})", RecordTypeName(entry.record), KeyText(entry.dedup_key));
}

void CheckKeysOnce(std::span<const ModelEntry> history, std::vector<std::string>& violations) {
  std::map<std::string_view, uint64_t> first_position;
  for (uint64_t position = 0; position < history.size(); ++position) {
    auto [it, inserted] = first_position.emplace(history[position].dedup_key, position);
    if (!inserted) {
      Add(violations, fmt::format("{} is in the log more than once: positions {} and {}",
                                  Describe(history[position]), it->second, position));
    }
  }
}

void CheckTerms(std::span<const ModelEntry> history, std::vector<std::string>& violations) {
  uint64_t newest = kNoTerm;
  uint64_t newest_position = 0;
  for (uint64_t position = 0; position < history.size(); ++position) {
    const uint64_t term = history[position].term;
    if (term == kNoTerm) continue;
    if (term < newest) {
      Add(violations,
          fmt::format("stale leader record: {} of term {} at position {}, after term "
                      "{} wrote position {}",
                      Describe(history[position]), term, position, newest, newest_position));
      continue;
    }
    newest = term;
    newest_position = position;
  }
}

void CheckAnswers(std::span<const ModelEntry> history, std::span<const AppendAnswer> answers,
                  std::vector<std::string>& violations) {
  std::map<std::string_view, uint64_t> position_of;
  for (uint64_t position = 0; position < history.size(); ++position) {
    position_of.emplace(history[position].dedup_key, position);
  }
  for (const AppendAnswer& answer : answers) {
    auto found = position_of.find(answer.dedup_key);
    const std::string key = KeyText(answer.dedup_key);
    if (answer.acked) {
      if (answer.position >= history.size()) {
        Add(violations, fmt::format("key {} was acknowledged at position {}, past the log's end "
                                    "{}",
                                    key, answer.position, history.size()));
        continue;
      }
      const ModelEntry& entry = history[answer.position];
      if (entry.dedup_key != answer.dedup_key || entry.bytes != answer.bytes) {
        Add(violations, fmt::format("key {} was acknowledged at position {}, which holds {}", key,
                                    answer.position, Describe(entry)));
      }
    } else if (found != position_of.end() && history[found->second].bytes == answer.bytes &&
               history[found->second].term == answer.term) {
      Add(violations,
          fmt::format("key {} was refused but is in the log at position {}", key, found->second));
    }
  }
}

void CompareState(size_t node, const testing::StoreDump& dump, const testing::StoreDump& reference,
                  std::vector<std::string>& violations) {
  const size_t common = std::min(dump.size(), reference.size());
  for (size_t i = 0; i < common; ++i) {
    if (dump[i] == reference[i]) continue;
    const auto& [family, key, value] = dump[i];
    const auto& [reference_family, reference_key, reference_value] = reference[i];
    Add(violations, fmt::format("supervisor {} state differs from supervisor 0 at entry {}: "
                                "{}/{} vs {}/{}",
                                node, i, family, HexEncode(AsBytes(key)).substr(0, 48),
                                reference_family, HexEncode(AsBytes(reference_key)).substr(0, 48)));
    return;
  }
  if (dump.size() != reference.size()) {
    Add(violations, fmt::format("supervisor {} holds {} state entries, supervisor 0 holds {}", node,
                                dump.size(), reference.size()));
  }
}

// Every signed note the node stored must open under its ledger key.
void CheckNotes(size_t node, const SimNode& owner, const testing::StoreDump& dump,
                std::vector<std::string>& violations) {
  const std::string& signed_family = StateFamilyNames()[kSigned];
  for (const auto& [family, key, note] : dump) {
    if (family != signed_family) continue;
    StatusOr<tlog::OpenedNote> opened =
        tlog::OpenNote(note, std::span<const tlog::NoteVerifier>(&owner.verifier(), 1));
    if (!opened.ok()) {
      Add(violations, fmt::format("supervisor {} stored a checkpoint note that does not verify: {}",
                                  node, opened.status().ToString()));
    }
  }
}

}  // namespace

std::vector<std::string> CheckLog(std::span<const ModelEntry> history,
                                  std::span<const AppendAnswer> answers) {
  std::vector<std::string> violations;
  CheckKeysOnce(history, violations);
  CheckTerms(history, violations);
  CheckAnswers(history, answers, violations);
  return violations;
}

std::vector<std::string> CheckNodes(std::span<const SimNode* const> nodes, uint64_t log_end) {
  std::vector<std::string> violations;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!nodes[i]->up()) {
      Add(violations, fmt::format("supervisor {} is down", i));
    } else if (nodes[i]->applied() != log_end) {
      Add(violations,
          fmt::format("supervisor {} applied {} records of {}", i, nodes[i]->applied(), log_end));
    }
  }
  if (!violations.empty() || nodes.empty()) return violations;
  // One ledger key signs for the whole cluster and Ed25519 is deterministic, so equal state means
  // byte-equal signed checkpoints: a fork shows up as a difference in `signed`.
  const testing::StoreDump reference = testing::DumpStore(nodes[0]->store());
  CheckNotes(0, *nodes[0], reference, violations);
  for (size_t i = 1; i < nodes.size(); ++i) {
    const testing::StoreDump dump = testing::DumpStore(nodes[i]->store());
    CompareState(i, dump, reference, violations);
    CheckNotes(i, *nodes[i], dump, violations);
  }
  return violations;
}

}  // namespace fp::supervisor::sim
