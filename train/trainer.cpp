#include "train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "optim/adam.hpp"
#include "optim/clip.hpp"

namespace qkv::train {
namespace fs = std::filesystem;
using models::Seq2SeqModel;
using models::Seq2SeqOutput;
using nlohmann::json;

namespace {

BatchOptions training_batches(const TrainOptions& options) {
  return {.batch_size = options.batch_size, .shuffle = true, .seed = options.seed,
          .bucket_batches = options.bucket_batches};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// decode.max_length 0 means "the longest training target + 10", decided once, here.
TrainOptions with_decode_length(TrainOptions options, std::span<const SentencePair> pairs) {
  if (options.decode.max_length == 0) {
    std::size_t longest = 0;
    for (const SentencePair& pair : pairs) longest = std::max(longest, pair.target.size());
    options.decode.max_length = longest + 10;
  }
  return options;
}

}  // namespace

Trainer::Trainer(std::shared_ptr<Seq2SeqModel> model, Vocabs vocabs, std::span<const SentencePair> training_pairs,
                 TrainOptions options)
    : model_(std::move(model)),
      vocabs_(std::move(vocabs)),
      options_(with_decode_length(std::move(options), training_pairs)),
      batcher_(training_pairs, vocabs_.source, vocabs_.target, training_batches(options_)) {
  check_arg(model_ != nullptr, "Trainer", "no model");
  check_arg(!training_pairs.empty(), "Trainer", "the training set is empty");
  options_.validate();
  build_optimizer();
}

Trainer::Trainer(const Checkpoint& checkpoint, std::span<const SentencePair> training_pairs)
    : Trainer(checkpoint, training_pairs, checkpoint.options) {}

Trainer::Trainer(const Checkpoint& checkpoint, std::span<const SentencePair> training_pairs,
                 const TrainOptions& options, std::vector<std::string>* changes)
    : Trainer(checkpoint.model, checkpoint.vocabs, training_pairs, [&] {
        std::vector<std::string> changed;
        TrainOptions merged = merge_on_resume(checkpoint.options, options, changed);
        if (changes != nullptr) *changes = std::move(changed);
        return merged;
      }()) {
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
  check_arg(progress_.batch_in_epoch <= batcher_.num_batches(), "resume", [&] {
    return "the checkpoint is at batch " + std::to_string(progress_.batch_in_epoch) + " of an epoch that has only " +
           std::to_string(batcher_.num_batches()) + ": a different dataset or batch size?";
  });
}

void Trainer::add_callback(std::shared_ptr<TrainerCallback> callback) {
  check_arg(callback != nullptr, "Trainer::add_callback", "null callback");
  callbacks_.push_back(std::move(callback));
}

void Trainer::request_stop(std::string why) { stop_request_ = why.empty() ? "stop requested" : std::move(why); }

void Trainer::build_optimizer() {
  // The learning rate here is a placeholder: the schedule sets it before every step.
  const auto parameters = model_->named_parameters();
  switch (options_.optimizer) {
    case OptimizerKind::adamw:
      optimizer_ = std::make_unique<AdamW>(parameters, AdamWOptions{.lr = options_.lr, .weight_decay = options_.weight_decay});
      break;
    case OptimizerKind::adam:
      optimizer_ = std::make_unique<Adam>(parameters, AdamOptions{.lr = options_.lr, .weight_decay = options_.weight_decay});
      break;
  }
  switch (options_.schedule) {
    case ScheduleKind::noam: schedule_ = std::make_unique<NoamSchedule>(options_.lr, options_.warmup_steps); break;
    case ScheduleKind::constant: schedule_ = std::make_unique<ConstantSchedule>(options_.lr); break;
  }
}

TrainResult Trainer::train(const std::atomic<bool>* stop) {
  const auto start = std::chrono::steady_clock::now();
  // Evaluations record the training time of the whole run, earlier (resumed) processes included.
  run_start_ = start;
  seconds_before_run_ = history_.empty() ? 0.0 : history_.back().value("seconds", 0.0);
  stop_request_.clear();
  TrainResult result;
  const auto finish = [&](StopReason reason, std::string message = {}) {
    result.reason = reason;
    result.message = std::move(message);
    for (const auto& callback : callbacks_) callback->on_train_end(*this, result);
    return result;
  };
  for (const auto& callback : callbacks_) callback->on_train_start(*this);

  const bool budgeted = options_.time_budget_seconds > 0;
  const auto epochs_remain = [&] { return progress_.epoch < options_.epochs || (budgeted && options_.epochs == 0); };
  const CrossEntropyOptions loss_options{.ignore_index = Vocab::pad_id, .label_smoothing = real(options_.label_smoothing)};
  while (epochs_remain()) {
    const std::vector<Batch> batches = batcher_.epoch(progress_.epoch);
    double loss_sum = 0;
    std::size_t loss_count = 0;
    const auto mean_loss = [&] { return loss_count > 0 ? loss_sum / double(loss_count) : std::nan(""); };
    model_->train();
    for (; progress_.batch_in_epoch < batches.size(); ++progress_.batch_in_epoch) {
      if (stop != nullptr && stop->load()) return finish(StopReason::interrupted);
      if (budgeted && seconds_since(start) >= options_.time_budget_seconds) {
        evaluate_now(mean_loss(), false);
        return finish(StopReason::time_budget);
      }
      if (!stop_request_.empty()) {
        evaluate_now(mean_loss(), false);
        return finish(StopReason::requested, stop_request_);
      }
      const Batch& batch = batches[progress_.batch_in_epoch];
      const double learning_rate = apply_schedule(*schedule_, *optimizer_);
      const Seq2SeqOutput out = model_->forward(batch.source, batch.source_lengths, batch.target_input);
      Variable loss = cross_entropy(out.logits, batch.target_output, loss_options);  // []
      const double loss_value = loss.item();
      const StepInfo info{.epoch = progress_.epoch, .batch = progress_.batch_in_epoch,
                          .batches_in_epoch = batches.size(), .step = progress_.step + 1, .loss = loss_value,
                          .learning_rate = learning_rate, .tokens = count_label_tokens(batch.target_output),
                          .seconds = seconds_since(start)};
      if (!std::isfinite(loss_value))
        return finish(StopReason::diverged,
                      "the loss is " + format_number(loss_value) + " at step " + std::to_string(info.step) +
                          " (epoch " + std::to_string(info.epoch + 1) + ", batch " + std::to_string(info.batch + 1) +
                          "); stopped without saving, the last good checkpoint is kept. Try a lower --lr or --clip.");
      optimizer_->zero_grad();
      loss.backward();
      for (const auto& callback : callbacks_) callback->on_after_backward(*this, info);
      if (options_.clip_norm > 0) {
        const double norm = clip_grad_norm(optimizer_->parameters(), options_.clip_norm);
        if (!std::isfinite(norm))
          return finish(StopReason::diverged, "the gradient norm is " + format_number(norm) + " at step " +
                                                  std::to_string(info.step) +
                                                  "; stopped without saving, the last good checkpoint is kept");
      }
      optimizer_->step();
      ++progress_.step;
      loss_sum += loss_value;
      ++loss_count;
      for (const auto& callback : callbacks_) callback->on_step_end(*this, info);
    }
    ++progress_.epoch;
    progress_.batch_in_epoch = 0;
    ++result.epochs_completed;
    evaluate_now(mean_loss(), true);
    if (!stop_request_.empty() && epochs_remain()) return finish(StopReason::requested, stop_request_);
  }
  return finish(StopReason::completed);
}

void Trainer::evaluate_now(double train_loss, bool epoch_complete) {
  std::optional<Evaluation> evaluation;
  if (evaluator_) {
    evaluation = evaluator_(*model_, vocabs_, options_);
    model_->train();
  }
  json entry = {{"epoch", epoch_complete ? double(progress_.epoch)
                                         : double(progress_.epoch) + double(progress_.batch_in_epoch) /
                                                                         double(batcher_.num_batches())},
                {"step", progress_.step},
                {"train_loss", std::isfinite(train_loss) ? json(train_loss) : json(nullptr)}};
  if (evaluation)
    entry.update({{"val_loss", evaluation->loss},
                  {"token_acc", evaluation->token_accuracy},
                  {"exact", evaluation->exact_match},
                  {"bleu", evaluation->bleu}});
  entry.update({{"lr", optimizer_->learning_rate()}, {"seconds", seconds_before_run_ + seconds_since(run_start_)}});
  history_.push_back(entry);

  bool improved = false;
  if (evaluation) {
    const bool higher_is_better = options_.best_metric == BestMetric::bleu;
    const double value = higher_is_better ? evaluation->bleu : evaluation->loss;
    improved = progress_.best_epoch < 0 ||
               (higher_is_better ? value > progress_.best_value : value < progress_.best_value);
    if (improved) {
      progress_.best_value = value;
      progress_.best_epoch = std::int64_t(history_.size()) - 1;
    }
  }
  const EvaluationRecord record{.evaluation = evaluation ? &*evaluation : nullptr, .entry = history_.back(),
                                .improved = improved};
  for (const auto& callback : callbacks_) callback->on_evaluation(*this, record);
}

}  // namespace qkv::train
