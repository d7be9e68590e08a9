#include "command_line.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lib/numerics/error.hpp"

#include "lib/text/corpus.hpp"
#include "models/registry.hpp"

namespace qkv::train_cli {
namespace {

/// The model kinds' options, each flag once: a flag two kinds share (--layers, --dropout) is
/// one option whose help names both.
void add_model_options(CLI::App& app, CommandLine& line) {
  std::map<std::string, std::string> help;
  std::vector<std::string> order;
  for (const std::string& name : models::model_kinds()) {
    for (const models::ModelOption& option : models::find_model_kind(name).options) {
      if (!help.count(option.flag)) order.push_back(option.flag);
      std::string& text = help[option.flag];
      text += (text.empty() ? "" : "; ") + name + ": " + option.help + " (default " +
              (option.default_value.is_string() ? option.default_value.get<std::string>()
                                                : option.default_value.dump()) +
              ")";
    }
  }
  for (const std::string& flag : order)
    app.add_option_function<std::string>(
        flag, [&line, flag](const std::string& text) { line.model_options[flag] = text; }, help[flag]);
}

/// One parse of the arguments, without corpus defaults.
CommandLine parse_arguments(int argc, const char* const* argv) {
  CommandLine line;
  CLI::App app{"qkv-train: train a translation model"};
  std::string kinds;
  for (const auto& name : models::model_kinds()) kinds += (kinds.empty() ? "" : ", ") + name;
  app.add_option("--model", line.model, "model kind: " + kinds);
  app.add_option("--task", line.task, "generated task: dates, numbers, reverse, copy");
  app.add_option("--min-freq", line.min_freq, "vocabulary: tokens seen fewer times in training become <unk>")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--train-size", line.train_size, "generated task: training examples")->check(CLI::PositiveNumber);
  app.add_option("--eval-size", line.eval_size, "generated task: validation and test examples each")
      ->check(CLI::PositiveNumber);
  app.add_option("--data", line.data_file, "two-column TSV corpus");
  app.add_flag("--reverse-pairs", line.reverse_pairs, "swap the TSV columns");
  app.add_option("--split", line.split, "default (by source) | d2l (d2l.ai's MTFraEng split and vocabularies)")
      ->check(CLI::IsMember(names_of<CorpusSplit>()));
  app.add_option("--out", line.out, "output directory");
  app.add_option("--resume", line.resume, "continue the checkpoint in this directory");
  app.add_option("--evaluate", line.evaluate,
                 "train nothing: test the checkpoint in DIR (a run or its best/) on its data's test set, decoding "
                 "with --beam if given (else the beam it trained with), and print the final: line");
  app.add_flag("--int8", line.int8,
               "with --evaluate: decode with per-channel int8 weights for every Linear and attention projection");
  app.add_option("--seed", line.seed, "batch order and initialisation");
  app.add_option("--threads", line.threads, "threads for gemm and kernels (same seed and threads: same result)")
      ->check(CLI::Range(1, 256));
  app.add_option("--epochs", line.epochs, "train until this many epochs in total")->check(CLI::Range(1, 1000000));
  app.add_option("--time-budget", line.time_budget, "seconds of training at most")->check(CLI::Range(1e-3, 1e9));
  app.add_option("--until", line.until,
                 "stop at the first evaluation reaching METRIC=VALUE (exact, bleu, token_acc: at least; "
                 "val_loss: at most), e.g. exact=0.995; epochs or --time-budget stay the cap");
  app.add_option("--batch", line.batch, "sentences per batch")->check(CLI::Range(1, 1000000));
  app.add_option("--lr", line.lr, "peak learning rate")->check(CLI::Range(1e-12, 1e3));
  app.add_option("--schedule", line.schedule, joined_names_of<train::ScheduleKind>())
      ->check(CLI::IsMember(names_of<train::ScheduleKind>()));
  app.add_option("--warmup", line.warmup, "noam warm-up steps")->check(CLI::Range(1, 100000000));
  app.add_option("--warmup-epochs", line.warmup_epochs,
                 "noam warm-up as epochs of training: steps = this x batches per epoch (instead of --warmup)")
      ->check(CLI::Range(1e-6, 1e6));
  app.add_option("--clip", line.clip, "global gradient norm; 0: off")->check(CLI::Range(0.0, 1e9));
  app.add_option("--label-smoothing", line.label_smoothing)->check(CLI::Range(0.0, 0.99));
  add_model_options(app, line);
  app.add_option("--beam", line.beam, "beam size for the BLEU and exact-match decoding")->check(CLI::Range(1, 1024));
  app.add_option("--sink-tokens", line.sink_tokens,
                 "decoding: keep the first N target steps in the self-attention KV cache (attention sinks; needs "
                 "--cache-window)")
      ->check(CLI::Range(0, 1000000));
  app.add_option("--cache-window", line.cache_window,
                 "decoding: keep the last N target steps in the self-attention KV cache, evicting older ones but the "
                 "sinks (0: keep all)")
      ->check(CLI::Range(0, 1000000));
  app.add_option("--trace-steps", line.trace_steps,
                 "write DIR/trace/: the initial weights, and the batches and losses of the first N steps, "
                 "for a reference implementation to replay (scripts/reference/)")
      ->check(CLI::Range(1, 100000000));
  app.add_flag("--detect-anomaly", line.detect_anomaly,
               "stop with an error naming the first op whose output or gradient is NaN or Inf (slower)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    line.help = true;
    line.help_text = app.help();
    return line;
  }
  for (const CLI::Option* option : app.get_options())
    if (option->count() > 0) line.given.insert(option->get_name());
  return line;
}

}  // namespace

CommandLine parse_command_line(int argc, const char* const* argv) {
  CommandLine line = parse_arguments(argc, argv);
  if (line.help || line.data_file.empty() || !line.resume.empty() || !line.evaluate.empty() || line.model.empty())
    return line;
  const auto kinds = models::model_kinds();
  if (std::find(kinds.begin(), kinds.end(), line.model) == kinds.end()) return line;  // make_model names it
  // The kind's corpus defaults, as if typed before the user's flags, for every flag not given.
  // Parsed by the same parser, so they are checked as the user's flags are.
  std::vector<std::string> extra;
  for (const models::CorpusDefault& corpus_default : models::find_model_kind(line.model).corpus_defaults) {
    // --warmup and --warmup-epochs say one thing two ways: either given overrides both defaults.
    const bool warmup = corpus_default.flag == "--warmup" || corpus_default.flag == "--warmup-epochs";
    if (line.was_given(corpus_default.flag) || (warmup && (line.was_given("--warmup") || line.was_given("--warmup-epochs"))))
      continue;
    extra.push_back(corpus_default.flag);
    extra.push_back(corpus_default.value);
    line.corpus_defaults_applied.push_back(corpus_default.flag + " " + corpus_default.value);
  }
  if (extra.empty()) return line;
  std::vector<const char*> arguments(argv, argv + argc);
  for (const std::string& text : extra) arguments.push_back(text.c_str());
  CommandLine with_defaults = parse_arguments(static_cast<int>(arguments.size()), arguments.data());
  with_defaults.given = line.given;  // what the user chose, not what a default filled in
  with_defaults.corpus_defaults_applied = line.corpus_defaults_applied;
  return with_defaults;
}

train::TrainOptions training_options(const CommandLine& line, std::size_t batches_per_epoch) {
  train::TrainOptions options;
  options.seed = line.seed;
  // A time budget alone trains until it is spent; --epochs with it is a second cap.
  options.epochs = line.was_given("--epochs") || line.time_budget == 0 ? line.epochs : 0;
  options.time_budget_seconds = line.time_budget;
  options.batch_size = line.batch;
  options.lr = line.lr;
  options.schedule = parse_name<train::ScheduleKind>(line.schedule, "--schedule");
  options.warmup_steps = std::int64_t(line.warmup);
  if (line.warmup_epochs > 0) {
    check_arg(!line.was_given("--warmup"), "qkv-train", "give one of --warmup and --warmup-epochs");
    check_arg(batches_per_epoch > 0, "--warmup-epochs", "needs the number of batches per epoch");
    options.warmup_steps = std::max<std::int64_t>(1, std::llround(line.warmup_epochs * double(batches_per_epoch)));
  }
  options.clip_norm = line.clip;
  options.label_smoothing = line.label_smoothing;
  options.decode.beam = line.beam;
  options.decode.cache_limit = {.sink_tokens = line.sink_tokens, .window = line.cache_window};
  return options;
}

}  // namespace qkv::train_cli
