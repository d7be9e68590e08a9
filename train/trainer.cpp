#include "train/trainer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/ops.hpp"
#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "lib/text/metrics.hpp"
#include "lib/numerics/safetensors.hpp"
#include "models/registry.hpp"
#include "optim/adam.hpp"
#include "optim/clip.hpp"

namespace qkv::models {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* checkpoint_format = "qkv.checkpoint";
constexpr int checkpoint_version = 1;

const char* penalty_name(LengthPenalty penalty) {
  switch (penalty) {
    case LengthPenalty::none: return "none";
    case LengthPenalty::length: return "length";
    case LengthPenalty::gnmt: return "gnmt";
  }
  return "none";
}

LengthPenalty penalty_from_name(const std::string& name) {
  if (name == "none") return LengthPenalty::none;
  if (name == "length") return LengthPenalty::length;
  if (name == "gnmt") return LengthPenalty::gnmt;
  throw Error("TrainOptions: unknown length penalty '" + name + "'; known: none, length, gnmt");
}

json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
  }
}

json progress_to_json(const Progress& p) {
  return {{"epoch", p.epoch}, {"batch_in_epoch", p.batch_in_epoch}, {"step", p.step},
          {"best_value", p.best_value}, {"best_epoch", p.best_epoch}};
}

Progress progress_from_json(const json& j, const std::string& where) {
  Progress p;
  p.epoch = json_field<std::size_t>(j, where, "epoch");
  p.batch_in_epoch = json_field<std::size_t>(j, where, "batch_in_epoch");
  p.step = json_field<std::int64_t>(j, where, "step");
  p.best_value = json_field<double>(j, where, "best_value");
  p.best_epoch = json_field<std::int64_t>(j, where, "best_epoch");
  return p;
}

BatchOptions training_batches(const TrainOptions& options) {
  return {.batch_size = options.batch_size, .shuffle = true, .seed = options.seed,
          .bucket_batches = options.bucket_batches};
}

/// Label positions that are not padding.
std::size_t count_tokens(const IndexArray& labels) {
  return std::size_t(std::count_if(labels.begin(), labels.end(), [](std::int64_t id) { return id != Vocab::pad_id; }));
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// The checkpoint files, in the order save_checkpoint moves them out of DIR/.staging.
constexpr const char* checkpoint_files[] = {"model.safetensors", "optimizer.safetensors", "config.json"};

/// A save that was killed while moving its files into place leaves DIR with some new files
/// and some old ones (load_checkpoint would refuse the mix as torn). Its staging directory
/// still holds the rest, and config.json there means staging was complete (it is written
/// last): moving what remains finishes that save. Called before every load and every save.
void finish_interrupted_save(const fs::path& dir) {
  const fs::path staging = dir / ".staging";
  std::error_code error;
  if (!fs::is_regular_file(staging / "config.json", error)) return;
  for (const char* name : checkpoint_files) {
    if (!fs::exists(staging / name, error)) continue;
    fs::rename(staging / name, dir / name, error);
    if (error)
      throw Error("checkpoint " + dir.string() + ": cannot finish an interrupted save (moving " +
                  (staging / name).string() + "): " + error.message());
  }
}

}  // namespace

IndexArray argmax_last(const Array& logits) {  // [B, T, V] -> [B, T]
  const std::size_t vocab = logits.shape().back();
  IndexArray best = IndexArray::from_shape({logits.shape()[0], logits.shape()[1]});
  for (std::size_t row = 0; row < best.size(); ++row) {
    const real* begin = logits.data() + row * vocab;
    best.data()[row] = std::max_element(begin, begin + vocab) - begin;
  }
  return best;
}

std::string to_string(StopReason reason) {
  switch (reason) {
    case StopReason::completed: return "completed";
    case StopReason::time_budget: return "time budget spent";
    case StopReason::interrupted: return "interrupted";
    case StopReason::diverged: return "diverged";
  }
  return "?";
}

// ---- options -----------------------------------------------------------------------------

