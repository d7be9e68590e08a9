// qkv-train: trains a translation model on a generated task or a TSV corpus.
//
//   qkv-train --model transformer --task reverse --out runs/rev --epochs 5
//   qkv-train --model bahdanau --data fra.txt --reverse-pairs --split d2l --out runs/fra --time-budget 600
//   qkv-train --resume runs/rev --epochs 10          (continues to 10 epochs in total)
//
// Writes DIR/config.json, model.safetensors, optimizer.safetensors, metrics.jsonl, best/,
// curves.svg and the attention plots of the first test sentence (train/attention_plots.hpp:
// attention.svg, attention-connections.svg and, for the transformer, the self-attention).
// Ctrl-C saves a checkpoint and exits. The last line is `final: val_loss=… token_acc=…
// exact=… bleu=…` on the test set (the validation set for corpora without one), of the
// checkpoint with the best validation metric (best/). Bad arguments: one line on stderr,
// exit status 2.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "autograd/variable.hpp"
#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/error.hpp"
#include "lib/plot/svg.hpp"
#include "train/attention_plots.hpp"
#include "train/data_spec.hpp"
#include "models/registry.hpp"
#include "train/trainer.hpp"
#include "command_line.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace qkv;
using namespace qkv::models;
using train_cli::CommandLine;

std::atomic<bool> interrupted{false};
extern "C" void on_sigint(int) { interrupted = true; }

/// The model's hyperparameters from the command line, in the keys its from_config reads.
json model_config(const CommandLine& line) {
  json config = {{"dropout", line.dropout}, {"seed", line.seed}};
  if (line.model == "transformer") {
    config.update({{"d_model", line.d_model}, {"num_heads", line.heads}, {"encoder_layers", line.layers},
                   {"decoder_layers", line.layers}, {"dim_feedforward", line.ff}, {"positional", line.positional}});
    if (line.attention_scale_given) {
      const std::string& scale = line.attention_scale;
      const char* name = scale == "sqrt" ? "inverse_sqrt_dim" : scale == "dk" ? "inverse_dim" : "none";
      config["scale"] = {{"kind", name}, {"value", 1.0}};
    }
  } else {
    config.update({{"embed_size", line.embed}, {"hidden_size", line.hidden}, {"attention_size", line.hidden},
                   {"encoder_layers", line.layers}, {"decoder_layers", line.layers}});
  }
  return config;
}

/// curves.svg: the losses and accuracies of every evaluation.
void write_curves(const json& history, const fs::path& out) {
  Series train{"train loss", {}, {}}, val{"validation loss", {}, {}}, acc{"token accuracy", {}, {}, true},
      exact{"exact match", {}, {}, true};
  for (const json& entry : history) {
    const double epoch = entry.at("epoch").get<double>();
    const auto value = [&](const char* key) { return entry.at(key).is_null() ? NAN : entry.at(key).get<double>(); };
    for (Series* series : {&train, &val, &acc, &exact}) series->x.push_back(epoch);
    train.y.push_back(value("train_loss"));
    val.y.push_back(value("val_loss"));
    acc.y.push_back(value("token_acc"));
    exact.y.push_back(value("exact"));
  }
  write_svg((out / "curves.svg").string(),
            line_chart_svg({.title = "training", .x_label = "epoch", .y_label = "loss / accuracy",
                            .series = {train, val, acc, exact}, .x_ticks = {}}));
}

