#pragma once
// Training a Seq2SeqModel. The Trainer owns the training loop — Adam/AdamW, a learning-rate
// schedule, gradient clipping, label-smoothed cross-entropy (padding, id 0, ignored) — and
// nothing else: evaluation, checkpoints, logging, plots and stopping rules are plugged in.
//
//   Trainer trainer(model, vocabs, data.train, options);
//   trainer.set_evaluator(evaluate_on(data.validation));          // none: no evaluation
//   trainer.add_callback(std::make_shared<Checkpointer>("runs/x", data_spec));  // none: nothing written
//   trainer.add_callback(std::make_shared<ConsoleReporter>());
//   const TrainResult result = trainer.train();
//
// The seams (TrainerCallback), in the order a step meets them:
//   on_train_start     once per train() call
//   on_after_backward  every gradient complete (summed over the ranks when data-parallel, see
//                      below), before clipping and the optimizer step: gradient probes
//   on_step_end        after the optimizer step
//   on_evaluation      after every epoch, and when a time budget, a stop request or an
//                      interruption ends training between epochs: where probes and the
//                      checkpointer go (record.evaluation is null without an evaluator)
//   on_train_end       once, whatever the reason (diverged included)
// A callback may call request_stop(): training then stops after the current step or
// evaluation, with an evaluation first if the epoch was cut short.
//
// Data parallelism (train/distributed.hpp). With set_communicator(world) on every rank of an
// MPI job, each rank forwards its block of rows of every global batch, the loss is normalised by
// the global batch's label tokens, and the gradients are summed over the ranks before the
// on_after_backward callbacks, so they, clipping and the optimizer see the global gradient.
// Stop decisions (the stop flag, the time budget, request_stop()) are taken together: a stop
// on any rank stops every rank at the same step. At start-up the ranks' options, model config
// and progress are compared (check_same_on_every_rank), and at every evaluation a hash of every
// parameter (check_parameters_agree). Every rank evaluates on its own (the same numbers);
// StepInfo::loss and ::tokens are the global batch's.
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
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/numerics/enum_names.hpp"
#include "lib/text/batching.hpp"
#include "lib/text/corpus.hpp"
#include "models/seq2seq.hpp"
#include "optim/optimizer.hpp"
#include "optim/schedule.hpp"
#include "train/checkpoint.hpp"
#include "train/distributed.hpp"
#include "train/evaluation.hpp"
#include "train/options.hpp"

namespace qkv::train {

/// What the Trainer reports around every optimizer step.
struct StepInfo {
  std::size_t epoch = 0;  // 0-based
  std::size_t batch = 0;  // 0-based, within the epoch
  std::size_t batches_in_epoch = 0;
  std::int64_t step = 0;  // this optimizer step, 1-based (progress().step once it is taken)
  double loss = 0;
  double learning_rate = 0;
  std::size_t tokens = 0;  // target tokens in this batch
  double seconds = 0;      // training time of this process so far
  /// The whole (global) batch of this step, as the Batcher made it; valid during the callback.
  const Batch* current_batch = nullptr;
};

/// An evaluation as the callbacks see it.
struct EvaluationRecord {
  const Evaluation* evaluation = nullptr;  // null when the Trainer has no evaluator
  /// The history entry: epoch (fractional when cut short), step, train_loss, val_loss,
  /// token_acc, exact, bleu, lr, seconds (of training so far, resumed runs' earlier
  /// processes included, evaluations too). Without an evaluator only the training fields.
  const nlohmann::json& entry;
  bool improved = false;  // the best so far by options().best_metric
};

enum class StopReason { completed, time_budget, interrupted, diverged, requested };
constexpr EnumNames<StopReason, 5> enum_names(StopReason) {
  return {"stop reason",
          {{{StopReason::completed, "completed"}, {StopReason::time_budget, "time_budget"},
            {StopReason::interrupted, "interrupted"}, {StopReason::diverged, "diverged"},
            {StopReason::requested, "requested"}}}};
}

struct TrainResult {
  StopReason reason = StopReason::completed;
  std::string message;  // diverged: what was not finite, at which step; requested: why
  std::size_t epochs_completed = 0;
};

class Trainer;

/// A plug-in of the training loop; override the seams you need (see the top of this file).
class TrainerCallback {
 public:
  virtual ~TrainerCallback() = default;
  virtual void on_train_start(Trainer& /*trainer*/) {}
  virtual void on_after_backward(Trainer& /*trainer*/, const StepInfo& /*step*/) {}
  virtual void on_step_end(Trainer& /*trainer*/, const StepInfo& /*step*/) {}
  virtual void on_evaluation(Trainer& /*trainer*/, const EvaluationRecord& /*record*/) {}
  virtual void on_train_end(Trainer& /*trainer*/, const TrainResult& /*result*/) {}
};

class Trainer {
 public:
  /// A fresh run on `training_pairs` (the Trainer encodes them once and keeps no reference).
  Trainer(std::shared_ptr<models::Seq2SeqModel> model, Vocabs vocabs, std::span<const SentencePair> training_pairs,
          TrainOptions options);
  /// Continues `checkpoint` (weights, optimizer state, progress, history) on the pairs it was
  /// trained on, with `options`: see merge_on_resume (train/options.hpp) for what may differ
  /// from the saved options; `changes` receives one line per option that changed.
  Trainer(const Checkpoint& checkpoint, std::span<const SentencePair> training_pairs, const TrainOptions& options,
          std::vector<std::string>* changes = nullptr);
  /// The same with the saved options.
  Trainer(const Checkpoint& checkpoint, std::span<const SentencePair> training_pairs);