json TrainOptions::to_json() const {
  return {{"seed", seed}, {"epochs", epochs}, {"time_budget_seconds", time_budget_seconds},
          {"batch_size", batch_size}, {"bucket_batches", bucket_batches}, {"optimizer", optimizer},
          {"lr", lr}, {"weight_decay", weight_decay}, {"schedule", schedule}, {"warmup_steps", warmup_steps},
          {"clip_norm", clip_norm}, {"label_smoothing", label_smoothing},
          {"decode", {{"beam", decode.beam}, {"max_length", decode.max_length},
                      {"length_penalty", penalty_name(decode.length_penalty)}, {"alpha", decode.alpha}}},
          {"best_metric", best_metric}, {"eval_batch_size", eval_batch_size}};
}

TrainOptions TrainOptions::from_json(const json& j) {
  const std::string where = "config.json training";
  TrainOptions o;
  o.seed = json_field<std::uint64_t>(j, where, "seed");
  o.epochs = json_field<std::size_t>(j, where, "epochs");
  o.time_budget_seconds = json_field<double>(j, where, "time_budget_seconds");
  o.batch_size = json_field<std::size_t>(j, where, "batch_size");
  o.bucket_batches = json_field<std::size_t>(j, where, "bucket_batches");
  o.optimizer = json_field<std::string>(j, where, "optimizer");
  o.lr = json_field<double>(j, where, "lr");
  o.weight_decay = json_field<double>(j, where, "weight_decay");
  o.schedule = json_field<std::string>(j, where, "schedule");
  o.warmup_steps = json_field<std::int64_t>(j, where, "warmup_steps");
  o.clip_norm = json_field<double>(j, where, "clip_norm");
  o.label_smoothing = json_field<double>(j, where, "label_smoothing");
  const json decode = json_field<json>(j, where, "decode");
  o.decode.beam = json_field<std::size_t>(decode, where + " decode", "beam");
  o.decode.max_length = json_field<std::size_t>(decode, where + " decode", "max_length");
  o.decode.length_penalty = penalty_from_name(json_field<std::string>(decode, where + " decode", "length_penalty"));
  o.decode.alpha = json_field<double>(decode, where + " decode", "alpha");
  o.best_metric = json_field<std::string>(j, where, "best_metric");
  o.eval_batch_size = json_field<std::size_t>(j, where, "eval_batch_size");
  o.validate();
  return o;
}

void TrainOptions::validate() const {
  const char* owner = "TrainOptions";
  check_arg(optimizer == "adam" || optimizer == "adamw", owner,
            "unknown optimizer '" + optimizer + "'; known: adam, adamw");
  check_arg(schedule == "constant" || schedule == "noam", owner,
            "unknown schedule '" + schedule + "'; known: constant, noam");
  check_arg(best_metric == "bleu" || best_metric == "val_loss", owner,
            "unknown best_metric '" + best_metric + "'; known: bleu, val_loss");
  check_arg(batch_size >= 1 && eval_batch_size >= 1, owner, "batch sizes must be at least 1");
  check_arg(epochs >= 1 || time_budget_seconds > 0, owner, "needs epochs >= 1 or a positive time budget");
  check_arg(std::isfinite(lr) && lr > 0, owner, "lr must be positive, got " + format_number(lr));
  check_arg(warmup_steps >= 1, owner, "warmup_steps must be at least 1");
  check_arg(clip_norm >= 0 && std::isfinite(clip_norm), owner, "clip_norm must be >= 0 (0: off)");
  check_arg(label_smoothing >= 0 && label_smoothing < 1, owner,
            "label_smoothing must be in [0, 1), got " + format_number(label_smoothing));
  check_arg(decode.beam >= 1, owner, "beam must be at least 1");
  check_arg(time_budget_seconds >= 0 && std::isfinite(time_budget_seconds), owner, "time budget must be >= 0");
}

// ---- evaluation --------------------------------------------------------------------------

