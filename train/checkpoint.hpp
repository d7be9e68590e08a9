#pragma once
// The checkpoint directory: what a run writes so that it can be resumed, translated with or
// exchanged with PyTorch.
//
//   model.safetensors      the weights, by dotted name; metadata "step"
//   optimizer.safetensors  the optimizer's state (moments, step counters, learning rate)
//   config.json            {"format": "qkv.checkpoint", "version": 1,
//                           "model": {"kind", "config"}, "vocab": {"source", "target"},
//                           "training": TrainOptions, "data": what the caller passed (how to
//                           rebuild the dataset and preprocess input), "progress": {epoch,
//                           batch_in_epoch, step, best_value, best_epoch}, "random_state": the
//                           dropout streams, "history": [one object per evaluation]}
//   metrics.jsonl          one JSON object per evaluation, rewritten whole from history
//   best/                  the same files for the best evaluation so far (best_metric)
//   .lock                  held (flock) by the process writing the directory
//
// Saving is crash-safe: the three files are first written completely (each atomically) into
// DIR/.staging, and only then renamed into DIR, config.json last. A failure while writing
// leaves DIR's previous checkpoint untouched; load_checkpoint checks that the weights, the
// optimizer and config.json carry the same step, so a torn set is reported, not loaded.
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "lib/text/corpus.hpp"
#include "models/seq2seq.hpp"
#include "optim/optimizer.hpp"
#include "train/options.hpp"

namespace qkv::train {

/// Where training stands (saved in config.json).
struct Progress {
  std::size_t epoch = 0;           // current epoch, 0-based
  std::size_t batch_in_epoch = 0;  // next batch to train in it
  std::int64_t step = 0;           // optimizer steps taken
  double best_value = 0;
  std::int64_t best_epoch = -1;    // index into history of the best evaluation; -1: none yet
};

/// Everything a checkpoint directory holds, loaded (the optimizer state stays on disk until a
/// Trainer is built from it).
struct Checkpoint {
  std::shared_ptr<models::Seq2SeqModel> model;
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

/// What save_checkpoint writes: views of a run's state.
struct CheckpointContents {
  const models::Seq2SeqModel& model;
  const Optimizer& optimizer;
  const Vocabs& vocabs;
  const TrainOptions& options;
  const nlohmann::json& data;
  const Progress& progress;
  const nlohmann::json& history;
};

/// Writes a checkpoint into `directory` (created if needed), crash-safely as described above.
void save_checkpoint(const std::string& directory, const CheckpointContents& contents);

/// While alive, holds an advisory lock (flock) on DIR/.lock, so that a second run into the same
/// directory is refused instead of overwriting the first one's checkpoint, metrics and plots.
/// The operating system drops the lock when the process ends, however it ends: a SIGKILLed run
/// leaves no stale lock behind.
class RunDirectoryLock {
 public:
  /// Creates `directory` if needed. Throws Error naming the directory and the process that
  /// holds it when another one does.
  explicit RunDirectoryLock(const std::string& directory);
  ~RunDirectoryLock();
  RunDirectoryLock(RunDirectoryLock&& other) noexcept;
  RunDirectoryLock& operator=(RunDirectoryLock&&) = delete;
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;

  const std::string& directory() const { return directory_; }

 private:
  std::string directory_;
  int descriptor_ = -1;
};

}  // namespace qkv::train
