// Test-only: a GoogleTest fixture whose test suite shares one local etcd cluster of `kMembers`
// members (etcd_cluster.h), started before the suite's first test and stopped after its last.
// etcd is a test dependency (`make deps`): without it every test of the suite fails, never skips.
// A fixture that overrides SetUp calls this one's first and returns on a fatal failure.
//
// Thread-safety: as GoogleTest fixtures; cluster_ is set and cleared on the test thread.
#pragma once

#include <cstddef>
#include <utility>

#include <gtest/gtest.h>

#include "supervisor/log/testing/etcd_cluster.h"

namespace fp::supervisor::testing {

template <size_t kMembers>
class SharedEtcdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!EtcdCluster::Available()) return;
    EtcdClusterOptions options;
    options.members = kMembers;
    auto cluster = EtcdCluster::Start(options);
    FP_CHECK_OK(cluster);
    cluster_ = std::move(cluster).value().release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr) << "etcd is not on the PATH (make deps installs etcd-server)";
  }

  static inline EtcdCluster* cluster_ = nullptr;  // while the suite runs
};

}  // namespace fp::supervisor::testing
