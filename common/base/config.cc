// Configuration files for subcommands; see config.h.
//
// CLI11 2.1's own config support (App::set_config) reads the file only for the top-level app, so
// `fieldprint worker --config FILE` would be ignored. Here `--config` is an option of the
// subcommand whose callback reads the file with CLI11's TOML reader and fills the options the
// same way CLI11 does for the top-level app: only options still empty, each through its own
// callback. CLI11 runs option callbacks after all arguments are parsed and before checking
// requirements, so flags win regardless of their order relative to --config.
#include "common/base/config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace fp {
namespace {

std::string ReadConfigFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw CLI::FileError("config file " + path + " cannot be read: " + std::strerror(errno));
  }
  std::string text;
  char buffer[4096];
  while (file.read(buffer, sizeof(buffer)) || file.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(file.gcount()));
    if (text.size() > kMaxConfigFileBytes) {
      throw CLI::ConfigError("config file " + path + " is larger than " +
                             std::to_string(kMaxConfigFileBytes) + " bytes");
    }
  }
  if (file.bad()) throw CLI::FileError("config file " + path + " cannot be read");
  return text;
}

// The nested subcommand or option group that a section name denotes, or null.
CLI::App* FindSection(CLI::App& scope, const std::string& name) {
  const std::vector<CLI::App*> children = scope.get_subcommands([](CLI::App*) { return true; });
  for (CLI::App* sub : children) {
    if (!sub->get_name().empty() && sub->check_name(name)) return sub;
  }
  for (CLI::App* sub : children) {
    if (sub->get_name().empty() && sub->get_group() == name) return sub;
  }
  return nullptr;
}

CLI::Option* FindOption(CLI::App& scope, const std::string& name) {
  CLI::Option* option = scope.get_option_no_throw("--" + name);
  if (option == nullptr && name.size() == 1) option = scope.get_option_no_throw("-" + name);
  if (option == nullptr) option = scope.get_option_no_throw(name);  // positional
  return option;
}

void ApplyItem(CLI::App& command, const std::string& path, const CLI::ConfigItem& item) {
  CLI::App* scope = &command;
  for (const std::string& parent : item.parents) {
    scope = FindSection(*scope, parent);
    if (scope == nullptr) {
      throw CLI::ConfigError(path + ": unknown section '" + parent + "' for key '" +
                             item.fullname() + "'");
    }
  }
  CLI::Option* option = FindOption(*scope, item.name);
  if (option == nullptr) {
    throw CLI::ConfigError(path + ": unknown key '" + item.fullname() + "'");
  }
  if (!option->get_configurable()) {
    throw CLI::ConfigError(path + ": '" + item.fullname() + "' cannot be set in a config file");
  }
  if (!option->empty()) return;  // given on the command line, which wins
  if (option->get_expected_min() == 0 && item.inputs.size() != 1) {
    throw CLI::ConfigError(path + ": flag '" + item.fullname() + "' takes one value");
  }
  try {
    if (option->get_expected_min() == 0) {
      option->add_result(option->get_flag_value(item.name, item.inputs[0]));
    } else {
      option->add_result(item.inputs);
    }
    option->run_callback();
  } catch (const CLI::ParseError& error) {
    // CLI11's conversion messages name the option but not where the value came from.
    throw CLI::ConfigError(path + ": '" + item.fullname() + "': " + error.what());
  }
}

void ApplyConfigFile(CLI::App& command, const std::string& path) {
  std::istringstream text(ReadConfigFile(path));
  const std::vector<CLI::ConfigItem> items = CLI::ConfigTOML().from_config(text);
  for (const CLI::ConfigItem& item : items) {
    // "++" and "--" are CLI11's section open and close markers, not keys.
    if (item.name == "++" || item.name == "--") continue;
    ApplyItem(command, path, item);
  }
}

}  // namespace

void AddConfigOption(CLI::App& command) {
  CLI::App* target = &command;
  command
      .add_option_function<std::string>(
          "--config", [target](const std::string& path) { ApplyConfigFile(*target, path); },
          "TOML file with values for this command's options (command-line flags win)")
      ->type_name("FILE")
      ->configurable(false);
}

}  // namespace fp
