// Wire message validation and helpers; see envelope.h.
#include "common/wire/envelope.h"

#include <cmath>
#include <limits>
#include <string>

#include <fmt/format.h>

namespace fp::wire {
namespace {

// Capacity a worker may announce: a continuous batch of this many sequences is far beyond any
// single node, so a larger value is a bug or an attack on the placement tables.
constexpr uint32_t kMaxWorkerReplicas = 65536;

Status Invalid(std::string_view field, std::string_view problem) {
  return InvalidArgumentError(fmt::format("{}: {}", field, problem));
}

Status CheckExactBytes(std::string_view field, const std::string& value, size_t size) {
  if (value.size() == size) return OkStatus();
  return Invalid(field, fmt::format("{} bytes, want {}", value.size(), size));
}

Status CheckLength(std::string_view field, size_t length, size_t min, size_t max) {
  if (length >= min && length <= max) return OkStatus();
  return Invalid(field, fmt::format("length {} outside [{}, {}]", length, min, max));
}

Status CheckReplica(std::string_view field, uint32_t replica) {
  if (replica < kMaxReplicas) return OkStatus();
  return Invalid(field, fmt::format("replica {} >= {}", replica, kMaxReplicas));
}

Status ValidateRegister(const pb::Register& m) {
  FP_RETURN_IF_ERROR(
      CheckLength("registration.max_replicas", m.max_replicas(), 1, kMaxWorkerReplicas));
  FP_RETURN_IF_ERROR(CheckLength("registration.models", m.models_size(), 1, kMaxModels));
  for (const std::string& model : m.models()) {
    FP_RETURN_IF_ERROR(CheckLength("registration.models[]", model.size(), 1, kMaxNameBytes));
  }
  FP_RETURN_IF_ERROR(
      CheckExactBytes("registration.numerics_profile_hash", m.numerics_profile_hash(), kHashSize));
  return CheckLength("registration.software_version", m.software_version().size(), 0,
                     kMaxNameBytes);
}

Status ValidateRegisterAck(const pb::RegisterAck& m) {
  FP_RETURN_IF_ERROR(
      CheckLength("register_ack.supervisor_id", m.supervisor_id().size(), 1, kMaxNameBytes));
  if (m.accepted()) {
    if (m.code() != 0 || !m.reason().empty()) {
      return Invalid("register_ack", "an acceptance carries no code or reason");
    }
    return CheckLength("register_ack.max_replicas", m.max_replicas(), 1, kMaxWorkerReplicas);
  }
  constexpr uint32_t kLastKnownCode = static_cast<uint32_t>(StatusCode::kUnauthenticated);
  if (m.code() == 0 || m.code() > kLastKnownCode) {
    return Invalid("register_ack.code", fmt::format("{} is not an error code", m.code()));
  }
  return CheckLength("register_ack.reason", m.reason().size(), 1, kMaxReasonBytes);
}

Status ValidateSampling(const pb::SamplingParams& m) {
  if (!std::isfinite(m.temperature()) || m.temperature() < 0) {
    return Invalid("assign.sampling.temperature", "must be finite and >= 0");
  }
  if (m.has_top_p() && !(m.top_p() > 0 && m.top_p() <= 1)) {
    return Invalid("assign.sampling.top_p", "must be in (0, 1]");
  }
  FP_RETURN_IF_ERROR(
      CheckLength("assign.sampling.max_tokens", m.max_tokens(), 1, kMaxSessionTokens));
  return CheckLength("assign.sampling.stop_token_ids", m.stop_token_ids_size(), 0, kMaxStopTokens);
}

Status ValidateAssign(const pb::Assign& m) {
  FP_RETURN_IF_ERROR(CheckExactBytes("assign.session_id", m.session_id(), kSessionIdBytes));
  FP_RETURN_IF_ERROR(CheckReplica("assign.replica", m.replica()));
  FP_RETURN_IF_ERROR(CheckLength("assign.model", m.model().size(), 1, kMaxNameBytes));
  FP_RETURN_IF_ERROR(CheckExactBytes("assign.numerics_profile", m.numerics_profile(), kHashSize));
  FP_RETURN_IF_ERROR(CheckExactBytes("assign.anchor_set_hash", m.anchor_set_hash(), kHashSize));
  FP_RETURN_IF_ERROR(
      CheckLength("assign.prompt_token_ids", m.prompt_token_ids_size(), 1, kMaxSessionTokens));
  if (!m.has_sampling()) return Invalid("assign.sampling", "missing");
  FP_RETURN_IF_ERROR(ValidateSampling(m.sampling()));
  if (!pb::DigestScope_IsValid(m.digest_scope()) ||
      m.digest_scope() == pb::DIGEST_SCOPE_UNSPECIFIED) {
    return Invalid("assign.digest_scope", fmt::format("unknown scope {}", m.digest_scope()));
  }
  if (m.has_quantize_bits()) {
    FP_RETURN_IF_ERROR(CheckLength("assign.quantize_bits", m.quantize_bits(), 0, kMaxQuantizeBits));
  }
  // A replay longer than the output limit could never have been verified.
  FP_RETURN_IF_ERROR(CheckLength("assign.replay_token_ids", m.replay_token_ids_size(), 0,
                                 m.sampling().max_tokens()));
  if (m.max_unverified_steps() == 0) return Invalid("assign.max_unverified_steps", "must be >= 1");
  return CheckLength("assign.window_steps", m.window_steps(), 0, kMaxWindowSteps);
}

Status ValidateLeafBatch(const pb::LeafBatch& m) {
  FP_RETURN_IF_ERROR(CheckExactBytes("leaf_batch.session_id", m.session_id(), kSessionIdBytes));
  FP_RETURN_IF_ERROR(CheckReplica("leaf_batch.replica", m.replica()));
  const size_t steps = static_cast<size_t>(m.token_ids_size());
  FP_RETURN_IF_ERROR(CheckLength("leaf_batch.token_ids", steps, 1, kMaxLeafBatchSteps));
  if (m.first_step() > std::numeric_limits<uint64_t>::max() - steps) {
    return Invalid("leaf_batch.first_step", "step numbers overflow 64 bits");
  }
  FP_RETURN_IF_ERROR(CheckLength("leaf_batch.window_steps", m.window_steps(), 0, kMaxWindowSteps));
  const uint64_t window = m.window_steps() > 1 ? m.window_steps() : 1;
  if (m.first_step() % window != 0) {
    return Invalid("leaf_batch.first_step", fmt::format("not a multiple of window {}", window));
  }
  // Only a replica's last batch may end in a partial window; otherwise the next batch would
  // start inside a window that was already summarised.
  if (!m.last() && steps % window != 0) {
    return Invalid("leaf_batch.token_ids", fmt::format("not whole windows of {}", window));
  }
  const size_t leaves = (steps + window - 1) / window;
  FP_RETURN_IF_ERROR(
      CheckExactBytes("leaf_batch.state_digests", m.state_digests(), leaves * kDigestBytes));
  return CheckExactBytes("leaf_batch.session_root", m.session_root(), m.last() ? kHashSize : 0);
}

Status ValidateAck(const pb::Ack& m) {
  FP_RETURN_IF_ERROR(CheckExactBytes("ack.session_id", m.session_id(), kSessionIdBytes));
  FP_RETURN_IF_ERROR(CheckReplica("ack.replica", m.replica()));
  return CheckLength("ack.step_count", m.step_count(), 1, kMaxLeafBatchSteps);
}

Status ValidateCommit(const pb::Commit& m) {
  FP_RETURN_IF_ERROR(CheckExactBytes("commit.session_id", m.session_id(), kSessionIdBytes));
  return CheckExactBytes("commit.verified_root", m.verified_root(), kHashSize);
}

Status ValidateRollback(const pb::Rollback& m) {
  FP_RETURN_IF_ERROR(CheckExactBytes("rollback.session_id", m.session_id(), kSessionIdBytes));
  FP_RETURN_IF_ERROR(CheckReplica("rollback.replica", m.replica()));
  // Epoch 0 is a fresh replica's; a rollback always starts a later one.
  if (m.new_epoch() == 0) return Invalid("rollback.new_epoch", "must be >= 1");
  if (!pb::RollbackKind_IsValid(m.kind()) || m.kind() == pb::ROLLBACK_KIND_UNSPECIFIED) {
    return Invalid("rollback.kind", fmt::format("unknown kind {}", m.kind()));
  }
  return OkStatus();
}

Status ValidateError(const pb::Error& m) {
  if (m.code() == 0) return Invalid("error.code", "must not be 0 (OK)");
  FP_RETURN_IF_ERROR(CheckLength("error.reason", m.reason().size(), 0, kMaxReasonBytes));
  if (m.session_id().empty()) return OkStatus();
  return CheckExactBytes("error.session_id", m.session_id(), kSessionIdBytes);
}

// proto3 strings must be UTF-8 or the peer's parser rejects the whole frame; a status message
// may quote bytes a peer sent, so anything outside printable ASCII becomes '?'.
std::string AsciiReason(std::string_view message) {
  std::string reason(message.substr(0, kMaxReasonBytes));
  for (char& c : reason) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte > 0x7e) c = '?';
  }
  return reason;
}

}  // namespace

