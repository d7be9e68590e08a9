#pragma once
// qkv-train's command line, parsed apart from the program so that tests and the fuzzer can
// drive the parser without training anything. The model kinds' own options (--d-model,
// --hidden, …) come from the registry (models/registry.hpp): this file knows none of them.
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "train/options.hpp"

namespace qkv::train_cli {

/// Every option of qkv-train but the model kinds' own, with its default.
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
  std::string evaluate;  // --evaluate DIR: test that checkpoint (with --beam if given) and exit
  bool int8 = false;     // --int8 (with --evaluate): decode with int8 weights (layers/quantized.hpp)
  std::uint64_t seed = 0;
  int threads = 1;
  std::size_t epochs = 10;
  double time_budget = 0;  // seconds; 0: none
  std::string until;       // METRIC=VALUE: stop at the first evaluation that reaches it
  std::size_t batch = 64;
  double lr = 1e-3;
  std::string schedule = "constant";
  std::size_t warmup = 4000;
  double warmup_epochs = 0;  // > 0: the warm-up is this many epochs' batches (--warmup-epochs)
  double clip = 1.0;
  double label_smoothing = 0;
  std::size_t beam = 1;
  std::size_t sink_tokens = 0, cache_window = 0;  // --sink-tokens, --cache-window: KVCacheLimit when decoding
  std::size_t trace_steps = 0;  // --trace-steps N: DIR/trace/ for replaying N steps elsewhere (step_trace.hpp)
  bool detect_anomaly = false;  // --detect-anomaly: stop at the first op making a NaN/Inf (slow)
  /// The model kinds' options the user gave, flag -> text as typed ("--d-model" -> "128"),
  /// checked against the chosen kind when the model config is built.
  std::map<std::string, std::string> model_options;
  /// Every flag the user gave ("--lr", "--d-model", …), to tell a default from a choice.
  std::set<std::string> given;
  /// The kind's corpus defaults that applied ("--d-model 128"): with --data, for a fresh run,
  /// every ModelKind::corpus_defaults flag the user did not give.
  std::vector<std::string> corpus_defaults_applied;
  bool help = false;  // --help was given: print `help_text` and exit 0
  std::string help_text;

  bool was_given(const std::string& flag) const { return given.count(flag) > 0; }
};

/// Parses qkv-train's arguments (argv[0] is the program name). Throws CLI::ParseError
/// (from CLI11) naming the option for anything malformed, unknown or out of range. --help
/// does not throw: it sets `help` and fills `help_text`. A fresh run on --data also takes the
/// model kind's corpus defaults (models/registry.hpp, CorpusDefault) for the flags not given;
/// `given` stays the user's flags.
CommandLine parse_command_line(int argc, const char* const* argv);

/// The TrainOptions the command line asks for (a fresh run's; on resume, merge_on_resume
/// decides what of them applies). `batches_per_epoch` turns --warmup-epochs into steps.
/// Throws Error if both --warmup and --warmup-epochs were given.
train::TrainOptions training_options(const CommandLine& line, std::size_t batches_per_epoch = 0);

}  // namespace qkv::train_cli
