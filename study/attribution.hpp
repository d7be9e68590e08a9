#pragma once
// Attention against attribution (issue 16, item 3): for every target token of a sentence pair,
// teacher-forced on the reference, what each method says about the source tokens, and how
// well the methods' rankings agree (Spearman's ρ and top-1 agreement).
//
// Positions. Source positions are the model's source (the tokens and the <eos> the batcher
// appends, as in training); target positions are the labels (the reference's tokens and
// <eos>), predicted from <bos> + the reference.
//
// The methods, each a matrix [T, S] (row t: target position t, column j: source position j):
//   cross-attention   the weights each decoder layer x head gives the source (the Bahdanau
//                     model's one additive map), their mean over heads per layer, and over all.
//   input x gradient  Σ_d e_jd ∂ log p(y_t) / ∂e_jd, e [S, D] the source embedding module's
//                     output (before the √d scaling and positions: what the token's identity
//                     contributes). Signed.
//   occlusion         log p(y_t | x) − log p(y_t | x with x_j replaced by <unk>). Signed.
//                     Replaced, not removed: removing x_j would shift every later token's
//                     position and shorten the source, so the change would mix the token's
//                     content with a shift of the rest; <unk> keeps positions and length.
//   rollout, flow     Abnar & Zuidema 2020 on the encoder self-attention (mean over heads,
//                     Ã = 0.5 A + 0.5 I, rows normalised), read out by one cross-attention map
//                     c [T, S] as one more layer: rollout c · Ã_L ⋯ Ã_1; flow the maximum flow
//                     from input token j to a node for target t in the layer graph whose edge
//                     capacities are the Ã and, into t, c_t.
//
// Agreement. For two methods and one target row, ρ is the Spearman correlation of the two
// rows over the source positions (ties take their average rank); a row where either method is
// constant has no ρ and is left out. Attributions rank by magnitude unless `signed_scores`
// (attention weights are never negative, so "how much" is what they can be compared with).
// Beside ρ, top-1 agreement: on the same rows, the share where both put the same source
// position first. A sentence's value is the mean over its rows; the test-set value the mean
// over sentences. docs/attribution.md has the results on trained models.
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include "lib/text/batching.hpp"
#include "models/seq2seq.hpp"
#include "study/report.hpp"

namespace qkv::study {

/// The analysis runs in double whatever `real` is.
using Matrix = xt::xtensor<double, 2>;

// ---- ranks ----------------------------------------------------------------------------------

/// 1-based ranks of `values`, ascending; tied values share the mean of the ranks they span
/// (scipy.stats.rankdata's "average"). Throws Error on a NaN.
std::vector<double> average_ranks(std::span<const double> values);

/// Spearman's ρ: the Pearson correlation of the two average-rank vectors. Empty when fewer
/// than two values or when either side is constant (its ranks have no variance). Throws
/// ShapeError when the lengths differ.
std::optional<double> spearman(std::span<const double> a, std::span<const double> b);

// ---- rollout and flow -----------------------------------------------------------------------

/// Ã = 0.5 A + 0.5 I with every row normalised to sum 1 (a zero row becomes the identity's):
/// the attention plus the residual connection, as Abnar & Zuidema 2020 model it. A is [S, S].
Matrix with_residual(const Matrix& attention);

/// Attention rollout Ã_L ⋯ Ã_1 [S, S] of the per-layer attentions (layer 1 first, each [S, S],
/// already averaged over heads): row i says how much of encoder output i comes from each input
/// token. Throws ShapeError for no layers or a matrix that is not [S, S].
Matrix attention_rollout(const std::vector<Matrix>& layers);

/// A directed graph with real capacities for maximum flow.
class FlowNetwork {
 public:
  explicit FlowNetwork(std::size_t nodes);
  /// Adds capacity `capacity` (≥ 0) from `from` to `to` (to an existing edge's, if any).
  void add_edge(std::size_t from, std::size_t to, double capacity);
  /// The maximum flow value from `source` to `sink` (Edmonds–Karp: shortest augmenting paths
  /// by breadth-first search). Leaves the network unchanged, so it can be asked again.
  double max_flow(std::size_t source, std::size_t sink) const;
  std::size_t size() const { return capacity_.shape()[0]; }

