// Fault tests of a supervisor cluster of real processes (issue 7): three `fieldprint supervisor`
// processes on a three-member etcd (mutual TLS), three workers of the tiny model that list every
// supervisor, and clients that submit sessions with idempotency keys through failover clients,
// while each kind of fault is injected once (campaign.h): kill -9, SIGSTOP and a full disk of
// the leader, the leader partitioned (blackholed, reset), the cluster split, and an etcd member
// killed. Where the machine allows it (root) each supervisor runs in a network namespace of its
// own and a partition cuts it off from etcd, workers and clients; otherwise partitions cut only
// its links to etcd (supervisor_cluster.h); the JSON's network_mode says which ran. After the
// faults are healed the test asserts the cluster's guarantees (convergence.h): every acknowledged
// session present and verified with one root on every supervisor, every other write on all or none,
// one applied position, one checkpoint root per size (no fork) and every checkpoint seen a prefix
// of the final one, and the roots and outputs of sampled sessions equal to a single-process run.
// The recovery times are printed.
//
// Without etcd the test fails (the CI installs etcd-server); it never skips.
#include <cstdio>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "tests/cluster/campaign.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::cluster_test {
namespace {

using std::chrono::milliseconds;

class ClusterFaultTest : public ::testing::Test {
 protected:
  SupervisorClusterOptions Options() const {
    SupervisorClusterOptions options;
    options.binary = (fp::testing::BinaryDir() / "fieldprint").string();
    options.source_dir = fp::testing::SourceDir().string();
    options.dir = dir_.Join("cluster");
    options.data_disk_mb = 48;
    return options;
  }
  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) {
      cluster_->Stop();
      std::fprintf(stderr, "%s", cluster_->LogTails(4000).c_str());
    }
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<SupervisorCluster> cluster_;
};

TEST_F(ClusterFaultTest, EveryGuaranteeHoldsThroughEachKindOfFault) {
  ASSERT_TRUE(supervisor::testing::EtcdCluster::Available())
      << "etcd is not installed (apt-get install etcd-server): the cluster tests need it";
  ASSERT_OK_AND_ASSIGN(cluster_, SupervisorCluster::Start(Options()));
  CampaignOptions options;
  options.kinds.assign(std::begin(kAllFaultKinds), std::end(kAllFaultKinds));
  options.max_faults = options.kinds.size();
  options.hold = milliseconds(1000);
  options.settle = milliseconds(300);
  options.recovery_timeout = milliseconds(20'000);
  options.load.clients = 2;
  options.load.pause = milliseconds(300);
  options.load.run_id = "ctest";
  options.load.failover.attempt_timeout = milliseconds(1000);
  options.load.failover.request_deadline = milliseconds(5000);
  options.convergence.timeout = milliseconds(45'000);
  options.convergence.reference_samples = 3;
  ASSERT_OK_AND_ASSIGN(CampaignReport report, RunCampaign(*cluster_, options));
  std::fprintf(stderr, "network mode: %s\n", NetworkModeName(cluster_->network_mode()));
  std::fprintf(stderr, "%s\n%s", boost::json::serialize(CampaignJson(report)).c_str(),
               CampaignTable(report).c_str());

  for (const std::string& violation : report.convergence.violations) ADD_FAILURE() << violation;
  ASSERT_EQ(report.faults.size(), options.kinds.size());
  for (const FaultResult& fault : report.faults) {
    EXPECT_EQ(fault.problem, "") << FaultKindName(fault.kind) << " on " << fault.target;
    EXPECT_TRUE(fault.admit_s.has_value()) << FaultKindName(fault.kind);
    EXPECT_TRUE(fault.verify_s.has_value()) << FaultKindName(fault.kind);
    EXPECT_TRUE(fault.rejoin_s.has_value()) << FaultKindName(fault.kind);
  }
  EXPECT_GT(report.convergence.acknowledged, 10u);
  EXPECT_EQ(report.convergence.rejected, 0u);
  EXPECT_EQ(report.convergence.reference_checked, 3u);
  EXPECT_GT(report.convergence.consistency_proofs, 0u);
}

}  // namespace
}  // namespace fp::cluster_test