Evaluation evaluate(Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                    const DecodeOptions& decode_options, std::size_t batch_size) {
  check_arg(!pairs.empty(), "evaluate", "no sentence pairs to evaluate");
  const NoGradGuard no_grad;
  model.eval();
  Evaluation result;

  // Teacher-forced loss and token accuracy over every pair.
  const Batcher batcher(pairs, vocabs.source, vocabs.target, {.batch_size = batch_size, .shuffle = false});
  double loss_sum = 0, correct = 0;
  std::size_t tokens = 0;
  for (const Batch& batch : batcher.epoch(0)) {
    const Seq2SeqOutput out = model.forward(batch.source, batch.source_lengths, batch.target_input);
    const Variable loss = cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id});
    const std::size_t n = count_tokens(batch.target_output);
    loss_sum += double(loss.item()) * double(n);
    correct += token_accuracy(argmax_last(out.logits.value()), batch.target_output) * double(n);
    tokens += n;
  }
  result.loss = loss_sum / double(tokens);
  result.token_accuracy = correct / double(tokens);

  // Decoding: each distinct source once, scored against all its references.
  result.groups = group_by_source(pairs);
  std::vector<SentencePair> sources;
  for (const SourceWithReferences& group : result.groups) sources.push_back({group.source, group.references[0]});
  const Batcher source_batcher(sources, vocabs.source, vocabs.target, {.batch_size = batch_size, .shuffle = false});
  result.decoded.resize(sources.size());
  for (const Batch& batch : source_batcher.epoch(0)) {
    std::vector<Hypothesis> hypotheses = decode(model, batch.source, batch.source_lengths, decode_options);
    for (std::size_t i = 0; i < batch.size(); ++i) result.decoded[batch.indices[i]] = std::move(hypotheses[i]);
  }
  std::vector<Tokens> hypotheses;
  std::vector<std::vector<Tokens>> references;
  for (std::size_t i = 0; i < sources.size(); ++i) {
    hypotheses.push_back(vocabs.target.decode(result.decoded[i].tokens));
    references.push_back(result.groups[i].references);
  }
  result.exact_match = exact_match(hypotheses, references);
  result.bleu = corpus_bleu(hypotheses, references).bleu;
  return result;
}

// ---- checkpoints -------------------------------------------------------------------------

Checkpoint load_checkpoint(const std::string& directory) {
  const fs::path dir(directory);
  const fs::path config_path = dir / "config.json";
  finish_interrupted_save(dir);
  if (!fs::exists(config_path)) throw Error("no checkpoint in " + directory + ": " + config_path.string() + " is missing");
  const json config = read_json_file(config_path);
  const std::string where = config_path.string();
  // Compared as JSON values: value("format", "") would throw a raw json error for a number.
  if (!config.is_object() || !config.contains("format") || config.at("format") != checkpoint_format)
    throw Error(where + ": not a qkv checkpoint (format is not \"" + checkpoint_format + "\")");
  if (!config.contains("version") || config.at("version") != checkpoint_version)
    throw Error(where + ": checkpoint version " + (config.contains("version") ? config.at("version").dump() : "(none)") +
                " is not supported (expected " +
                std::to_string(checkpoint_version) + ")");

  Checkpoint checkpoint;
  checkpoint.directory = directory;
  try {
    const json vocab = json_field<json>(config, where, "vocab");
    checkpoint.vocabs.source = Vocab::from_json(json_field<json>(vocab, where, "source"));
    checkpoint.vocabs.target = Vocab::from_json(json_field<json>(vocab, where, "target"));
  } catch (const Error& e) {
    throw Error(where + ": bad vocabulary: " + e.what());
  }
  checkpoint.options = TrainOptions::from_json(json_field<json>(config, where, "training"));
  checkpoint.data = json_field_or<json>(config, where, "data", json::object());
  checkpoint.progress = progress_from_json(json_field<json>(config, where, "progress"), where + " progress");
  checkpoint.history = json_field_or<json>(config, where, "history", json::array());

  const json model = json_field<json>(config, where, "model");
  const std::string kind = json_field<std::string>(model, where + " model", "kind");
  checkpoint.model = make_model(kind, json_field<json>(model, where + " model", "config"), checkpoint.vocabs.source.size(),
                                checkpoint.vocabs.target.size());
  const std::string weights = (dir / "model.safetensors").string();
  try {
    checkpoint.model->load(weights);
  } catch (const Error& e) {
    throw Error("checkpoint " + directory + ": cannot load the " + kind + " weights: " + e.what());
  }
  const TensorFile header = read_safetensors(weights);  // small models: reading twice is cheap
  const auto step = header.metadata.find("step");
  if (step == header.metadata.end() || step->second != std::to_string(checkpoint.progress.step))
    throw Error("checkpoint " + directory + ": model.safetensors is from step " +
                (step == header.metadata.end() ? std::string("?") : step->second) + " but config.json from step " +
                std::to_string(checkpoint.progress.step) + " (a torn save?)");
  // The dropout streams, so that a resumed run draws the masks an uninterrupted one would.
  try {
    checkpoint.model->load_random_state(json_field<std::map<std::string, std::string>>(config, where, "random_state"));
  } catch (const Error& e) {
    throw Error("checkpoint " + directory + ": " + e.what());
  } catch (const json::exception& e) {
    throw Error(where + ": random_state is not an object of strings: " + e.what());
  }
  return checkpoint;
}

