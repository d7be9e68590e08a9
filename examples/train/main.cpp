// qkv-train: trains a translation model on a generated task or a TSV corpus.
//
//   qkv-train --model transformer --task reverse --out runs/rev --epochs 5
//   qkv-train --model bahdanau --data fra.txt --reverse-pairs --split d2l --out runs/fra --time-budget 600
//   qkv-train --resume runs/rev --epochs 10          (continues to 10 epochs in total)
//
// Writes DIR/config.json, model.safetensors, optimizer.safetensors, metrics.jsonl, best/,
// attention.svg (one test example) and curves.svg. Ctrl-C saves a checkpoint and exits. The last
// line is `final: val_loss=… token_acc=… exact=… bleu=…` on the test set (the validation set
// for corpora without one). Bad arguments: one line on stderr, exit status 2.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "lib/blas.hpp"
#include "lib/error.hpp"
#include "lib/svg.hpp"
#include "lib/tasks.hpp"
#include "models/registry.hpp"
#include "models/training.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace qkv;
using namespace qkv::models;

std::atomic<bool> interrupted{false};
extern "C" void on_sigint(int) { interrupted = true; }

/// Builds the dataset a data spec (stored in config.json) describes.
Dataset load_data(const json& spec) {
  if (spec.contains("task")) {
    TaskOptions options;
    options.seed = spec.at("seed").get<std::uint64_t>();
    options.train_size = spec.value("train_size", options.train_size);
    options.validation_size = options.test_size = spec.value("eval_size", options.validation_size);
    return make_task(spec.at("task").get<std::string>(), options);
  }
  const std::string file = spec.at("file").get<std::string>();
  if (!fs::exists(file)) throw Error("data file " + file + " does not exist");
  CorpusOptions options;
  options.tsv.reverse = spec.at("reverse").get<bool>();
  options.split = spec.at("split").get<std::string>() == "d2l" ? CorpusSplit::d2l : CorpusSplit::by_source;
  return load_corpus(file, options);
}

/// The model's hyperparameters from the command line, in the keys its from_config reads.
json model_config(const std::string& kind, const CLI::App& app, std::size_t embed, std::size_t hidden,
                  std::size_t d_model, std::size_t heads, std::size_t layers, std::size_t ff, double dropout,
                  const std::string& positional, const std::string& scale, std::uint64_t seed) {
  json config = {{"dropout", dropout}, {"seed", seed}};
  if (kind == "transformer") {
    config.update({{"d_model", d_model}, {"num_heads", heads}, {"encoder_layers", layers},
                   {"decoder_layers", layers}, {"dim_feedforward", ff}, {"positional", positional}});
    if (app.count("--attention-scale") > 0) {
      const char* name = scale == "sqrt" ? "inverse_sqrt_dim" : scale == "dk" ? "inverse_dim" : "none";
      config["scale"] = {{"kind", name}, {"value", 1.0}};
    }
  } else {
    config.update({{"embed_size", embed}, {"hidden_size", hidden}, {"attention_size", hidden},
                   {"encoder_layers", layers}, {"decoder_layers", layers}});
  }
  return config;
}

