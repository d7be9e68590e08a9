#include "study/report.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <map>
#include <sstream>

#include "lib/numerics/atomic_file.hpp"
#include "lib/plot/svg.hpp"
#include "study/report_io.hpp"

namespace qkv::study {

namespace fs = std::filesystem;

namespace {

/// "0.123 ± 0.004" with `digits` decimals; "—" when there is no finite value.
std::string pm(const Spread& s, int digits) {
  if (s.count == 0) return "—";
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << s.mean;
  if (s.count > 1) out << " ± " << std::setprecision(digits) << s.std;
  return out.str();
}

std::vector<double> as_doubles(const std::vector<std::size_t>& values) {
  return std::vector<double>(values.begin(), values.end());
}

Series named_series(std::string name, bool dashed = false) {
  Series series;
  series.name = std::move(name);
  series.dashed = dashed;
  return series;
}

LineChart chart_of(std::string title, std::string x_label, std::string y_label, bool log_x, bool log_y,
                   std::vector<double> x_ticks) {
  LineChart chart;
  chart.title = std::move(title), chart.x_label = std::move(x_label), chart.y_label = std::move(y_label);
  chart.log_x = log_x, chart.log_y = log_y, chart.x_ticks = std::move(x_ticks);
  return chart;
}

const RunResult* first_run(const std::vector<RunResult>& runs, Scaling scaling, std::size_t key_size) {
  for (const RunResult& r : runs)
    if (r.scaling == scaling && r.key_size == key_size) return &r;
  return nullptr;
}

/// The mean over seeds of one probe quantity at each probe step of (scaling, d_k).
Series mean_curve(const std::vector<RunResult>& runs, Scaling scaling, std::size_t key_size,
                  double ProbePoint::*field) {
  Series series;
  series.name = scaling_label(scaling);
  const RunResult* first = first_run(runs, scaling, key_size);
  if (first == nullptr) return series;
  for (std::size_t p = 0; p < first->curve.size(); ++p) {
    std::vector<double> values;
    for (const RunResult& r : runs)
      if (r.scaling == scaling && r.key_size == key_size && p < r.curve.size()) values.push_back(r.curve[p].*field);
    series.x.push_back(double(first->curve[p].step));
    const Spread s = spread_of(values);
    series.y.push_back(s.count ? s.mean : kNaN);
  }
  return series;
}

}  // namespace

Spread spread_of(const std::vector<double>& values) {
  Spread s;
  double sum = 0;
  for (const double v : values)
    if (std::isfinite(v)) sum += v, ++s.count;
  if (s.count == 0) return s;
  s.mean = sum / double(s.count);
  if (s.count > 1) {
    double squares = 0;
    for (const double v : values)
      if (std::isfinite(v)) squares += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(squares / double(s.count - 1));
  }
  return s;
}

std::vector<TrainingCell> aggregate(const std::vector<RunResult>& runs) {
  std::vector<TrainingCell> cells;
  for (const RunResult& run : runs) {
    const bool seen = std::any_of(cells.begin(), cells.end(), [&](const TrainingCell& c) {
      return c.scaling == run.scaling && c.key_size == run.key_size;
    });
    if (seen) continue;
    TrainingCell c;
    c.scaling = run.scaling, c.key_size = run.key_size, c.heads = run.heads;
    std::vector<double> steps, loss, accuracy, exact, entropy, logit, grad, qk, temperature;
    for (const RunResult& r : runs) {
      if (r.scaling != run.scaling || r.key_size != run.key_size) continue;
      ++c.runs;
      if (r.steps_to_target) ++c.reached, steps.push_back(double(*r.steps_to_target));
      loss.push_back(r.final_loss), accuracy.push_back(r.final_token_accuracy), exact.push_back(r.final_exact);
      const ProbePoint& last = r.curve.back();
      entropy.push_back(last.entropy), logit.push_back(last.mean_abs_logit), temperature.push_back(last.temperature);
      std::vector<double> g, q;
      for (const ProbePoint& p : r.curve) g.push_back(p.attention_grad_norm), q.push_back(p.qk_grad_norm);
      grad.push_back(spread_of(g).mean), qk.push_back(spread_of(q).mean);
    }
    c.steps_to_target = spread_of(steps), c.final_loss = spread_of(loss), c.final_accuracy = spread_of(accuracy);
    c.final_exact = spread_of(exact), c.final_entropy = spread_of(entropy), c.final_abs_logit = spread_of(logit);
    c.grad_norm = spread_of(grad), c.qk_grad_norm = spread_of(qk), c.final_temperature = spread_of(temperature);
    cells.push_back(c);
  }
  return cells;
}

SectionOutput write_statistics_section(const std::string& directory, const StatisticsOptions& so,
                                       const StatisticsResult& statistics) {
  std::vector<std::string> written;
  // ---- part 1: tables ------------------------------------------------------------------
  Csv variance({"d_k", "variance", "theory", "relative_error", "standard_error"});
  for (const DotVariance& v : statistics.variances)
    variance.row({std::to_string(v.key_size), cell(v.variance), cell(v.theory), cell(v.relative_error),
                  cell(v.standard_error)});
  variance.write(directory, "dot_variance.csv", written);

  Csv softmax({"d_k", "scaling", "factor", "score_std", "entropy", "entropy_max", "predicted_entropy", "max_weight",
               "saturated_share", "jacobian_norm", "predicted_jacobian_norm", "query_grad_norm", "query_grad_median", "key_grad_norm"});
  for (const SoftmaxStatistics& c : statistics.cells)
    softmax.row({std::to_string(c.key_size), name_of(c.scaling), cell(c.factor), cell(c.score_std),
                 cell(c.entropy), cell(c.entropy_max), cell(c.predicted_entropy), cell(c.max_weight),
                 cell(c.saturated_share), cell(c.jacobian_norm), cell(c.predicted_jacobian_norm),
                 cell(c.query_grad_norm), cell(c.query_grad_median), cell(c.key_grad_norm)});
  softmax.write(directory, "softmax_statistics.csv", written);

  // ---- part 1: plots --------------------------------------------------------------------
  const std::vector<double> dims = as_doubles(so.key_sizes);
  {
    Series measured = named_series("measured Var(q·k)"), theory = named_series("theory: d_k", true);
    for (const DotVariance& v : statistics.variances)
      measured.x.push_back(double(v.key_size)), measured.y.push_back(v.variance), theory.x.push_back(double(v.key_size)),
          theory.y.push_back(v.theory);
    LineChart chart = chart_of("Var(q·k) for q, k ~ N(0, I)", "d_k", "variance", true, true, dims);
    chart.series = {measured, theory};
    plot(directory, "dot_variance.svg", chart, written);
  }
  const auto per_scaling = [&](const std::string& name, const std::string& title, const std::string& y_label,
                               double SoftmaxStatistics::*field, double SoftmaxStatistics::*predicted,
                               std::vector<Series> extra, bool log_y) {
    LineChart chart = chart_of(title, "d_k", y_label, true, log_y, dims);
    for (const Scaling s : so.scalings) {
      Series m = named_series(scaling_label(s)), p = named_series(scaling_label(s) + " (Gaussian-logit prediction)", true);
      for (const SoftmaxStatistics& c : statistics.cells) {
        if (c.scaling != s) continue;
        m.x.push_back(double(c.key_size)), m.y.push_back(c.*field);
        if (predicted) p.x.push_back(double(c.key_size)), p.y.push_back(c.*predicted);
      }
      chart.series.push_back(m);
      if (predicted) chart.series.push_back(p);
    }
    for (Series& e : extra) chart.series.push_back(std::move(e));
    plot(directory, name, chart, written);
  };
  const double max_entropy = std::log(double(so.keys));
  per_scaling("entropy.svg", "Mean softmax entropy over n = " + std::to_string(so.keys) + " keys", "entropy (nats)",
              &SoftmaxStatistics::entropy, &SoftmaxStatistics::predicted_entropy,
              {Series{"maximum ln n", {dims.front(), dims.back()}, {max_entropy, max_entropy}, true}},
              false);
  const double uniform_jacobian = std::sqrt(double(so.keys) - 1) / double(so.keys);
  per_scaling("jacobian_norm.svg", "Frobenius norm of the softmax Jacobian", "‖diag(p) − ppᵀ‖_F",
              &SoftmaxStatistics::jacobian_norm, &SoftmaxStatistics::predicted_jacobian_norm,
              {Series{"uniform weights √(n−1)/n", {dims.front(), dims.back()}, {uniform_jacobian, uniform_jacobian}, true}},
              false);
  per_scaling("saturation.svg", "Share of rows with largest weight > 0.99", "share of rows",
              &SoftmaxStatistics::saturated_share, nullptr, {}, false);
  per_scaling("query_gradient.svg", "mean ‖∂L/∂q‖ through DotProductAttention (autograd)", "mean gradient norm",
              &SoftmaxStatistics::query_grad_norm, nullptr, {}, true);
  per_scaling("query_gradient_median.svg", "median ‖∂L/∂q‖ through DotProductAttention (autograd)",
              "median gradient norm", &SoftmaxStatistics::query_grad_median, nullptr, {}, true);
  per_scaling("key_gradient.svg", "‖∂L/∂K‖ through DotProductAttention (autograd)", "mean gradient norm",
              &SoftmaxStatistics::key_grad_norm, nullptr, {}, true);

  std::ostringstream md;
  md << "## 1. Statistics (no training)\n\n"
     << "q and k drawn i.i.d. N(0, 1) in d_k dimensions; one query against n = " << so.keys << " keys per trial, "
     << so.trials << " trials per d_k (" << so.gradient_trials << " for the autograd gradients). Seed " << so.seed
     << ".\n\n"
     << "### Var(q·k) against the theory d_k\n\n"
     << "| d_k | measured | theory | relative error | standard error of the estimate |\n|---:|---:|---:|---:|---:|\n";
  for (const DotVariance& v : statistics.variances)
    md << "| " << v.key_size << " | " << fixed(v.variance, 2) << " | " << v.key_size << " | "
       << fixed(100 * v.relative_error, 2) << "% | " << fixed(100 * v.standard_error, 2) << "% |\n";
  md << "\n### Softmax over the scaled scores\n\n"
     << "Entropy in nats (maximum ln " << so.keys << " = " << fixed(max_entropy, 3)
     << "); *pred.* is the same quantity for n i.i.d. N(0, σ²) logits with σ = factor·√d_k. "
     << "Saturated: share of rows whose largest weight exceeds 0.99. ‖J‖: Frobenius norm of the softmax "
     << "Jacobian (uniform weights: " << fixed(uniform_jacobian, 3) << "). ‖∂q‖, ‖∂K‖: mean gradient norms by "
     << "autograd through DotProductAttention, for L = Σ output ⊙ g, g ~ N(0, 1/d_k) (mean, and median for q).\n\n"
     << "| d_k | scaling | score std | entropy | pred. | max weight | saturated | ‖J‖ | pred. | ‖∂q‖ | median ‖∂q‖ | ‖∂K‖ |\n"
     << "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const SoftmaxStatistics& c : statistics.cells)
    md << "| " << c.key_size << " | " << scaling_label(c.scaling) << " | " << general(c.score_std) << " | "
       << fixed(c.entropy, 3) << " | " << fixed(c.predicted_entropy, 3) << " | " << fixed(c.max_weight, 3) << " | "
       << fixed(100 * c.saturated_share, 1) << "% | " << fixed(c.jacobian_norm, 3) << " | "
       << fixed(c.predicted_jacobian_norm, 3) << " | " << general(c.query_grad_norm) << " | "
       << general(c.query_grad_median) << " | " << general(c.key_grad_norm) << " |\n";

  // The headline comparison, computed from the table above.
  for (const Scaling s : so.scalings) {
    double low = std::numeric_limits<double>::infinity(), high = -low;
    for (const SoftmaxStatistics& c : statistics.cells)
      if (c.scaling == s) low = std::min(low, c.entropy), high = std::max(high, c.entropy);
    md << (s == so.scalings.front() ? "\n" : "") << "- " << scaling_label(s) << ": entropy between "
       << fixed(low, 3) << " and " << fixed(high, 3) << " nats over d_k = " << so.key_sizes.front() << "–"
       << so.key_sizes.back() << " (range " << fixed(100 * (high - low) / max_entropy, 1) << "% of ln n).\n";
  }

  return {written, md.str()};
}

SectionOutput write_training_section(const std::string& directory, const SweepOptions& sw,
                                     const std::vector<RunResult>& runs) {
  std::vector<std::string> written;
  // ---- part 2: tables -------------------------------------------------------------------
  Csv run_table({"scaling", "d_k", "heads", "seed", "steps_to_target", "final_loss", "final_token_accuracy",
                 "final_exact", "final_entropy", "final_mean_abs_logit", "mean_attention_grad_norm",
                 "mean_qk_grad_norm", "final_temperature", "seconds", "stop_reason"});
  Csv curves({"scaling", "d_k", "heads", "seed", "step", "train_loss", "probe_loss", "token_accuracy", "entropy",
              "saturated_share", "mean_abs_logit", "attention_grad_norm", "qk_grad_norm", "temperature"});
  for (const RunResult& r : runs) {
    std::vector<double> g, q;
    for (const ProbePoint& p : r.curve) {
      g.push_back(p.attention_grad_norm), q.push_back(p.qk_grad_norm);
      curves.row({name_of(r.scaling), std::to_string(r.key_size), std::to_string(r.heads), std::to_string(r.seed),
                  std::to_string(p.step), cell(p.train_loss), cell(p.probe_loss), cell(p.token_accuracy),
                  cell(p.entropy), cell(p.saturated_share), cell(p.mean_abs_logit), cell(p.attention_grad_norm),
                  cell(p.qk_grad_norm), cell(p.temperature)});
    }
    const ProbePoint& last = r.curve.back();
    run_table.row({name_of(r.scaling), std::to_string(r.key_size), std::to_string(r.heads), std::to_string(r.seed),
                   r.steps_to_target ? std::to_string(*r.steps_to_target) : "", cell(r.final_loss),
                   cell(r.final_token_accuracy), cell(r.final_exact), cell(last.entropy), cell(last.mean_abs_logit),
                   cell(spread_of(g).mean), cell(spread_of(q).mean), cell(last.temperature), cell(r.seconds),
                   "\"" + r.stop_reason + "\""});
  }
  run_table.write(directory, "training_runs.csv", written);
  curves.write(directory, "training_curves.csv", written);

  const std::vector<TrainingCell> cells = aggregate(runs);
  Csv summary_table({"scaling", "d_k", "heads", "runs", "reached_target", "steps_to_target_mean",
                     "steps_to_target_std", "final_loss_mean", "final_loss_std", "final_token_accuracy_mean",
                     "final_token_accuracy_std", "final_entropy_mean", "final_entropy_std",
                     "final_mean_abs_logit_mean", "final_mean_abs_logit_std", "attention_grad_norm_mean",
                     "attention_grad_norm_std", "qk_grad_norm_mean", "qk_grad_norm_std"});
  for (const TrainingCell& c : cells)
    summary_table.row({name_of(c.scaling), std::to_string(c.key_size), std::to_string(c.heads),
                       std::to_string(c.runs), std::to_string(c.reached),
                       c.steps_to_target.count ? cell(c.steps_to_target.mean) : "",
                       c.steps_to_target.count ? cell(c.steps_to_target.std) : "", cell(c.final_loss.mean),
                       cell(c.final_loss.std), cell(c.final_accuracy.mean), cell(c.final_accuracy.std),
                       cell(c.final_entropy.mean), cell(c.final_entropy.std), cell(c.final_abs_logit.mean),
                       cell(c.final_abs_logit.std), cell(c.grad_norm.mean), cell(c.grad_norm.std),
                       cell(c.qk_grad_norm.mean), cell(c.qk_grad_norm.std)});
  summary_table.write(directory, "training_summary.csv", written);

  // ---- part 2: plots, one chart per d_k and quantity, one line per scaling --------------
  struct Curve {
    const char* file;
    const char* title;
    const char* y_label;
    double ProbePoint::*field;
    bool log_y;
  };
  const Curve charts[] = {
      {"accuracy", "probe token accuracy", "token accuracy", &ProbePoint::token_accuracy, false},
      {"loss", "probe loss", "cross-entropy per token", &ProbePoint::probe_loss, true},
      {"entropy", "attention entropy H / ln(keys)", "normalised entropy", &ProbePoint::entropy, false},
      {"abs_logit", "mean |scaled attention score|", "mean |logit|", &ProbePoint::mean_abs_logit, true},
      {"qk_grad_norm", "gradient norm of W_q, W_k", "‖∇‖", &ProbePoint::qk_grad_norm, true},
  };
  for (const std::size_t d : sw.key_sizes)
    for (const Curve& c : charts) {
      LineChart chart = chart_of(std::string(c.title) + ", d_k = " + std::to_string(d) + " (" +
                                     std::to_string(sw.d_model / d) + " heads), mean of " + std::to_string(sw.seeds) +
                                     " seed" + (sw.seeds > 1 ? "s" : ""),
                                 "step", c.y_label, false, c.log_y, {});
      for (const Scaling s : sw.scalings) chart.series.push_back(mean_curve(runs, s, d, c.field));
      plot(directory, "training_" + std::string(c.file) + "_dk" + std::to_string(d) + ".svg", chart, written);
    }

  std::ostringstream md;
  md << "## 2. Training\n\n"
     << "Task `" << sw.task << "` (lengths " << sw.min_length << "–" << sw.max_length << "), transformer with d_model = "
     << sw.d_model << ", " << sw.layers << " encoder + " << sw.layers << " decoder layer" << (sw.layers > 1 ? "s" : "")
     << ", feed-forward " << sw.dim_feedforward << ", dropout 0; Adam lr " << general(sw.lr) << ", batch "
     << sw.batch_size << ", " << sw.steps << " steps, gradient clipping "
     << (sw.clip_norm > 0 ? "at " + general(sw.clip_norm) : std::string("off")) << "; " << sw.seeds << " seed"
     << (sw.seeds > 1 ? "s" : "") << " (same data and initial weights for every setting within a seed). "
     << "Probes every " << sw.probe_every << " steps on " << sw.probe_size << " held-out pairs, teacher-forced. "
     << "Values are mean ± sample standard deviation over seeds.\n\n"
     << "Steps to " << fixed(100 * sw.target_accuracy, 0)
     << "%: first probe at or above that token accuracy, averaged over the runs that reached it "
     << "(reached/runs). Final loss and accuracy: the Trainer's evaluation after the last step. Entropy: "
     << "H / ln(keys) averaged over every attention row of every layer (1 = uniform), at the end. |logit|: mean "
     << "absolute scaled score at the end. ‖∇attn‖: gradient norm of all attention parameters, mean over "
     << "training.\n\n"
     << "| scaling | d_k | heads | steps to " << fixed(100 * sw.target_accuracy, 0)
     << "% | reached | final loss | final token acc | exact match | entropy | abs logit | grad norm attn |"
     << (std::count(sw.scalings.begin(), sw.scalings.end(), Scaling::learned_temperature) ? " final τ |" : "")
     << "\n|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
     << (std::count(sw.scalings.begin(), sw.scalings.end(), Scaling::learned_temperature) ? "---:|" : "") << "\n";
  for (const TrainingCell& c : cells) {
    md << "| " << scaling_label(c.scaling) << " | " << c.key_size << " | " << c.heads << " | "
       << pm(c.steps_to_target, 0) << " | " << c.reached << "/" << c.runs << " | " << pm(c.final_loss, 3) << " | "
       << pm(c.final_accuracy, 3) << " | " << pm(c.final_exact, 3) << " | " << pm(c.final_entropy, 3) << " | "
       << pm(c.final_abs_logit, 2) << " | " << pm(c.grad_norm, 3) << " |";
    if (std::count(sw.scalings.begin(), sw.scalings.end(), Scaling::learned_temperature))
      md << " " << pm(c.final_temperature, 2) << " |";
    md << "\n";
  }
  return {written, md.str()};
}

std::vector<std::string> write_summary(const std::string& directory, const std::string& command_line,
                                      const std::vector<SectionSummary>& sections) {
  std::ostringstream md;
  md << "# Scaling-factor study\n\n"
     << "Command: `" << command_line << "`  \n"
     << "Time:";
  for (std::size_t i = 0; i < sections.size(); ++i)
    md << (i ? ", " : " ") << sections[i].name << " " << fixed(sections[i].seconds, 1) << " s";
  md << ".\n\n";
  std::vector<std::string> written;
  for (const SectionSummary& s : sections) {
    md << s.output.markdown << "\n";
    written.insert(written.end(), s.output.files.begin(), s.output.files.end());
  }
  md << "## Files\n\n";
  for (const std::string& name : written) md << "- `" << name << "`\n";
  write_file_atomically((fs::path(directory) / "summary.md").string(), md.str());
  written.push_back("summary.md");
  return written;
}

}  // namespace qkv::study
