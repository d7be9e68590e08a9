// libFuzzer target: qkv-train's command line (examples/train/command_line.*, parse_command_line).
// The input is the argument list, one argument per line. The parser's contract: it returns,
// or throws CLI::ParseError naming the option; --help sets `help` instead of throwing.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "command_line.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> arguments{"qkv-train"};
  std::string current;
  for (const char c : qkv::fuzz::as_text(data, size)) {
    if (c == '\n') {
      arguments.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) arguments.push_back(current);
  std::vector<const char*> argv;
  for (const std::string& argument : arguments) argv.push_back(argument.c_str());
  try {
    const qkv::train_cli::CommandLine line = qkv::train_cli::parse_command_line(int(argv.size()), argv.data());
    if (line.help && line.help_text.empty()) std::abort();
    if (line.threads < 1 || line.batch < 1 || line.epochs < 1) std::abort();  // the checks it promises
  } catch (const CLI::ParseError&) {
  }
  return 0;
}
