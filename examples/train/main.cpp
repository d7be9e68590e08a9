// qkv-train: trains a translation model on a generated task or a TSV corpus.
//
//   qkv-train --model transformer --task reverse --out runs/rev --epochs 5
//   qkv-train --model bahdanau --data fra.txt --reverse-pairs --split d2l --out runs/fra --time-budget 600
//   qkv-train --resume runs/rev --epochs 10          (continues to 10 epochs in total)
//   qkv-train --evaluate runs/fra/best --beam 4       (tests a checkpoint, trains nothing)
//
// The program is the Trainer (train/trainer.hpp) with its four standard plug-ins
// (train/callbacks.hpp): a Checkpointer writing DIR/config.json, model.safetensors,
// optimizer.safetensors, metrics.jsonl and best/, the console reporter, curves.svg, and
// --until's StopAtTarget; then it tests the best checkpoint and draws the attention plots of
// the first test sentence (train/attention_plots.hpp) and its explorer page, DIR/attention.html
// (train/attention_explorer.hpp). Ctrl-C saves a checkpoint and exits.
// The last line is `final: val_loss=… token_acc=… exact=… bleu=…` on the test set (the
// validation set for corpora without one), of the checkpoint with the best validation metric
// (best/). Bad arguments: one line on stderr, exit status 2.
//
// Under mpirun (`mpirun -np 2 qkv-train ...`, qkv built with QKV_MPI) the ranks train one model
// data-parallel (train/distributed.hpp, docs/distributed.md): every rank loads the data and the
// model, rank 0 alone locks and writes the run directory and prints; an error on any rank ends
// the whole job (MPI_Abort).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "autograd/variable.hpp"
#include "command_line.hpp"
#include "layers/quantized.hpp"
#include "step_trace.hpp"
#include "lib/numerics/blas.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "models/registry.hpp"
#include "train/attention_explorer.hpp"
#include "train/attention_plots.hpp"
#include "train/callbacks.hpp"
#include "train/data_spec.hpp"
#include "train/distributed.hpp"
#include "train/trainer.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace qkv;
using namespace qkv::train;
using train_cli::CommandLine;

std::atomic<bool> interrupted{false};
extern "C" void on_sigint(int) { interrupted = true; }

/// On resume the checkpoint's model and data stand: a model or data flag given with a value
/// other than the checkpoint's is refused (it would silently not apply); the same value is fine.
void refuse_changed_model_and_data(const CommandLine& line, const Checkpoint& checkpoint) {
  std::string refused;
  const auto refuse = [&](const std::string& flag, const std::string& saved, const std::string& given) {
    refused += "\n  " + flag + ": the checkpoint has " + saved + ", given " + given;
  };
  const models::ModelKind& kind = models::find_model_kind(checkpoint.model->kind());
  if (line.was_given("--model") && line.model != kind.name) refuse("--model", kind.name, line.model);
  const json saved_config = checkpoint.model->config();
  for (const auto& given : line.model_options) {
    const std::string& flag = given.first;
    const std::string& text = given.second;
    const auto option = std::find_if(kind.options.begin(), kind.options.end(),
                                     [&](const models::ModelOption& o) { return o.flag == flag; });
    if (option == kind.options.end()) {
      refuse(flag, "a " + kind.name + " model, which has no such option", text);
      continue;
    }
    const json value = models::parse_option_value(*option, text);
    for (const std::string& key : option->keys) {
      const json::json_pointer pointer(key);
      const json saved = saved_config.contains(pointer) ? saved_config.at(pointer) : json();
      // Numbers compare as numbers: 0.1 given matches the 0.1 a float32 config saved.
      const bool same = saved.is_number() && value.is_number()
                            ? std::abs(saved.get<double>() - value.get<double>()) <= 1e-6 * std::abs(value.get<double>())
                            : saved == value;
      if (!same) refuse(flag, key.substr(1) + " = " + saved.dump(), text);
    }
  }
  const json& data = checkpoint.data;
  const auto compare = [&](const char* flag, const char* key, const json& given) {
    if (!line.was_given(flag)) return;
    if (!data.contains(key)) return refuse(flag, std::string("no ") + key + " (data " + data.dump() + ")", given.dump());
    if (data.at(key) != given) refuse(flag, data.at(key).dump(), given.dump());
  };
  compare("--task", "task", line.task);
  compare("--data", "file", line.data_file.empty() ? "" : fs::absolute(line.data_file).string());
  compare("--reverse-pairs", "reverse", line.reverse_pairs);
  compare("--split", "split", line.split);
  compare("--train-size", "train_size", line.train_size);
  compare("--eval-size", "eval_size", line.eval_size);
  compare("--min-freq", "min_freq", line.min_freq);
  if (!refused.empty())
    throw Error("--resume " + checkpoint.directory + ": the model and the data cannot change on resume:" + refused);
}

