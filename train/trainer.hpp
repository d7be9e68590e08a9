#pragma once
// Training a Seq2SeqModel: the Trainer owns the model, Adam/AdamW, a learning-rate schedule,
// gradient clipping and label-smoothed cross-entropy (padding, id 0, ignored); it evaluates on
// the validation set after every epoch and checkpoints.
//
// A checkpoint directory holds
//   model.safetensors      the weights, by dotted name; metadata "step"
//   optimizer.safetensors  the optimizer's state (moments, step counters, learning rate)
//   config.json            {"format": "qkv.checkpoint", "version": 1,
//                           "model": {"kind", "config"}, "vocab": {"source", "target"},
//                           "training": TrainOptions, "data": what the caller passed (how to
//                           rebuild the dataset and preprocess input), "progress": {epoch,
//                           batch_in_epoch, step, best_value, best_epoch}, "history": [one
//                           object per evaluation, as in metrics.jsonl]}
//   metrics.jsonl          one JSON object per evaluation (epoch), rewritten whole from history
//   best/                  the same files for the best evaluation so far (best_metric)
//
// Saving is crash-safe: the three files are first written completely (each atomically) into
// DIR/.staging, and only then renamed into DIR, config.json last. A failure while writing
// leaves DIR's previous checkpoint untouched; load_checkpoint checks that the weights, the
// optimizer and config.json carry the same step, so a torn set is reported, not loaded.
//
// Reproducibility. Batches are a pure function of (seed, epoch) (lib/text/batching.hpp), and a
// checkpoint records the epoch and the next batch, so resuming — from the end of an epoch, an
// interruption or a time budget — replays exactly the batches an uninterrupted run would see,
// and with the same thread count the losses match bit for bit (tested). The layers' dropout
// streams are saved in config.json ("random_state", Module::random_state) and restored, so
// this holds with dropout too (tested with a transformer at dropout 0.1).
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/text/batching.hpp"
#include "lib/text/corpus.hpp"
#include "models/decoding.hpp"
#include "models/seq2seq.hpp"
#include "optim/optimizer.hpp"
#include "optim/schedule.hpp"

namespace qkv::models {

struct TrainOptions {
  /// Batch order (and nothing else: the model's initialisation seed is in its own config).
  std::uint64_t seed = 0;
  /// Train until this many epochs are complete in total (a resumed run continues to it).
  std::size_t epochs = 10;
  /// > 0: also stop between steps once this many seconds of this process's training passed.
  double time_budget_seconds = 0;
  std::size_t batch_size = 64;
  std::size_t bucket_batches = 0;
  std::string optimizer = "adam";  // "adam" or "adamw"
  double lr = 1e-3;
  double weight_decay = 0;
  std::string schedule = "constant";  // "constant" or "noam" (linear warm-up, then 1/sqrt)
  std::int64_t warmup_steps = 4000;   // noam only
  double clip_norm = 1.0;             // global gradient norm; 0: no clipping
  double label_smoothing = 0;
  /// Decoding for BLEU and exact match; max_length 0: the longest training target + 10.
  DecodeOptions decode = {.beam = 1, .max_length = 0};
  std::string best_metric = "bleu";  // "bleu" (higher is better) or "val_loss" (lower)
  std::size_t eval_batch_size = 128;

