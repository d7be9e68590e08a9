#include "study/training_sweep.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "autograd/ops.hpp"
#include "lib/text/batching.hpp"
#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/metrics.hpp"
#include "train/trainer.hpp"
#include "models/transformer/transformer.hpp"
#include "study/report_io.hpp"
#include "study/spread_runs.hpp"
#include "study/toy_run.hpp"
#include "train/evaluation.hpp"

namespace qkv::study {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

/// The model's attention parameters, and which of them hold the query and key projections.
struct AttentionParameters {
  std::vector<Variable> all;          // every parameter of every self_attn / multihead_attn
  std::vector<Variable> in_proj;      // in_proj_weight [3E, E] and in_proj_bias [3E]: rows 0..2E-1 are W_q, W_k
  std::vector<Variable> temperatures;  // learned τ, []

  explicit AttentionParameters(const Module& model) {
    for (const auto& [name, variable] : model.named_parameters()) {
      if (!contains(name, "self_attn.") && !contains(name, "multihead_attn.")) continue;
      all.push_back(variable);
      if (contains(name, "in_proj_")) in_proj.push_back(variable);
      if (contains(name, "temperature")) temperatures.push_back(variable);
    }
  }

  /// {||∇ all||, ||∇ W_q, W_k, b_q, b_k||} from the gradients the last backward left.
  std::pair<double, double> gradient_norms() const {
    const auto squares = [](const Variable& v, std::size_t count) {
      if (!v.has_grad()) return 0.0;
      double total = 0;
      const real* g = v.grad().data();
      for (std::size_t i = 0; i < count; ++i) total += double(g[i]) * g[i];
      return total;
    };
    double all_squares = 0, qk_squares = 0;
    for (const Variable& v : all) all_squares += squares(v, v.numel());
    // The stacked projection is q, k, v along axis 0: the first two thirds are q and k.
    for (const Variable& v : in_proj) qk_squares += squares(v, v.numel() / 3 * 2);
    return {std::sqrt(all_squares), std::sqrt(qk_squares)};
  }

  double mean_temperature() const {
    if (temperatures.empty()) return kNaN;
    double total = 0;
    for (const Variable& t : temperatures) total += double(t.item());
    return total / double(temperatures.size());
  }
};

/// Teacher-forced loss, accuracy and attention statistics on the probe batch.
ProbePoint probe(models::Seq2SeqModel& model, const Batch& batch) {
  AttentionTally tally;
  const AttentionObserver observer(
      [&tally](const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed) {
        tally.add(scores, weights, allowed);
      });
  const NoGradGuard no_grad;
  model.eval();
  const models::Seq2SeqOutput out = model.forward(batch.source, batch.source_lengths, batch.target_input);
  model.train();
  ProbePoint point;
  point.probe_loss = cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id}).item();
  point.token_accuracy = token_accuracy(train::argmax_last(out.logits.value()), batch.target_output);  // [B, T]
  point.entropy = tally.rows ? tally.normalized_entropy / double(tally.rows) : kNaN;
  point.saturated_share = tally.rows ? tally.saturated / double(tally.rows) : kNaN;
  point.mean_abs_logit = tally.entries ? tally.abs_logit / double(tally.entries) : kNaN;
  return point;
}

std::string run_name(Scaling scaling, std::size_t key_size, std::uint64_t seed) {
  return name_of(scaling) + "-dk" + std::to_string(key_size) + "-seed" + std::to_string(seed);
}

}  // namespace

void AttentionTally::add(const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed) {
  const Shape shape = shape_of(scores);
  const Shape mask_shape = allowed ? shape_of(*allowed) : Shape{1};
  const Shape strides[2] = {strides_of(shape), broadcast_strides(mask_shape, shape)};
  const std::size_t mask_step = strides[1].back();
  const real* s = scores.data();
  const real* w = weights.data();
  const bool* keep = allowed ? allowed->data() : nullptr;
  for_each_row(shape, strides, [&](std::size_t o, std::size_t m, std::size_t count) {
    std::size_t kept = 0;
    double entropy = 0, largest = 0;
    for (std::size_t j = 0; j < count; ++j) {
      if (keep != nullptr && !keep[m + j * mask_step]) continue;
      ++kept;
      abs_logit += std::abs(double(s[o + j]));
      const double p = w[o + j];
      if (p > 0) entropy -= p * std::log(p);
      largest = std::max(largest, p);
    }
    entries += kept;
    // A row with one allowed key (the first step of causal self-attention) has no choice to make.
    if (kept < 2) return;
    normalized_entropy += entropy / std::log(double(kept));
    saturated += largest > kSaturatedWeight ? 1 : 0;
    ++rows;
  });
}

