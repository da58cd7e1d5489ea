// Session request validation; see session_request.h.
#include "supervisor/state/session_request.h"

#include <fmt/format.h>

namespace fp::supervisor {

wire::pb::Assign MakeWireAssign(const ::fieldprint::supervisor::SessionRequest& request,
                                uint32_t replica, uint64_t epoch,
                                std::span<const uint32_t> replay) {
  wire::pb::Assign assign;
  assign.set_session_id(request.session_id());
  assign.set_replica(replica);
  assign.set_epoch(epoch);
  assign.set_model(request.model());
  assign.set_numerics_profile(request.numerics_profile());
  assign.set_anchor_set_hash(request.anchor_set_hash());
  *assign.mutable_prompt_token_ids() = request.prompt_token_ids();
  *assign.mutable_sampling() = request.sampling();
  assign.set_digest_scope(request.digest_scope());
  if (request.has_quantize_bits()) assign.set_quantize_bits(request.quantize_bits());
  assign.mutable_replay_token_ids()->Add(replay.begin(), replay.end());
  assign.set_max_unverified_steps(request.max_unverified_steps());
  assign.set_window_steps(1);
  return assign;
}

Status ValidateSessionRequest(const ::fieldprint::supervisor::SessionRequest& request) {
  if (request.replicas() < 1 || request.replicas() > wire::kMaxReplicas) {
    return InvalidArgumentError(
        fmt::format("replicas: {} is outside [1, {}]", request.replicas(), wire::kMaxReplicas));
  }
  if (request.prompt_token_ids_size() == 0) {
    return InvalidArgumentError("prompt_token_ids: the prompt is empty");
  }
  wire::pb::Envelope envelope;
  *envelope.mutable_assign() = MakeWireAssign(request, 0, 0, {});
  return wire::ValidateEnvelope(envelope);
}

}  // namespace fp::supervisor
