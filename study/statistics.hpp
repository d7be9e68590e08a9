#pragma once
// Part 1 of qkv-scaling-study: what the score scale does to attention before any training.
//
// q and k are drawn i.i.d. N(0, 1) in d_k dimensions, one query against n keys per trial. Then
//   - Var(q·k) is measured against its theory d_k (each of the d_k products has variance 1);
//   - for each scale (none, 1/√d_k, 1/d_k) the softmax over the n scaled scores is summarised:
//     entropy (maximum ln n), largest weight, share of saturated rows (largest weight > 0.99)
//     and the Frobenius norm of its Jacobian diag(p) − p pᵀ;
//   - gradients reaching q and K through qkv's DotProductAttention are taken by autograd.
//
// The prediction beside each measurement: given q, the scores q·k_j are exactly i.i.d.
// N(0, |q|²), and |q|² ≈ d_k, so the scaled scores behave like n i.i.d. N(0, σ²) logits with
// σ² = factor² · d_k. The entropy and Jacobian norm of such a softmax depend on σ alone: σ = 1
// for 1/√d_k at every d_k, σ = √d_k without scaling (saturating), σ = 1/√d_k with 1/d_k
// (flattening towards uniform).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "layers/attention.hpp"

namespace qkv::study {

/// A softmax row is saturated when its largest weight exceeds this.
constexpr double kSaturatedWeight = 0.99;

/// The score scalings the study compares.
enum class Scaling { none, inverse_sqrt_dim, inverse_dim, learned_temperature };
/// The names of --scalings, CSV columns and file names (name_of, parse_name).
constexpr EnumNames<Scaling, 4> enum_names(Scaling) {
  return {"scaling",
          {{{Scaling::none, "none"}, {Scaling::inverse_sqrt_dim, "inv_sqrt_dk"}, {Scaling::inverse_dim, "inv_dk"},
            {Scaling::learned_temperature, "learned_tau"}}}};
}
/// For plots and the summary (display only): "none", "1/√d_k", "1/d_k", "learned τ".
std::string scaling_label(Scaling scaling);
/// The layer setting for key size d_k; a learned temperature starts at √d_k (the default scale).
ScoreScale score_scale(Scaling scaling, std::size_t key_size);

struct StatisticsOptions {
  std::vector<std::size_t> key_sizes = {4, 8, 16, 32, 64, 128, 256, 512};
  /// Constant scalings only (a learned temperature has no fixed factor before training).
  std::vector<Scaling> scalings = {Scaling::none, Scaling::inverse_sqrt_dim, Scaling::inverse_dim};
  std::size_t keys = 10;
  /// Trials (one query, `keys` keys) for the variance and the softmax statistics. The relative
  /// standard error of the variance estimate is about sqrt((2 + 6/d_k)/n + 2(n−1)/(n·d_k)) /
  /// sqrt(trials): 1.0% at d_k = 4, n = 10 with 8,000 trials (see variance_standard_error).
  std::size_t trials = 8000;
  /// Trials for the autograd gradient norms (a batched forward and backward per chunk).
  std::size_t gradient_trials = 1000;
  /// Draws of n Gaussian logits for the predicted entropy and Jacobian norm.
  std::size_t prediction_samples = 20000;
  std::uint64_t seed = 0;

  /// Throws Error naming the field for an empty list, a zero size or fewer than 2 keys.
  void validate() const;
};

/// Var(q·k) at one d_k.
struct DotVariance {
  std::size_t key_size = 0;
  double variance = 0;        // measured over trials × keys dot products
  double theory = 0;          // d_k
  double relative_error = 0;  // |variance − d_k| / d_k
  double standard_error = 0;  // of the measured variance, from the sample (relative to d_k)
};

/// Mean softmax statistics of one (d_k, scale) cell.
struct SoftmaxStatistics {
  std::size_t key_size = 0;
  Scaling scaling = Scaling::inverse_sqrt_dim;
  double factor = 1;              // the scale factor on q·k
  double score_std = 0;           // measured std of factor · q·k (prediction: factor · √d_k)
  double entropy = 0;             // mean over rows, nats
  double entropy_max = 0;         // ln n
  double predicted_entropy = 0;   // n i.i.d. N(0, factor² d_k) logits
  double max_weight = 0;          // mean largest weight
  double saturated_share = 0;     // rows whose largest weight exceeds 0.99
  double jacobian_norm = 0;       // mean ||diag(p) − p pᵀ||_F
  double predicted_jacobian_norm = 0;
  double query_grad_norm = 0;     // mean ||∂L/∂q|| by autograd (see measure_gradients)
  double query_grad_median = 0;   // median ||∂L/∂q||: saturated rows pass almost nothing back
  double key_grad_norm = 0;       // mean ||∂L/∂K||_F
};

struct StatisticsResult {
  std::vector<DotVariance> variances;     // one per d_k
  std::vector<SoftmaxStatistics> cells;   // d_k-major, then scalings in the options' order
};

/// Runs the whole of part 1; `progress` (optional) receives one line per d_k.
StatisticsResult measure_statistics(const StatisticsOptions& options,
                                    const std::function<void(std::string_view)>& progress = {});

// ---- the pieces, exposed for tests ----------------------------------------------------------

/// Entropy (nats), largest weight and Jacobian Frobenius norm of one softmax row.
struct SoftmaxSummary {
  double entropy = 0;
  double max_weight = 0;
  double jacobian_norm = 0;
};
/// Softmax of `scores` (max-subtracted, in double) and its summary.
SoftmaxSummary summarize_softmax(std::span<const double> scores);
/// ||diag(p) − p pᵀ||_F² = Σ (p_i − p_i²)² + Σ_{i≠j} p_i² p_j² = Σp² − 2Σp³ + (Σp²)².
double softmax_jacobian_norm(std::span<const double> weights);

/// Mean gradient norms reaching the queries and keys through DotProductAttention with `scale`:
/// `trials` independent rows of one query [d_k] against `keys` keys and values [d_k], all
/// N(0, 1), and the loss L = Σ output ⊙ g with g ~ N(0, 1/d_k), so that ∂L/∂weights has unit
/// variance per entry whatever d_k is. One batched forward and backward per chunk of trials.
struct GradientNorms {
  double query = 0;         // mean over trials of ||∂L/∂q||
  double query_median = 0;  // median over trials of ||∂L/∂q||
  double key = 0;           // mean over trials of ||∂L/∂K||_F
};
GradientNorms measure_gradients(const ScoreScale& scale, std::size_t key_size, std::size_t keys, std::size_t trials,
                                std::uint64_t seed);

/// The relative standard error of Var(q·k) measured from `trials` × `keys` dot products (keys
/// share their query, which correlates their squares): sqrt(((2 + 6/d)/n + 2(n−1)/(n d)) / trials).
double variance_standard_error(std::size_t key_size, std::size_t keys, std::size_t trials);

}  // namespace qkv::study
