#pragma once
// Part 2 of qkv-scaling-study: the tiny transformer (models/) trained on a toy task
// with d_model fixed and the number of heads varied, so that the head size d_k = d_model / H
// takes each value asked for, under each score scaling, for several seeds.
//
// Within one seed every run sees the same data in the same order and starts from the same
// weights (the projections' shapes do not depend on the head count), so runs differ only in
// d_k and the scaling. Dropout is off and gradient clipping is off by default: the gradient
// norms reported are the raw ones, and nothing but the scaling limits the step.
//
// Every `probe_every` steps (and before the first) the model is run on a fixed probe set
// (validation pairs, teacher-forced, no gradient), and an AttentionObserver reads the scores
// and weights of every attention layer (encoder self-attention, decoder self- and
// cross-attention) as the softmax sees them.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "study/statistics.hpp"
#include "train/distributed.hpp"

namespace qkv::study {

struct SweepOptions {
  std::string task = "reverse";  // lib/text/tasks.hpp
  std::size_t min_length = 4, max_length = 12;  // reverse / copy sequence lengths
  std::size_t d_model = 128;
  std::vector<std::size_t> key_sizes = {16, 32, 64, 128};  // heads = d_model / d_k
  std::vector<Scaling> scalings = {Scaling::none, Scaling::inverse_sqrt_dim, Scaling::inverse_dim,
                                   Scaling::learned_temperature};
  std::size_t seeds = 3;  // seeds 0 .. seeds-1
  std::size_t layers = 1;  // encoder and decoder layers each
  std::size_t dim_feedforward = 256;
  std::size_t steps = 400;
  std::size_t batch_size = 32;
  double lr = 1e-3;
  double clip_norm = 0;  // 0: off
  std::size_t probe_every = 20;
  std::size_t probe_size = 128;  // validation pairs, also the Trainer's final evaluation set
  double target_accuracy = 0.9;  // "steps to target": first probe at or above it
  std::size_t jobs = 1;          // runs trained at once, one thread each

  /// Throws Error naming the field: d_model not divisible by a d_k, zero sizes, bad lengths.
  void validate() const;
};

/// One probe of one run.
struct ProbePoint {
  std::int64_t step = 0;
  double train_loss = 0;           // mean over the steps since the previous probe (NaN at step 0)
  double probe_loss = 0;           // teacher-forced cross-entropy per token on the probe set
  double token_accuracy = 0;       // teacher-forced argmax == label on the probe set
  double entropy = 0;              // mean over attention rows of H / ln(allowed keys): 1 = uniform
  double saturated_share = 0;      // attention rows whose largest weight exceeds 0.99
  double mean_abs_logit = 0;       // mean |scaled score| over allowed (query, key) pairs
  double attention_grad_norm = 0;  // ||∇|| over every attention parameter, mean since the previous probe
  double qk_grad_norm = 0;         // the same over the query and key projections only
  double temperature = 0;          // mean learned τ over the attention layers (NaN unless learned)
};

/// Everything measured about one run.
struct RunResult {
  Scaling scaling = Scaling::inverse_sqrt_dim;
  std::size_t key_size = 0, heads = 0;
  std::uint64_t seed = 0;
  std::vector<ProbePoint> curve;
  std::optional<std::int64_t> steps_to_target;  // none: never reached within the run
  double final_loss = 0, final_token_accuracy = 0, final_exact = 0;  // the Trainer's evaluation
  double seconds = 0;
  std::string stop_reason;  // "completed" or "diverged: ..."
};

/// Trains one configuration (the probe statistics above are taken along the way).
RunResult train_one(const SweepOptions& options, Scaling scaling, std::size_t key_size, std::uint64_t seed);

/// Every (d_k, scaling, seed), spread over the ranks of `communicator` (study/spread_runs.hpp;
/// collective: every rank calls it with the same options; train::single_process() alone): rank
/// r trains runs r, r + N, r + 2N, ... of the nested order, `options.jobs` at a time, and every
/// rank returns every run's result in that order, bit for bit what one process computes (each
/// run is trained alone, in one thread, from its own seed). `progress` gets one line per
/// finished run of this rank (from any thread, one at a time). A run that fails on any rank
/// makes every rank throw its error.
std::vector<RunResult> run_sweep(const SweepOptions& options, train::Communicator& communicator,
                                 const std::function<void(std::string_view)>& progress = {});

/// Attention statistics accumulated over observed softmax calls.
struct AttentionTally {
  double normalized_entropy = 0, saturated = 0;  // sums over rows with >= 2 allowed keys
  double abs_logit = 0;                          // sum over allowed entries
  std::size_t rows = 0, entries = 0;
  /// scores and weights [..., Tq, Tk], `allowed` broadcasting to them (if any).
  void add(const Array& scores, const Array& weights, const std::optional<BoolArray>& allowed);
};

}  // namespace qkv::study
