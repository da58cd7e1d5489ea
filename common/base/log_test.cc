// Tests structured logging by capturing the formatted lines in a string sink.
#include "common/base/log.h"

#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json/parse.hpp>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "tests/testutil/status_matchers.h"

namespace fp {
namespace {

using ::fp::testing::StatusIs;

class LogTest : public ::testing::Test {
 protected:
  void Init(LogLevel level, LogFormat format) {
    InitLogging(level, format, std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_));
  }

  std::vector<std::string> Lines() const {
    std::vector<std::string> lines;
    std::istringstream input(stream_.str());
    for (std::string line; std::getline(input, line);) lines.push_back(line);
    return lines;
  }

  std::ostringstream stream_;
};

TEST_F(LogTest, JsonLineParsesWithEveryField) {
  Init(LogLevel::kDebug, LogFormat::kJson);
  LogInfo("supervisor", "leader \"elected\"\nnow",
          {{"term", 5},
           {"peer", "s1 (10.0.0.1)"},
           {"lag", -3},
           {"ratio", 0.25},
           {"synced", true},
           {"bytes", uint64_t{18446744073709551615u}}});
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u);
  const boost::json::object event = boost::json::parse(lines[0]).as_object();
  EXPECT_TRUE(std::regex_match(std::string(event.at("ts").as_string()),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
  EXPECT_EQ(event.at("level").as_string(), "info");
  EXPECT_EQ(event.at("component").as_string(), "supervisor");
  EXPECT_EQ(event.at("msg").as_string(), "leader \"elected\"\nnow");
  EXPECT_EQ(event.at("term").as_int64(), 5);
  EXPECT_EQ(event.at("peer").as_string(), "s1 (10.0.0.1)");
  EXPECT_EQ(event.at("lag").as_int64(), -3);
  EXPECT_EQ(event.at("ratio").as_double(), 0.25);
  EXPECT_EQ(event.at("synced").as_bool(), true);
  EXPECT_EQ(event.at("bytes").as_uint64(), 18446744073709551615u);
}

TEST_F(LogTest, JsonSpellsNonFiniteNumbersAsStrings) {
  Init(LogLevel::kInfo, LogFormat::kJson);
  LogWarn("bench", "odd numbers", {{"a", std::nan("")}, {"b", -1.0 / 0.0}});
  const boost::json::object event = boost::json::parse(Lines().at(0)).as_object();
  EXPECT_EQ(event.at("level").as_string(), "warn");
  EXPECT_EQ(event.at("a").as_string(), "nan");
  EXPECT_EQ(event.at("b").as_string(), "-inf");
}

TEST_F(LogTest, TextLineLayout) {
  Init(LogLevel::kInfo, LogFormat::kText);
  LogInfo("worker.engine", "batch done",
          {{"size", 32}, {"peer", "a b"}, {"empty", ""}, {"quote", "x\"y"}, {"ok", false}});
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(std::regex_match(
      lines[0], std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z I worker\.engine batch done )"
                           R"(size=32 peer="a b" empty="" quote="x\\"y" ok=false)")))
      << lines[0];
}

TEST_F(LogTest, TextKeepsEachEventOnOneLine) {
  Init(LogLevel::kInfo, LogFormat::kText);
  LogError("store", "two\nlines", {{"detail", "a\nb"}});
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(" E store two\\nlines detail=\"a\\nb\""), std::string::npos) << lines[0];
}

TEST_F(LogTest, StatusFieldRendersItsText) {
  Init(LogLevel::kInfo, LogFormat::kJson);
  LogError("net", "read failed", {{"status", UnavailableError("peer reset")}});
  const boost::json::object event = boost::json::parse(Lines().at(0)).as_object();
  EXPECT_EQ(std::string(event.at("status").as_string()).rfind("UNAVAILABLE: peer reset", 0), 0u);
}

TEST_F(LogTest, LevelFiltersEvents) {
  Init(LogLevel::kWarn, LogFormat::kText);
  LogDebug("x", "dropped");
  LogInfo("x", "dropped");
  LogWarn("x", "kept");
  LogError("x", "kept");
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find(" W x kept"), std::string::npos);
  EXPECT_NE(lines[1].find(" E x kept"), std::string::npos);
}

TEST_F(LogTest, DirectSpdlogCallsFollowTheFormat) {
  Init(LogLevel::kInfo, LogFormat::kJson);
  spdlog::info("raw {} \"text\"", 7);
  const boost::json::object event = boost::json::parse(Lines().at(0)).as_object();
  EXPECT_EQ(event.at("component").as_string(), "fieldprint");
  EXPECT_EQ(event.at("msg").as_string(), "raw 7 \"text\"");
}

TEST_F(LogTest, ParsesLevelAndFormatNames) {
  ASSERT_OK_AND_ASSIGN(LogLevel debug, ParseLogLevel("debug"));
  EXPECT_EQ(debug, LogLevel::kDebug);
  ASSERT_OK_AND_ASSIGN(LogLevel info, ParseLogLevel("info"));
  EXPECT_EQ(info, LogLevel::kInfo);
  ASSERT_OK_AND_ASSIGN(LogLevel warn, ParseLogLevel("warn"));
  EXPECT_EQ(warn, LogLevel::kWarn);
  ASSERT_OK_AND_ASSIGN(LogLevel error, ParseLogLevel("error"));
  EXPECT_EQ(error, LogLevel::kError);
  ASSERT_OK_AND_ASSIGN(LogFormat json, ParseLogFormat("json"));
  EXPECT_EQ(json, LogFormat::kJson);
  ASSERT_OK_AND_ASSIGN(LogFormat text, ParseLogFormat("text"));
  EXPECT_EQ(text, LogFormat::kText);
}

// Error paths.

TEST_F(LogTest, UnknownLevelOrFormatIsInvalidArgument) {
  EXPECT_THAT(ParseLogLevel("verbose"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLogLevel("INFO"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLogLevel("warning"), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLogLevel(""), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseLogFormat("xml"), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(LogTest, ReservedOrMalformedKeysAreProgrammerErrors) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_DEATH(LogInfo("x", "y", {{"msg", 1}}), "msg");
  EXPECT_DEATH(LogInfo("x", "y", {{"Bad Key", 1}}), "Bad Key");
  EXPECT_DEATH(LogInfo("", "y"), "component");
}

}  // namespace
}  // namespace fp
