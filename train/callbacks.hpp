#pragma once
// The Trainer's standard plug-ins (train/trainer.hpp lists the seams they use). qkv-train adds
// all four; a run without a directory (a sweep, a test) adds none of the files' writers.
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/checkpoint.hpp"
#include "train/trainer.hpp"

namespace qkv::train {

/// Writes the run directory (train/checkpoint.hpp): a checkpoint after every evaluation and
/// when training is interrupted, metrics.jsonl, and best/ whenever an evaluation improves on
/// the best. Holds the directory's lock from construction on, so a second run into it is
/// refused before it trains. Nothing is saved for a diverged run: the last good checkpoint stays.
class Checkpointer : public TrainerCallback {
 public:
  /// Locks `directory` (creating it). `data_spec` goes into config.json verbatim, for whoever
  /// resumes or translates (train/data_spec.hpp).
  Checkpointer(const std::string& directory, nlohmann::json data_spec);
  /// With the lock already taken: a resumed run locks its directory before it reads the
  /// checkpoint, so that it never reads one a running process is writing.
  Checkpointer(RunDirectoryLock lock, nlohmann::json data_spec);

  void on_evaluation(Trainer& trainer, const EvaluationRecord& record) override;
  void on_train_end(Trainer& trainer, const TrainResult& result) override;

  /// Writes the checkpoint of the trainer's current state into `directory` (DIR or DIR/best).
  void save(const Trainer& trainer, const std::string& directory) const;
  const std::string& directory() const { return lock_.directory(); }

 private:
  RunDirectoryLock lock_;
  nlohmann::json data_spec_;
};

/// What a person watching sees: on a terminal a progress bar (epoch, step, loss, tokens/s,
/// ETA) redrawn in place; elsewhere (a log file, CI) a plain log line every `log_every` steps.
/// Both print one line per evaluation.
class ConsoleReporter : public TrainerCallback {
 public:
  /// `terminal`: draw the bar (qkv-train passes isatty(stderr)).
  explicit ConsoleReporter(bool terminal, std::int64_t log_every = 100);

  void on_train_start(Trainer& trainer) override;
  void on_step_end(Trainer& trainer, const StepInfo& step) override;
  void on_evaluation(Trainer& trainer, const EvaluationRecord& record) override;
  void on_train_end(Trainer& trainer, const TrainResult& result) override;

 private:
  bool terminal_;
  std::int64_t log_every_;
  double tokens_ = 0;
  bool bar_drawn_ = false;
};

/// curves.svg: one point per evaluation (training and validation loss, token accuracy, exact
/// match) and the training loss of every step of this process, averaged into at most
/// `max_step_points` points so the file stays small. Rewritten after every evaluation, so an
/// interrupted run has its curves too.
class CurvesPlot : public TrainerCallback {
 public:
  explicit CurvesPlot(std::string path, std::size_t max_step_points = 400);

  void on_step_end(Trainer& trainer, const StepInfo& step) override;
  void on_evaluation(Trainer& trainer, const EvaluationRecord& record) override;
  /// Writes the plot of `history` and the recorded steps now.
  void write(const nlohmann::json& history) const;

 private:
  std::string path_;
  std::size_t max_step_points_;
  std::vector<double> step_epochs_, step_losses_;  // fractional epoch and loss of each step
};

/// Stops training at the first evaluation whose metric reaches a target, e.g.
/// `StopAtTarget::parse("exact=0.995")`; a time budget or the epochs remain the cap.
class StopAtTarget : public TrainerCallback {
 public:
  /// metric: exact, bleu, token_acc (reached when >= value) or val_loss (when <= value).
  StopAtTarget(std::string metric, double value);
  /// "METRIC=VALUE"; Error naming the text and the known metrics otherwise.
  static StopAtTarget parse(const std::string& text);

  void on_evaluation(Trainer& trainer, const EvaluationRecord& record) override;
  const std::string& metric() const { return metric_; }
  double value() const { return value_; }

 private:
  std::string metric_;
  double value_;
};

/// A callback from a function, for the common case of watching every step:
///   trainer.add_callback(after_each_step([&](const StepInfo& step) { losses.push_back(step.loss); }));
std::shared_ptr<TrainerCallback> after_each_step(std::function<void(const StepInfo&)> on_step);

}  // namespace qkv::train