void write_plots(Seq2SeqModel& model, const Vocabs& vocabs, const std::vector<SentencePair>& pairs,
                 const json& history, const fs::path& out) {
  // Curves over evaluations.
  Series train{"train loss", {}, {}}, val{"validation loss", {}, {}}, acc{"token accuracy", {}, {}, true};
  for (const json& entry : history) {
    const double epoch = entry.at("epoch").get<double>();
    train.x.push_back(epoch);
    train.y.push_back(entry.at("train_loss").is_null() ? NAN : entry.at("train_loss").get<double>());
    val.x.push_back(epoch);
    val.y.push_back(entry.at("val_loss").get<double>());
    acc.x.push_back(epoch);
    acc.y.push_back(entry.at("token_acc").get<double>());
  }
  write_svg((out / "curves.svg").string(),
            line_chart_svg({.title = "training", .x_label = "epoch", .y_label = "loss / accuracy",
                            .series = {train, val, acc}, .x_ticks = {}}));
  // Attention of the first example, decoded greedily.
  const Batcher batcher(std::span<const SentencePair>(pairs.data(), 1), vocabs.source, vocabs.target, {.shuffle = false});
  const Batch batch = batcher.make_batch(std::vector<std::size_t>{0});
  model.eval();
  const Hypothesis h = greedy_decode(model, batch.source, batch.source_lengths, 2 * pairs[0].target.size() + 10)[0];
  if (h.attention.empty()) return;
  std::vector<std::string> keys = pairs[0].source;
  keys.push_back("<eos>");
  std::vector<std::string> queries = vocabs.target.decode(h.tokens);
  if (h.finished) queries.push_back("<eos>");
  write_svg((out / "attention.svg").string(),
            attention_heatmap_svg({.weights = h.attention[0].second, .queries = queries, .keys = keys,
                                   .title = h.attention[0].first}));
}