  void set_evaluator(Evaluator evaluator) { evaluator_ = std::move(evaluator); }
  /// The processes this Trainer trains with (see the top of this file); alone by default.
  void set_communicator(std::shared_ptr<Communicator> communicator);
  Communicator& communicator() const { return *communicator_; }
  /// Bytes each rank sends into the gradient all-reduce per step (0 alone).
  std::size_t all_reduce_bytes_per_step() const { return all_reduce_ ? all_reduce_->bytes_per_step() : 0; }
  /// The gradient all-reduce (null alone): its bytes, time and calls so far.
  const GradientAllReduce* gradient_all_reduce() const { return all_reduce_.get(); }
  /// Callbacks run in the order they were added.
  void add_callback(std::shared_ptr<TrainerCallback> callback);

  /// Trains until the epochs are done, the time budget is spent, a callback calls
  /// request_stop(), `*stop` becomes true (checked between steps) or the loss stops being
  /// finite (no evaluation then, and a Checkpointer keeps the last good checkpoint).
  TrainResult train(const std::atomic<bool>* stop = nullptr);
  /// Ends training after the current step or evaluation; `why` becomes TrainResult::message.
  void request_stop(std::string why);

  models::Seq2SeqModel& model() { return *model_; }
  const models::Seq2SeqModel& model() const { return *model_; }
  const Vocabs& vocabs() const { return vocabs_; }
  const TrainOptions& options() const { return options_; }
  const Progress& progress() const { return progress_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Optimizer& optimizer() const { return *optimizer_; }
  /// One entry per evaluation (see EvaluationRecord::entry).
  const nlohmann::json& history() const { return history_; }
  std::size_t batches_per_epoch() const { return batcher_.num_batches(); }

 private:
  void build_optimizer();
  void evaluate_now(double train_loss, bool epoch_complete);
  /// `local` on any rank (collective; `local` itself alone).
  bool on_any_rank(bool local);

  std::shared_ptr<models::Seq2SeqModel> model_;
  Vocabs vocabs_;
  TrainOptions options_;
  Batcher batcher_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Schedule> schedule_;
  Evaluator evaluator_;
  std::shared_ptr<Communicator> communicator_ = single_process();
  std::unique_ptr<GradientAllReduce> all_reduce_;  // null alone
  std::vector<std::shared_ptr<TrainerCallback>> callbacks_;
  Progress progress_;
  nlohmann::json history_ = nlohmann::json::array();
  std::string stop_request_;  // non-empty: request_stop() was called
  std::chrono::steady_clock::time_point run_start_;  // this process's train() call
  double seconds_before_run_ = 0;                      // training time of earlier processes
};

}  // namespace qkv::train
