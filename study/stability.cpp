#include "study/stability.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <map>
#include <sstream>

#include <xtensor/xview.hpp>

#include "autograd/ops.hpp"
#include "layers/sigma_reparam.hpp"
#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/error.hpp"
#include "lib/plot/svg.hpp"
#include "lib/text/batching.hpp"
#include "lib/text/metrics.hpp"
#include "lib/text/tasks.hpp"
#include "models/registry.hpp"
#include "study/report_io.hpp"
#include "study/spread_runs.hpp"
#include "study/toy_run.hpp"
#include "train/evaluation.hpp"
#include "train/trainer.hpp"

namespace qkv::study {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// The attention layers of a transformer in the order their softmax runs in forward.
std::vector<std::string> attention_layer_names(const models::TransformerConfig& config) {
  std::vector<std::string> names;
  for (std::size_t i = 0; i < config.encoder_layers; ++i) names.push_back("encoder.layers." + std::to_string(i) + ".self_attn");
  for (std::size_t i = 0; i < config.decoder_layers; ++i) {
    names.push_back("decoder.layers." + std::to_string(i) + ".self_attn");
    names.push_back("decoder.layers." + std::to_string(i) + ".multihead_attn");
  }
  return names;
}

/// β per head of one pre-LN self-attention layer: every logit of a row lies within
/// c·σ_h·R̃² of 0, so a row's logits span at most β_h = 2·c·σ_h·R̃², where σ_h = ‖W̃_qᵀ W̃_k‖₂
/// of the head with the bias appended as a column (x̃ = [x; 1]), c the score scale, and
/// R̃² = R² + 1 with R = max|g|·√E + ‖b‖₂ bounding ‖x‖ for x = LayerNorm(y) with weight g and
/// bias b (the normalised vector has norm at most √E). Cauchy–Schwarz, nothing else.
struct HeadBounds {
  std::vector<double> sigma, beta;
};

HeadBounds head_bounds(const std::map<std::string, Array>& state, const std::string& layer, const std::string& norm,
                       std::size_t heads, double scale) {
  const Array& in_proj = state.at(layer + ".in_proj_weight");  // [3E, E]
  const std::size_t embed = in_proj.shape()[1], d = embed / heads;
  const auto bias_it = state.find(layer + ".in_proj_bias");
  // The effective weight of block q (0) or k (1): γ/σ · W under σReparam, σ = uᵀWv from its buffers.
  const auto block = [&](std::size_t b, const char* name) {
    Array w = Array(xt::view(in_proj, xt::range(b * embed, (b + 1) * embed), xt::all()));  // [E, E]
    const auto gamma = state.find(layer + ".in_proj_sigma_" + name + ".gamma");
    if (gamma != state.end()) {
      const Array& u = state.at(layer + ".in_proj_sigma_" + name + ".u");
      const Array& v = state.at(layer + ".in_proj_sigma_" + name + ".v");
      double sigma = 0;
      for (std::size_t r = 0; r < embed; ++r)
        for (std::size_t c = 0; c < embed; ++c) sigma += double(u(r)) * w(r, c) * v(c);
      w *= static_cast<real>(gamma->second() / sigma);
    }
    return w;
  };
  const Array wq = block(0, "q"), wk = block(1, "k");
  const Array& g = state.at(norm + ".weight");
  const Array& nb = state.at(norm + ".bias");
  double g_max = 0, b_norm = 0;
  for (const real x : g) g_max = std::max(g_max, std::abs(double(x)));
  for (const real x : nb) b_norm += double(x) * x;
  const double radius = g_max * std::sqrt(double(embed)) + std::sqrt(b_norm);
  const double radius_squared = radius * radius + 1;
  HeadBounds bounds;
  for (std::size_t h = 0; h < heads; ++h) {
    // W̃ [d, E + 1] per head, then M = W̃_qᵀ W̃_k [E + 1, E + 1].
    Array q_aug = zeros({d, embed + 1}), k_aug = zeros({d, embed + 1});
    for (std::size_t r = 0; r < d; ++r) {
      for (std::size_t c = 0; c < embed; ++c) q_aug(r, c) = wq(h * d + r, c), k_aug(r, c) = wk(h * d + r, c);
      if (bias_it != state.end())
        q_aug(r, embed) = bias_it->second(h * d + r), k_aug(r, embed) = bias_it->second(embed + h * d + r);
    }
    Array m = zeros({embed + 1, embed + 1});
    for (std::size_t i = 0; i <= embed; ++i)
      for (std::size_t j = 0; j <= embed; ++j) {
        double total = 0;
        for (std::size_t r = 0; r < d; ++r) total += double(q_aug(r, i)) * k_aug(r, j);
        m(i, j) = static_cast<real>(total);
      }
    const double sigma = spectral_norm(m, 100);
    bounds.sigma.push_back(sigma);
    bounds.beta.push_back(2 * scale * sigma * radius_squared);
  }
  return bounds;
}

/// Reads every attention call of one probe forward into `layers` (one LayerProbe per call, in order).
class ProbeObserver {
 public:
  ProbeObserver(std::vector<LayerProbe>& layers, const std::vector<HeadBounds>& bounds)
      : layers_(layers), bounds_(bounds),
        observer_([this](const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed) {
          add(scores, weights, allowed);
        }) {}