Status ValidateEnvelope(const pb::Envelope& envelope) {
  switch (envelope.body_case()) {
    case pb::Envelope::kRegistration:
      return ValidateRegister(envelope.registration());
    case pb::Envelope::kHeartbeat:
      return OkStatus();  // every value of every field is meaningful
    case pb::Envelope::kAssign:
      return ValidateAssign(envelope.assign());
    case pb::Envelope::kLeafBatch:
      return ValidateLeafBatch(envelope.leaf_batch());
    case pb::Envelope::kAck:
      return ValidateAck(envelope.ack());
    case pb::Envelope::kCommit:
      return ValidateCommit(envelope.commit());
    case pb::Envelope::kRollback:
      return ValidateRollback(envelope.rollback());
    case pb::Envelope::kQuarantine:
      return CheckLength("quarantine.reason", envelope.quarantine().reason().size(), 1,
                         kMaxReasonBytes);
    case pb::Envelope::kError:
      return ValidateError(envelope.error());
    case pb::Envelope::kRegisterAck:
      return ValidateRegisterAck(envelope.register_ack());
    case pb::Envelope::BODY_NOT_SET:
      break;
  }
  return InvalidArgumentError("envelope: no body of a type known to this protocol version");
}

std::string_view BodyName(const pb::Envelope& envelope) {
  switch (envelope.body_case()) {
    case pb::Envelope::kRegistration:
      return "registration";
    case pb::Envelope::kHeartbeat:
      return "heartbeat";
    case pb::Envelope::kAssign:
      return "assign";
    case pb::Envelope::kLeafBatch:
      return "leaf_batch";
    case pb::Envelope::kAck:
      return "ack";
    case pb::Envelope::kCommit:
      return "commit";
    case pb::Envelope::kRollback:
      return "rollback";
    case pb::Envelope::kQuarantine:
      return "quarantine";
    case pb::Envelope::kError:
      return "error";
    case pb::Envelope::kRegisterAck:
      return "register_ack";
    case pb::Envelope::BODY_NOT_SET:
      break;
  }
  return "empty";
}

