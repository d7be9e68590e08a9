#pragma once
// qkv-train's command line, parsed apart from the program so that tests and the fuzzer can
// drive the parser without training anything.
#include <cstddef>
#include <cstdint>
#include <string>

namespace qkv::train_cli {

/// Every option of qkv-train, with its default. `*_given` records whether the user set an
/// option whose default depends on other choices (the task, the model, a time budget).
struct CommandLine {
  std::string model;  // --model: a name make_model knows (checked when the model is built)
  std::string task;   // --task, or
  std::string data_file;  // --data FILE.tsv
  bool reverse_pairs = false;
  std::string split = "default";  // "default" | "d2l"
  std::size_t min_freq = 2;       // tokens seen fewer times in training become <unk>
  std::size_t train_size = 0;     // 0: the task's default
  std::size_t eval_size = 0;      // 0: the task's default
  std::string out;
  std::string resume;
  std::uint64_t seed = 0;
  int threads = 1;
  std::size_t epochs = 10;
  bool epochs_given = false;
  double time_budget = 0;  // seconds; 0: none
  std::size_t batch = 64;
  double lr = 1e-3;
  std::string schedule = "constant";  // "constant" | "noam"
  std::size_t warmup = 4000;
  double clip = 1.0;
  double label_smoothing = 0;
  double dropout = 0;
  std::size_t embed = 32;      // bahdanau
  std::size_t hidden = 64;     // bahdanau
  std::size_t d_model = 64;    // transformer
  std::size_t heads = 4;       // transformer
  std::size_t layers = 2;
  std::size_t ff = 128;        // transformer
  std::string positional = "sinusoidal";  // "sinusoidal" | "learned" | "relative" | "rope"
  std::string attention_scale = "sqrt";   // "sqrt" | "none" | "dk"
  bool attention_scale_given = false;
  std::size_t beam = 1;
  bool detect_anomaly = false;  // --detect-anomaly: stop at the first op making a NaN/Inf (slow)
  bool help = false;       // --help was given: print `help_text` and exit 0
  std::string help_text;
};

/// Parses qkv-train's arguments (argv[0] is the program name). Throws CLI::ParseError
/// (from CLI11) naming the option for anything malformed, unknown or out of range. --help
/// does not throw: it sets `help` and fills `help_text`.
CommandLine parse_command_line(int argc, const char* const* argv);

}  // namespace qkv::train_cli