  nlohmann::json to_json() const;
  /// Throws Error naming the field for a missing or invalid one.
  static TrainOptions from_json(const nlohmann::json& json);
  /// Throws Error for an unknown optimizer, schedule or metric, or out-of-range numbers.
  void validate() const;
};

/// Validation (or test) results.
struct Evaluation {
  double loss = 0;            // teacher-forced cross-entropy per target token, no smoothing
  double token_accuracy = 0;  // teacher-forced argmax == label, over non-pad labels
  double exact_match = 0;     // decoded sentence equals one of its references
  double bleu = 0;            // corpus BLEU-4 (0-100), references grouped by source
  std::vector<SourceWithReferences> groups;  // the distinct sources with their references
  std::vector<Hypothesis> decoded;           // one per group
};

/// The most likely token at every position: logits [B, T, V] -> ids [B, T].
IndexArray argmax_last(const Array& logits);

/// Evaluates `pairs` (which must not be empty). Sets eval mode and leaves it set.
Evaluation evaluate(Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                    const DecodeOptions& decode, std::size_t batch_size = 128);

/// What the Trainer reports after every optimizer step.
struct StepInfo {
  std::size_t epoch = 0;  // 0-based
  std::size_t batch = 0;  // 0-based, within the epoch
  std::size_t batches_in_epoch = 0;
  std::int64_t step = 0;  // optimizer steps so far, this one included
  double loss = 0;
  double learning_rate = 0;
  std::size_t tokens = 0;  // target tokens in this batch
  double seconds = 0;      // training time of this process so far
};

enum class StopReason { completed, time_budget, interrupted, diverged };

struct TrainResult {
  StopReason reason = StopReason::completed;
  std::string message;  // for diverged: what was not finite, at which step
  std::size_t epochs_completed = 0;
};

/// Where training stands (saved in config.json).
struct Progress {
  std::size_t epoch = 0;           // current epoch, 0-based
  std::size_t batch_in_epoch = 0;  // next batch to train in it
  std::int64_t step = 0;           // optimizer steps taken
  double best_value = 0;
  std::int64_t best_epoch = -1;    // -1: no evaluation yet
};

/// Everything a checkpoint directory holds, loaded (the optimizer state stays on disk until a
/// Trainer is built from it).
struct Checkpoint {
  std::shared_ptr<Seq2SeqModel> model;
  Vocabs vocabs;
  TrainOptions options;
  nlohmann::json data;
  Progress progress;
  nlohmann::json history;
  std::string directory;
};

/// Reads config.json, rebuilds the model through the registry and loads its weights. Throws
/// Error naming the file for a missing, corrupt or inconsistent checkpoint.
Checkpoint load_checkpoint(const std::string& directory);

class Trainer {
 public:
  /// A fresh run writing to `out_dir` (created if needed). `data_spec` is stored verbatim in
  /// config.json for whoever resumes or translates.
  Trainer(std::shared_ptr<Seq2SeqModel> model, Vocabs vocabs, const Dataset& data, TrainOptions options,
          std::string out_dir, nlohmann::json data_spec = nlohmann::json::object());
  /// Continues `checkpoint` (writing to its directory) on `data`, which must be the dataset it
  /// was trained on. `options` replaces the saved options where training allows it: epochs and
  /// the time budget may change; anything else that differs is rejected with an Error, since it
  /// would break reproducibility.
  Trainer(Checkpoint checkpoint, const Dataset& data, const TrainOptions& options);
  Trainer(Checkpoint checkpoint, const Dataset& data);

  /// Trains until the epochs are done, the time budget is spent, `*stop` becomes true (checked
  /// between steps; a checkpoint is saved first) or the loss stops being finite (nothing is
  /// saved then: the last good checkpoint stays).
  TrainResult train(const std::function<void(const StepInfo&)>& on_step = {},
                    const std::atomic<bool>* stop = nullptr);

  /// Writes a checkpoint of the current state into `directory` (see the top of this file).
  void save_checkpoint(const std::string& directory) const;

  Seq2SeqModel& model() { return *model_; }
  const Vocabs& vocabs() const { return vocabs_; }
  const TrainOptions& options() const { return options_; }
  const Progress& progress() const { return progress_; }
  /// One entry per evaluation: epoch, step, train_loss, val_loss, token_acc, exact, bleu, lr,
  /// seconds (of training so far, resumed runs' earlier processes included, evaluations too).
  const nlohmann::json& history() const { return history_; }
  const std::string& out_dir() const { return out_dir_; }
  std::size_t batches_per_epoch() const { return batcher_.num_batches(); }

 private:
  void build_optimizer();
  void evaluate_and_checkpoint(double train_loss, bool epoch_complete);

  std::shared_ptr<Seq2SeqModel> model_;
  Vocabs vocabs_;
  const Dataset& data_;
  TrainOptions options_;
  std::string out_dir_;
  nlohmann::json data_spec_;
  Batcher batcher_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Schedule> schedule_;
  Progress progress_;
  nlohmann::json history_ = nlohmann::json::array();
  std::chrono::steady_clock::time_point run_start_;  // this process's train() call
  double seconds_before_run_ = 0;                      // training time of earlier processes
};

std::string to_string(StopReason reason);

}  // namespace qkv::models
