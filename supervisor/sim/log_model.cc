// LogModel; see log_model.h.
#include "supervisor/sim/log_model.h"

#include <algorithm>

#include <fmt/format.h>

namespace fp::supervisor::sim {

LogModel::LogModel(uint64_t lease_ttl_ms, ModelBug bug) : lease_ttl_ms_(lease_ttl_ms), bug_(bug) {
  FP_CHECK(lease_ttl_ms_ > 0);
}

StatusOr<uint64_t> LogModel::Append(const ModelAppend& append, uint64_t now_ms) {
  FP_CHECK(!append.dedup_key.empty());
  const Hash content = Sha256(append.bytes);
  auto stored = keys_.find(append.dedup_key);
  if (stored != keys_.end() && bug_ != ModelBug::kIgnoreIdempotency) {
    if (stored->second.content != content) {
      return FailedPreconditionError(
          fmt::format("idempotency key {} holds different content at position {}",
                      HexEncode(AsBytes(append.dedup_key)), stored->second.position));
    }
    return stored->second.position;
  }
  if (append.term != kNoTerm && !Fenced(append.term, now_ms) && bug_ != ModelBug::kIgnoreFencing) {
    return FailedPreconditionError(
        fmt::format("leader term {} is over (live term {})", append.term, term_));
  }
  const uint64_t position = history_.size();
  history_.push_back(
      ModelEntry{append.record, append.bytes, append.dedup_key, append.term, now_ms});
  keys_[append.dedup_key] = Stored{position, content};
  return position;
}

StatusOr<std::vector<LogEntry>> LogModel::Read(uint64_t from, size_t max_records) const {
  if (from < begin_) {
    return OutOfRangeError(fmt::format("position {} was trimmed (log begins at {})", from, begin_));
  }
  std::vector<LogEntry> entries;
  const uint64_t end =
      std::min<uint64_t>(End(), from + std::min(max_records, kMaxModelReadRecords));
  for (uint64_t position = from; position < end; ++position) {
    entries.push_back(LogEntry{position, history_[position].record});
  }
  return entries;
}

StatusOr<uint64_t> LogModel::Trim(uint64_t below, uint64_t term, uint64_t now_ms) {
  if (!Fenced(term, now_ms)) {
    return FailedPreconditionError(fmt::format("trim by leader term {}, which is over", term));
  }
  begin_ = std::max(begin_, std::min(below, End()));
  return begin_;
}

StatusOr<uint64_t> LogModel::Campaign(int candidate, uint64_t now_ms) {
  if (term_ != kNoTerm && now_ms < lease_expiry_ms_) {
    return FailedPreconditionError(fmt::format("supervisor {} leads in term {}", leader_, term_));
  }
  ++term_;
  leader_ = candidate;
  lease_expiry_ms_ = now_ms + lease_ttl_ms_;
  return term_;
}

Status LogModel::KeepAlive(uint64_t term, uint64_t now_ms) {
  if (!Fenced(term, now_ms)) {
    return FailedPreconditionError(fmt::format("lease of term {} is gone", term));
  }
  lease_expiry_ms_ = now_ms + lease_ttl_ms_;
  return OkStatus();
}

bool LogModel::Fenced(uint64_t term, uint64_t now_ms) const {
  return term != kNoTerm && term == term_ && now_ms < lease_expiry_ms_;
}

void LogModel::PublishApplied(int supervisor, uint64_t position) {
  uint64_t& published = published_[supervisor];
  published = std::max(published, position);
}

uint64_t LogModel::MinPublishedApplied(int supervisors) const {
  uint64_t smallest = UINT64_MAX;
  for (int s = 0; s < supervisors; ++s) {
    auto it = published_.find(s);
    smallest = std::min(smallest, it == published_.end() ? 0 : it->second);
  }
  return supervisors == 0 ? 0 : smallest;
}

}  // namespace fp::supervisor::sim
