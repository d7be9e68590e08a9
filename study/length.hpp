#pragma once
// Section "length" of qkv-scaling-study: what the attention scale does as the number of keys n
// grows.
//
// Attention fading (Nakanishi 2025): one key's logit sits `gap` above n − 1 others; the weight
// the softmax gives it is e^g / (e^g + n − 1) with 1/√d_k, which falls towards 0 as n grows,
// and n^{sg} / (n^{sg} + n − 1) with the s·ln n scale (ScoreScale::log_length), which tends to
// 1, 1/2 or 0 as s·g is above, at or below 1. Measured through DotProductAttention with equal
// distractors (against the closed form) and with N(0, 1) distractor logits (Monte Carlo).
//
// Length generalisation (Chiang & Cholak 2022; Nakanishi 2025): the tiny transformer trained on
// `reverse` and `copy` with lengths up to 12, tested at 16, 24, 32 and 48, for each scale
// (1/√d_k; s·ln n with s = 1, Chiang & Cholak's log-length scaling; SSMax's learned s per
// head) and each position scheme (sinusoidal, learned, relative, RoPE, ALiBi).
//
// The learned absolute table has max_length rows (64 here) but training reaches only the
// first 13: rows for positions beyond the training lengths keep their N(0, 0.02²)
// initialisation (they never get a gradient), so that scheme's long-length numbers measure an
// untrained embedding — reported as measured, and marked so.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "layers/attention.hpp"
#include "lib/numerics/enum_names.hpp"
#include "models/transformer/transformer.hpp"
#include "study/report_io.hpp"
#include "train/distributed.hpp"

namespace qkv::study {

/// The scales section 3 compares.
enum class LengthScale { inverse_sqrt_dim, log_length, scalable_softmax };
constexpr EnumNames<LengthScale, 3> enum_names(LengthScale) {
  return {"length scale",
          {{{LengthScale::inverse_sqrt_dim, "inv_sqrt_dk"}, {LengthScale::log_length, "log_n"},
            {LengthScale::scalable_softmax, "ssmax"}}}};
}
/// For plots and the summary: "1/√d_k", "ln n/√d_k", "SSMax (s learned)".
std::string length_scale_label(LengthScale scale);

struct FadingOptions {
  std::vector<std::size_t> key_counts = {2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
  std::vector<double> gaps = {0.5, 1, 2, 4};  // logit gap of the key over the others, after 1/√d_k
  double s = 1;                               // of s·ln n
  std::size_t key_size = 8;
  std::size_t trials = 64;  // queries with N(0, 1) distractor logits, per n
  std::uint64_t seed = 0;
  void validate() const;
};

struct FadingPoint {
  LengthScale scale = LengthScale::inverse_sqrt_dim;
  bool gaussian = false;  // distractor logits N(0, 1) (else all 0)
  double gap = 0;
  std::size_t keys = 0;
  double weight = 0;       // the key's weight, measured (mean over trials for gaussian)
  double closed_form = 0;  // e^{cg} / (e^{cg} + n − 1), c = 1 or s ln n (equal distractors only; NaN otherwise)
};

/// Every (scale, distractors, gap, n), scales 1/√d_k and s·ln n.
std::vector<FadingPoint> measure_fading(const FadingOptions& options);

struct LengthOptions {
  std::vector<std::string> tasks = {"reverse", "copy"};
  std::vector<LengthScale> scales = {LengthScale::inverse_sqrt_dim, LengthScale::log_length,
                                     LengthScale::scalable_softmax};
  std::vector<models::PositionalKind> positionals = {
      models::PositionalKind::sinusoidal, models::PositionalKind::learned, models::PositionalKind::relative,
      models::PositionalKind::rope, models::PositionalKind::alibi};
  std::size_t min_length = 2, max_length = 12;  // training lengths
  std::vector<std::size_t> test_lengths = {16, 24, 32, 48};  // besides held-out pairs of the training lengths
  std::size_t d_model = 64, heads = 4, layers = 1, dim_feedforward = 128;
  std::size_t relative_max_distance = 8;  // below the training lengths: every row of the tables is trained
  std::size_t max_table = 64;             // position tables (learned, sinusoidal): > 48 + <bos>/<eos>
  double log_s = 1;                       // s of log_length (Chiang & Cholak: 1)
  /// SSMax's initial s: 1 / ln 12, so that s·ln n = 1 at the longest training source.
  double ssmax_initial_s = 0.40242;
  /// 800 steps: at 400 the models still missed a third of the training-length pairs exactly.
  std::size_t steps = 800, batch_size = 32;
  double lr = 1e-3;
  std::size_t test_size = 100;  // pairs per test length
  std::size_t seeds = 1;
  std::size_t jobs = 1;
  void validate() const;
};

/// One test length of one run.
struct LengthPoint {
  std::size_t length = 0;  // 0: held-out pairs of the training lengths
  double loss = 0, token_accuracy = 0, exact_match = 0;
};

struct LengthRun {
  std::string task;
  LengthScale scale = LengthScale::inverse_sqrt_dim;
  models::PositionalKind positional = models::PositionalKind::sinusoidal;
  std::uint64_t seed = 0;
  double final_train_loss = 0;  // mean over the last 20 steps
  double mean_length_scale = 0;  // SSMax: the mean learned s at the end (NaN otherwise)
  std::vector<LengthPoint> points;
  double seconds = 0;
};

/// Trains and tests one configuration.
LengthRun train_length_run(const LengthOptions& options, const std::string& task, LengthScale scale,
                           models::PositionalKind positional, std::uint64_t seed);
/// Every (task, positional, scale, seed), spread over the ranks of `communicator` and
/// options.jobs at a time within each (study/spread_runs.hpp; collective); every rank returns
/// every run in that order. `progress` gets a line per finished run of this rank.
std::vector<LengthRun> run_length_generalisation(const LengthOptions& options, train::Communicator& communicator,
                                                 const std::function<void(std::string_view)>& progress = {});

/// The CSVs, plots and summary part ("## 3. Length").
SectionOutput write_length_section(const std::string& directory, const FadingOptions& fading_options,
                                   const std::vector<FadingPoint>& fading, const LengthOptions& options,
                                   const std::vector<LengthRun>& runs);

}  // namespace qkv::study