int run(int argc, char** argv) {
  CommandLine line;
  try {
    line = train_cli::parse_command_line(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "qkv-train: %s\n", e.what());
    return 2;
  }
  if (line.help) {
    std::fputs(line.help_text.c_str(), stdout);
    return 0;
  }
  spdlog::info("gemm: {}", blas::describe());
  parallel::set_num_threads(line.threads);
  set_detect_anomaly(line.detect_anomaly);

  std::optional<Trainer> trainer;
  Dataset data;
  json data_spec;
  if (!line.resume.empty()) {
    Checkpoint checkpoint = load_checkpoint(line.resume);
    data_spec = checkpoint.data;
    data = load_data(data_spec);
    TrainOptions options = checkpoint.options;
    if (line.epochs_given) options.epochs = line.epochs;
    options.time_budget_seconds = line.time_budget;
    trainer.emplace(std::move(checkpoint), data, options);
  } else {
    if (line.model.empty() || line.out.empty()) throw Error("--model and --out are required (or --resume DIR)");
    if (line.task.empty() == line.data_file.empty()) throw Error("give exactly one of --task NAME and --data FILE.tsv");
    data_spec = line.task.empty() ? corpus_data_spec(line.data_file, line.reverse_pairs, line.split)
                                  : task_data_spec(line.task, line.seed, line.train_size, line.eval_size);
    data = load_data(data_spec);
    // --split d2l reproduces d2l.ai's vocabularies exactly (min_freq 2 over cut sentences).
    const Vocabs vocabs =
        line.split == "d2l" ? d2l_vocabs(data) : build_vocabs(data.train, {.min_freq = line.min_freq});
    auto model = make_model(line.model, model_config(line), vocabs.source.size(), vocabs.target.size());
    TrainOptions options;
    options.seed = line.seed;
    options.epochs = line.epochs_given || line.time_budget == 0 ? line.epochs : 0;
    options.time_budget_seconds = line.time_budget;
    options.batch_size = line.batch;
    options.lr = line.lr;
    options.schedule = line.schedule;
    options.warmup_steps = std::int64_t(line.warmup);
    options.clip_norm = line.clip;
    options.label_smoothing = line.label_smoothing;
    options.decode.beam = line.beam;
    trainer.emplace(model, vocabs, data, options, line.out, data_spec);
    spdlog::info("{} model, {} parameters; {} training pairs, {} batches per epoch", line.model,
                 model->parameter_count(), data.train.size(), trainer->batches_per_epoch());
  }

  std::signal(SIGINT, on_sigint);
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const std::size_t epochs = trainer->options().epochs;
  const auto report = [&](const StepInfo& info) {
    static double tokens = 0;
    tokens += double(info.tokens);
    const double rate = tokens / std::max(info.seconds, 1e-9);
    // The ETA of the run: the time budget's rest, or the remaining steps at this pace.
    const double steps_left = epochs > 0 ? double((epochs - info.epoch) * info.batches_in_epoch - info.batch - 1) : 0;
    const double pace = info.seconds / double(std::max<std::int64_t>(info.step, 1));
    double eta = epochs > 0 ? steps_left * pace : 0;
    if (trainer->options().time_budget_seconds > 0)
      eta = eta > 0 ? std::min(eta, trainer->options().time_budget_seconds - info.seconds)
                    : trainer->options().time_budget_seconds - info.seconds;
    if (tty) {
      const double done = double(info.batch + 1) / double(info.batches_in_epoch);
      std::fprintf(stderr, "\repoch %zu [%-30s] step %lld  loss %.4f  %.0f tok/s  ETA %.0f s   ", info.epoch + 1,
                   std::string(std::size_t(done * 30), '=').c_str(), static_cast<long long>(info.step), info.loss, rate,
                   std::max(eta, 0.0));
      if (info.batch + 1 == info.batches_in_epoch) std::fprintf(stderr, "\n");
    } else if (info.step % 100 == 0) {
      spdlog::info("epoch {} step {} loss {:.4f} lr {:.2e} {:.0f} tok/s ETA {:.0f} s", info.epoch + 1, info.step,
                   info.loss, info.learning_rate, rate, std::max(eta, 0.0));
    }
  };
  const TrainResult result = trainer->train(report, &interrupted);
  if (tty) std::fprintf(stderr, "\n");
  if (result.reason == StopReason::diverged) {
    spdlog::error("{}", result.message);
    return 1;
  }
  if (result.reason == StopReason::interrupted) {
    spdlog::warn("interrupted: checkpoint saved in {}; continue with --resume {}", trainer->out_dir(),
                 trainer->out_dir());
    return 130;
  }

  // The test set judges the model validation chose (best/), as a user would ship it.
  const fs::path out = trainer->out_dir();
  std::shared_ptr<Seq2SeqModel> chosen(&trainer->model(), [](Seq2SeqModel*) {});
  if (fs::exists(out / "best" / "config.json")) {
    const Checkpoint best = load_checkpoint((out / "best").string());
    chosen = best.model;
    const json& entry = best.history.back();
    spdlog::info("testing the best checkpoint by validation {}: epoch {:.2f}, step {}", trainer->options().best_metric,
                 entry.at("epoch").get<double>(), entry.at("step").get<std::int64_t>());
  }
  const std::vector<SentencePair>& held_out = data.test.empty() ? data.validation : data.test;
  const Evaluation final =
      evaluate(*chosen, held_out, trainer->vocabs(), trainer->options().decode, trainer->options().eval_batch_size);
  for (std::size_t i = 0; i < std::min<std::size_t>(5, final.groups.size()); ++i)
    spdlog::info("{}  =>  {}", detokenize(data_spec, final.groups[i].source),
                 detokenize(data_spec, trainer->vocabs().target.decode(final.decoded[i].tokens)));
  write_curves(trainer->history(), out);
  const AttentionPlots plots = write_attention_plots(*chosen, trainer->vocabs(), held_out[0].source, data_spec,
                                                     trainer->options().decode, (out / "attention").string());
  std::string entropies;
  double uniform = 0;
  for (const MapEntropy& entropy : plots.entropies)
    if (entropy.group == "cross-attention") {
      entropies += fmt::format(" {:.2f}", entropy.mean_entropy);
      uniform = entropy.max_entropy;
    }
  if (!entropies.empty())
    spdlog::info("cross-attention mean entropy per map (layer by layer, head by head), nats:{} (uniform: {:.2f})",
                 entropies, uniform);
  std::string files;
  for (const std::string& file : plots.files) files += " " + fs::path(file).filename().string();
  spdlog::info("wrote {}/: curves.svg{} metrics.jsonl and the checkpoint", out.string(), files);
  std::printf("final: val_loss=%.4f token_acc=%.4f exact=%.4f bleu=%.2f\n", final.loss, final.token_accuracy,
              final.exact_match, final.bleu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-train: %s\n", e.what());
    return 2;
  }
}