size_t LeafCount(const pb::LeafBatch& batch) { return batch.state_digests().size() / kDigestBytes; }

ByteSpan LeafDigest(const pb::LeafBatch& batch, size_t index) {
  FP_CHECK(index < LeafCount(batch));
  return AsBytes(batch.state_digests()).subspan(index * kDigestBytes, kDigestBytes);
}

void AppendStepLeaf(pb::LeafBatch& batch, uint32_t token_id, const Hash& state_digest) {
  batch.add_token_ids(token_id);
  batch.mutable_state_digests()->append(AsChars(state_digest));
}

pb::Envelope MakeErrorEnvelope(const Status& status, ByteSpan session_id) {
  FP_CHECK(!status.ok());
  pb::Envelope envelope;
  pb::Error* error = envelope.mutable_error();
  error->set_code(static_cast<uint32_t>(status.code()));
  error->set_reason(AsciiReason(status.message()));
  error->set_session_id(std::string(AsChars(session_id)));
  return envelope;
}

Status StatusFromError(const pb::Error& error) {
  constexpr uint32_t kLastKnownCode = static_cast<uint32_t>(StatusCode::kUnauthenticated);
  if (error.code() == 0 || error.code() > kLastKnownCode) {
    return UnknownError(fmt::format("peer error code {}: {}", error.code(), error.reason()));
  }
  return Status(static_cast<StatusCode>(error.code()), error.reason());
}

}  // namespace fp::wire
