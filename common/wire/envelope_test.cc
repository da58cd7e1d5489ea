// Tests of envelope validation and helpers (envelope.h): every sample passes, and each rule is
// shown to bite by tampering with one field of a valid sample.
#include "common/wire/envelope.h"

#include <cmath>
#include <functional>
#include <limits>

#include <gtest/gtest.h>

#include "common/wire/wire_samples.h"
#include "tests/testutil/status_matchers.h"

namespace fp::wire {
namespace {

using ::fp::testing::StatusIs;

pb::Envelope SampleOf(pb::Envelope::BodyCase body) {
  for (pb::Envelope& sample : SampleEnvelopes()) {
    if (sample.body_case() == body) return sample;
  }
  ADD_FAILURE() << "no sample for body " << body;
  return {};
}

class EnvelopeTest : public ::testing::Test {
 protected:
  // Applies `tamper` to a valid sample of `body` and expects InvalidArgument naming `field`.
  static void ExpectInvalid(pb::Envelope::BodyCase body, std::string_view field,
                            const std::function<void(pb::Envelope&)>& tamper) {
    pb::Envelope envelope = SampleOf(body);
    ASSERT_OK(ValidateEnvelope(envelope));
    tamper(envelope);
    const Status status = ValidateEnvelope(envelope);
    EXPECT_THAT(status, StatusIs(StatusCode::kInvalidArgument)) << field;
    EXPECT_NE(status.message().find(field), std::string_view::npos) << status.ToString();
  }