 private:
  void add(const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed) {
    check_arg(call_ < layers_.size(), "train_tracked", "more attention calls than attention layers");
    LayerProbe& layer = layers_[call_];
    const HeadBounds* bound = call_ < bounds_.size() && !bounds_[call_].beta.empty() ? &bounds_[call_] : nullptr;
    ++call_;
    const Shape shape = shape_of(scores);  // [B, H, Tq, Tk]
    check_shape(shape.size() == 4, "train_tracked", "expected attention scores [B, H, Tq, Tk], got " + to_string(shape));
    const std::size_t heads = shape[1], queries = shape[2];
    const Shape mask_shape = allowed ? shape_of(*allowed) : Shape{1};
    const Shape strides[2] = {strides_of(shape), broadcast_strides(mask_shape, shape)};
    const std::size_t mask_step = strides[1].back();
    const real* s = scores.data();
    const real* w = weights.data();
    const bool* keep = allowed ? allowed->data() : nullptr;
    std::vector<double> head_sum(heads, 0), head_nats(heads, 0), head_bound(heads, 0);
    std::vector<std::size_t> head_rows(heads, 0);
    double abs_sum = 0, largest = 0;
    std::size_t entries = 0;
    for_each_row(shape, strides, [&](std::size_t o, std::size_t m, std::size_t count) {
      const std::size_t head = (o / count / queries) % heads;
      std::size_t kept = 0;
      double entropy = 0;
      for (std::size_t j = 0; j < count; ++j) {
        if (keep != nullptr && !keep[m + j * mask_step]) continue;
        ++kept;
        const double a = std::abs(double(s[o + j]));
        abs_sum += a, largest = std::max(largest, a);
        const double p = w[o + j];
        if (p > 0) entropy -= p * std::log(p);
      }
      entries += kept;
      if (kept < 2) return;  // one allowed key: no choice, no entropy
      head_sum[head] += entropy / std::log(double(kept));
      head_nats[head] += entropy;
      ++head_rows[head];
      if (bound) {
        const double b = entropy_lower_bound(kept, bound->beta[head]);
        head_bound[head] += b;
        if (entropy < b - 1e-9) ++layer.bound_violations;
      }
    });
    layer.mean_abs_logit = entries ? abs_sum / double(entries) : kNaN;
    layer.max_abs_logit = largest;
    double total = 0;
    std::size_t rows = 0;
    for (std::size_t h = 0; h < heads; ++h) {
      layer.head_entropy.push_back(head_rows[h] ? head_sum[h] / double(head_rows[h]) : kNaN);
      total += head_sum[h], rows += head_rows[h];
      if (bound) {
        layer.head_sigma.push_back(bound->sigma[h]);
        layer.head_entropy_nats.push_back(head_rows[h] ? head_nats[h] / double(head_rows[h]) : kNaN);
        layer.head_bound_nats.push_back(head_rows[h] ? head_bound[h] / double(head_rows[h]) : kNaN);
      }
    }
    layer.entropy = rows ? total / double(rows) : kNaN;
  }

