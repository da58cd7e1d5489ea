// SimLog; see sim_log.h.
#include "supervisor/sim/sim_log.h"

namespace fp::supervisor::sim {

void SimLog::Append(pb::LogRecord record, AppendCallback done) {
  host_->HostAppend(node_, std::move(record), std::move(done));
}

StatusOr<std::vector<LogEntry>> SimLog::Read(uint64_t from, size_t max_records) const {
  return host_->model().Read(from, max_records);
}

uint64_t SimLog::Begin() const { return host_->model().Begin(); }

uint64_t SimLog::End() const { return host_->model().End(); }

uint64_t SimLog::WaitBeyond(uint64_t position, std::chrono::milliseconds /*timeout*/) const {
  FP_CHECK_MSG(End() > position, "a simulated supervisor waited on the log");
  return End();
}

StatusOr<uint64_t> SimLog::Trim(uint64_t below) { return host_->HostTrim(node_, below); }

void SimLog::Close() { host_->HostClose(node_); }

}  // namespace fp::supervisor::sim
