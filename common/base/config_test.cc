// Tests --config on a small CLI11 app shaped like fieldprint's: a subcommand with options, an
// option group and a nested subcommand.
#include "common/base/config.h"

#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/testutil/test_env.h"

namespace fp {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  ConfigTest() {
    worker_ = app_.add_subcommand("worker", "a worker");
    AddConfigOption(*worker_);
    worker_->add_option("--port", port_, "port");
    worker_->add_option("--name", name_, "name");
    worker_->add_flag("--verbose", verbose_, "verbose");
    worker_->add_option("--peers", peers_, "peers");
    worker_->add_option("--supervisor", supervisor_, "supervisor address")->required();
    CLI::Option_group* limits = worker_->add_option_group("limits", "limits");
    limits->add_option("--max-steps", max_steps_, "max steps");
    CLI::App* http = worker_->add_subcommand("http", "http settings");
    http->add_option("--listen", listen_, "listen address");
  }

  std::string WriteFile(const std::string& text) {
    const std::string path = dir_.Join("config.toml");
    std::ofstream(path) << text;
    return path;
  }

  void Parse(std::vector<std::string> args) {
    args.insert(args.begin(), "fieldprint");
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    app_.parse(static_cast<int>(argv.size()), argv.data());
  }

  // The message of the CLI11 error that parsing `args` throws, or "" if it does not throw.
  template <typename Error>
  std::string ParseError(std::vector<std::string> args) {
    try {
      Parse(std::move(args));
    } catch (const Error& error) {
      return error.what();
    }
    return "";
  }

  testing::TempDir dir_;
  CLI::App app_{"test"};
  CLI::App* worker_;
  int port_ = 1;
  std::string name_ = "default";
  bool verbose_ = false;
  std::vector<std::string> peers_;
  std::string supervisor_;
  int max_steps_ = 10;
  std::string listen_ = "none";
};

constexpr char kFullConfig[] = R"(# worker settings
port = 9000
name = "w1"
verbose = true
peers = ["a:1", "b:2"]
supervisor = "s:7000"
[limits]
max-steps = 64
[http]
listen = "127.0.0.1:8080"
)";

TEST_F(ConfigTest, FileValuesFillOptions) {
  Parse({"worker", "--config", WriteFile(kFullConfig)});
  EXPECT_EQ(port_, 9000);
  EXPECT_EQ(name_, "w1");
  EXPECT_TRUE(verbose_);
  EXPECT_EQ(peers_, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(supervisor_, "s:7000");      // a required option may come from the file
  EXPECT_EQ(max_steps_, 64);             // section naming an option group
  EXPECT_EQ(listen_, "127.0.0.1:8080");  // section naming a nested subcommand
}

TEST_F(ConfigTest, FlagsOverrideFileInEitherOrder) {
  const std::string path = WriteFile(kFullConfig);
  Parse({"worker", "--port", "7000", "--config", path, "--name", "cli"});
  EXPECT_EQ(port_, 7000);
  EXPECT_EQ(name_, "cli");
  EXPECT_EQ(max_steps_, 64);
}

TEST_F(ConfigTest, KeysMissingFromFileKeepDefaults) {
  Parse({"worker", "--config", WriteFile("supervisor = \"s:1\"\n")});
  EXPECT_EQ(port_, 1);
  EXPECT_EQ(name_, "default");
  EXPECT_FALSE(verbose_);
}

TEST_F(ConfigTest, FalseFlagInFile) {
  Parse({"worker", "--config", WriteFile("supervisor = \"s:1\"\nverbose = false\n")});
  EXPECT_FALSE(verbose_);
}

TEST_F(ConfigTest, WithoutConfigFlagsAloneWork) {
  Parse({"worker", "--supervisor", "s:2", "--port", "5"});
  EXPECT_EQ(port_, 5);
  EXPECT_EQ(supervisor_, "s:2");
}

// Error paths.

TEST_F(ConfigTest, UnknownKeyIsAnError) {
  const std::string message = ParseError<CLI::ConfigError>(
      {"worker", "--config", WriteFile("supervisor = \"s\"\nprot = 1\n")});
  EXPECT_NE(message.find("unknown key 'prot'"), std::string::npos) << message;
}

TEST_F(ConfigTest, UnknownSectionIsAnError) {
  const std::string message = ParseError<CLI::ConfigError>(
      {"worker", "--config", WriteFile("supervisor = \"s\"\n[nope]\nport = 1\n")});
  EXPECT_NE(message.find("unknown section 'nope'"), std::string::npos) << message;
}

TEST_F(ConfigTest, ConfigKeyInsideFileIsAnError) {
  const std::string message = ParseError<CLI::ConfigError>(
      {"worker", "--config", WriteFile("supervisor = \"s\"\nconfig = \"other.toml\"\n")});
  EXPECT_NE(message.find("cannot be set in a config file"), std::string::npos) << message;
}

TEST_F(ConfigTest, MissingFileIsAClearError) {
  const std::string path = dir_.Join("absent.toml");
  const std::string message = ParseError<CLI::FileError>({"worker", "--config", path});
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("cannot be read"), std::string::npos) << message;
}

TEST_F(ConfigTest, BadValueNamesFileAndKey) {
  const std::string path = WriteFile("supervisor = \"s\"\nport = \"abc\"\n");
  const std::string message = ParseError<CLI::ConfigError>({"worker", "--config", path});
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("'port'"), std::string::npos) << message;
}

TEST_F(ConfigTest, OversizedFileIsAnError) {
  std::string text = "supervisor = \"s\"\n";
  text += std::string(kMaxConfigFileBytes, '#');
  const std::string message = ParseError<CLI::ConfigError>({"worker", "--config", WriteFile(text)});
  EXPECT_NE(message.find("larger than"), std::string::npos) << message;
}

TEST_F(ConfigTest, ErrorsExitNonZeroThroughCli11) {
  try {
    Parse({"worker", "--config", dir_.Join("absent.toml")});
    FAIL() << "parse should throw";
  } catch (const CLI::ParseError& error) {
    std::ostringstream out;
    std::ostringstream err;
    EXPECT_NE(app_.exit(error, out, err), 0);
  }
}

}  // namespace
}  // namespace fp
