// Configuration files: a subcommand's options can come from a TOML file given with
// `--config FILE`; options given on the command line win over the file.
//
// File format (the TOML subset that CLI11's reader accepts):
//   # comment
//   port = 9100                  # key = long option name without the dashes, as typed on the
//   name = "worker-1"            #   command line (`max-steps`, not `max_steps`)
//   verbose = true               # flags take true or false
//   peers = ["s1:7000", "s2:7000"]   # options taking several values take an array
//   [limits]                     # a section names an option group of the command, or a nested
//   max-steps = 64               #   subcommand (whose options it then sets); `a.b` nests deeper
// Values are strings (double quotes), numbers, booleans or arrays of those; a value cannot
// contain '#' (CLI11 strips from '#' to the end of the line). A key that names no option of the
// command (or of the section's group or subcommand) is an error, so a typo cannot silently fall
// back to a default. Files over kMaxConfigFileBytes are rejected.
//
// Errors are CLI11 parse errors, reported like any bad flag: CLI11_PARSE (or CLI::App::exit)
// prints the message and exits non-zero. CLI::FileError: the file cannot be read;
// CLI::ConfigError: unknown key or section, a non-configurable option, an oversized file, or a
// value that does not fit its option (the message names the file and the key).
//
// Thread-safety: AddConfigOption is called while the CLI is being built (single-threaded); the
// file is read during CLI::App::parse on the parsing thread.
#pragma once

#include <cstddef>

#include <CLI/CLI.hpp>

namespace fp {

inline constexpr size_t kMaxConfigFileBytes = size_t{1} << 20;

// Adds `--config FILE` to `command`. While `command` is parsed, the file's values fill every
// option of `command` (and of its option groups and nested subcommands, through sections) that
// was not given on the command line, before required-option checks run, so a required option
// may come from the file. `command` is borrowed and must outlive parsing (CLI11 owns subcommands,
// so a subcommand of the parsing app always does).
void AddConfigOption(CLI::App& command);

}  // namespace fp
