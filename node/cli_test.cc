// Tests for node's subcommands, run in-process through CLI11: mk-tiny, generate (its leaves and
// session root re-derived here from the printed fields with common/'s leaf encoding and an
// independent Merkle root computation), anchors build, bench engine, and the error paths.
#include "node/cli.h"

#include <sstream>

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/bytes.h"
#include "common/leaf/step_leaf.h"
#include "common/merkle/merkle.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp {
namespace {

using ::testing::HasSubstr;

class NodeCliTest : public ::testing::Test {
 protected:
  // Runs `command_line` through a fresh app; returns stdout. Fails the test if the command does.
  static std::string Run(const std::string& command_line) {
    ::testing::internal::CaptureStdout();
    bool ok = Invoke(command_line);
    std::fflush(stdout);
    std::string out = ::testing::internal::GetCapturedStdout();
    EXPECT_TRUE(ok) << command_line;
    return out;
  }

  // True when the command succeeded.
  static bool Invoke(const std::string& command_line) {
    CLI::App app;
    CLI::App* bench = app.add_subcommand("bench");
    AddNodeCommands(app, *bench);
    try {
      app.parse(command_line, /*program_name_included=*/false);
      return true;
    } catch (const CLI::Error&) {
      return false;
    }
  }

  static std::vector<std::string> Lines(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  // The value after "key " on the line that starts with it.
  static std::string Field(const std::vector<std::string>& lines, const std::string& key) {
    for (const std::string& line : lines) {
      if (line.rfind(key + " ", 0) == 0) return line.substr(key.size() + 1);
    }
    ADD_FAILURE() << "no line " << key;
    return "";
  }

  void SetUp() override { Run("model mk-tiny " + dir_.Join("tiny") + " --seed 5"); }
  std::string Model() const { return dir_.Join("tiny"); }

  testing::TempDir dir_;
};

TEST_F(NodeCliTest, GeneratePrintsVerifiableLeavesAndRoot) {
  std::string out = Run("generate --model " + Model() + " --prompt hello --max-tokens 12 --leaves");
  std::vector<std::string> lines = Lines(out);
  ASSERT_GE(lines.size(), 2u + 12u + 4u);
  EXPECT_EQ(lines[1], "step token state_digest leaf_hash");
  ASSERT_OK_AND_ASSIGN(SessionId session, SessionIdFromHex(Field(lines, "session_id")));
  std::vector<Hash> leaf_hashes;
  std::string text;
  for (int step = 0; step < 12; ++step) {
    std::istringstream fields(lines[size_t(2 + step)]);
    uint64_t printed_step;
    uint32_t token;
    std::string digest_hex, leaf_hex;
    fields >> printed_step >> token >> digest_hex >> leaf_hex;
    EXPECT_EQ(printed_step, uint64_t(step));
    ASSERT_OK_AND_ASSIGN(Hash digest, HashFromHex(digest_hex));
    ASSERT_OK_AND_ASSIGN(Hash leaf_hash, HashFromHex(leaf_hex));
    EXPECT_EQ(leaf::StepLeafHash({session, printed_step, token, digest}), leaf_hash);
    leaf_hashes.push_back(leaf_hash);
    text.push_back(static_cast<char>(token));  // tiny models emit printable bytes
  }
  EXPECT_EQ(lines[0], text);
  EXPECT_EQ(Field(lines, "steps"), "12");
  merkle::MemoryNodeReader reader(leaf_hashes);
  ASSERT_OK_AND_ASSIGN(Hash root, merkle::RootAt(reader, 12));
  EXPECT_EQ(Field(lines, "session_root"), HexEncode(root));
  // A second run prints the same thing, byte for byte.
  EXPECT_EQ(Run("generate --model " + Model() + " --prompt hello --max-tokens 12 --leaves"), out);
}

TEST_F(NodeCliTest, PromptIdsAndSessionIdAreHonoured) {
  std::string id = "00112233445566778899aabbccddeeff";
  std::vector<std::string> lines =
      Lines(Run("generate --model " + Model() + " --prompt-ids 256,104,105 --max-tokens 3 " +
                "--session-id " + id));
  EXPECT_EQ(Field(lines, "session_id"), id);
  EXPECT_EQ(Field(lines, "steps"), "3");
  // "hi" with BOS is the same prompt as ids 256,104,105, but the derived session id differs from
  // the explicit one, so the roots differ while the text agrees.
  std::vector<std::string> by_text =
      Lines(Run("generate --model " + Model() + " --prompt hi --max-tokens 3"));
  EXPECT_EQ(by_text[0], lines[0]);
  EXPECT_NE(Field(by_text, "session_root"), Field(lines, "session_root"));
}

TEST_F(NodeCliTest, AnchorsChangeTheRootUnlessGammaIsZero) {
  std::string anchors = dir_.Join("anchors.safetensors");
  std::vector<std::string> built =
      Lines(Run("anchors build --model " + Model() +
                " --text \"anchor text for the set\" --count 8 " + "--gamma 0.7 " + anchors));
  EXPECT_EQ(Field(built, "anchors"), "8");
  EXPECT_EQ(Field(built, "anchor_set").size(), 64u);
  std::string base = "generate --model " + Model() + " --prompt abc --max-tokens 6";
  std::string plain = Field(Lines(Run(base)), "session_root");
  std::vector<std::string> mixed = Lines(Run(base + " --anchors " + anchors));
  std::vector<std::string> zero = Lines(Run(base + " --anchors " + anchors + " --gamma 0"));
  std::vector<std::string> prefix =
      Lines(Run(base + " --anchors " + anchors + " --anchor-mode prefix"));
  EXPECT_NE(Field(mixed, "session_root"), plain);
  EXPECT_EQ(Field(zero, "session_root"), plain);  // g = 0 is plain attention, bit for bit
  EXPECT_NE(Field(zero, "numerics_profile"), Field(Lines(Run(base)), "numerics_profile"));
  EXPECT_NE(Field(prefix, "session_root"), plain);
  EXPECT_NE(Field(prefix, "session_root"), Field(mixed, "session_root"));
}

TEST_F(NodeCliTest, BenchEnginePrintsJson) {
  std::string out = Run("bench engine --model " + Model() + " --prompt-tokens 4 --max-tokens 3");
  boost::json::error_code ec;
  boost::json::value v = boost::json::parse(out, ec);
  ASSERT_FALSE(ec) << out;
  const boost::json::array& results = v.at("results").as_array();
  ASSERT_EQ(results.size(), 4u);
  for (const auto& r : results) {
    EXPECT_GT(r.at("output_tokens_per_second").to_number<double>(), 0.0);
    EXPECT_GT(r.at("baseline_linear_only_tokens_per_second").to_number<double>(), 0.0);
  }
  EXPECT_EQ(results[3].at("batch").as_int64(), 16);
  EXPECT_EQ(results[3].at("output_tokens").as_int64(), 48);
  EXPECT_GT(v.at("cpus_online").as_int64(), 0);
}

// Error paths.

TEST_F(NodeCliTest, BadInvocationsFail) {
  EXPECT_FALSE(Invoke("generate --model " + Model()));  // no prompt
  EXPECT_FALSE(Invoke("generate --model " + dir_.Join("absent") + " --prompt x"));
  EXPECT_FALSE(Invoke("generate --model " + Model() + " --prompt-ids 1,999"));
  EXPECT_FALSE(Invoke("generate --model " + Model() + " --prompt x --gamma 0.5"));  // no anchors
  EXPECT_FALSE(Invoke("generate --model " + Model() + " --prompt x --kv-budget-mb 0"));
  EXPECT_FALSE(Invoke("generate --model " + Model() + " --prompt x --session-id 12"));
  std::string long_prompt(2100, 'a');
  EXPECT_FALSE(Invoke("generate --model " + Model() + " --prompt " + long_prompt));
  EXPECT_FALSE(Invoke("anchors build --model " + Model() + " --text ab --count 9 " +
                      dir_.Join("a.safetensors")));
}

}  // namespace
}  // namespace fp