  // A per-step or window batch of `steps` token ids and `leaves` digests.
  static pb::Envelope Batch(size_t steps, size_t leaves, uint32_t window, bool last) {
    pb::Envelope envelope = SampleLeafBatch(1);
    pb::LeafBatch* m = envelope.mutable_leaf_batch();
    m->clear_token_ids();
    for (size_t i = 0; i < steps; ++i) m->add_token_ids(static_cast<uint32_t>(i));
    m->set_state_digests(std::string(leaves * kDigestBytes, '\x5a'));
    m->set_window_steps(window);
    m->set_last(last);
    m->set_session_root(last ? std::string(kHashSize, '\x01') : "");
    return envelope;
  }
};

TEST_F(EnvelopeTest, EverySampleIsValid) {
  const std::vector<pb::Envelope> samples = SampleEnvelopes();
  ASSERT_EQ(samples.size(), 10u);
  for (const pb::Envelope& sample : samples) EXPECT_OK(ValidateEnvelope(sample));
}

TEST_F(EnvelopeTest, BodyNames) {
  std::vector<std::string_view> names;
  for (const pb::Envelope& sample : SampleEnvelopes()) names.push_back(BodyName(sample));
  EXPECT_EQ(names, (std::vector<std::string_view>{"registration", "heartbeat", "assign",
                                                  "leaf_batch", "ack", "commit", "rollback",
                                                  "quarantine", "error", "register_ack"}));
  EXPECT_EQ(BodyName(pb::Envelope()), "empty");
}

TEST_F(EnvelopeTest, LeafAccessorsRoundTrip) {
  pb::LeafBatch batch;
  Hash first, second;
  first.fill(0x11);
  second.fill(0x22);
  AppendStepLeaf(batch, 7, first);
  AppendStepLeaf(batch, 9, second);
  ASSERT_EQ(LeafCount(batch), 2u);
  EXPECT_EQ(batch.token_ids(1), 9u);
  const ByteSpan digest = LeafDigest(batch, 1);
  EXPECT_TRUE(std::equal(digest.begin(), digest.end(), second.begin(), second.end()));
}

TEST_F(EnvelopeTest, WindowModeBatches) {
  // 40 steps in windows of 16: two full windows and a final partial one.
  pb::Envelope envelope = Batch(40, 3, 16, /*last=*/true);
  envelope.mutable_leaf_batch()->set_first_step(32);
  EXPECT_OK(ValidateEnvelope(envelope));
  EXPECT_OK(ValidateEnvelope(Batch(32, 2, 16, /*last=*/false)));
  EXPECT_OK(ValidateEnvelope(Batch(5, 5, 0, /*last=*/false)));
}

TEST_F(EnvelopeTest, ErrorStatusRoundTrip) {
  const Status status = FailedPreconditionError("profile mismatch");
  const pb::Envelope envelope = MakeErrorEnvelope(status, AsBytes("0123456789abcdef"));
  ASSERT_OK(ValidateEnvelope(envelope));
  EXPECT_EQ(envelope.error().code(), 9u);  // canonical FAILED_PRECONDITION
  EXPECT_EQ(envelope.error().session_id(), "0123456789abcdef");
  const Status back = StatusFromError(envelope.error());
  EXPECT_THAT(back, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(back.message(), "profile mismatch");
}

TEST_F(EnvelopeTest, ErrorReasonIsPrintableAsciiAndBounded) {
  const std::string raw = "bad \xff\xfe byte\n" + std::string(2 * kMaxReasonBytes, 'x');
  const pb::Envelope envelope = MakeErrorEnvelope(DataLossError(raw));
  EXPECT_EQ(envelope.error().reason().size(), kMaxReasonBytes);
  EXPECT_EQ(envelope.error().reason().substr(0, 14), "bad ?? byte?xx");
  EXPECT_OK(ValidateEnvelope(envelope));
}

TEST_F(EnvelopeTest, UnknownErrorCodeMapsToUnknown) {
  pb::Error error;
  error.set_code(99);
  error.set_reason("from the future");
  EXPECT_THAT(StatusFromError(error), StatusIs(StatusCode::kUnknown));
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(EnvelopeTest, EmptyEnvelopeIsInvalid) {
  EXPECT_THAT(ValidateEnvelope(pb::Envelope()), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EnvelopeTest, RegisterRules) {
  const auto body = pb::Envelope::kRegistration;
  ExpectInvalid(body, "max_replicas",
                [](auto& e) { e.mutable_registration()->set_max_replicas(0); });
  ExpectInvalid(body, "models", [](auto& e) { e.mutable_registration()->clear_models(); });
  ExpectInvalid(body, "models[]", [](auto& e) { e.mutable_registration()->add_models(""); });
  ExpectInvalid(body, "models", [](auto& e) {
    for (size_t i = 0; i <= kMaxModels; ++i) e.mutable_registration()->add_models("m");
  });
  ExpectInvalid(body, "numerics_profile_hash",
                [](auto& e) { e.mutable_registration()->set_numerics_profile_hash("abc"); });
  ExpectInvalid(body, "software_version", [](auto& e) {
    e.mutable_registration()->set_software_version(std::string(kMaxNameBytes + 1, 'v'));
  });
}

TEST_F(EnvelopeTest, AssignRules) {
  const auto body = pb::Envelope::kAssign;
  ExpectInvalid(body, "session_id", [](auto& e) { e.mutable_assign()->set_session_id(""); });
  ExpectInvalid(body, "replica", [](auto& e) { e.mutable_assign()->set_replica(kMaxReplicas); });
  ExpectInvalid(body, "model", [](auto& e) { e.mutable_assign()->clear_model(); });
  ExpectInvalid(body, "numerics_profile",
                [](auto& e) { e.mutable_assign()->set_numerics_profile(std::string(33, 'p')); });
  ExpectInvalid(body, "anchor_set_hash",
                [](auto& e) { e.mutable_assign()->clear_anchor_set_hash(); });
  ExpectInvalid(body, "prompt_token_ids",
                [](auto& e) { e.mutable_assign()->clear_prompt_token_ids(); });
  ExpectInvalid(body, "sampling", [](auto& e) { e.mutable_assign()->clear_sampling(); });
  ExpectInvalid(body, "digest_scope", [](auto& e) {
    e.mutable_assign()->set_digest_scope(pb::DIGEST_SCOPE_UNSPECIFIED);
  });
  ExpectInvalid(body, "digest_scope", [](auto& e) {
    e.mutable_assign()->set_digest_scope(static_cast<pb::DigestScope>(7));
  });
  ExpectInvalid(body, "quantize_bits",
                [](auto& e) { e.mutable_assign()->set_quantize_bits(kMaxQuantizeBits + 1); });
  ExpectInvalid(body, "replay_token_ids", [](auto& e) {
    e.mutable_assign()->mutable_sampling()->set_max_tokens(1);  // the sample replays 2
  });
  ExpectInvalid(body, "max_unverified_steps",
                [](auto& e) { e.mutable_assign()->set_max_unverified_steps(0); });
  ExpectInvalid(body, "window_steps",
                [](auto& e) { e.mutable_assign()->set_window_steps(kMaxWindowSteps + 1); });
}

TEST_F(EnvelopeTest, SamplingRules) {
  const auto body = pb::Envelope::kAssign;
  auto sampling = [](pb::Envelope& e) { return e.mutable_assign()->mutable_sampling(); };
  for (float bad : {-0.5f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    ExpectInvalid(body, "temperature", [&](auto& e) { sampling(e)->set_temperature(bad); });
  }
  for (float bad : {0.0f, -0.1f, 1.01f, std::nanf("")}) {
    ExpectInvalid(body, "top_p", [&](auto& e) { sampling(e)->set_top_p(bad); });
  }
  ExpectInvalid(body, "max_tokens", [&](auto& e) { sampling(e)->set_max_tokens(0); });
  ExpectInvalid(body, "max_tokens",
                [&](auto& e) { sampling(e)->set_max_tokens(kMaxSessionTokens + 1); });
  ExpectInvalid(body, "stop_token_ids", [&](auto& e) {
    for (size_t i = 0; i < kMaxStopTokens; ++i) sampling(e)->add_stop_token_ids(1);
  });
}

TEST_F(EnvelopeTest, LeafBatchRules) {
  const auto body = pb::Envelope::kLeafBatch;
  ExpectInvalid(body, "session_id",
                [](auto& e) { e.mutable_leaf_batch()->set_session_id(std::string(17, 's')); });
  ExpectInvalid(body, "replica", [](auto& e) { e.mutable_leaf_batch()->set_replica(1000); });
  ExpectInvalid(body, "state_digests",
                [](auto& e) { e.mutable_leaf_batch()->mutable_state_digests()->push_back('x'); });
  ExpectInvalid(body, "state_digests", [](auto& e) { e.mutable_leaf_batch()->add_token_ids(1); });
  ExpectInvalid(body, "session_root",
                [](auto& e) { e.mutable_leaf_batch()->clear_session_root(); });
  ExpectInvalid(body, "session_root", [](auto& e) { e.mutable_leaf_batch()->set_last(false); });
  ExpectInvalid(body, "first_step", [](auto& e) {
    e.mutable_leaf_batch()->set_first_step(std::numeric_limits<uint64_t>::max() - 2);
  });
  ExpectInvalid(body, "window_steps",
                [](auto& e) { e.mutable_leaf_batch()->set_window_steps(kMaxWindowSteps + 1); });
  EXPECT_THAT(ValidateEnvelope(Batch(0, 0, 1, false)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateEnvelope(Batch(kMaxLeafBatchSteps + 1, kMaxLeafBatchSteps + 1, 1, false)),
              StatusIs(StatusCode::kInvalidArgument));
  // Window mode: a partial window only at the end, windows aligned, one digest per window.
  EXPECT_THAT(ValidateEnvelope(Batch(40, 3, 16, /*last=*/false)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateEnvelope(Batch(32, 32, 16, /*last=*/false)),
              StatusIs(StatusCode::kInvalidArgument));
  pb::Envelope misaligned = Batch(32, 2, 16, /*last=*/false);
  misaligned.mutable_leaf_batch()->set_first_step(8);
  EXPECT_THAT(ValidateEnvelope(misaligned), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(EnvelopeTest, SupervisorMessageRules) {
  ExpectInvalid(pb::Envelope::kAck, "session_id",
                [](auto& e) { e.mutable_ack()->clear_session_id(); });
  ExpectInvalid(pb::Envelope::kAck, "step_count",
                [](auto& e) { e.mutable_ack()->set_step_count(0); });
  ExpectInvalid(pb::Envelope::kCommit, "verified_root",
                [](auto& e) { e.mutable_commit()->clear_verified_root(); });
  ExpectInvalid(pb::Envelope::kRollback, "new_epoch",
                [](auto& e) { e.mutable_rollback()->set_new_epoch(0); });
  ExpectInvalid(pb::Envelope::kRollback, "kind",
                [](auto& e) { e.mutable_rollback()->set_kind(pb::ROLLBACK_KIND_UNSPECIFIED); });
  ExpectInvalid(pb::Envelope::kRollback, "kind",
                [](auto& e) { e.mutable_rollback()->set_kind(static_cast<pb::RollbackKind>(3)); });
  ExpectInvalid(pb::Envelope::kQuarantine, "reason",
                [](auto& e) { e.mutable_quarantine()->clear_reason(); });
  ExpectInvalid(pb::Envelope::kError, "code", [](auto& e) { e.mutable_error()->set_code(0); });
  ExpectInvalid(pb::Envelope::kError, "session_id",
                [](auto& e) { e.mutable_error()->set_session_id("x"); });
  ExpectInvalid(pb::Envelope::kError, "reason", [](auto& e) {
    e.mutable_error()->set_reason(std::string(kMaxReasonBytes + 1, 'r'));
  });
  ExpectInvalid(pb::Envelope::kRegisterAck, "supervisor_id",
                [](auto& e) { e.mutable_register_ack()->clear_supervisor_id(); });
  ExpectInvalid(pb::Envelope::kRegisterAck, "max_replicas",
                [](auto& e) { e.mutable_register_ack()->set_max_replicas(0); });
  ExpectInvalid(pb::Envelope::kRegisterAck, "no code or reason",
                [](auto& e) { e.mutable_register_ack()->set_reason("x"); });
  // A refusal needs an error code and a reason.
  ExpectInvalid(pb::Envelope::kRegisterAck, "code", [](auto& e) {
    e.mutable_register_ack()->set_accepted(false);
    e.mutable_register_ack()->set_reason("quarantined");
  });
  ExpectInvalid(pb::Envelope::kRegisterAck, "reason", [](auto& e) {
    e.mutable_register_ack()->set_accepted(false);
    e.mutable_register_ack()->set_code(9);
  });
}

}  // namespace
}  // namespace fp::wire