void Trainer::save_checkpoint(const std::string& directory) const {
  const fs::path dir(directory), staging = fs::path(directory) / ".staging";
  std::error_code error;
  fs::create_directories(staging, error);
  if (error) throw Error("cannot create checkpoint directory " + staging.string() + ": " + error.message());
  finish_interrupted_save(dir);  // else this save's staging files would mix with that one's

  // Everything is written completely before anything in `dir` changes.
  model_->save((staging / "model.safetensors").string(), {{"step", std::to_string(progress_.step)},
                                                          {"kind", model_->kind()}});
  optimizer_->save((staging / "optimizer.safetensors").string());
  const json config = {{"format", checkpoint_format},
                       {"version", checkpoint_version},
                       {"model", {{"kind", model_->kind()}, {"config", model_->config()}}},
                       {"vocab", {{"source", vocabs_.source.to_json()}, {"target", vocabs_.target.to_json()}}},
                       {"training", options_.to_json()},
                       {"data", data_spec_},
                       {"progress", progress_to_json(progress_)},
                       {"random_state", model_->random_state()},
                       {"history", history_}};
  write_file_atomically((staging / "config.json").string(), config.dump(2) + "\n");
  for (const char* name : checkpoint_files) {
    fs::rename(staging / name, dir / name, error);
    if (error) throw Error("cannot move " + (staging / name).string() + " into place: " + error.message());
  }
}

// ---- the trainer -------------------------------------------------------------------------

Trainer::Trainer(std::shared_ptr<Seq2SeqModel> model, Vocabs vocabs, const Dataset& data, TrainOptions options,
                 std::string out_dir, json data_spec)
    : model_(std::move(model)),
      vocabs_(std::move(vocabs)),
      data_(data),
      options_(std::move(options)),
      out_dir_(std::move(out_dir)),
      data_spec_(std::move(data_spec)),
      batcher_(data.train, vocabs_.source, vocabs_.target, training_batches(options_)) {
  check_arg(model_ != nullptr, "Trainer", "no model");
  check_arg(!data.train.empty(), "Trainer", "the training set is empty");
  check_arg(!data.validation.empty(), "Trainer", "the validation set is empty");
  options_.validate();
  if (options_.decode.max_length == 0) {
    std::size_t longest = 0;
    for (const SentencePair& pair : data.train) longest = std::max(longest, pair.target.size());
    options_.decode.max_length = longest + 10;
  }
  build_optimizer();
}

Trainer::Trainer(Checkpoint checkpoint, const Dataset& data) : Trainer(checkpoint, data, checkpoint.options) {}

