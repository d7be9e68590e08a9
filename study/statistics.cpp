#include "study/statistics.hpp"

#include <algorithm>
#include <cmath>

#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv::study {

namespace {

constexpr std::size_t kGradientChunk = 250;  // trials per batched forward/backward

/// A stream per (seed, purpose, d_k): a cell's numbers do not depend on which other d_k run.
Rng stream(std::uint64_t seed, std::uint64_t purpose, std::size_t key_size) {
  return Rng(seed * 0x9e3779b97f4a7c15ULL + purpose * 0xbf58476d1ce4e5b9ULL + key_size);
}

/// Running means of one cell's per-row summaries.
struct SummaryMeans {
  double entropy = 0, max_weight = 0, saturated = 0, jacobian = 0;
  std::size_t rows = 0;
  void add(const SoftmaxSummary& s) {
    entropy += s.entropy, max_weight += s.max_weight, jacobian += s.jacobian_norm;
    saturated += s.max_weight > kSaturatedWeight ? 1 : 0;
    ++rows;
  }
  double mean(double total) const { return total / double(rows); }
};

}  // namespace

std::string scaling_label(Scaling scaling) {
  switch (scaling) {
    case Scaling::none: return "none";
    case Scaling::inverse_sqrt_dim: return "1/√d_k";
    case Scaling::inverse_dim: return "1/d_k";
    case Scaling::learned_temperature: return "learned τ";
  }
  return "?";
}

ScoreScale score_scale(Scaling scaling, std::size_t key_size) {
  switch (scaling) {
    case Scaling::none: return ScoreScale::none();
    case Scaling::inverse_sqrt_dim: return ScoreScale::inverse_sqrt_dim();
    case Scaling::inverse_dim: return ScoreScale::inverse_dim();
    case Scaling::learned_temperature:
      return ScoreScale::learned_temperature(std::sqrt(static_cast<real>(key_size)));
  }
  throw Error("scaling study: unknown scaling");
}

void StatisticsOptions::validate() const {
  const char* owner = "StatisticsOptions";
  check_arg(!key_sizes.empty(), owner, "key_sizes is empty");
  check_arg(std::none_of(key_sizes.begin(), key_sizes.end(), [](std::size_t d) { return d == 0; }), owner,
            "key sizes must be positive, got 0");
  check_arg(!scalings.empty(), owner, "scalings is empty");
  check_arg(std::none_of(scalings.begin(), scalings.end(),
                         [](Scaling s) { return s == Scaling::learned_temperature; }),
            owner, "a learned temperature has no fixed factor to measure before training");
  check_arg(keys >= 2, owner, "keys must be at least 2, got " + std::to_string(keys));
  check_arg(trials >= 2 && gradient_trials >= 1 && prediction_samples >= 1, owner,
            "trials (>= 2), gradient_trials and prediction_samples must be positive, got " + std::to_string(trials) +
                ", " + std::to_string(gradient_trials) + ", " + std::to_string(prediction_samples));
}

double softmax_jacobian_norm(std::span<const double> p) {
  double sum2 = 0, sum3 = 0;
  for (const double w : p) sum2 += w * w, sum3 += w * w * w;
  return std::sqrt(std::max(0.0, sum2 - 2 * sum3 + sum2 * sum2));
}

SoftmaxSummary summarize_softmax(std::span<const double> scores) {
  check_arg(!scores.empty(), "summarize_softmax", "needs at least one score");
  const double largest = *std::max_element(scores.begin(), scores.end());
  std::vector<double> p(scores.size());
  double total = 0;
  for (std::size_t j = 0; j < p.size(); ++j) total += p[j] = std::exp(scores[j] - largest);
  SoftmaxSummary summary;
  for (double& w : p) {
    w /= total;
    if (w > 0) summary.entropy -= w * std::log(w);
    summary.max_weight = std::max(summary.max_weight, w);
  }
  summary.jacobian_norm = softmax_jacobian_norm(p);
  return summary;
}

double variance_standard_error(std::size_t key_size, std::size_t keys, std::size_t trials) {
  const double d = double(key_size), n = double(keys);
  return std::sqrt(((2 + 6 / d) / n + 2 * (n - 1) / (n * d)) / double(trials));
}

