// Smoke test of `fieldprint bench merkle`: runs the built binary with a tiny budget and checks that
// stdout is one JSON object with the documented keys and plausible values.
#include <cstdio>
#include <string>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "tests/testutil/test_env.h"

namespace fp {
namespace {

namespace json = boost::json;

constexpr size_t kMaxOutputBytes = 1 << 20;

// Runs `command`, returning its stdout; `exit_status` gets pclose's status.
std::string RunAndCapture(const std::string& command, int& exit_status) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    exit_status = -1;
    return output;
  }
  char buffer[4096];
  size_t read = 0;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0 &&
         output.size() < kMaxOutputBytes) {
    output.append(buffer, read);
  }
  exit_status = pclose(pipe);
  return output;
}

class MerkleBenchTest : public ::testing::Test {};

TEST_F(MerkleBenchTest, TinyRunPrintsJsonWithExpectedKeys) {
  const std::string binary = (fp::testing::BinaryDir() / "fieldprint").string();
  int exit_status = 0;
  const std::string output =
      RunAndCapture("'" + binary + "' bench merkle --seconds 0.2 2>/dev/null", exit_status);
  ASSERT_EQ(exit_status, 0) << output;
  boost::system::error_code error;
  const json::value value = json::parse(output, error);
  ASSERT_FALSE(error) << "stdout is not JSON: " << output;
  ASSERT_TRUE(value.is_object());
  const json::object& result = value.as_object();
  for (const char* key :
       {"benchmark", "command", "date", "host", "cpu", "cpus_online", "load_average_1m",
        "openssl_version", "sha256", "node_hashes_per_second", "frontier", "proofs"}) {
    EXPECT_TRUE(result.contains(key)) << key;
  }
  EXPECT_EQ(result.at("benchmark"), "merkle");

  const json::array& hashes = result.at("sha256").as_array();
  ASSERT_EQ(hashes.size(), 3u);
  for (const json::value& entry : hashes) {
    const json::object& hash = entry.as_object();
    EXPECT_GT(hash.at("fieldprint_sha256_bytes_per_second").to_number<double>(), 0);
    EXPECT_GT(hash.at("fieldprint_leaf_hash_bytes_per_second").to_number<double>(), 0);
    // The baseline is measured when openssl is installed, as on every build host.
    EXPECT_GT(hash.at("openssl_speed_bytes_per_second").to_number<double>(), 0);
  }
  const json::object& frontier = result.at("frontier").as_object();
  EXPECT_GT(frontier.at("appends_per_second").to_number<double>(), 0);
  EXPECT_GT(frontier.at("appends_per_second_reporting_nodes").to_number<double>(), 0);

  const json::object& proofs = result.at("proofs").as_object();
  EXPECT_EQ(proofs.at("tree_size").to_number<uint64_t>(), uint64_t{1} << 32);
  EXPECT_EQ(proofs.at("virtual_tree"), true);
  EXPECT_EQ(proofs.at("inclusion_proof_hashes").to_number<uint64_t>(), 32u);
  for (const char* key : {"inclusion_generate_us", "inclusion_verify_us", "consistency_generate_us",
                          "consistency_verify_us"}) {
    const json::object& latency = proofs.at(key).as_object();
    EXPECT_GT(latency.at("samples").to_number<uint64_t>(), 0u) << key;
    EXPECT_GT(latency.at("median").to_number<double>(), 0) << key;
    EXPECT_GE(latency.at("p99").to_number<double>(), latency.at("median").to_number<double>())
        << key;
  }
}

}  // namespace
}  // namespace fp
