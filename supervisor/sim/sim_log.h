// SimLog: the Log (supervisor/log/log.h) that a simulated supervisor's own components write
// through: its CheckpointSigner appends CosignerJoined and Cosignature records with it. It hands
// every call to the simulation that hosts it (SimLogHost), which turns appends into messages on
// the simulated network and reads from the log model.
//
// The simulation is single-threaded and never blocks: callbacks run on the simulation's thread
// when the answer arrives (or, for the append a starting supervisor waits for, before Append
// returns), and WaitBeyond only answers when it would not have to wait.
//
// Thread-safety: none; used on the simulation's thread only.
#pragma once

#include <chrono>
#include <cstdint>

#include "supervisor/log/log.h"
#include "supervisor/sim/log_model.h"

namespace fp::supervisor::sim {

// What a SimLog needs from the simulation that hosts it.
class SimLogHost {
 public:
  virtual ~SimLogHost() = default;
  // Appends on behalf of supervisor `node`; `done` runs exactly once.
  virtual void HostAppend(int node, pb::LogRecord record, Log::AppendCallback done) = 0;
  // Sends a trim fenced by `node`'s leader term; returns Begin() as it is now.
  virtual uint64_t HostTrim(int node, uint64_t below) = 0;
  // Completes `node`'s unanswered appends with Unavailable.
  virtual void HostClose(int node) = 0;
  virtual const LogModel& model() const = 0;
};

class SimLog final : public Log {
 public:
  // Borrows `host`, which must outlive the log.
  SimLog(SimLogHost* host, int node) : host_(host), node_(node) {}

  void Append(pb::LogRecord record, AppendCallback done) override;
  StatusOr<std::vector<LogEntry>> Read(uint64_t from, size_t max_records) const override;
  uint64_t Begin() const override;
  uint64_t End() const override;
  // End(): the model is the authority.
  StatusOr<uint64_t> ReadEnd() override { return End(); }
  // Returns End() when End() > position; FP_CHECK-fails otherwise, since waiting would stop the
  // whole simulation (no simulated component waits on the log).
  uint64_t WaitBeyond(uint64_t position, std::chrono::milliseconds timeout) const override;
  // The trim travels to the log model as a message fenced by this node's leader term; the
  // returned Begin() is the one before it lands.
  StatusOr<uint64_t> Trim(uint64_t below) override;
  void Close() override;
  // The log is kept by the model, not on this machine's disk.
  uint64_t ApproximateBytes() const override { return 0; }

 private:
  SimLogHost* host_;  // borrowed
  const int node_;
};

}  // namespace fp::supervisor::sim