GradientNorms measure_gradients(const ScoreScale& scale, std::size_t key_size, std::size_t keys, std::size_t trials,
                                std::uint64_t seed) {
  check_arg(key_size > 0 && keys > 0 && trials > 0, "measure_gradients",
            "key_size, keys and trials must be positive, got " + std::to_string(key_size) + ", " +
                std::to_string(keys) + ", " + std::to_string(trials));
  DotProductAttention attention(scale);
  Rng rng(seed);
  const real upstream_std = real(1) / std::sqrt(static_cast<real>(key_size));
  std::vector<double> query_norms, key_norms;
  for (std::size_t done = 0; done < trials; done += kGradientChunk) {
    const std::size_t chunk = std::min(kGradientChunk, trials - done);
    Variable queries(normal({chunk, 1, key_size}, 0, 1, rng), true);  // [C, 1, d]
    Variable keys_(normal({chunk, keys, key_size}, 0, 1, rng), true);  // [C, n, d]
    const Variable values(normal({chunk, keys, key_size}, 0, 1, rng));  // [C, n, d]
    const Array upstream = normal({chunk, 1, key_size}, 0, upstream_std, rng);  // [C, 1, d] = ∂L/∂output
    attention.forward(queries, keys_, values).output.backward(upstream);
    const auto row_norms = [chunk](const Array& grad, std::vector<double>& norms) {
      const std::size_t row = grad.size() / chunk;
      for (std::size_t t = 0; t < chunk; ++t) {
        double squares = 0;
        for (std::size_t i = 0; i < row; ++i) squares += double(grad.data()[t * row + i]) * grad.data()[t * row + i];
        norms.push_back(std::sqrt(squares));
      }
    };
    row_norms(queries.grad(), query_norms);
    row_norms(keys_.grad(), key_norms);
  }
  const auto mean = [](const std::vector<double>& v) {
    double total = 0;
    for (const double x : v) total += x;
    return total / double(v.size());
  };
  std::nth_element(query_norms.begin(), query_norms.begin() + long(trials / 2), query_norms.end());
  return {.query = mean(query_norms), .query_median = query_norms[trials / 2], .key = mean(key_norms)};
}

StatisticsResult measure_statistics(const StatisticsOptions& options,
                                    const std::function<void(std::string_view)>& progress) {
  options.validate();
  const std::size_t n = options.keys;
  StatisticsResult result;
  for (const std::size_t d : options.key_sizes) {
    std::vector<real> factors;
    for (const Scaling s : options.scalings) factors.push_back(DotProductAttention(score_scale(s, d)).scale_factor(d));

    // Measured: one query against n keys per trial, every scale on the same draws.
    Rng rng = stream(options.seed, 1, d);
    std::vector<double> q(d), k(n * d), dots(n), scaled(n);
    std::vector<SummaryMeans> measured(factors.size());
    double sum_squares = 0, sum_trial_means = 0, sum_trial_means_sq = 0;
    for (std::size_t t = 0; t < options.trials; ++t) {
      for (double& x : q) x = rng.normal();
      for (double& x : k) x = rng.normal();
      double trial_squares = 0;
      for (std::size_t j = 0; j < n; ++j) {
        double dot = 0;
        for (std::size_t i = 0; i < d; ++i) dot += q[i] * k[j * d + i];
        dots[j] = dot;
        trial_squares += dot * dot;
      }
      // The mean of q·k is 0 by construction, so E[(q·k)²] is its variance.
      sum_squares += trial_squares;
      sum_trial_means += trial_squares / double(n);
      sum_trial_means_sq += (trial_squares / double(n)) * (trial_squares / double(n));
      for (std::size_t c = 0; c < factors.size(); ++c) {
        for (std::size_t j = 0; j < n; ++j) scaled[j] = double(factors[c]) * dots[j];
        measured[c].add(summarize_softmax(scaled));
      }
    }
    const double trials = double(options.trials);
    const double variance = sum_squares / (trials * double(n));
    const double mean_of_means = sum_trial_means / trials;
    const double spread = std::sqrt(std::max(0.0, sum_trial_means_sq / trials - mean_of_means * mean_of_means));
    result.variances.push_back({.key_size = d,
                                .variance = variance,
                                .theory = double(d),
                                .relative_error = std::abs(variance - double(d)) / double(d),
                                .standard_error = spread / std::sqrt(trials - 1) / double(d)});

    for (std::size_t c = 0; c < factors.size(); ++c) {
      // Predicted: n i.i.d. N(0, σ²) logits, σ = factor·√d, on one stream shared by all cells
      // (common random numbers keep the predicted curves smooth across d_k).
      const double sigma = double(factors[c]) * std::sqrt(double(d));
      Rng reference = stream(options.seed, 2, 0);
      SummaryMeans predicted;
      for (std::size_t s = 0; s < options.prediction_samples; ++s) {
        for (double& x : scaled) x = sigma * reference.normal();
        predicted.add(summarize_softmax(scaled));
      }
      const GradientNorms gradients =
          measure_gradients(score_scale(options.scalings[c], d), d, n, options.gradient_trials,
                            stream(options.seed, 3, d).next_u64());
      const SummaryMeans& m = measured[c];
      result.cells.push_back({.key_size = d,
                              .scaling = options.scalings[c],
                              .factor = double(factors[c]),
                              .score_std = double(factors[c]) * std::sqrt(variance),
                              .entropy = m.mean(m.entropy),
                              .entropy_max = std::log(double(n)),
                              .predicted_entropy = predicted.mean(predicted.entropy),
                              .max_weight = m.mean(m.max_weight),
                              .saturated_share = m.mean(m.saturated),
                              .jacobian_norm = m.mean(m.jacobian),
                              .predicted_jacobian_norm = predicted.mean(predicted.jacobian),
                              .query_grad_norm = gradients.query,
                              .query_grad_median = gradients.query_median,
                              .key_grad_norm = gradients.key});
    }
    if (progress)
      progress("statistics: d_k = " + std::to_string(d) + ": Var(q·k) = " + format_number(std::round(variance * 100) / 100) + " (theory " +
               std::to_string(d) + ")");
  }
  return result;
}

}  // namespace qkv::study