  std::vector<LayerProbe>& layers_;
  const std::vector<HeadBounds>& bounds_;
  std::size_t call_ = 0;
  AttentionObserver observer_;
};

double mean_abs(const Array& values) {
  double total = 0;
  for (const real v : values) total += std::abs(double(v));
  return values.size() ? total / double(values.size()) : kNaN;
}

double score_factor(const models::TransformerConfig& config) {
  return DotProductAttention(config.scale).scale_factor(config.d_model / config.nhead);
}

TrackedProbe probe(models::Seq2SeqModel& model, const models::TransformerConfig& config, const Batch& batch,
                   bool with_bound) {
  TrackedProbe point;
  const std::vector<std::string> names = attention_layer_names(config);
  for (const std::string& name : names) {
    LayerProbe layer;
    layer.name = name;
    point.layers.push_back(layer);
  }
  std::vector<HeadBounds> bounds(names.size());
  if (with_bound) {
    const std::map<std::string, Array> state = model.state_dict();
    const double c = score_factor(config);
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (names[i].ends_with(".multihead_attn")) continue;  // keys from another LayerNorm: not bounded here
      const std::string norm = names[i].substr(0, names[i].size() - std::string("self_attn").size()) + "norm1";
      bounds[i] = head_bounds(state, names[i], norm, config.nhead, c);
    }
  }
  // The attention outputs, by hook (after out_proj), in the same order as the layers.
  std::vector<HookId> hooks;
  for (std::size_t i = 0; i < names.size(); ++i)
    hooks.push_back(model.add_hook(names[i] + ".output", [&point, i](Variable& value, const HookCall&) {
      point.layers[i].mean_abs_output = mean_abs(value.value());
    }));
  NoGradGuard no_grad;
  model.eval();
  models::Seq2SeqOutput out;
  {
    ProbeObserver observer(point.layers, bounds);
    out = model.forward(batch.source, batch.source_lengths, batch.target_input);
  }
  model.train();
  for (const HookId id : hooks) model.remove_hook(id);
  point.probe_loss = cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id}).item();
  point.token_accuracy = token_accuracy(train::argmax_last(out.logits.value()), batch.target_output);
  point.mean_abs_output_logit = mean_abs(out.logits.value());
  return point;
}

}  // namespace

double TrackedProbe::max_abs_logit() const {
  double largest = 0;
  for (const LayerProbe& l : layers) largest = std::max(largest, l.max_abs_logit);
  return largest;
}

double TrackedProbe::min_head_entropy() const {
  double lowest = std::numeric_limits<double>::infinity();
  for (const LayerProbe& l : layers)
    for (const double h : l.head_entropy)
      if (std::isfinite(h)) lowest = std::min(lowest, h);
  return std::isfinite(lowest) ? lowest : kNaN;
}

double TrackedProbe::mean_entropy() const {
  double total = 0;
  std::size_t count = 0;
  for (const LayerProbe& l : layers)
    if (std::isfinite(l.entropy)) total += l.entropy, ++count;
  return count ? total / double(count) : kNaN;
}

double entropy_lower_bound(std::size_t keys, double beta) {
  check_arg(keys >= 1 && beta >= 0 && std::isfinite(beta), "entropy_lower_bound",
            "needs keys >= 1 and a finite beta >= 0, got keys " + std::to_string(keys) + ", beta " + format_number(beta));
  // Along any one logit the entropy rises then falls (∂H/∂z_j = p_j(−log p_j − H) changes sign
  // once), so over the box [0, β]^T its minimum sits at a corner: k logits at β, T − k at 0.
  // Relative to the top: k weights e^0, T − k weights e^{−β}.
  double lowest = std::log(double(keys));
  const double low = std::exp(-beta);
  for (std::size_t k = 1; k < keys; ++k) {
    const double rest = double(keys - k) * low;  // (T − k)e^{−β}
    const double z = double(k) + rest;
    lowest = std::min(lowest, std::log(z) + beta * rest / z);
  }
  return lowest;
}

