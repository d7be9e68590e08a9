#pragma once
// What each attention head of a trained model does and how much it matters, through the hook
// points (layers/hooks.hpp) — the analysis qkv-heads prints.
//
//   importance   Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?":
//                every attention's per-head outputs are multiplied by a mask ξ (all ones), and
//                I_h = mean over batches of |∂L/∂ξ_h|, L the batch's teacher-forced
//                cross-entropy per token (their code sums head_mask.grad.abs() over batches).
//                `importance` is I_h divided by the L2 norm of its attention's I (their
//                normalisation per layer: each self- and cross-attention is its own layer here).
//   ablation     the head alone masked (ξ_h = 0): loss, exact match and BLEU against the
//                unmasked model, on the same pairs and decoding.
//   pruning      heads masked one after another in increasing order of importance, the
//                quality after each step; and, when the ablation ran, a second curve in
//                increasing order of the loss each head's ablation cost (what the gradient
//                estimate stands in for, measured).
//   patterns     from the teacher-forced weights: mean |i - j| (query position i, key position
//                j), the share of weight on key j = i - 1, i, i + 1, on the first key, on keys
//                that are <eos> (source keys only: the decoder's inputs hold none), and the
//                mean row entropy in nats — each averaged over the real (unpadded) query rows.
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "layers/module.hpp"
#include "lib/text/corpus.hpp"
#include "models/decoding.hpp"
#include "models/seq2seq.hpp"

namespace qkv::study {

/// One multi-head attention of a model, found by its "heads" hook point.
struct AttentionModule {
  std::string path;   // "decoder.layers.1.multihead_attn"
  std::string group;  // "encoder self-attention", "decoder self-attention", "cross-attention"
  std::size_t layer = 0;  // 0-based, within its group
  std::size_t heads = 0;
  models::TokenSide queries = models::TokenSide::target;
  models::TokenSide keys = models::TokenSide::source;
  /// "cross-attention L2 H3" (1-based), how tables name a head.
  std::string head_label(std::size_t head) const;
};

/// Every MultiheadAttention of `model` (paths ending in ".heads" points), with its head count
/// read from one teacher-forced pass over `sample`'s first pair. The transformer's encoder,
/// decoder self- and cross-attentions get the explorer's group titles; any other path is its
/// own group. Throws Error when the model has none (e.g. the Bahdanau model).
std::vector<AttentionModule> find_attentions(models::Seq2SeqModel& model, std::span<const SentencePair> sample,
                                             const Vocabs& vocabs);

/// While alive, multiplies head h of attention a's per-head output by masks()[a][0, h, 0, 0].
class HeadMask {
 public:
  /// All ones; with `requires_grad` the masks are leaves whose gradients backward fills.
  HeadMask(Module& model, const std::vector<AttentionModule>& attentions, bool requires_grad = false);
  HeadMask(const HeadMask&) = delete;
  HeadMask& operator=(const HeadMask&) = delete;

  void set(std::size_t attention, std::size_t head, real value);
  /// One [1, H, 1, 1] variable per attention.
  const std::vector<Variable>& masks() const { return masks_; }

