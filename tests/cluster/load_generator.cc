// LoadGenerator; see load_generator.h.
#include "tests/cluster/load_generator.h"

#include <fmt/format.h>

#include "common/base/status.h"
#include "tests/cluster/supervisor_cluster.h"

namespace fp::cluster_test {
namespace {

using Clock = std::chrono::steady_clock;

// Answers that say the request was refused as such, not lost on the way.
bool IsRejection(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kNotFound:
    case StatusCode::kPermissionDenied:
    case StatusCode::kUnauthenticated:
    case StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

}  // namespace

const char* WriteOutcomeName(WriteOutcome outcome) {
  switch (outcome) {
    case WriteOutcome::kAcknowledged:
      return "acknowledged";
    case WriteOutcome::kIndeterminate:
      return "indeterminate";
    case WriteOutcome::kRejected:
      return "rejected";
  }
  return "?";
}

LoadGenerator::LoadGenerator(LoadOptions options) : options_(std::move(options)) {
  FP_CHECK(!options_.urls.empty());
  FP_CHECK(options_.clients >= 1 && options_.clients <= kMaxLoadClients);
  FP_CHECK(options_.max_writes >= 1 && options_.max_writes <= kMaxLoadWrites);
}

LoadGenerator::~LoadGenerator() { Stop(); }

void LoadGenerator::Start() {
  for (uint32_t c = 0; c < options_.clients; ++c) threads_.emplace_back([this, c] { Client(c); });
}

void LoadGenerator::Stop() {
  stopping_ = true;
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

void LoadGenerator::Client(uint32_t index) {
  // Clients start at different supervisors, so that every one of them admits sessions.
  std::vector<client::SupervisorUrl> rotated;
  for (size_t k = 0; k < options_.urls.size(); ++k) {
    rotated.push_back(options_.urls[(index + k) % options_.urls.size()]);
  }
  client::ApiClient api(std::move(rotated), options_.failover);
  for (uint64_t n = 0; !stopping_; ++n) {
    if (issued_.fetch_add(1) >= options_.max_writes) return;
    client::SubmitRequest request;
    request.model = kClusterModelName;
    // A prompt per write: different sessions generate different outputs.
    request.prompt_token_ids = client::BytePromptTokens(fmt::format("c{} n{} go", index, n));
    request.max_tokens = options_.max_tokens;
    request.idempotency_key = fmt::format("{}-c{}-n{}", options_.run_id, index, n);
    WriteRecord record;
    record.idempotency_key = request.idempotency_key;
    record.prompt_token_ids = request.prompt_token_ids;
    record.max_tokens = options_.max_tokens;
    record.started = Clock::now();
    StatusOr<std::string> id = api.Submit(request);
    record.finished = Clock::now();
    if (id.ok()) {
      record.outcome = WriteOutcome::kAcknowledged;
      record.session_id = *id;
    } else {
      record.outcome =
          IsRejection(id.status().code()) ? WriteOutcome::kRejected : WriteOutcome::kIndeterminate;
      record.session_id = client::SessionIdForIdempotencyKey(request.idempotency_key);
      record.error = id.status().ToString();
    }
    {
      std::lock_guard lock(mutex_);
      records_.push_back(std::move(record));
    }
    std::this_thread::sleep_for(options_.pause);
  }
}

std::vector<WriteRecord> LoadGenerator::Records() const {
  std::lock_guard lock(mutex_);
  return records_;
}

std::optional<WriteRecord> LoadGenerator::FirstAckStartedAfter(Clock::time_point since) const {
  std::lock_guard lock(mutex_);
  std::optional<WriteRecord> first;
  for (const WriteRecord& record : records_) {
    if (record.outcome != WriteOutcome::kAcknowledged || record.started < since) continue;
    if (!first.has_value() || record.finished < first->finished) first = record;
  }
  return first;
}

}  // namespace fp::cluster_test