 private:
  Matrix capacity_;  // [N, N]; the graphs here are small and dense
};

/// Attention flow [T, S]: entry (t, j) is the maximum flow from input token j to a node for
/// target t, through the layer graph (layer 0 = input tokens, layer l = encoder layer l's
/// outputs, edge (l−1, j) → (l, i) with capacity Ã_l[i, j]) and edges (L, i) → t with capacity
/// readout[t, i]. `layers` as attention_rollout's, `readout` [T, S].
Matrix attention_flow(const std::vector<Matrix>& layers, const Matrix& readout);

/// readout · Ã_L ⋯ Ã_1 [T, S]: the rollout read out by one cross-attention map [T, S].
Matrix rollout_readout(const std::vector<Matrix>& layers, const Matrix& readout);

// ---- the methods on a model -----------------------------------------------------------------
//
// `sentence` is one sentence pair as the model sees it: a batch of one, from
// Batcher::make_batch. Each function sets eval mode.

/// One method's scores for one sentence, [T, S].
struct NamedScores {
  std::string name;
  Matrix scores;  // [T, S]
};

/// The teacher-forced cross-attention maps of forward(), one per map it returns ("layer L head
/// H" for the transformer, "attention" for Bahdanau), and for models with several maps
/// "layer L mean" per layer and "mean" over all. Each [T, S] over the valid positions.
std::vector<NamedScores> cross_attention_scores(models::Seq2SeqModel& model, const Batch& sentence);

/// The encoder self-attention of each layer, averaged over heads, [S, S] (layer 1 first), from
/// the model's "encoder self-attention" group; empty when it has none (Bahdanau).
std::vector<Matrix> encoder_self_attention(models::Seq2SeqModel& model, const Batch& sentence);

/// log p(y_t) of every label under teacher forcing, [B, T] (double), for a batch.
Matrix label_log_probs(models::Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                       const IndexArray& target_input, const IndexArray& target_output);

/// Occlusion [T, S] as defined at the top: one forward pass of S copies of the sentence, copy
/// j with source position j set to <unk>.
Matrix occlusion_scores(models::Seq2SeqModel& model, const Batch& sentence);

/// Input x gradient [T, S] as defined at the top: one forward and one backward pass of T copies
/// of the sentence, copy t seeded with ∂ log p(y_t) / ∂logits, the source embedding's output
/// replaced by a leaf that requires a gradient.
Matrix input_x_gradient(models::Seq2SeqModel& model, const Batch& sentence);

struct AttributionOptions {
  bool gradient = true;   // input x gradient
  bool occlusion = true;
  bool rollout = true;    // rollout and flow need encoder self-attention; skipped without it
  bool flow = true;       // T x S maximum flows per sentence: the slowest method
};

/// Everything the methods say about one sentence.
struct SentenceAttribution {
  /// Non-negative weights: the cross-attention maps, then "rollout · R" and "flow · R" for
  /// each readout R in "layer L mean" (one per decoder layer) and "mean".
  std::vector<NamedScores> attention;
  /// Signed attributions: "input x gradient", "occlusion" (those asked for).
  std::vector<NamedScores> attribution;
};
SentenceAttribution attribute_sentence(models::Seq2SeqModel& model, const Batch& sentence,
                                       const AttributionOptions& options = {});

// ---- agreement ------------------------------------------------------------------------------

/// Mean ρ over the rows (target positions) where both a and b [T, S] have one, and on the same
/// rows the share where both put the same source position first (top-1 agreement: ρ weighs
/// the whole ranking, also the order among tokens that barely matter, which for a confident
/// model is most of them).
struct RowAgreement {
  double mean = 0;
  double top1 = 0;
  std::size_t rows = 0;          // rows with a ρ
  std::size_t skipped_rows = 0;  // rows where a or b is constant
};
RowAgreement row_agreement(const Matrix& a, const Matrix& b);

/// Which methods are compared: every attention method with every attribution, and the
/// attributions with each other.
struct MethodPair {
  std::string first, second;
};
std::vector<MethodPair> method_pairs(const SentenceAttribution& sentence);

/// ρ of each of method_pairs(sentence), in that order; attributions ranked by magnitude unless
/// `signed_scores`.
std::vector<RowAgreement> sentence_agreement(const SentenceAttribution& sentence, bool signed_scores);

/// One method compared with another over a test set.
struct PairAgreement {
  MethodPair pair;
  Spread sentences;              // per-sentence mean ρ, over the sentences that have one
  Spread top1;                   // per-sentence top-1 agreement, over the same sentences
  std::size_t rows = 0;          // rows with a ρ, over all sentences
  std::size_t skipped_rows = 0;
};

/// Adds up sentence_agreement() over a test set. Every sentence must have the same methods.
class AgreementTable {
 public:
  void add(const std::vector<MethodPair>& pairs, const std::vector<RowAgreement>& agreement);
  std::vector<PairAgreement> summary() const;
  std::size_t sentences() const { return sentences_; }

  /// Per sentence, a's value minus b's (a, b two of the pairs), over the sentences where both
  /// have one: is a better than b on the same sentences? Throws Error for an unknown pair.
  struct Difference {
    Spread rho, top1;  // of the differences; the standard error is std / √count
  };
  Difference difference(const MethodPair& a, const MethodPair& b) const;

 private:
  std::size_t index_of(const MethodPair& pair) const;

  std::vector<MethodPair> pairs_;
  /// Per pair, per sentence (NaN where the sentence has no ρ), so that pairs line up.
  std::vector<std::vector<double>> per_sentence_, top1_;
  std::vector<std::size_t> rows_, skipped_;
  std::size_t sentences_ = 0;
};

/// For each attribution and each "rollout · R" or "flow · R" method, its difference from R
/// (AgreementTable::difference) as a Markdown table: Δρ and Δtop-1, each mean ± standard error.
/// Empty when there are no such methods (a model without encoder self-attention).
std::string composed_against_readout_markdown(const AgreementTable& table);

enum class AgreementStatistic { spearman, top1 };

/// A Markdown table of `summary`: one row per first method, one column per second method (in
/// the order they first appear), each cell the statistic's "mean ± sd (n)" over sentences,
/// "—" for no pair.
std::string agreement_markdown(const std::vector<PairAgreement>& summary, AgreementStatistic statistic);

}  // namespace qkv::study
