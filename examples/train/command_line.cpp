#include "command_line.hpp"

#include <CLI/CLI.hpp>

#include "models/registry.hpp"

namespace qkv::train_cli {

CommandLine parse_command_line(int argc, const char* const* argv) {
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
  app.add_option("--split", line.split, "default | d2l")->check(CLI::IsMember({"default", "d2l"}));
  app.add_option("--out", line.out, "output directory");
  app.add_option("--resume", line.resume, "continue the checkpoint in this directory");
  app.add_option("--seed", line.seed, "batch order and initialisation");
  app.add_option("--threads", line.threads, "threads for gemm and kernels (same seed and threads: same result)")->check(CLI::Range(1, 256));
  app.add_option("--epochs", line.epochs, "train until this many epochs in total")->check(CLI::Range(1, 1000000));
  app.add_option("--time-budget", line.time_budget, "seconds of training at most")
      ->check(CLI::Range(1e-3, 1e9));
  app.add_option("--batch", line.batch, "sentences per batch")->check(CLI::Range(1, 1000000));
  app.add_option("--lr", line.lr, "peak learning rate")->check(CLI::Range(1e-12, 1e3));
  app.add_option("--schedule", line.schedule, "constant | noam")->check(CLI::IsMember({"constant", "noam"}));
  app.add_option("--warmup", line.warmup, "noam warm-up steps")->check(CLI::Range(1, 100000000));
  app.add_option("--clip", line.clip, "global gradient norm; 0: off")->check(CLI::Range(0.0, 1e9));
  app.add_option("--label-smoothing", line.label_smoothing)->check(CLI::Range(0.0, 0.99));
  app.add_option("--dropout", line.dropout)->check(CLI::Range(0.0, 0.99));
  app.add_option("--embed", line.embed, "bahdanau: embedding width")->check(CLI::Range(1, 65536));
  app.add_option("--hidden", line.hidden, "bahdanau: GRU width")->check(CLI::Range(1, 65536));
  app.add_option("--d-model", line.d_model, "transformer: model width")->check(CLI::Range(1, 65536));
  app.add_option("--heads", line.heads, "transformer: attention heads")->check(CLI::Range(1, 1024));
  app.add_option("--layers", line.layers, "encoder and decoder layers")->check(CLI::Range(1, 64));
  app.add_option("--ff", line.ff, "transformer: feed-forward width")->check(CLI::Range(1, 1048576));
  app.add_option("--positional", line.positional, "transformer: sinusoidal | learned | relative | rope")
      ->check(CLI::IsMember({"sinusoidal", "learned", "relative", "rope"}));
  app.add_option("--attention-scale", line.attention_scale, "transformer: sqrt (1/sqrt(d_k)) | dk (1/d_k) | none")
      ->check(CLI::IsMember({"sqrt", "none", "dk"}));
  app.add_option("--beam", line.beam, "beam size for the BLEU and exact-match decoding")->check(CLI::Range(1, 1024));
  app.add_flag("--detect-anomaly", line.detect_anomaly,
               "stop with an error naming the first op whose output or gradient is NaN or Inf (slower)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    line.help = true;
    line.help_text = app.help();
    return line;
  }
  line.epochs_given = app.count("--epochs") > 0;
  line.attention_scale_given = app.count("--attention-scale") > 0;
  return line;
}

}  // namespace qkv::train_cli
