#pragma once
// Scaling-study part 2, sections "mup" and "stability": the tiny transformer (models/) trained
// for a few hundred steps at one learning rate each, with the attention of every layer read
// at every probe — the engine both sections share (train_tracked, on study/toy_run.hpp's run;
// train_all spreads the runs over threads and MPI ranks) — and the stability section
// itself: a learning-rate sweep of a pre-LN transformer without and with the two published
// fixes, σReparam (Zhai et al. 2023) and QK-norm (Dehghani et al. 2023; Wortsman et al. 2023),
// tracking per-head attention entropy, the largest attention logit, and Zhai et al.'s entropy
// lower bound as a function of ‖W_q W_kᵀ‖₂. docs/scaling_study.md explains every output.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "models/transformer/transformer.hpp"
#include "train/distributed.hpp"

namespace qkv::study {

// ---- the shared engine ---------------------------------------------------------------------

struct TrackedRunOptions {
  std::string task = "reverse";                 // lib/text/tasks.hpp
  std::size_t min_length = 4, max_length = 12;  // reverse / copy lengths
  /// The model; vocabulary sizes are filled in from the task. Its seed is the run's seed.
  models::TransformerConfig model;
  std::size_t steps = 200, batch_size = 32;
  double lr = 1e-3;  // Adam, constant, no warm-up: what the sweeps vary
  double clip_norm = 0;
  std::size_t probe_every = 20;  // and before the first step and after the last
  std::size_t probe_size = 64;   // held-out pairs, teacher-forced
  /// Measure Zhai et al.'s bound per self-attention head at each probe (pre-LN models only).
  bool entropy_bound = false;
  std::string label;  // for progress lines and tables
};

/// One attention layer at one probe (layers in forward order: encoder self-attention, then
/// per decoder layer self- and cross-attention).
struct LayerProbe {
  std::string name;                 // "encoder.layers.0.self_attn"
  double mean_abs_logit = 0;        // mean |scaled score| over allowed pairs
  double max_abs_logit = 0;         // largest |scaled score| over allowed pairs
  double mean_abs_output = 0;       // mean |attention output| (after out_proj) [B, T, E]
  double entropy = 0;               // mean over rows of H / ln(allowed keys), 1 = uniform
  std::vector<double> head_entropy;  // the same per head
  /// Zhai's bound, self-attention layers of pre-LN models only (else empty), per head:
  std::vector<double> head_sigma;          // ‖W̃_qᵀ W̃_k‖₂ of the head (biases appended)
  std::vector<double> head_entropy_nats;   // measured mean entropy in nats
  std::vector<double> head_bound_nats;     // the bound's mean over the same rows
  std::size_t bound_violations = 0;        // rows whose entropy is below their bound (must be 0)
};

struct TrackedProbe {
  std::int64_t step = 0;
  double train_loss = 0;       // mean over the steps since the previous probe (NaN at step 0)
  double probe_loss = 0;       // teacher-forced cross-entropy per token
  double token_accuracy = 0;
  double mean_abs_output_logit = 0;  // mean |model logits| [B, T, V]
  std::vector<LayerProbe> layers;
  /// Over every layer: the largest logit, the lowest per-head entropy, the mean entropy.
  double max_abs_logit() const;
  double min_head_entropy() const;
  double mean_entropy() const;
};

struct TrackedRun {
  TrackedRunOptions options;
  std::vector<TrackedProbe> probes;
  bool diverged = false;  // the Trainer stopped on a non-finite loss
  std::string stop_reason;
  double seconds = 0;
  std::size_t parameters = 0;
  const TrackedProbe& last() const { return probes.back(); }
};

/// Trains one run, probing as it goes. Deterministic for given options (one thread).
TrackedRun train_tracked(const TrackedRunOptions& options);
/// Every run, spread over the ranks of `communicator` and `jobs` at a time within each (one
/// thread each; study/spread_runs.hpp, collective); every rank returns every result, in the
/// order given. `progress` gets one line per finished run of this rank.
std::vector<TrackedRun> train_all(const std::vector<TrackedRunOptions>& runs, std::size_t jobs,
                                  train::Communicator& communicator,
                                  const std::function<void(std::string_view)>& progress = {});

/// The least entropy (nats) of a softmax over `keys` logits that span at most β (max − min ≤ β):
/// the minimum over k of the entropy with k logits at the top and the rest β below,
///   H_k(T, β) = log(k + (T−k)e^{−β}) + β (T−k)e^{−β} / (k + (T−k)e^{−β}).
/// log T at β = 0; for β above ≈ log T the minimum is k = 1, the one-peak form
///   log(1 + (T−1)e^{−β}) + β (T−1)e^{−β} / (1 + (T−1)e^{−β}),
/// which falls as β e^{−β}: the shape of Zhai et al.'s Theorem (entropy bounded below by a
/// function falling exponentially fast in the spectral norm of the logits' matrix).
double entropy_lower_bound(std::size_t keys, double beta);

// ---- the stability section ----------------------------------------------------------------

/// The two published fixes, and none.
enum class StabilityFix { none, qk_norm, sigma_reparam };
constexpr EnumNames<StabilityFix, 3> enum_names(StabilityFix) {
  return {"stability fix",
          {{{StabilityFix::none, "none"}, {StabilityFix::qk_norm, "qk_norm"},
            {StabilityFix::sigma_reparam, "sigma_reparam"}}}};
}

struct StabilityOptions {
  std::vector<double> learning_rates = {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1};
  std::vector<StabilityFix> fixes = {StabilityFix::none, StabilityFix::qk_norm, StabilityFix::sigma_reparam};
  std::size_t seeds = 2;
  std::size_t d_model = 64, heads = 4, layers = 1, dim_feedforward = 128;
  std::size_t steps = 200, batch_size = 32, probe_every = 20, probe_size = 64;
  /// "Stable": not diverged and the final probe token accuracy at least this.
  double stable_accuracy = 0.9;
  /// Entropy "collapsed": the lowest per-head normalised entropy at the end below this.
  double collapsed_entropy = 0.1;
  /// "Failed": the final probe loss at least this fraction of the untrained model's.
  double failed_fraction = 0.9;
  /// --quick: 3 learning rates, 1 seed, 80 steps.
  static StabilityOptions quick();
  void validate() const;
};

/// Runs the sweep (over the ranks of `communicator`, `jobs` at a time on each; collective) and,
/// on rank 0, writes stability_runs.csv, stability_curves.csv, stability_bound.csv,
/// stability_*.svg and stability_summary.md into `out_dir` (which must exist). Returns the
/// markdown fragment (also in stability_summary.md) for the study's summary.md on rank 0, ""
/// on the others.
std::string run_stability_section(const StabilityOptions& options, const std::string& out_dir, std::size_t jobs,
                                  train::Communicator& communicator,
                                  const std::function<void(std::string_view)>& progress = {});

}  // namespace qkv::study
