// Sample envelopes; see wire_samples.h.
#include "common/wire/wire_samples.h"

#include <string>

namespace fp::wire {
namespace {

// `size` bytes counting up from `first`, so that distinct fields hold distinct bytes.
std::string Pattern(size_t size, uint8_t first) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(first + i);
  return bytes;
}

pb::Envelope SampleRegister() {
  pb::Envelope envelope;
  pb::Register* m = envelope.mutable_registration();
  m->set_max_replicas(8);
  m->add_models("llama-3.2-1b");
  m->add_models("tiny-llama-test");
  m->set_numerics_profile_hash(Pattern(kHashSize, 0x10));
  m->set_software_version("fieldprint 0.1.0 (sample)");
  return envelope;
}

pb::Envelope SampleHeartbeat() {
  pb::Envelope envelope;
  pb::Heartbeat* m = envelope.mutable_heartbeat();
  m->set_sequence(41);
  m->set_active_replicas(3);
  m->set_free_replicas(5);
  return envelope;
}

pb::Envelope SampleAssign() {
  pb::Envelope envelope;
  pb::Assign* m = envelope.mutable_assign();
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  m->set_replica(2);
  m->set_epoch(1);
  m->set_model("llama-3.2-1b");
  m->set_numerics_profile(Pattern(kHashSize, 0x20));
  m->set_anchor_set_hash(Pattern(kHashSize, 0x40));
  for (uint32_t token : {128000u, 791u, 6864u, 315u, 9822u}) m->add_prompt_token_ids(token);
  pb::SamplingParams* sampling = m->mutable_sampling();
  sampling->set_temperature(0.7f);
  sampling->set_top_k(40);
  sampling->set_top_p(0.95f);
  sampling->set_seed(0x0123456789abcdefULL);
  sampling->set_max_tokens(256);
  sampling->add_stop_token_ids(128001);
  sampling->add_stop_token_ids(128009);
  m->set_digest_scope(pb::DIGEST_SCOPE_HIDDEN_KV);
  m->set_quantize_bits(4);
  m->add_replay_token_ids(578);
  m->add_replay_token_ids(4320);
  m->set_max_unverified_steps(64);
  m->set_window_steps(1);
  return envelope;
}

pb::Envelope SampleAck() {
  pb::Envelope envelope;
  pb::Ack* m = envelope.mutable_ack();
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  m->set_replica(2);
  m->set_epoch(1);
  m->set_first_step(64);
  m->set_step_count(32);
  m->set_log_index(90210);
  return envelope;
}

pb::Envelope SampleCommit() {
  pb::Envelope envelope;
  pb::Commit* m = envelope.mutable_commit();
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  m->set_verified_steps(96);
  m->set_verified_root(Pattern(kHashSize, 0x60));
  m->set_session_verified(true);
  m->set_ledger_index(1234);
  return envelope;
}

pb::Envelope SampleRollback() {
  pb::Envelope envelope;
  pb::Rollback* m = envelope.mutable_rollback();
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  m->set_replica(1);
  m->set_to_step(17);
  m->set_new_epoch(2);
  m->set_kind(pb::ROLLBACK_KIND_REBUILD);
  return envelope;
}

pb::Envelope SampleQuarantine() {
  pb::Envelope envelope;
  envelope.mutable_quarantine()->set_reason("replica diverged at 3 sessions in 10 minutes");
  return envelope;
}

pb::Envelope SampleError() {
  pb::Envelope envelope;
  pb::Error* m = envelope.mutable_error();
  m->set_code(static_cast<uint32_t>(StatusCode::kFailedPrecondition));
  m->set_reason("numerics profile not reproducible on this worker");
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  return envelope;
}

}  // namespace

pb::Envelope SampleLeafBatch(size_t steps) {
  FP_CHECK(steps >= 1);
  FP_CHECK(steps <= kMaxLeafBatchSteps);
  pb::Envelope envelope;
  pb::LeafBatch* m = envelope.mutable_leaf_batch();
  m->set_session_id(Pattern(kSessionIdBytes, 0xa0));
  m->set_replica(2);
  m->set_epoch(1);
  m->set_first_step(0);
  for (size_t step = 0; step < steps; ++step) {
    Hash digest;
    for (size_t i = 0; i < digest.size(); ++i) digest[i] = static_cast<uint8_t>(step * 7 + i);
    // Large ids too, so that varints of every width appear.
    AppendStepLeaf(*m, static_cast<uint32_t>(step * 2654435761u), digest);
  }
  m->set_window_steps(1);
  m->set_last(true);
  m->set_session_root(Pattern(kHashSize, 0x80));
  return envelope;
}

pb::Envelope SampleRegisterAck() {
  pb::Envelope envelope;
  pb::RegisterAck* m = envelope.mutable_register_ack();
  m->set_supervisor_id("supervisor-0");
  m->set_accepted(true);
  m->set_max_replicas(8);
  return envelope;
}

std::vector<pb::Envelope> SampleEnvelopes() {
  return {SampleRegister(), SampleHeartbeat(),  SampleAssign(),   SampleLeafBatch(5),
          SampleAck(),      SampleCommit(),     SampleRollback(), SampleQuarantine(),
          SampleError(),    SampleRegisterAck()};
}

}  // namespace fp::wire