 private:
  ScopedHooks hooks_;
  std::vector<Variable> masks_;
};

struct Quality {
  double loss = 0;         // teacher-forced cross-entropy per target token
  double exact_match = 0;  // 0..1
  double bleu = 0;         // 0..100
};

struct HeadPattern {
  double mean_distance = 0;
  double previous = 0, same = 0, next = 0;  // share on key i-1, i, i+1
  double first = 0;                         // share on key 0
  std::optional<double> eos;                // share on <eos> keys; none for target-side keys
  double entropy = 0;                       // nats
};

struct HeadReport {
  std::size_t attention = 0, head = 0;  // index into HeadAnalysis::attentions, head in it
  double raw_importance = 0;            // mean |∂L/∂ξ_h|
  double importance = 0;                // normalised per attention (L2)
  std::optional<Quality> ablated;       // this head alone masked (when ablation ran)
  HeadPattern pattern;
};

struct PruningStep {
  std::size_t removed = 0;              // heads masked so far
  std::optional<std::size_t> head;      // index into HeadAnalysis::heads of the head masked at this step
  Quality quality;
};

struct HeadAnalysisOptions {
  models::DecodeOptions decode;             // for exact match and BLEU
  std::size_t batch_size = 64;              // evaluation and pattern batches
  std::size_t importance_batch_size = 16;   // batches of the gradient estimate
  bool ablate = true;                       // one evaluation per head
  bool prune = true;                        // one evaluation per head
};

enum class PruningOrder { importance, ablation };

struct HeadAnalysis {
  std::vector<AttentionModule> attentions;
  Quality baseline;
  std::vector<HeadReport> heads;     // attention-major, heads in order
  std::vector<PruningStep> pruning;  // by importance; step 0 is the baseline
  std::vector<PruningStep> pruning_by_ablation;  // by ablation Δ loss; empty without ablation
  std::size_t pairs = 0;             // evaluated on
  const std::vector<PruningStep>& curve(PruningOrder order) const {
    return order == PruningOrder::importance ? pruning : pruning_by_ablation;
  }
};

/// Called with a line of progress ("ablation 3/24 ...") while the analysis runs.
using AnalysisProgress = std::function<void(const std::string&)>;

/// Runs everything above on `pairs` (must not be empty) in eval mode, leaving the model
/// without hooks, in eval mode.
HeadAnalysis analyse_heads(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                           const HeadAnalysisOptions& options, const AnalysisProgress& progress = nullptr);

/// Michel importance alone: per attention, per head, mean |∂L/∂ξ_h| (not normalised).
std::vector<std::vector<double>> raw_head_importance(models::Seq2SeqModel& model,
                                                     const std::vector<AttentionModule>& attentions,
                                                     std::span<const SentencePair> pairs, const Vocabs& vocabs,
                                                     std::size_t batch_size);
/// I / ||I||_2 per attention (an all-zero attention stays zero).
std::vector<std::vector<double>> normalise_per_layer(const std::vector<std::vector<double>>& importance);

/// The pattern statistics of every head, attention-major, from teacher-forced passes.
std::vector<std::vector<HeadPattern>> head_patterns(models::Seq2SeqModel& model,
                                                    const std::vector<AttentionModule>& attentions,
                                                    std::span<const SentencePair> pairs, const Vocabs& vocabs,
                                                    std::size_t batch_size);

/// Quality with the model as it is (hooks included): train::evaluate's three numbers.
Quality measure_quality(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                        const HeadAnalysisOptions& options);

enum class QualityMetric { exact_match, bleu };
/// The most heads the `order` pruning curve masks before `metric` first falls more than
/// `points` below the baseline (exact match in percentage points, BLEU in BLEU points).
std::size_t prunable_heads(const HeadAnalysis& analysis, QualityMetric metric, double points,
                           PruningOrder order = PruningOrder::importance);

/// One row per head: attention, group, layer, head, importance, ablation deltas, patterns.
std::string heads_csv(const HeadAnalysis& analysis);
/// order, removed, head, loss, exact_match, bleu: both curves.
std::string pruning_csv(const HeadAnalysis& analysis);
/// Exact match (%) and BLEU against heads masked, both orders (ablation order dashed), from
/// lib/plot's line chart.
std::string pruning_svg(const HeadAnalysis& analysis, const std::string& title);
/// Markdown tables (heads, then the pruning curve) for docs.
std::string heads_markdown(const HeadAnalysis& analysis);
/// The explorer's optional "head_importance" field (train/attention_explorer.hpp): normalised
/// importance keyed by group title, per layer, per head, rounded to 1e-4.
nlohmann::json head_importance_json(const HeadAnalysis& analysis);

}  // namespace qkv::study
