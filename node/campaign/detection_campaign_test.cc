// The detection campaign, small: its invariants on the tiny model (no false divergence in honest
// batches or among the fault-free companions of faulty ones, no fault that changed a hidden state
// without changing its leaf, every site detected at least once), its accounting, and its
// replayability from the seed.
#include "node/campaign/detection_campaign.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testutil/status_matchers.h"

namespace fp::node::campaign {
namespace {

using ::fp::testing::StatusIs;

class DetectionCampaignTest : public ::testing::Test {
 protected:
  static DetectionCampaignOptions Small() {
    DetectionCampaignOptions o;
    o.seed = 7;
    o.faults = 100;
    o.honest_steps = 5000;
    o.pool_sessions = 48;
    return o;
  }
};

TEST_F(DetectionCampaignTest, SmallCampaignKeepsTheInvariants) {
  ASSERT_OK_AND_ASSIGN(DetectionCampaignResult r, RunDetectionCampaign(Small()));
  EXPECT_EQ(r.faults, 100);
  EXPECT_GE(r.honest_steps, 5000);
  EXPECT_EQ(r.honest_divergences, 0);
  EXPECT_GT(r.companion_steps, 0);
  EXPECT_EQ(r.companion_divergences, 0);
  EXPECT_EQ(r.missed, 0);
  EXPECT_TRUE(r.anomalies.empty());
  int64_t injected = 0;
  for (int i = 0; i < kFaultSites; ++i) {
    const SiteSummary& s = r.sites[static_cast<size_t>(i)];
    SCOPED_TRACE(FaultSiteName(static_cast<FaultSite>(i)));
    EXPECT_GE(s.detected_at_step + s.detected_later, 1);
    // Every fault lands in exactly one outcome.
    EXPECT_EQ(s.injected, s.changed_state + s.step_errors + s.absorbed);
    EXPECT_EQ(s.changed_state, s.detected_at_step + s.detected_later + s.missed);
    injected += s.injected;
  }
  EXPECT_EQ(injected, 100);
  // A flip lands in the state the step digests, so it shows (if at all) at the injected step; a
  // residual flip at the last layer likewise. Only a cached K/V element, or a residual row whose
  // later layers feed later steps, can surface after the injected step.
  EXPECT_EQ(r.sites[static_cast<size_t>(FaultSite::kFinalHidden)].detected_later, 0);
  // The flips are uniform over the 32 bits of an f32, so some land below the canonical bf16's
  // precision and vanish in its rounding.
  int64_t absorbed = 0;
  for (const SiteSummary& s : r.sites) absorbed += s.absorbed;
  EXPECT_GT(absorbed, 0);
}

TEST_F(DetectionCampaignTest, SameSeedReplaysTheCampaign) {
  DetectionCampaignOptions o = Small();
  o.faults = 24;
  o.honest_steps = 200;
  ASSERT_OK_AND_ASSIGN(DetectionCampaignResult a, RunDetectionCampaign(o));
  ASSERT_OK_AND_ASSIGN(DetectionCampaignResult b, RunDetectionCampaign(o));
  for (int i = 0; i < kFaultSites; ++i) {
    const SiteSummary& x = a.sites[static_cast<size_t>(i)];
    const SiteSummary& y = b.sites[static_cast<size_t>(i)];
    EXPECT_EQ(x.injected, y.injected);
    EXPECT_EQ(x.detected_at_step, y.detected_at_step);
    EXPECT_EQ(x.detected_later, y.detected_later);
    EXPECT_EQ(x.absorbed, y.absorbed);
    EXPECT_EQ(x.step_errors, y.step_errors);
  }
  EXPECT_EQ(a.honest_steps, b.honest_steps);
  EXPECT_EQ(a.reference_steps, b.reference_steps);
}

// Error paths.

TEST_F(DetectionCampaignTest, OptionsOutOfRangeAreRejected) {
  DetectionCampaignOptions o = Small();
  o.faults = 0;
  EXPECT_THAT(RunDetectionCampaign(o), StatusIs(StatusCode::kInvalidArgument));
  o = Small();
  o.shape = "huge";
  EXPECT_THAT(RunDetectionCampaign(o), StatusIs(StatusCode::kInvalidArgument));
  o = Small();
  o.faults_per_run = 30;
  o.clean_per_run = 3;
  EXPECT_THAT(RunDetectionCampaign(o), StatusIs(StatusCode::kInvalidArgument));
  o = Small();
  o.model_dir = "/nonexistent/model";
  EXPECT_FALSE(RunDetectionCampaign(o).ok());
}

}  // namespace
}  // namespace fp::node::campaign
