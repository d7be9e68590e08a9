#include "train/trainer.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include <xtensor/xview.hpp>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/kernels.hpp"
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

/// Rows [first, last) of a batch: a data-parallel rank's share. The padded lengths stay the
/// global batch's, so every rank runs the same steps (and dropout draws) as one process.
Batch rows_of(const Batch& batch, std::size_t first, std::size_t last) {
  const auto rows = [&](const IndexArray& array) -> IndexArray { return xt::view(array, xt::range(first, last)); };
  Batch shard;
  shard.source = rows(batch.source);                  // [b, S]
  shard.source_lengths = rows(batch.source_lengths);  // [b]
  shard.target_input = rows(batch.target_input);      // [b, T]
  shard.target_output = rows(batch.target_output);    // [b, T]
  shard.target_lengths = rows(batch.target_lengths);  // [b]
  shard.indices.assign(batch.indices.begin() + std::ptrdiff_t(first), batch.indices.begin() + std::ptrdiff_t(last));
  return shard;
}

/// FNV-1a over the token ids of every batch: what the ranks compare to know they train on the
/// same data in the same order.
std::string hash_of_batches(const std::vector<Batch>& batches) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  const auto add = [&](const IndexArray& array) {
    for (const std::int64_t id : array) {
      hash ^= std::uint64_t(id);
      hash *= 0x100000001b3ULL;
    }
  };
  for (const Batch& batch : batches) {
    add(batch.source);
    add(batch.target_output);
  }
  return std::to_string(hash);
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

void Trainer::set_communicator(std::shared_ptr<Communicator> communicator) {
  check_arg(communicator != nullptr, "Trainer::set_communicator", "null communicator");
  communicator_ = std::move(communicator);
  all_reduce_.reset();
  if (communicator_->size() > 1) {
    std::vector<Variable> parameters;
    for (const NamedVariable& named : optimizer_->parameters()) parameters.push_back(named.second);
    all_reduce_ = std::make_unique<GradientAllReduce>(std::move(parameters));
  }
}

bool Trainer::on_any_rank(bool local) {
  if (communicator_->size() == 1) return local;
  double votes = local ? 1 : 0;
  communicator_->sum(std::span<double>(&votes, 1));
  return votes > 0;
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
  // The model's parametrisation may ask for per-parameter rates (μP's hidden weights: lr / m).
  optimizer_->set_parameter_groups(model_->parameter_groups());
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
  const bool parallel = communicator_->size() > 1;
  const std::size_t rank = std::size_t(communicator_->rank()), ranks = std::size_t(communicator_->size());
  if (parallel) {
    // Refused at once, on every rank, if the ranks would not train the same model alike.
    check_same_on_every_rank(*communicator_, {{"qkv", build_identity()},
                                              {"options", options_.to_json()},
                                              {"model", {{"kind", model_->kind()}, {"config", model_->config()}}},
                                              {"data", {{"batches_per_epoch", batcher_.num_batches()},
                                                        {"epoch_hash", hash_of_batches(batcher_.epoch(progress_.epoch))}}},
                                              {"progress", {{"epoch", progress_.epoch},
                                                            {"batch", progress_.batch_in_epoch},
                                                            {"step", progress_.step}}}});
    check_parameters_agree(*communicator_, model_->named_parameters(),
                           "start of training at step " + std::to_string(progress_.step));
  }
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
      bool interrupted = stop != nullptr && stop->load();
      bool out_of_time = budgeted && seconds_since(start) >= options_.time_budget_seconds;
      bool requested = !stop_request_.empty();
      if (parallel) {
        // A stop on any rank stops them all before this step: ranks must not part ways.
        std::array<double, 3> votes{double(interrupted), double(out_of_time), double(requested)};
        communicator_->sum(std::span<double>(votes));
        interrupted = votes[0] > 0;
        out_of_time = votes[1] > 0;
        requested = votes[2] > 0;
        if (requested && stop_request_.empty()) stop_request_ = "stop requested on another rank";
      }
      if (interrupted) return finish(StopReason::interrupted);
      if (out_of_time) {
        evaluate_now(mean_loss(), false);
        return finish(StopReason::time_budget);
      }
      if (requested) {
        evaluate_now(mean_loss(), false);
        return finish(StopReason::requested, stop_request_);
      }
      const Batch& batch = batches[progress_.batch_in_epoch];
      const double learning_rate = apply_schedule(*schedule_, *optimizer_);
      const std::size_t global_tokens = count_label_tokens(batch.target_output);
      // Alone: the whole batch. Data parallel: rows [first, last) of it, with dropout drawn as
      // for the whole batch (kernels::ScopedBatchShard).
      std::optional<Batch> shard;
      std::optional<kernels::ScopedBatchShard> shard_scope;
      if (parallel) {
        check_arg(batch.size() >= ranks, "data-parallel training", [&] {
          return "batch " + std::to_string(progress_.batch_in_epoch + 1) + " of epoch " +
                 std::to_string(progress_.epoch + 1) + " has " + std::to_string(batch.size()) + " rows, fewer than the " +
                 std::to_string(ranks) + " processes: use fewer processes or a larger batch";
        });
        const std::size_t first = batch.size() * rank / ranks, last = batch.size() * (rank + 1) / ranks;
        shard = rows_of(batch, first, last);
        shard_scope.emplace(kernels::BatchShard{.first_row = first, .rows = last - first, .global_rows = batch.size()});
      }
      const Batch& mine = shard ? *shard : batch;
      const Seq2SeqOutput out = model_->forward(mine.source, mine.source_lengths, mine.target_input);
      shard_scope.reset();
      Variable loss = cross_entropy(out.logits, mine.target_output, loss_options);  // []
      double loss_value = loss.item();
      const std::size_t my_tokens = shard ? count_label_tokens(mine.target_output) : global_tokens;
      if (parallel) {
        // The global batch's mean: Σ_ranks (mean · tokens) / global tokens.
        double loss_sum = loss_value * double(my_tokens);
        communicator_->sum(std::span<double>(&loss_sum, 1));
        loss_value = global_tokens > 0 ? loss_sum / double(global_tokens) : 0.0;
      }
      const StepInfo info{.epoch = progress_.epoch, .batch = progress_.batch_in_epoch,
                          .batches_in_epoch = batches.size(), .step = progress_.step + 1, .loss = loss_value,
                          .learning_rate = learning_rate, .tokens = global_tokens,
                          .seconds = seconds_since(start), .current_batch = &batch};
      if (!std::isfinite(loss_value))
        return finish(StopReason::diverged,
                      "the loss is " + format_number(loss_value) + " at step " + std::to_string(info.step) +
                          " (epoch " + std::to_string(info.epoch + 1) + ", batch " + std::to_string(info.batch + 1) +
                          "); stopped without saving, the last good checkpoint is kept. Try a lower --lr or --clip.");
      optimizer_->zero_grad();
      loss.backward();
      // Each rank's gradient is of its mean; weighted by its share of the tokens, the sum over
      // the ranks is the gradient of the global batch's mean.
      if (all_reduce_)
        all_reduce_->sum(*communicator_,
                         global_tokens > 0 ? real(double(my_tokens) / double(global_tokens)) : real(0));
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
    if (on_any_rank(!stop_request_.empty()) && epochs_remain())
      return finish(StopReason::requested, stop_request_.empty() ? "stop requested on another rank" : stop_request_);
  }
  return finish(StopReason::completed);
}

void Trainer::evaluate_now(double train_loss, bool epoch_complete) {
  check_parameters_agree(*communicator_, model_->named_parameters(), "step " + std::to_string(progress_.step));
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