TrackedRun train_tracked(const TrackedRunOptions& options) {
  check_arg(options.steps > 0 && options.batch_size > 0 && options.probe_every > 0 && options.probe_size > 0,
            "train_tracked", "steps, batch_size, probe_every and probe_size must be positive");
  const auto start = std::chrono::steady_clock::now();
  ToyRunOptions toy;
  toy.task = options.task, toy.min_length = options.min_length, toy.max_length = options.max_length;
  toy.model = options.model;
  toy.steps = options.steps, toy.batch_size = options.batch_size, toy.validation_size = options.probe_size;
  toy.training.lr = options.lr, toy.training.clip_norm = options.clip_norm;
  ToyRun toy_run(toy);
  const models::TransformerConfig& config = toy_run.config;
  models::Seq2SeqModel& model = *toy_run.model;
  const Batch& probe_batch = toy_run.probe_batch;
  train::Trainer& trainer = toy_run.trainer;

  TrackedRun run;
  run.options = options;
  run.parameters = model.parameter_count();
  TrackedProbe first = probe(model, config, probe_batch, options.entropy_bound);
  first.train_loss = kNaN;
  run.probes.push_back(first);

  class Prober : public train::TrainerCallback {
   public:
    Prober(const TrackedRunOptions& options, const models::TransformerConfig& config, models::Seq2SeqModel& model,
           const Batch& batch, TrackedRun& run)
        : options_(options), config_(config), model_(model), batch_(batch), run_(run) {}
    void on_step_end(train::Trainer&, const train::StepInfo& info) override {
      loss_sum_ += info.loss, ++window_;
      if (info.step % std::int64_t(options_.probe_every) != 0 && info.step != std::int64_t(options_.steps)) return;
      TrackedProbe point = probe(model_, config_, batch_, options_.entropy_bound);
      point.step = info.step;
      point.train_loss = loss_sum_ / double(window_);
      run_.probes.push_back(std::move(point));
      loss_sum_ = 0, window_ = 0;
    }

   private:
    const TrackedRunOptions& options_;
    const models::TransformerConfig& config_;
    models::Seq2SeqModel& model_;
    const Batch& batch_;
    TrackedRun& run_;
    double loss_sum_ = 0;
    std::size_t window_ = 0;
  };
  trainer.add_callback(std::make_shared<Prober>(options, config, model, probe_batch, run));
  const train::TrainResult trained = trainer.train();
  run.diverged = trained.reason == train::StopReason::diverged;
  run.stop_reason = name_of(trained.reason);
  if (run.diverged) run.stop_reason += ": " + trained.message;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

namespace {

json layer_json(const LayerProbe& l) {
  return {{"name", l.name},
          {"mean_abs_logit", exact_json(l.mean_abs_logit)},
          {"max_abs_logit", exact_json(l.max_abs_logit)},
          {"mean_abs_output", exact_json(l.mean_abs_output)},
          {"entropy", exact_json(l.entropy)},
          {"head_entropy", exact_json(l.head_entropy)},
          {"head_sigma", exact_json(l.head_sigma)},
          {"head_entropy_nats", exact_json(l.head_entropy_nats)},
          {"head_bound_nats", exact_json(l.head_bound_nats)},
          {"bound_violations", l.bound_violations}};
}

LayerProbe layer_from_json(const json& j) {
  return {.name = j.at("name").get<std::string>(),
          .mean_abs_logit = exact_double(j.at("mean_abs_logit")),
          .max_abs_logit = exact_double(j.at("max_abs_logit")),
          .mean_abs_output = exact_double(j.at("mean_abs_output")),
          .entropy = exact_double(j.at("entropy")),
          .head_entropy = exact_doubles(j.at("head_entropy")),
          .head_sigma = exact_doubles(j.at("head_sigma")),
          .head_entropy_nats = exact_doubles(j.at("head_entropy_nats")),
          .head_bound_nats = exact_doubles(j.at("head_bound_nats")),
          .bound_violations = j.at("bound_violations").get<std::size_t>()};
}

json tracked_run_json(const TrackedRun& run) {
  json probes = json::array();
  for (const TrackedProbe& p : run.probes) {
    json layers = json::array();
    for (const LayerProbe& l : p.layers) layers.push_back(layer_json(l));
    probes.push_back({{"step", p.step},
                      {"train_loss", exact_json(p.train_loss)},
                      {"probe_loss", exact_json(p.probe_loss)},
                      {"token_accuracy", exact_json(p.token_accuracy)},
                      {"mean_abs_output_logit", exact_json(p.mean_abs_output_logit)},
                      {"layers", layers}});
  }
  return {{"probes", probes}, {"diverged", run.diverged}, {"stop_reason", run.stop_reason},
          {"seconds", exact_json(run.seconds)}, {"parameters", run.parameters}};
}

TrackedRun tracked_run_from_json(const TrackedRunOptions& options, const json& j) {
  TrackedRun run;
  run.options = options;
  for (const json& p : j.at("probes")) {
    TrackedProbe probe;
    probe.step = p.at("step").get<std::int64_t>();
    probe.train_loss = exact_double(p.at("train_loss"));
    probe.probe_loss = exact_double(p.at("probe_loss"));
    probe.token_accuracy = exact_double(p.at("token_accuracy"));
    probe.mean_abs_output_logit = exact_double(p.at("mean_abs_output_logit"));
    for (const json& l : p.at("layers")) probe.layers.push_back(layer_from_json(l));
    run.probes.push_back(std::move(probe));
  }
  run.diverged = j.at("diverged").get<bool>();
  run.stop_reason = j.at("stop_reason").get<std::string>();
  run.seconds = exact_double(j.at("seconds"));
  run.parameters = j.at("parameters").get<std::size_t>();
  return run;
}

}  // namespace

std::vector<TrackedRun> train_all(const std::vector<TrackedRunOptions>& runs, std::size_t jobs,
                                  train::Communicator& communicator,
                                  const std::function<void(std::string_view)>& progress) {
  check_arg(jobs > 0, "train_all", "jobs must be positive");
  return spread_runs<TrackedRun>(
      communicator, runs.size(), jobs, "", progress, [&](std::size_t i) { return train_tracked(runs[i]); },
      tracked_run_json, [&](std::size_t i, const json& j) { return tracked_run_from_json(runs[i], j); },
      [](const TrackedRun& r) {
        return r.options.label + ": final probe loss " + general(r.last().probe_loss) + ", token acc " +
               fixed(r.last().token_accuracy, 3) + ", max logit " + general(r.last().max_abs_logit()) + ", " +
               fixed(r.seconds, 1) + " s" + (r.stop_reason == "completed" ? "" : " [" + r.stop_reason + "]");
      });
}

// ---- the stability section ----------------------------------------------------------------

StabilityOptions StabilityOptions::quick() {
  StabilityOptions options;
  options.learning_rates = {1e-3, 1e-2, 1e-1};
  options.seeds = 1;
  options.steps = 80;
  return options;
}

void StabilityOptions::validate() const {
  check_arg(!learning_rates.empty() && !fixes.empty() && seeds > 0, "StabilityOptions",
            "learning_rates, fixes and seeds must not be empty");
  for (const double lr : learning_rates)
    check_arg(lr > 0 && std::isfinite(lr), "StabilityOptions", "learning rates must be positive, got " + format_number(lr));
  check_arg(d_model > 0 && heads > 0 && d_model % heads == 0, "StabilityOptions",
            "d_model " + std::to_string(d_model) + " must be a positive multiple of heads " + std::to_string(heads));
  check_arg(steps > 0 && batch_size > 0 && probe_every > 0 && probe_size > 0 && layers > 0 && dim_feedforward > 0,
            "StabilityOptions", "sizes and step counts must be positive");
}

namespace {

struct StabilityCell {
  StabilityFix fix;
  double lr;
  std::size_t runs = 0, stable = 0, diverged = 0, collapsed = 0, failed = 0;
  double final_loss = 0, final_accuracy = 0, min_entropy = 0, peak_logit = 0;  // means over seeds
};

bool is_stable(const TrackedRun& r, const StabilityOptions& o) {
  return !r.diverged && r.last().token_accuracy >= o.stable_accuracy;
}

double peak_logit(const TrackedRun& r) {
  double peak = 0;
  for (const TrackedProbe& p : r.probes) peak = std::max(peak, p.max_abs_logit());
  return peak;
}

}  // namespace

std::string run_stability_section(const StabilityOptions& options, const std::string& out_dir, std::size_t jobs,
                                  train::Communicator& communicator,
                                  const std::function<void(std::string_view)>& progress) {
  options.validate();
  const auto start = std::chrono::steady_clock::now();
  std::vector<TrackedRunOptions> runs;
  for (const StabilityFix fix : options.fixes)
    for (const double lr : options.learning_rates)
      for (std::uint64_t seed = 0; seed < options.seeds; ++seed) {
        TrackedRunOptions r;
        r.model.d_model = options.d_model, r.model.nhead = options.heads;
        r.model.encoder_layers = r.model.decoder_layers = options.layers;
        r.model.dim_feedforward = options.dim_feedforward, r.model.dropout = 0;
        r.model.norm_first = true;  // Zhai's and Wortsman's models are pre-LN; the bound needs it
        r.model.qk_norm = fix == StabilityFix::qk_norm;
        r.model.sigma_reparam = fix == StabilityFix::sigma_reparam;
        r.model.seed = seed;
        r.steps = options.steps, r.batch_size = options.batch_size, r.lr = lr;
        r.probe_every = options.probe_every, r.probe_size = options.probe_size;
        // The bound's premise (score = c·x̃ᵀW̃_qᵀW̃_k x̃) fails with a LayerNorm between projection and score.
        r.entropy_bound = fix != StabilityFix::qk_norm;
        r.label = "stability " + name_of(fix) + " lr " + general(lr) + " seed " + std::to_string(seed);
        runs.push_back(r);
      }
  const std::vector<TrackedRun> results = train_all(runs, jobs, communicator, progress);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (communicator.rank() != 0) return {};  // rank 0 writes

  // ---- CSV --------------------------------------------------------------------------------
  std::ostringstream run_csv, curve_csv, bound_csv;
  run_csv << "fix,lr,seed,stable,diverged,final_probe_loss,final_token_accuracy,final_min_head_entropy,"
             "final_mean_entropy,final_max_logit,peak_max_logit,bound_violations,seconds,stop_reason\n";
  curve_csv << "fix,lr,seed,step,train_loss,probe_loss,token_accuracy,mean_entropy,min_head_entropy,max_logit\n";
  bound_csv << "fix,lr,seed,step,layer,head,sigma,entropy_nats,bound_nats\n";
  std::size_t violations = 0;
  double largest_bound = 0, largest_bound_measured = kNaN, smallest_margin = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < results.size(); ++i) {
    const TrackedRun& r = results[i];
    const std::string id = name_of(runs[i].model.qk_norm ? StabilityFix::qk_norm
                                   : runs[i].model.sigma_reparam ? StabilityFix::sigma_reparam
                                                                 : StabilityFix::none) +
                           "," + cell(r.options.lr) + "," + std::to_string(r.options.model.seed);
    std::size_t run_violations = 0;
    for (const TrackedProbe& p : r.probes) {
      curve_csv << id << "," << p.step << "," << cell(p.train_loss) << "," << cell(p.probe_loss) << ","
                << cell(p.token_accuracy) << "," << cell(p.mean_entropy()) << "," << cell(p.min_head_entropy()) << ","
                << cell(p.max_abs_logit()) << "\n";
      for (const LayerProbe& l : p.layers) {
        run_violations += l.bound_violations;
        for (std::size_t h = 0; h < l.head_sigma.size(); ++h) {
          if (l.head_bound_nats[h] > largest_bound)
            largest_bound = l.head_bound_nats[h], largest_bound_measured = l.head_entropy_nats[h];
          smallest_margin = std::min(smallest_margin, l.head_entropy_nats[h] - l.head_bound_nats[h]);
          bound_csv << id << "," << p.step << "," << l.name << "," << h << "," << cell(l.head_sigma[h]) << ","
                    << cell(l.head_entropy_nats[h]) << "," << cell(l.head_bound_nats[h]) << "\n";
        }
      }
    }
    violations += run_violations;
    run_csv << id << "," << (is_stable(r, options) ? 1 : 0) << "," << (r.diverged ? 1 : 0) << ","
            << cell(r.last().probe_loss) << "," << cell(r.last().token_accuracy) << ","
            << cell(r.last().min_head_entropy()) << "," << cell(r.last().mean_entropy()) << ","
            << cell(r.last().max_abs_logit()) << "," << cell(peak_logit(r)) << "," << run_violations << ","
            << cell(r.seconds) << ",\"" << r.stop_reason << "\"\n";
  }
  write_file_atomically((fs::path(out_dir) / "stability_runs.csv").string(), run_csv.str());
  write_file_atomically((fs::path(out_dir) / "stability_curves.csv").string(), curve_csv.str());
  write_file_atomically((fs::path(out_dir) / "stability_bound.csv").string(), bound_csv.str());

  // ---- cells (fix, lr) over seeds -----------------------------------------------------------
  std::vector<StabilityCell> cells;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const TrackedRun& r = results[i];
    const StabilityFix fix = options.fixes[i / (options.learning_rates.size() * options.seeds)];
    if (cells.empty() || cells.back().fix != fix || cells.back().lr != r.options.lr) cells.push_back({fix, r.options.lr});
    StabilityCell& c = cells.back();
    ++c.runs;
    c.stable += is_stable(r, options), c.diverged += r.diverged;
    // Failed: back at (or near) the loss of the untrained model — what "diverged" looks like
    // here, where no loss ever became NaN.
    c.failed += r.diverged || !(r.last().probe_loss < options.failed_fraction * r.probes.front().probe_loss);
    const double min_entropy = r.last().min_head_entropy();
    c.collapsed += !(min_entropy >= options.collapsed_entropy);  // NaN (a diverged run) counts as collapsed
    c.final_loss += r.last().probe_loss, c.final_accuracy += r.last().token_accuracy;
    c.min_entropy += min_entropy, c.peak_logit += peak_logit(r);
  }
  for (StabilityCell& c : cells) {
    const double n = double(c.runs);
    c.final_loss /= n, c.final_accuracy /= n, c.min_entropy /= n, c.peak_logit /= n;
  }

  // ---- plots --------------------------------------------------------------------------------
  const auto fix_label = [](StabilityFix f) {
    return f == StabilityFix::none ? std::string("baseline") : f == StabilityFix::qk_norm ? "QK-norm" : "σReparam";
  };
  std::vector<std::string> files = {"stability_runs.csv", "stability_curves.csv", "stability_bound.csv"};
  const auto by_lr = [&](const std::string& name, const std::string& title, const std::string& y_label,
                         double StabilityCell::*field, bool log_y) {
    LineChart chart{.title = title, .x_label = "Adam learning rate", .y_label = y_label, .series = {}, .log_x = true,
                    .log_y = log_y, .x_ticks = options.learning_rates};
    for (const StabilityFix f : options.fixes) {
      Series s{.name = fix_label(f), .x = {}, .y = {}, .dashed = false};
      for (const StabilityCell& c : cells)
        if (c.fix == f) s.x.push_back(c.lr), s.y.push_back(c.*field > 0 || !log_y ? c.*field : kNaN);
      chart.series.push_back(s);
    }
    write_svg((fs::path(out_dir) / name).string(), line_chart_svg(chart));
    files.push_back(name);
  };
  by_lr("stability_final_loss.svg", "final probe loss against learning rate (mean over seeds)", "cross-entropy",
        &StabilityCell::final_loss, true);
  by_lr("stability_min_entropy.svg", "lowest per-head attention entropy H/ln(keys) at the end", "normalised entropy",
        &StabilityCell::min_entropy, false);
  by_lr("stability_peak_logit.svg", "largest |attention logit| during training", "max |logit|",
        &StabilityCell::peak_logit, true);
  // Curves of the largest logit and the lowest head entropy over training, seed 0, baseline
  // and each fix at every learning rate.
  const auto over_steps = [&](const std::string& name, const std::string& title, const std::string& y_label,
                              StabilityFix fix, auto value, bool log_y) {
    LineChart chart{.title = title + " — " + fix_label(fix) + ", seed 0", .x_label = "step", .y_label = y_label,
                    .series = {}, .log_x = false, .log_y = log_y, .x_ticks = {}};
    for (std::size_t i = 0; i < results.size(); ++i) {
      const TrackedRun& r = results[i];
      if (options.fixes[i / (options.learning_rates.size() * options.seeds)] != fix || r.options.model.seed != 0) continue;
      Series s{.name = "lr " + general(r.options.lr), .x = {}, .y = {}, .dashed = false};
      for (const TrackedProbe& p : r.probes) {
        const double y = value(p);
        s.x.push_back(double(p.step)), s.y.push_back(log_y && !(y > 0) ? kNaN : y);
      }
      chart.series.push_back(s);
    }
    write_svg((fs::path(out_dir) / name).string(), line_chart_svg(chart));
    files.push_back(name);
  };
  for (const StabilityFix f : options.fixes) {
    over_steps("stability_max_logit_" + name_of(f) + ".svg", "largest |attention logit|", "max |logit|", f,
               [](const TrackedProbe& p) { return p.max_abs_logit(); }, true);
    over_steps("stability_entropy_" + name_of(f) + ".svg", "lowest per-head entropy H/ln(keys)", "normalised entropy", f,
               [](const TrackedProbe& p) { return p.min_head_entropy(); }, false);
  }
  // Zhai's bound: measured entropy (nats) against σ per head, every probe of every run, with the
  // bound for the typical row length drawn beside it.
  {
    LineChart chart{.title = "per-head entropy (nats) against ‖W̃_qᵀW̃_k‖₂, every probe; Zhai-form bound dashed",
                    .x_label = "σ of the head", .y_label = "mean entropy (nats)", .series = {}, .log_x = true,
                    .log_y = false, .x_ticks = {}};
    Series measured{.name = "measured (self-attention heads)", .x = {}, .y = {}, .dashed = false};
    Series bound{.name = "bound, mean over the same rows", .x = {}, .y = {}, .dashed = true};
    std::vector<std::pair<double, std::pair<double, double>>> points;
    for (const TrackedRun& r : results)
      for (const TrackedProbe& p : r.probes)
        for (const LayerProbe& l : p.layers)
          for (std::size_t h = 0; h < l.head_sigma.size(); ++h)
            points.push_back({l.head_sigma[h], {l.head_entropy_nats[h], l.head_bound_nats[h]}});
    std::sort(points.begin(), points.end());
    for (const auto& pt : points)
      measured.x.push_back(pt.first), measured.y.push_back(pt.second.first), bound.x.push_back(pt.first),
          bound.y.push_back(pt.second.second);
    chart.series = {measured, bound};
    write_svg((fs::path(out_dir) / "stability_zhai_bound.svg").string(), line_chart_svg(chart));
    files.push_back("stability_zhai_bound.svg");
  }

  // ---- summary ------------------------------------------------------------------------------
  std::ostringstream md;
  md << "## Entropy collapse, logit growth and the two fixes\n\n"
     << "Pre-LN transformer, d_model " << options.d_model << ", " << options.heads << " heads, " << options.layers
     << "+" << options.layers << " layers, feed-forward " << options.dim_feedforward << ", dropout 0; task reverse "
     << "(4–12 letters); Adam at a constant learning rate, no warm-up, no clipping; batch " << options.batch_size
     << ", " << options.steps << " steps, " << options.seeds << " seed" << (options.seeds > 1 ? "s" : "")
     << "; probes every " << options.probe_every << " steps on " << options.probe_size << " held-out pairs. "
     << "Stable: not diverged and final token accuracy ≥ " << fixed(options.stable_accuracy, 2)
     << ". Collapsed: lowest per-head normalised entropy at the end < " << fixed(options.collapsed_entropy, 2)
     << ". Values are means over seeds.\n\nTime: " << fixed(seconds, 1) << " s.\n\n"
     << "Failed: final loss at least " << fixed(100 * options.failed_fraction, 0) << "% of the untrained model's "
     << "(no run's loss became NaN; a failed run is back near chance).\n\n"
     << "| fix | lr | stable | failed | diverged (NaN) | collapsed | final loss | final token acc | lowest head entropy | peak max logit |\n"
     << "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const StabilityCell& c : cells)
    md << "| " << fix_label(c.fix) << " | " << general(c.lr) << " | " << c.stable << "/" << c.runs << " | "
       << c.failed << "/" << c.runs << " | " << c.diverged << "/" << c.runs << " | " << c.collapsed << "/" << c.runs << " | " << fixed(c.final_loss, 3)
       << " | " << fixed(c.final_accuracy, 3) << " | " << fixed(c.min_entropy, 3) << " | " << general(c.peak_logit)
       << " |\n";
  // Wortsman et al.'s learning-rate sensitivity: E_lr[min(ℓ(lr), ℓ₀) − min_lr ℓ(lr)] over the grid,
  // ℓ₀ the untrained model's loss (mean over the runs), ℓ the final loss (mean over seeds).
  double initial_loss = 0;
  for (const TrackedRun& r : results) initial_loss += r.probes.front().probe_loss;
  initial_loss /= double(results.size());
  md << "\nLearning-rate sensitivity (Wortsman et al. 2023: mean over the grid of min(ℓ(lr), ℓ₀) − min_lr ℓ(lr), "
     << "ℓ₀ = " << fixed(initial_loss, 3) << " the untrained loss; lower is less sensitive):\n\n";
  for (const StabilityFix f : options.fixes) {
    double best = std::numeric_limits<double>::infinity(), total = 0;
    std::size_t count = 0;
    for (const StabilityCell& c : cells)
      if (c.fix == f) best = std::min(best, c.final_loss);
    for (const StabilityCell& c : cells)
      if (c.fix == f) total += std::min(c.final_loss, initial_loss) - best, ++count;
    md << "- " << fix_label(f) << ": " << fixed(total / double(count), 3) << " (best final loss " << fixed(best, 3)
       << ")\n";
  }
  md << "\nStable learning-rate range (every seed stable):\n\n";
  for (const StabilityFix f : options.fixes) {
    double low = kNaN, high = kNaN;
    for (const StabilityCell& c : cells)
      if (c.fix == f && c.stable == c.runs) {
        if (!std::isfinite(low)) low = c.lr;
        high = c.lr;
      }
    md << "- " << fix_label(f) << ": "
       << (std::isfinite(low) ? general(low) + " – " + general(high) : std::string("none of the grid")) << "\n";
  }
  md << "\nEntropy lower bound in Zhai et al.'s form (H ≥ min_k [log(k + (T−k)e^{−β}) + β(T−k)e^{−β}/(k + (T−k)e^{−β})], "
     << "the one-peak k = 1 term log(1 + (T−1)e^{−β}) + β(T−1)e^{−β}/(1 + (T−1)e^{−β}) once β ≳ log T; "
     << "β = 2·c·σ·R̃², σ = ‖W̃_qᵀW̃_k‖₂ per head with the biases appended, c the score scale, "
     << "R̃² = (max|g|·√E + ‖b‖)² + 1 from the layer's LayerNorm): "
     << violations << " rows below their bound over every probe of every run (self-attention layers of the baseline "
     << "and σReparam runs; QK-norm runs are left out: with a LayerNorm between projection and score the bound's "
     << "premise does not hold). The largest per-head bound met: " << fixed(largest_bound, 4) << " nats (measured "
     << fixed(largest_bound_measured, 3) << " there); smallest measured − bound over every head and probe: "
     << fixed(smallest_margin, 3) << " nats.\n";
  const std::string text = md.str();
  write_file_atomically((fs::path(out_dir) / "stability_summary.md").string(), text);
  return text;
}

}  // namespace qkv::study