Trainer::Trainer(Checkpoint checkpoint, const Dataset& data, const TrainOptions& options)
    : Trainer(checkpoint.model, checkpoint.vocabs, data, [&] {
        TrainOptions merged = checkpoint.options;
        merged.epochs = options.epochs;
        merged.time_budget_seconds = options.time_budget_seconds;
        TrainOptions compared = options;
        compared.epochs = merged.epochs;
        compared.time_budget_seconds = merged.time_budget_seconds;
        if (compared.decode.max_length == 0) compared.decode.max_length = merged.decode.max_length;
        if (compared.to_json() != merged.to_json())
          throw Error("resume " + checkpoint.directory + ": training options differ from the checkpoint's (only epochs "
                      "and the time budget may change): saved " + merged.to_json().dump() + ", given " +
                      compared.to_json().dump());
        return merged;
      }(), checkpoint.directory, checkpoint.data) {
  progress_ = checkpoint.progress;
  history_ = checkpoint.history;
  const std::string path = (fs::path(checkpoint.directory) / "optimizer.safetensors").string();
  try {
    optimizer_->load(path);
  } catch (const Error& e) {
    throw Error("resume " + checkpoint.directory + ": cannot load the optimizer state: " + e.what());
  }
  if (optimizer_->step_count() != progress_.step)
    throw Error("resume " + checkpoint.directory + ": optimizer.safetensors is from step " +
                std::to_string(optimizer_->step_count()) + " but config.json from step " +
                std::to_string(progress_.step) + " (a torn save?)");
  check_arg(progress_.batch_in_epoch <= batcher_.num_batches(), "resume",
            "the checkpoint is at batch " + std::to_string(progress_.batch_in_epoch) + " of an epoch that has only " +
                std::to_string(batcher_.num_batches()) + ": a different dataset or batch size?");
}

void Trainer::build_optimizer() {
  if (options_.optimizer == "adamw")
    optimizer_ = std::make_unique<AdamW>(model_->named_parameters(),
                                         AdamWOptions{.lr = options_.lr, .weight_decay = options_.weight_decay});
  else
    optimizer_ = std::make_unique<Adam>(model_->named_parameters(),
                                        AdamOptions{.lr = options_.lr, .weight_decay = options_.weight_decay});
  if (options_.schedule == "noam")
    schedule_ = std::make_unique<NoamSchedule>(options_.lr, options_.warmup_steps);
  else
    schedule_ = std::make_unique<ConstantSchedule>(options_.lr);
}

