// Helpers shared by every Log implementation; see log.h.
#include "supervisor/log/log.h"

#include <condition_variable>
#include <memory>
#include <mutex>

#include "common/base/bytes.h"
#include "common/crypto/sha256.h"

namespace fp::supervisor {

StatusOr<uint64_t> AppendAndWait(Log& log, pb::LogRecord record) {
  struct Waiter {
    std::mutex mutex;
    std::condition_variable done;
    std::optional<StatusOr<uint64_t>> result;  // guarded by mutex
  };
  auto waiter = std::make_shared<Waiter>();
  log.Append(std::move(record), [waiter](StatusOr<uint64_t> position) {
    std::lock_guard lock(waiter->mutex);
    waiter->result.emplace(std::move(position));
    waiter->done.notify_one();
  });
  std::unique_lock lock(waiter->mutex);
  waiter->done.wait(lock, [&] { return waiter->result.has_value(); });
  return std::move(*waiter->result);
}

namespace {

std::string KeyPrefix(char type, const std::string& session, uint32_t replica, uint64_t epoch) {
  Bytes key;
  key.push_back(static_cast<uint8_t>(type));
  key.insert(key.end(), session.begin(), session.end());
  AppendU32(key, replica);
  AppendU64(key, epoch);
  return std::string(key.begin(), key.end());
}

}  // namespace

std::optional<std::string> IdempotencyKey(const pb::LogRecord& record) {
  switch (record.body_case()) {
    case pb::LogRecord::kAdmit:
      return "A" + record.admit().request().session_id();
    case pb::LogRecord::kAssign: {
      const pb::Assign& m = record.assign();
      std::string key = KeyPrefix('P', m.session_id(), m.replica(), m.epoch());
      Bytes attempt;
      AppendU32(attempt, m.attempt());
      key.append(attempt.begin(), attempt.end());
      return key;
    }
    case pb::LogRecord::kLeafBatch: {
      const pb::LeafBatch& m = record.leaf_batch();
      std::string key = KeyPrefix('L', m.session_id(), m.replica(), m.epoch());
      Bytes step;
      AppendU64(step, m.first_step());
      key.append(step.begin(), step.end());
      return key;
    }
    case pb::LogRecord::kDeadline: {
      const pb::Deadline& m = record.deadline();
      return KeyPrefix('D', m.session_id(), m.replica(), m.epoch());
    }
    case pb::LogRecord::kCosignerJoined: {
      // The hash has a fixed length, so the name after it needs no delimiter.
      const pb::CosignerJoined& m = record.cosigner_joined();
      const Hash ledger_key = Sha256(AsBytes(m.ledger_key()));
      std::string key = "J" + std::string(ledger_key.begin(), ledger_key.end());
      return key + m.name();
    }
    case pb::LogRecord::kCosignature: {
      const pb::Cosignature& m = record.cosignature();
      Bytes key = {static_cast<uint8_t>('S')};
      AppendU64(key, m.size());
      return std::string(key.begin(), key.end()) + m.name();
    }
    default:
      return std::nullopt;
  }
}

const char* RecordTypeName(const pb::LogRecord& record) {
  switch (record.body_case()) {
    case pb::LogRecord::kAdmit:
      return "admit";
    case pb::LogRecord::kAssign:
      return "assign";
    case pb::LogRecord::kLeafBatch:
      return "leaf_batch";
    case pb::LogRecord::kTick:
      return "tick";
    case pb::LogRecord::kDeadline:
      return "deadline";
    case pb::LogRecord::kWorkerRegistered:
      return "worker_registered";
    case pb::LogRecord::kWorkerLost:
      return "worker_lost";
    case pb::LogRecord::kCheckpointRequest:
      return "checkpoint_request";
    case pb::LogRecord::kWorkerReleased:
      return "worker_released";
    case pb::LogRecord::kPlacementExpired:
      return "placement_expired";
    case pb::LogRecord::kCosignerJoined:
      return "cosigner_joined";
    case pb::LogRecord::kCosignature:
      return "cosignature";
    case pb::LogRecord::BODY_NOT_SET:
      break;
  }
  return "empty";
}

bool IsLeaderRecord(const pb::LogRecord& record) {
  switch (record.body_case()) {
    case pb::LogRecord::kTick:
    case pb::LogRecord::kCheckpointRequest:
    case pb::LogRecord::kAssign:
    case pb::LogRecord::kDeadline:
    case pb::LogRecord::kWorkerLost:
    case pb::LogRecord::kPlacementExpired:
      return true;
    default:
      return false;
  }
}

}  // namespace fp::supervisor