int run(int argc, char** argv) {
  CLI::App app{"qkv-train: train a translation model"};
  std::string kind, task, data_file, split = "default", out, resume, schedule = "constant", positional = "sinusoidal",
                                     scale = "sqrt";
  bool reverse_pairs = false;
  std::uint64_t seed = 0;
  int threads = 1;
  std::size_t epochs = 10, batch = 64, warmup = 4000, beam = 1, embed = 32, hidden = 64, d_model = 64, heads = 4,
              layers = 2, ff = 128;
  double time_budget = 0, lr = 1e-3, clip = 1.0, label_smoothing = 0, dropout = 0;
  app.add_option("--model", kind, "model kind: " + [] {
    std::string names;
    for (const auto& name : model_kinds()) names += name + " ";
    return names;
  }());
  app.add_option("--task", task, "generated task: dates, numbers, reverse, copy");
  std::size_t train_size = TaskOptions{}.train_size, eval_size = TaskOptions{}.validation_size;
  app.add_option("--train-size", train_size, "generated task: training examples")->check(CLI::PositiveNumber);
  app.add_option("--eval-size", eval_size, "generated task: validation and test examples each")
      ->check(CLI::PositiveNumber);
  app.add_option("--data", data_file, "two-column TSV corpus");
  app.add_flag("--reverse-pairs", reverse_pairs, "swap the TSV columns");
  app.add_option("--split", split, "default | d2l")->check(CLI::IsMember({"default", "d2l"}));
  app.add_option("--out", out, "output directory");
  app.add_option("--resume", resume, "continue the checkpoint in this directory");
  app.add_option("--seed", seed);
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--epochs", epochs)->check(CLI::PositiveNumber);
  app.add_option("--time-budget", time_budget, "seconds")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch)->check(CLI::PositiveNumber);
  app.add_option("--lr", lr)->check(CLI::PositiveNumber);
  app.add_option("--schedule", schedule)->check(CLI::IsMember({"constant", "noam"}));
  app.add_option("--warmup", warmup)->check(CLI::PositiveNumber);
  app.add_option("--clip", clip)->check(CLI::NonNegativeNumber);
  app.add_option("--label-smoothing", label_smoothing)->check(CLI::Range(0.0, 0.99));
  app.add_option("--dropout", dropout)->check(CLI::Range(0.0, 0.99));
  app.add_option("--embed", embed)->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden)->check(CLI::PositiveNumber);
  app.add_option("--d-model", d_model)->check(CLI::PositiveNumber);
  app.add_option("--heads", heads)->check(CLI::PositiveNumber);
  app.add_option("--layers", layers)->check(CLI::PositiveNumber);
  app.add_option("--ff", ff)->check(CLI::PositiveNumber);
  app.add_option("--positional", positional, "sinusoidal | learned | relative | rope");
  app.add_option("--attention-scale", scale)->check(CLI::IsMember({"sqrt", "none", "dk"}));
  app.add_option("--beam", beam, "beam size for BLEU")->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "qkv-train: %s\n", e.what());
    return 2;
  }
  blas::set_num_threads(threads);

  std::optional<Trainer> trainer;
  Dataset data;
  if (!resume.empty()) {
    Checkpoint checkpoint = load_checkpoint(resume);
    data = load_data(checkpoint.data);
    TrainOptions options = checkpoint.options;
    if (app.count("--epochs") > 0) options.epochs = epochs;
    options.time_budget_seconds = time_budget;
    trainer.emplace(std::move(checkpoint), data, options);
  } else {
    if (kind.empty() || out.empty()) throw Error("--model and --out are required (or --resume DIR)");
    if (task.empty() == data_file.empty()) throw Error("give exactly one of --task NAME and --data FILE.tsv");
    json spec;
    if (!task.empty())
      spec = {{"task", task}, {"seed", seed}, {"preprocess", task == "dates" ? "characters" : "words"},
              {"train_size", train_size}, {"eval_size", eval_size}};
    else
      spec = {{"file", fs::absolute(data_file).string()}, {"reverse", reverse_pairs}, {"split", split},
              {"preprocess", "d2l"}};
    data = load_data(spec);
    const Vocabs vocabs = split == "d2l" ? d2l_vocabs(data) : build_vocabs(data.train);
    auto model = make_model(kind, model_config(kind, app, embed, hidden, d_model, heads, layers, ff, dropout, positional,
                                               scale, seed),
                            vocabs.source.size(), vocabs.target.size());
    TrainOptions options;
    options.seed = seed;
    options.epochs = app.count("--epochs") > 0 || time_budget == 0 ? epochs : 0;
    options.time_budget_seconds = time_budget;
    options.batch_size = batch;
    options.lr = lr;
    options.schedule = schedule;
    options.warmup_steps = std::int64_t(warmup);
    options.clip_norm = clip;
    options.label_smoothing = label_smoothing;
    options.decode.beam = beam;
    trainer.emplace(model, vocabs, data, options, out, spec);
    spdlog::info("{} model, {} parameters; {} training pairs, {} batches per epoch", kind,
                 model->parameter_count(), data.train.size(), trainer->batches_per_epoch());
  }

  std::signal(SIGINT, on_sigint);
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const auto report = [&](const StepInfo& info) {
    static double tokens = 0;
    tokens += double(info.tokens);
    const double rate = tokens / std::max(info.seconds, 1e-9);
    if (tty) {
      const double done = double(info.batch + 1) / double(info.batches_in_epoch);
      std::fprintf(stderr, "\repoch %zu [%-30s] step %lld  loss %.4f  %.0f tok/s   ", info.epoch + 1,
                   std::string(std::size_t(done * 30), '=').c_str(), static_cast<long long>(info.step), info.loss, rate);
      if (info.batch + 1 == info.batches_in_epoch) std::fprintf(stderr, "\n");
    } else if (info.step % 50 == 0) {
      spdlog::info("epoch {} step {} loss {:.4f} lr {:.2e} {:.0f} tok/s", info.epoch + 1, info.step, info.loss,
                   info.learning_rate, rate);
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

  const std::vector<SentencePair>& held_out = data.test.empty() ? data.validation : data.test;
  const Evaluation final = evaluate(trainer->model(), held_out, trainer->vocabs(), trainer->options().decode,
                                    trainer->options().eval_batch_size);
  for (std::size_t i = 0; i < std::min<std::size_t>(5, final.groups.size()); ++i) {
    std::string source, hypothesis;
    for (const auto& token : final.groups[i].source) source += token + " ";
    for (const auto& token : trainer->vocabs().target.decode(final.decoded[i].tokens)) hypothesis += token + " ";
    spdlog::info("{}=> {}", source, hypothesis);
  }
  write_plots(trainer->model(), trainer->vocabs(), held_out, trainer->history(), trainer->out_dir());
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