/// The checkpoint's options with the flags the user gave on top (merge_on_resume then refuses
/// those that cannot change).
TrainOptions resumed_options(const CommandLine& line, const TrainOptions& saved) {
  if (line.was_given("--warmup-epochs"))
    throw Error("--warmup-epochs sets a fresh run's warm-up; on --resume give --warmup STEPS");
  const TrainOptions asked = train_cli::training_options(line);
  TrainOptions options = saved;
  if (line.was_given("--epochs")) options.epochs = asked.epochs;
  // A time budget is this process's: a resumed run has none unless given again.
  options.time_budget_seconds = asked.time_budget_seconds;
  if (line.was_given("--seed")) options.seed = asked.seed;
  if (line.was_given("--batch")) options.batch_size = asked.batch_size;
  if (line.was_given("--lr")) options.lr = asked.lr;
  if (line.was_given("--schedule")) options.schedule = asked.schedule;
  if (line.was_given("--warmup")) options.warmup_steps = asked.warmup_steps;
  if (line.was_given("--clip")) options.clip_norm = asked.clip_norm;
  if (line.was_given("--label-smoothing")) options.label_smoothing = asked.label_smoothing;
  if (line.was_given("--beam")) options.decode.beam = asked.decode.beam;
  return options;
}

/// --evaluate DIR: the checkpoint's test set (its validation set when it has none), decoded as
/// the run was evaluated or with the --beam given; prints the `final:` line as a run does.
int evaluate_checkpoint(const CommandLine& line) {
  const Checkpoint checkpoint = load_checkpoint(line.evaluate);
  const Dataset data = load_data(checkpoint.data);
  models::DecodeOptions decode = checkpoint.options.decode;
  if (line.was_given("--beam")) decode.beam = line.beam;
  decode.cache_limit = {.sink_tokens = line.sink_tokens, .window = line.cache_window};
  const std::vector<SentencePair>& held_out = data.test.empty() ? data.validation : data.test;
  if (line.int8) {
    const Int8Report converted = quantize_for_inference(*checkpoint.model);
    spdlog::info("int8: {} weight matrices, {} bytes in float -> {} in int8 (other parameters: {} bytes)",
                 converted.weights, converted.float_bytes, converted.int8_bytes, converted.other_bytes);
  }
  const Evaluation result =
      evaluate(*checkpoint.model, held_out, checkpoint.vocabs, decode, checkpoint.options.eval_batch_size);
  spdlog::info("{}: {} sentence pairs ({} sources) of the {} set, beam {}, sink tokens {}, cache window {}{}",
               line.evaluate, held_out.size(), result.groups.size(), data.test.empty() ? "validation" : "test",
               decode.beam, decode.cache_limit.sink_tokens, decode.cache_limit.window, line.int8 ? ", int8" : "");
  std::printf("final: val_loss=%.4f token_acc=%.4f exact=%.4f bleu=%.2f\n", result.loss, result.token_accuracy,
              result.exact_match, result.bleu);
  return 0;
}