TrainResult Trainer::train(const std::function<void(const StepInfo&)>& on_step, const std::atomic<bool>* stop) {
  fs::create_directories(out_dir_);
  const auto start = std::chrono::steady_clock::now();
  // Evaluations record the training time of the whole run, earlier (resumed) processes included.
  run_start_ = start;
  seconds_before_run_ =
      history_.empty() ? 0.0 : json_field_or<double>(history_.back(), "training history", "seconds", 0.0);
  TrainResult result;
  const bool budgeted = options_.time_budget_seconds > 0;
  const CrossEntropyOptions loss_options{.ignore_index = Vocab::pad_id, .label_smoothing = real(options_.label_smoothing)};

  while (progress_.epoch < options_.epochs || (budgeted && options_.epochs == 0)) {
    const std::vector<Batch> batches = batcher_.epoch(progress_.epoch);
    double loss_sum = 0;
    std::size_t loss_count = 0;
    model_->train();
    for (; progress_.batch_in_epoch < batches.size(); ++progress_.batch_in_epoch) {
      if (stop != nullptr && stop->load()) {
        save_checkpoint(out_dir_);
        result.reason = StopReason::interrupted;
        return result;
      }
      if (budgeted && seconds_since(start) >= options_.time_budget_seconds) {
        evaluate_and_checkpoint(loss_count > 0 ? loss_sum / double(loss_count) : std::nan(""), false);
        result.reason = StopReason::time_budget;
        return result;
      }
      const Batch& batch = batches[progress_.batch_in_epoch];
      const double learning_rate = apply_schedule(*schedule_, *optimizer_);
      const Seq2SeqOutput out = model_->forward(batch.source, batch.source_lengths, batch.target_input);
      Variable loss = cross_entropy(out.logits, batch.target_output, loss_options);  // []
      const double loss_value = loss.item();
      if (!std::isfinite(loss_value)) {
        result.reason = StopReason::diverged;
        result.message = "the loss is " + format_number(loss_value) + " at step " + std::to_string(progress_.step + 1) +
                         " (epoch " + std::to_string(progress_.epoch + 1) + ", batch " +
                         std::to_string(progress_.batch_in_epoch + 1) +
                         "); stopped without saving, the last good checkpoint is kept. Try a lower --lr or --clip.";
        return result;
      }
      optimizer_->zero_grad();
      loss.backward();
      if (options_.clip_norm > 0) {
        const double norm = clip_grad_norm(optimizer_->parameters(), options_.clip_norm);
        if (!std::isfinite(norm)) {
          result.reason = StopReason::diverged;
          result.message = "the gradient norm is " + format_number(norm) + " at step " +
                           std::to_string(progress_.step + 1) + "; stopped without saving, the last good checkpoint is kept";
          return result;
        }
      }
      optimizer_->step();
      ++progress_.step;
      loss_sum += loss_value;
      ++loss_count;
      if (on_step)
        on_step({.epoch = progress_.epoch, .batch = progress_.batch_in_epoch, .batches_in_epoch = batches.size(),
                 .step = progress_.step, .loss = loss_value, .learning_rate = learning_rate,
                 .tokens = count_tokens(batch.target_output), .seconds = seconds_since(start)});
    }
    ++progress_.epoch;
    progress_.batch_in_epoch = 0;
    ++result.epochs_completed;
    evaluate_and_checkpoint(loss_count > 0 ? loss_sum / double(loss_count) : std::nan(""), true);
  }
  result.reason = StopReason::completed;
  return result;
}

void Trainer::evaluate_and_checkpoint(double train_loss, bool epoch_complete) {
  const Evaluation evaluation =
      evaluate(*model_, data_.validation, vocabs_, options_.decode, options_.eval_batch_size);
  model_->train();
  json entry = {{"epoch", epoch_complete ? double(progress_.epoch)
                                         : double(progress_.epoch) + double(progress_.batch_in_epoch) /
                                                                         double(batcher_.num_batches())},
                {"step", progress_.step},
                {"train_loss", std::isfinite(train_loss) ? json(train_loss) : json(nullptr)},
                {"val_loss", evaluation.loss},
                {"token_acc", evaluation.token_accuracy},
                {"exact", evaluation.exact_match},
                {"bleu", evaluation.bleu},
                {"lr", optimizer_->learning_rate()},
                {"seconds", seconds_before_run_ + seconds_since(run_start_)}};
  history_.push_back(entry);
  spdlog::info("epoch {:.2f}  step {}  train_loss {}  val_loss {:.4f}  token_acc {:.4f}  exact {:.4f}  bleu {:.2f}",
               entry["epoch"].get<double>(), progress_.step, std::isfinite(train_loss) ? format_number(train_loss) : "-",
               evaluation.loss, evaluation.token_accuracy, evaluation.exact_match, evaluation.bleu);

  const bool higher_is_better = options_.best_metric == "bleu";
  const double value = higher_is_better ? evaluation.bleu : evaluation.loss;
  const bool improved = progress_.best_epoch < 0 ||
                        (higher_is_better ? value > progress_.best_value : value < progress_.best_value);
  if (improved) {
    progress_.best_value = value;
    progress_.best_epoch = std::int64_t(history_.size()) - 1;
  }
  std::string lines;
  for (const json& line : history_) lines += line.dump() + "\n";
  save_checkpoint(out_dir_);
  write_file_atomically((fs::path(out_dir_) / "metrics.jsonl").string(), lines);
  if (improved) save_checkpoint((fs::path(out_dir_) / "best").string());
}

}  // namespace qkv::models