void SweepOptions::validate() const {
  const char* owner = "SweepOptions";
  check_arg(!key_sizes.empty() && !scalings.empty() && seeds > 0, owner,
            "key_sizes, scalings and seeds must not be empty");
  for (const std::size_t d : key_sizes)
    check_arg(d > 0 && d_model % d == 0, owner,
              "d_model " + std::to_string(d_model) + " is not a multiple of d_k " + std::to_string(d));
  check_arg(steps > 0 && batch_size > 0 && probe_every > 0 && probe_size > 0 && layers > 0 && dim_feedforward > 0,
            owner, "steps, batch_size, probe_every, probe_size, layers and dim_feedforward must be positive");
  check_arg(min_length >= 1 && min_length <= max_length, owner,
            "need 1 <= min_length <= max_length, got " + std::to_string(min_length) + " and " +
                std::to_string(max_length));
  check_arg(jobs > 0, owner, "jobs must be positive");
}

RunResult train_one(const SweepOptions& options, Scaling scaling, std::size_t key_size, std::uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  // The same data for every run of this seed; the Trainer evaluates on the probe pairs at the end.
  ToyRunOptions toy;
  toy.task = options.task, toy.min_length = options.min_length, toy.max_length = options.max_length;
  toy.model.d_model = options.d_model;
  toy.model.nhead = options.d_model / key_size;
  toy.model.encoder_layers = toy.model.decoder_layers = options.layers;
  toy.model.dim_feedforward = options.dim_feedforward;
  toy.model.dropout = 0;
  toy.model.scale = score_scale(scaling, key_size);
  toy.model.seed = seed;
  toy.steps = options.steps, toy.batch_size = options.batch_size, toy.validation_size = options.probe_size;
  toy.training.lr = options.lr, toy.training.clip_norm = options.clip_norm;
  ToyRun run(toy);
  run.trainer.set_evaluator(train::evaluate_on(run.data.validation));
  const AttentionParameters attention(*run.model);

  RunResult result;
  result.scaling = scaling, result.key_size = key_size, result.heads = options.d_model / key_size, result.seed = seed;
  ProbePoint first = probe(*run.model, run.probe_batch);
  first.train_loss = first.attention_grad_norm = first.qk_grad_norm = kNaN;
  first.temperature = attention.mean_temperature();
  result.curve.push_back(first);

  // Each step's attention gradient norms as the optimizer used them (after clipping), averaged
  // over the window between probes; the model probed every probe_every steps.
  class Probe : public train::TrainerCallback {
   public:
    Probe(const SweepOptions& options, const AttentionParameters& attention, models::Seq2SeqModel& model,
          const Batch& batch, RunResult& result)
        : options_(options), attention_(attention), model_(model), batch_(batch), result_(result) {}
    void on_step_end(train::Trainer& /*trainer*/, const train::StepInfo& info) override {
      const auto [grad_norm, qk_norm] = attention_.gradient_norms();
      loss_sum_ += info.loss, grad_sum_ += grad_norm, qk_sum_ += qk_norm;
      ++window_;
      if (info.step % std::int64_t(options_.probe_every) != 0 && info.step != std::int64_t(options_.steps)) return;
      ProbePoint point = probe(model_, batch_);
      point.step = info.step;
      point.train_loss = loss_sum_ / double(window_);
      point.attention_grad_norm = grad_sum_ / double(window_);
      point.qk_grad_norm = qk_sum_ / double(window_);
      point.temperature = attention_.mean_temperature();
      result_.curve.push_back(point);
      if (!result_.steps_to_target && point.token_accuracy >= options_.target_accuracy) result_.steps_to_target = info.step;
      loss_sum_ = grad_sum_ = qk_sum_ = 0;
      window_ = 0;
    }

   private:
    const SweepOptions& options_;
    const AttentionParameters& attention_;
    models::Seq2SeqModel& model_;
    const Batch& batch_;
    RunResult& result_;
    double loss_sum_ = 0, grad_sum_ = 0, qk_sum_ = 0;
    std::size_t window_ = 0;
  };
  run.trainer.add_callback(std::make_shared<Probe>(options, attention, *run.model, run.probe_batch, result));
  const train::TrainResult trained = run.trainer.train();
  result.stop_reason = name_of(trained.reason);
  if (trained.reason == train::StopReason::diverged) result.stop_reason += ": " + trained.message;
  if (!run.trainer.history().empty()) {
    const nlohmann::json& last = run.trainer.history().back();
    result.final_loss = last.at("val_loss").get<double>();
    result.final_token_accuracy = last.at("token_acc").get<double>();
    result.final_exact = last.at("exact").get<double>();
  } else {
    result.final_loss = result.final_token_accuracy = result.final_exact = kNaN;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

namespace {

struct Job {
  Scaling scaling;
  std::size_t key_size;
  std::uint64_t seed;
};

/// Every (d_k, scaling, seed) in the nested order of the results.
std::vector<Job> sweep_jobs(const SweepOptions& options) {
  std::vector<Job> jobs;
  for (const std::size_t d : options.key_sizes)
    for (const Scaling s : options.scalings)
      for (std::uint64_t seed = 0; seed < options.seeds; ++seed) jobs.push_back({s, d, seed});
  return jobs;
}

json to_exact_json(const RunResult& r) {
  json curve = json::array();
  for (const ProbePoint& p : r.curve)
    curve.push_back({p.step, exact_json(p.train_loss), exact_json(p.probe_loss), exact_json(p.token_accuracy),
                     exact_json(p.entropy), exact_json(p.saturated_share), exact_json(p.mean_abs_logit),
                     exact_json(p.attention_grad_norm), exact_json(p.qk_grad_norm), exact_json(p.temperature)});
  return {{"scaling", name_of(r.scaling)}, {"key_size", r.key_size}, {"heads", r.heads}, {"seed", r.seed},
          {"curve", curve}, {"steps_to_target", r.steps_to_target ? json(*r.steps_to_target) : json(nullptr)},
          {"final", {exact_json(r.final_loss), exact_json(r.final_token_accuracy), exact_json(r.final_exact)}},
          {"seconds", exact_json(r.seconds)}, {"stop_reason", r.stop_reason}};
}

RunResult from_exact_json(const json& j) {
  RunResult r;
  r.scaling = parse_name<Scaling>(j.at("scaling").get<std::string>(), "scaling");
  r.key_size = j.at("key_size").get<std::size_t>();
  r.heads = j.at("heads").get<std::size_t>();
  r.seed = j.at("seed").get<std::uint64_t>();
  for (const json& p : j.at("curve"))
    r.curve.push_back({.step = p.at(0).get<std::int64_t>(), .train_loss = exact_double(p.at(1)),
                       .probe_loss = exact_double(p.at(2)), .token_accuracy = exact_double(p.at(3)),
                       .entropy = exact_double(p.at(4)), .saturated_share = exact_double(p.at(5)),
                       .mean_abs_logit = exact_double(p.at(6)), .attention_grad_norm = exact_double(p.at(7)),
                       .qk_grad_norm = exact_double(p.at(8)), .temperature = exact_double(p.at(9))});
  if (!j.at("steps_to_target").is_null()) r.steps_to_target = j.at("steps_to_target").get<std::int64_t>();
  r.final_loss = exact_double(j.at("final").at(0));
  r.final_token_accuracy = exact_double(j.at("final").at(1));
  r.final_exact = exact_double(j.at("final").at(2));
  r.seconds = exact_double(j.at("seconds"));
  r.stop_reason = j.at("stop_reason").get<std::string>();
  return r;
}

std::string describe(const RunResult& r) {
  return run_name(r.scaling, r.key_size, r.seed) + " (" + std::to_string(r.heads) + " heads): " +
         (r.steps_to_target ? std::to_string(*r.steps_to_target) + " steps to target"
                            : std::string("target not reached")) +
         ", final token_acc " + format_number(std::round(r.final_token_accuracy * 1e4) / 1e4) + ", " +
         format_number(std::round(r.seconds * 10) / 10) + " s" +
         (r.stop_reason == "completed" ? "" : " [" + r.stop_reason + "]");
}

}  // namespace

std::vector<RunResult> run_sweep(const SweepOptions& options, train::Communicator& communicator,
                                 const std::function<void(std::string_view)>& progress) {
  options.validate();
  const std::vector<Job> jobs = sweep_jobs(options);
  return spread_runs<RunResult>(
      communicator, jobs.size(), options.jobs, "training", progress,
      [&](std::size_t i) { return train_one(options, jobs[i].scaling, jobs[i].key_size, jobs[i].seed); },
      to_exact_json, [](std::size_t, const json& j) { return from_exact_json(j); }, describe);
}

}  // namespace qkv::study