int run(int argc, char** argv, const MpiSession& mpi) {
  const bool root = mpi.is_root();
  CommandLine line;
  try {
    line = train_cli::parse_command_line(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "qkv-train: %s\n", e.what());
    return 2;
  }
  if (line.help) {
    if (root) std::fputs(line.help_text.c_str(), stdout);
    return 0;
  }
  if (!root) spdlog::set_level(spdlog::level::warn);  // rank 0 tells the story
  // The kernel and the rate it reaches here, before any training: a slow kernel shows at once.
  if (root) spdlog::info("gemm: {}; sgemm 512³ {:.0f} GFLOP/s at one thread", blas::describe(), blas::sgemm_rate(512, 5));
  parallel::set_num_threads(line.threads);
  set_detect_anomaly(line.detect_anomaly);
  if (!line.evaluate.empty()) {
    // Evaluation is not sharded: N processes would each print the same line.
    if (mpi.world()->size() > 1)
      throw Error("--evaluate runs in one process; it was started as one of " +
                  std::to_string(mpi.world()->size()) + " (run it without mpirun)");
    return evaluate_checkpoint(line);
  }
  if (line.int8) throw Error("--int8 is for --evaluate DIR only: training needs the float weights");
  std::optional<StopAtTarget> target;
  if (!line.until.empty()) target = StopAtTarget::parse(line.until);

  std::optional<Trainer> trainer;
  std::shared_ptr<Checkpointer> checkpointer;
  Dataset data;
  json data_spec;
  if (!line.resume.empty()) {
    // Locked before reading, so that a running process cannot be writing what is read (by rank
    // 0; the others read while it holds the lock, and it writes nothing before they all have).
    std::optional<RunDirectoryLock> lock;
    if (root) lock.emplace(line.resume);
    Checkpoint checkpoint = load_checkpoint(line.resume);
    refuse_changed_model_and_data(line, checkpoint);
    data_spec = checkpoint.data;
    data = load_data(data_spec);
    std::vector<std::string> changes;
    trainer.emplace(checkpoint, data.train, resumed_options(line, checkpoint.options), &changes);
    for (const std::string& change : changes) spdlog::info("resume: changed {}", change);
    if (root) checkpointer = std::make_shared<Checkpointer>(std::move(*lock), data_spec);
  } else {
    if (line.model.empty() || line.out.empty()) throw Error("--model and --out are required (or --resume DIR)");
    if (line.task.empty() == line.data_file.empty()) throw Error("give exactly one of --task NAME and --data FILE.tsv");
    const models::ModelKind& kind = models::find_model_kind(line.model);
    if (!line.corpus_defaults_applied.empty()) {
      std::string applied;
      for (const std::string& flag : line.corpus_defaults_applied) applied += " " + flag;
      spdlog::info("{} defaults for a corpus (flags given on the command line win):{}", kind.name, applied);
    }
    json config = models::config_from_options(kind, line.model_options);
    config["seed"] = line.seed;
    // Locked before anything is loaded or written: a second run into a busy directory is
    // refused at once, and the first run's files stay as they are.
    std::optional<RunDirectoryLock> lock;
    if (root) lock.emplace(line.out);
    data_spec = line.task.empty() ? corpus_data_spec(line.data_file, line.reverse_pairs, line.split)
                                  : task_data_spec(line.task, line.seed, line.train_size, line.eval_size);
    data_spec["min_freq"] = line.min_freq;
    data = load_data(data_spec);
    // --split d2l reproduces d2l.ai's vocabularies exactly (min_freq 2 over cut sentences).
    const Vocabs vocabs =
        parse_name<CorpusSplit>(line.split, "--split") == CorpusSplit::d2l
            ? d2l_vocabs(data)
            : build_vocabs(data.train, {.min_freq = line.min_freq});
    auto model = models::make_model(kind.name, config, vocabs.source.size(), vocabs.target.size());
    const std::size_t batches_per_epoch = (data.train.size() + line.batch - 1) / line.batch;  // Batcher's count
    trainer.emplace(model, vocabs, data.train, train_cli::training_options(line, batches_per_epoch));
    if (trainer->batches_per_epoch() != batches_per_epoch)
      throw Error("qkv-train: " + std::to_string(trainer->batches_per_epoch()) + " batches per epoch, --warmup-epochs assumed " +
                  std::to_string(batches_per_epoch));
    spdlog::info("{} model, {} parameters; {} training pairs, {} batches per epoch", kind.name,
                 model->parameter_count(), data.train.size(), trainer->batches_per_epoch());
    spdlog::info("model config {}", model->config().dump());
    spdlog::info("training options {}", trainer->options().to_json().dump());
    if (root) checkpointer = std::make_shared<Checkpointer>(std::move(*lock), data_spec);
  }
  trainer->set_evaluator(evaluate_on(data.validation));
  trainer->set_communicator(mpi.world());
  if (mpi.world()->size() > 1)
    spdlog::info("data parallel: {} processes, {} rows of each batch of {} per process, {} bytes all-reduced per step",
                 mpi.world()->size(), trainer->options().batch_size / std::size_t(mpi.world()->size()),
                 trainer->options().batch_size, trainer->all_reduce_bytes_per_step());
  // Rank 0 alone writes; a stop it decides (--until) stops every rank (the Trainer agrees on it).
  if (root) {
    trainer->add_callback(checkpointer);
    trainer->add_callback(std::make_shared<ConsoleReporter>(::isatty(STDERR_FILENO) != 0));
    trainer->add_callback(std::make_shared<CurvesPlot>((fs::path(checkpointer->directory()) / "curves.svg").string()));
    if (target) trainer->add_callback(std::make_shared<StopAtTarget>(*target));
    if (line.trace_steps > 0)
      trainer->add_callback(
          std::make_shared<train_cli::StepTrace>(line.trace_steps, fs::path(checkpointer->directory()) / "trace"));
  }

  std::signal(SIGINT, on_sigint);
  const TrainResult result = trainer->train(&interrupted);
  if (!root) return result.reason == StopReason::diverged ? 1 : result.reason == StopReason::interrupted ? 130 : 0;
  const fs::path out = checkpointer->directory();
  if (result.reason == StopReason::diverged) {
    spdlog::error("{}", result.message);
    return 1;
  }
  if (result.reason == StopReason::interrupted) {
    spdlog::warn("interrupted: checkpoint saved in {}; continue with --resume {}", out.string(), out.string());
    return 130;
  }
  if (result.reason == StopReason::requested) spdlog::info("stopped early: {}", result.message);

  // The test set judges the model validation chose (best/), as a user would ship it.
  std::shared_ptr<models::Seq2SeqModel> chosen(&trainer->model(), [](models::Seq2SeqModel*) {});
  if (fs::exists(out / "best" / "config.json")) {
    const Checkpoint best = load_checkpoint((out / "best").string());
    chosen = best.model;
    const json& entry = best.history.back();
    spdlog::info("testing the best checkpoint by validation {}: epoch {:.2f}, step {}",
                 name_of(trainer->options().best_metric), entry.at("epoch").get<double>(),
                 entry.at("step").get<std::int64_t>());
  }
  const std::vector<SentencePair>& held_out = data.test.empty() ? data.validation : data.test;
  const Evaluation final =
      evaluate(*chosen, held_out, trainer->vocabs(), trainer->options().decode, trainer->options().eval_batch_size);
  for (std::size_t i = 0; i < std::min<std::size_t>(5, final.groups.size()); ++i)
    spdlog::info("{}  =>  {}", detokenize(data_spec, final.groups[i].source),
                 detokenize(data_spec, trainer->vocabs().target.decode(final.decoded[i].tokens)));
  const SentenceAttention sentence =
      sentence_attention(*chosen, trainer->vocabs(), held_out[0].source, trainer->options().decode);
  const AttentionPlots plots =
      write_attention_plots(sentence, trainer->vocabs(), data_spec, (out / "attention").string());
  write_attention_explorer(sentence, trainer->vocabs(), data_spec, (out / "attention.html").string());
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
  spdlog::info("wrote {}/: curves.svg{} attention.html metrics.jsonl and the checkpoint", out.string(), files);
  std::printf("final: val_loss=%.4f token_acc=%.4f exact=%.4f bleu=%.2f\n", final.loss, final.token_accuracy,
              final.exact_match, final.bleu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<MpiSession> mpi;
  try {
    mpi.emplace(argc, argv);
    return run(argc, argv, *mpi);
  } catch (const std::exception& e) {
    const int ranks = mpi ? mpi->world()->size() : 1;
    if (ranks == 1) {
      std::fprintf(stderr, "qkv-train: %s\n", e.what());
      return 2;
    }
    std::fprintf(stderr, "qkv-train (rank %d of %d): %s\n", mpi->world()->rank(), ranks, e.what());
    std::fflush(stderr);
    // The other ranks may be waiting in a collective this rank will never join.
    mpi->abort(2);
    return 2;
  }
}
