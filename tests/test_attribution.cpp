// study/attribution: Spearman's ρ against published and hand-computed values (ties by average
// rank), maximum flow on hand graphs, rollout and flow on hand-made attention, occlusion on a
// model whose answer is known, input x gradient against central differences of the
// log-probability (float64) for both model kinds, and the agreement bookkeeping.
#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "lib/text/vocab.hpp"
#include "models/bahdanau/bahdanau.hpp"
#include "models/transformer/transformer.hpp"
#include "study/attribution.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::study;
using namespace qkv::models;

namespace {

Matrix matrix_of(std::size_t rows, std::size_t cols, std::initializer_list<double> values) {
  REQUIRE(values.size() == rows * cols);
  Matrix m = xt::zeros<double>({rows, cols});
  std::copy(values.begin(), values.end(), m.data());
  return m;
}

void check_matrix(const Matrix& actual, const Matrix& expected, double tolerance = 1e-12) {
  REQUIRE(actual.shape() == expected.shape());
  for (std::size_t i = 0; i < actual.shape()[0]; ++i)
    for (std::size_t j = 0; j < actual.shape()[1]; ++j) {
      INFO("(" << i << ", " << j << ")");
      CHECK(actual(i, j) == doctest::Approx(expected(i, j)).epsilon(tolerance));
    }
}

/// A sentence pair as a batch of one: source ids (ending in <eos>) and the reference target.
Batch sentence_of(std::vector<std::int64_t> source, std::vector<std::int64_t> target) {
  Batch batch;
  batch.source = IndexArray::from_shape({1, source.size()});
  std::copy(source.begin(), source.end(), batch.source.data());
  batch.source_lengths = {static_cast<std::int64_t>(source.size())};
  const std::size_t steps = target.size() + 1;
  batch.target_input = IndexArray::from_shape({1, steps});
  batch.target_output = IndexArray::from_shape({1, steps});
  batch.target_input(0, 0) = Vocab::bos_id;
  for (std::size_t t = 0; t < target.size(); ++t) {
    batch.target_input(0, t + 1) = target[t];
    batch.target_output(0, t) = target[t];
  }
  batch.target_output(0, steps - 1) = Vocab::eos_id;
  batch.target_lengths = {static_cast<std::int64_t>(steps)};
  batch.indices = {0};
  return batch;
}

/// A model whose answer is known: the logits at target position t are row source[t mod S] of a
/// fixed table, so only source position t mod S matters to target t, and its one attention map
/// looks there alone.
class PositionLookup : public Seq2SeqModel {
 public:
  static constexpr std::size_t kVocab = 6;
  Array table = test::random_array({kVocab, kVocab}, 11);  // [source id, target id] -> logit

  Seq2SeqOutput forward(const IndexArray& source, const IndexArray& source_lengths,
                        const IndexArray& target_input) override {
    const std::size_t batch = source.shape()[0], steps = target_input.shape()[1];
    Array logits = xt::zeros<real>({batch, steps, kVocab});
    Array attention = xt::zeros<real>({batch, steps, source.shape()[1]});
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t t = 0; t < steps; ++t) {
        const std::size_t j = t % static_cast<std::size_t>(source_lengths(b));
        for (std::size_t v = 0; v < kVocab; ++v) logits(b, t, v) = table(source(b, j), v);
        attention(b, t, j) = 1;
      }
    return {Variable(logits), {{"attention", attention}}};
  }
  std::unique_ptr<DecoderState> start_decoding(const IndexArray&, const IndexArray&) override {
    throw Error("PositionLookup decodes teacher-forced only");
  }
  StepOutput decode_step(DecoderState&, const IndexArray&) override {
    throw Error("PositionLookup decodes teacher-forced only");
  }
  std::string kind() const override { return "position-lookup"; }
  nlohmann::json config() const override { return nlohmann::json::object(); }

  /// log softmax(table[source id])[label]
  double log_prob(std::int64_t source_id, std::int64_t label) const {
    double sum = 0;
    for (std::size_t v = 0; v < kVocab; ++v) sum += std::exp(double(table(source_id, v)));
    return double(table(source_id, label)) - std::log(sum);
  }
};

// The tiny models below have dropout 0.1: every analysis must run them in eval mode.

/// Central differences of every label's log-probability with respect to the source
/// embedding's output, dotted with that output: the input x gradient [T, S] without autograd.
Matrix input_x_gradient_by_differences(Seq2SeqModel& model, const Batch& sentence) {
  const std::size_t source = sentence.source.shape()[1], target = sentence.target_input.shape()[1];
  model.eval();
  Array embedding;  // [1, S, D], what the model computes
  {
    ScopedHooks hooks(model);
    hooks.add("source_embedding.output", [&embedding](Variable& value, const HookCall&) { embedding = value.value(); });
    label_log_probs(model, sentence.source, sentence.source_lengths, sentence.target_input, sentence.target_output);
  }
  const std::size_t width = embedding.shape()[2];
  const double step = 1e-6;
  Matrix result = xt::zeros<double>({target, source});
  for (std::size_t j = 0; j < source; ++j)
    for (std::size_t d = 0; d < width; ++d) {
      Matrix sides[2];
      for (int side = 0; side < 2; ++side) {
        ScopedHooks hooks(model);
        const real shift = side == 0 ? real(step) : real(-step);
        hooks.add("source_embedding.output", [j, d, shift](Variable& value, const HookCall&) {
          Array moved = value.value();
          moved(0, j, d) += shift;
          value = Variable(moved);
        });
        sides[side] =
            label_log_probs(model, sentence.source, sentence.source_lengths, sentence.target_input, sentence.target_output);
      }
      for (std::size_t t = 0; t < target; ++t)
        result(t, j) += double(embedding(0, j, d)) * (sides[0](0, t) - sides[1](0, t)) / (2 * step);
    }
  return result;
}

}  // namespace

// ---- ranks ----------------------------------------------------------------------------------

TEST_CASE("average_ranks: ties share the mean of the ranks they span") {
  const std::vector<double> values = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5};
  // Sorted: 1 1 2 3 3 4 5 5 5 6 9 -> 1s rank 1.5, 2 rank 3, 3s 4.5, 4 rank 6, 5s 8, 6 rank 10, 9 rank 11.
  const std::vector<double> expected = {4.5, 1.5, 6, 1.5, 8, 11, 3, 10, 8, 4.5, 8};
  CHECK(average_ranks(values) == expected);
  CHECK(average_ranks(std::vector<double>{}).empty());
  CHECK_THROWS_WITH_AS(average_ranks(std::vector<double>{1, std::nan("")}), doctest::Contains("value 1 is NaN"), Error);
}

TEST_CASE("spearman: published and hand-computed values, with and without ties") {
  // Wikipedia's worked example (IQ against hours of TV per week): ρ = −29/165.
  const std::vector<double> iq = {106, 100, 86, 101, 99, 103, 97, 113, 112, 110};
  const std::vector<double> tv = {7, 27, 2, 50, 28, 29, 20, 12, 6, 17};
  CHECK(*spearman(iq, tv) == doctest::Approx(-29.0 / 165.0).epsilon(1e-14));
  // Ties: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): ρ = 4.5 / √(4.5 · 5) = √0.9.
  CHECK(*spearman(std::vector<double>{1, 2, 2, 3}, std::vector<double>{1, 3, 2, 4}) ==
        doctest::Approx(std::sqrt(0.9)).epsilon(1e-14));
  // Ties on both sides: ranks (1.5, 1.5, 3, 4) and (1, 3, 3, 3) → deviations (−1, −1, .5, 1.5)
  // and (−1.5, .5, .5, .5): ρ = 2 / √(4.5 · 3) = 0.5443310539518174.
  CHECK(*spearman(std::vector<double>{0.2, 0.2, 0.5, 0.9}, std::vector<double>{-1, 7, 7, 7}) ==
        doctest::Approx(2 / std::sqrt(13.5)).epsilon(1e-14));
  // Monotone transformations do not change it; reversing the order negates it.
  CHECK(*spearman(std::vector<double>{1, 2, 3, 4}, std::vector<double>{1, 10, 100, 1000}) == doctest::Approx(1));
  CHECK(*spearman(std::vector<double>{1, 2, 3, 4}, std::vector<double>{4, 3, 2, 1}) == doctest::Approx(-1));
  // No ρ for a constant side or fewer than two values.
  CHECK_FALSE(spearman(std::vector<double>{1, 1, 1}, std::vector<double>{1, 2, 3}).has_value());
  CHECK_FALSE(spearman(std::vector<double>{5}, std::vector<double>{2}).has_value());
  CHECK_THROWS_WITH_AS(spearman(std::vector<double>{1, 2}, std::vector<double>{1, 2, 3}),
                       doctest::Contains("spearman: needs two equally long sequences, got 2 and 3"), ShapeError);
}

// ---- maximum flow, rollout, attention flow --------------------------------------------------

TEST_CASE("FlowNetwork: maximum flow of hand graphs") {
  // CLRS figure 26.1 (s = 0, v1..v4 = 1..4, t = 5): maximum flow 23.
  FlowNetwork clrs(6);
  clrs.add_edge(0, 1, 16);
  clrs.add_edge(0, 2, 13);
  clrs.add_edge(2, 1, 4);
  clrs.add_edge(1, 3, 12);
  clrs.add_edge(3, 2, 9);
  clrs.add_edge(2, 4, 14);
  clrs.add_edge(4, 3, 7);
  clrs.add_edge(3, 5, 20);
  clrs.add_edge(4, 5, 4);
  CHECK(clrs.max_flow(0, 5) == doctest::Approx(23));
  CHECK(clrs.max_flow(0, 5) == doctest::Approx(23));  // asking again gives the same: unchanged
  CHECK(clrs.max_flow(5, 0) == 0);                       // no edge leads back
  CHECK(clrs.max_flow(2, 3) == doctest::Approx(11));     // v2 → v4 → v3 (7) and v2 → v1 → v3 (4)

  // A graph where even the shortest path must be partly undone: breadth-first search finds
  // s a b t (3 edges) first; the second unit then goes s p q b, back along a→b to a, and on
  // a x y t. Without reverse residual edges the answer would be 1. Unit capacities.
  FlowNetwork trap(8);  // s 0, a 1, b 2, t 3, x 4, y 5, p 6, q 7
  for (const auto& [from, to] : std::vector<std::pair<int, int>>{{0, 1}, {1, 2}, {2, 3}, {1, 4}, {4, 5}, {5, 3},
                                                                 {0, 6}, {6, 7}, {7, 2}})
    trap.add_edge(from, to, 1);
  CHECK(trap.max_flow(0, 3) == doctest::Approx(2));
  // Parallel edges add up; fractional capacities.
  FlowNetwork parallel(2);
  parallel.add_edge(0, 1, 0.25);
  parallel.add_edge(0, 1, 0.5);
  CHECK(parallel.max_flow(0, 1) == doctest::Approx(0.75));

  CHECK_THROWS_WITH_AS(trap.add_edge(0, 8, 1), doctest::Contains("edge 0 -> 8 names a node outside 0..7"), Error);
  CHECK_THROWS_WITH_AS(trap.add_edge(0, 1, -1), doctest::Contains("non-negative, got -1"), Error);
  CHECK_THROWS_WITH_AS(trap.max_flow(1, 1), doctest::Contains("distinct source and sink"), Error);
}

TEST_CASE("attention rollout and flow on hand-made attention") {
  // One layer, two positions: position 0 attends to itself, position 1 to position 0.
  // Ã = 0.5 A + 0.5 I = [[1, 0], [0.5, 0.5]].
  const Matrix attend_first = matrix_of(2, 2, {1, 0, 1, 0});
  check_matrix(with_residual(attend_first), matrix_of(2, 2, {1, 0, 0.5, 0.5}));
  // A row that does not sum to one is normalised; a zero row keeps only the residual.
  check_matrix(with_residual(matrix_of(2, 2, {0, 0, 1, 1})), matrix_of(2, 2, {1, 0, 1.0 / 3, 2.0 / 3}));
  // Read out by c = (0.3, 0.7): rollout c·Ã = (0.3 + 0.35, 0.35).
  const Matrix readout = matrix_of(1, 2, {0.3, 0.7});
  check_matrix(rollout_readout({attend_first}, readout), matrix_of(1, 2, {0.65, 0.35}));
  // Flow from token 0: via output 0, min(1, 0.3); via output 1, min(0.5, 0.7): 0.8 in all.
  // From token 1: only via output 1, min(0.5, 0.7) = 0.5.
  check_matrix(attention_flow({attend_first}, readout), matrix_of(1, 2, {0.8, 0.5}));

  // Two layers: layer 1 attends to position 1, layer 2 to position 0.
  // Ã1 = [[0.5, 0.5], [0, 1]], Ã2 = [[1, 0], [0.5, 0.5]], rollout Ã2 Ã1 = [[0.5, 0.5], [0.25, 0.75]].
  const std::vector<Matrix> layers = {matrix_of(2, 2, {0, 1, 0, 1}), attend_first};
  check_matrix(attention_rollout(layers), matrix_of(2, 2, {0.5, 0.5, 0.25, 0.75}));
  // Target 0 reads encoder output 0, target 1 reads output 1.
  const Matrix readouts = matrix_of(2, 2, {1, 0, 0, 1});
  check_matrix(rollout_readout(layers, readouts), matrix_of(2, 2, {0.5, 0.5, 0.25, 0.75}));
  // Flow into target 1: token 0 reaches layer-1 output 0 (0.5), which reaches layer-2 output 1
  // (0.5): 0.5. Token 1 reaches layer-1 outputs 0 (0.5) and 1 (1), both into layer-2 output 1
  // (0.5 each), which reaches the target with capacity 1: 1. Into target 0 both tokens go
  // through layer-1 output 0 (0.5 each), the only edge into layer-2 output 0: 0.5 each.
  check_matrix(attention_flow(layers, readouts), matrix_of(2, 2, {0.5, 0.5, 0.5, 1}));

  CHECK_THROWS_WITH_AS(attention_rollout({}), doctest::Contains("needs at least one layer"), ShapeError);
  CHECK_THROWS_WITH_AS(attention_rollout({attend_first, matrix_of(1, 1, {1})}),
                       doctest::Contains("layer 2's attention must be [2, 2] like layer 1's, got [1, 1]"), ShapeError);
  CHECK_THROWS_WITH_AS(attention_flow(layers, matrix_of(1, 3, {1, 0, 0})),
                       doctest::Contains("one column per source position (2)"), ShapeError);
}

// ---- the methods on models ------------------------------------------------------------------

TEST_CASE("occlusion on a model whose answer is known") {
  PositionLookup model;
  // Source 4 5 <eos>, target 3 4 5 1 (+ <eos>): 5 label positions over 3 source positions.
  const Batch sentence = sentence_of({4, 5, Vocab::eos_id}, {3, 4, 5, 1});
  const Matrix scores = occlusion_scores(model, sentence);
  REQUIRE(scores.shape() == std::array<std::size_t, 2>{5, 3});
  const std::vector<std::int64_t> source = {4, 5, Vocab::eos_id}, labels = {3, 4, 5, 1, Vocab::eos_id};
  for (std::size_t t = 0; t < 5; ++t)
    for (std::size_t j = 0; j < 3; ++j) {
      INFO("target " << t << ", source " << j);
      // Only source position t mod 3 matters; <unk> there gives that row's table instead.
      const double expected = j == t % 3 ? model.log_prob(source[j], labels[t]) - model.log_prob(Vocab::unk_id, labels[t]) : 0;
      CHECK(scores(t, j) == doctest::Approx(expected).epsilon(1e-12));
    }
  // The one attention map agrees with occlusion's ranking wherever occlusion is not constant.
  const std::vector<NamedScores> attention = cross_attention_scores(model, sentence);
  REQUIRE(attention.size() == 1);
  CHECK(attention[0].name == "attention");
  CHECK(row_agreement(attention[0].scores, xt::abs(scores)).mean == doctest::Approx(1));
}

TEST_CASE("occlusion on a transformer equals one forward pass per occluded sentence") {
  TransformerModel model(test::tiny_transformer_config(PositionalKind::sinusoidal, 0.1, 5));
  const Batch sentence = sentence_of({4, 5, 6, 7, Vocab::eos_id}, {3, 4, 5, 6});
  const Matrix scores = occlusion_scores(model, sentence);  // [5, 5]
  const Matrix base = label_log_probs(model, sentence.source, sentence.source_lengths, sentence.target_input,
                                      sentence.target_output);  // [1, T]
  for (std::size_t j = 0; j < 5; ++j) {
    IndexArray occluded = sentence.source;
    occluded(0, j) = Vocab::unk_id;
    const Matrix alone =
        label_log_probs(model, occluded, sentence.source_lengths, sentence.target_input, sentence.target_output);
    for (std::size_t t = 0; t < 5; ++t) CHECK(scores(t, j) == doctest::Approx(base(0, t) - alone(0, t)).epsilon(1e-10));
  }
}

TEST_CASE("input x gradient equals central differences of the log-probability, both model kinds") {
  const Batch sentence = sentence_of({4, 5, 6, 8, Vocab::eos_id}, {3, 4, 6});
  TransformerModel transformer(test::tiny_transformer_config(PositionalKind::sinusoidal, 0.1, 5));
  BahdanauModel bahdanau(test::tiny_bahdanau_config(0.1));
  for (Seq2SeqModel* model : std::initializer_list<Seq2SeqModel*>{&transformer, &bahdanau}) {
    INFO(model->kind());
    const Matrix analytic = input_x_gradient(*model, sentence);  // [4, 5]
    const Matrix numeric = input_x_gradient_by_differences(*model, sentence);
    REQUIRE(analytic.shape() == numeric.shape());
    double largest = 0;
    for (std::size_t i = 0; i < analytic.size(); ++i) {
      CHECK(analytic.data()[i] == doctest::Approx(numeric.data()[i]).epsilon(1e-6).scale(1e-8));
      largest = std::max(largest, std::abs(analytic.data()[i]));
    }
    CHECK(largest > 1e-3);  // the check compares real gradients, not zeros
    // The model's parameters were constants for it, and stay trainable without a gradient.
    for (const Variable& parameter : model->parameters()) {
      CHECK(parameter.requires_grad());
      CHECK_FALSE(parameter.has_grad());
    }
  }
}

TEST_CASE("attribute_sentence: the methods of each model kind, and their agreement") {
  const Batch sentence = sentence_of({4, 5, 6, 7, 8, Vocab::eos_id}, {3, 4, 5});
  TransformerModel transformer(test::tiny_transformer_config(PositionalKind::sinusoidal, 0.1, 5));
  const SentenceAttribution result = attribute_sentence(transformer, sentence);
  std::vector<std::string> names;
  for (const NamedScores& method : result.attention) {
    names.push_back(method.name);
    CHECK(method.scores.shape() == std::array<std::size_t, 2>{4, 6});
    for (const double weight : method.scores) CHECK(weight >= 0);
  }
  const std::vector<std::string> expected = {
      "layer 1 head 1", "layer 1 head 2", "layer 2 head 1", "layer 2 head 2", "layer 1 mean", "layer 2 mean",
      "mean", "rollout · layer 1 mean", "flow · layer 1 mean", "rollout · layer 2 mean", "flow · layer 2 mean",
      "rollout · mean", "flow · mean"};
  CHECK(names == expected);
  // Attention maps, their means and rollouts are distributions over the source; flows are at
  // most the readout's total, 1.
  for (const NamedScores& method : result.attention) {
    INFO(method.name);
    for (std::size_t t = 0; t < 4; ++t) {
      const double total = xt::sum(xt::view(method.scores, t, xt::all()))();
      if (method.name.starts_with("flow"))
        for (std::size_t j = 0; j < 6; ++j) CHECK(method.scores(t, j) <= 1 + 1e-12);
      else
        CHECK(total == doctest::Approx(1).epsilon(1e-12));
    }
  }
  REQUIRE(result.attribution.size() == 2);
  CHECK(result.attribution[0].name == "input x gradient");
  CHECK(result.attribution[1].name == "occlusion");
  const std::vector<MethodPair> pairs = method_pairs(result);
  CHECK(pairs.size() == expected.size() * 2 + 1);
  CHECK(pairs.back().first == "input x gradient");
  CHECK(pairs.back().second == "occlusion");
  for (const bool signed_scores : {false, true}) {
    const std::vector<RowAgreement> agreement = sentence_agreement(result, signed_scores);
    REQUIRE(agreement.size() == pairs.size());
    for (const RowAgreement& pair : agreement) {
      CHECK(pair.rows + pair.skipped_rows == 4);
      if (pair.rows > 0) CHECK(std::abs(pair.mean) <= 1);
    }
  }

  // Bahdanau: one map, no encoder self-attention, so no rollout or flow.
  BahdanauModel bahdanau(test::tiny_bahdanau_config(0.1));
  const SentenceAttribution additive = attribute_sentence(bahdanau, sentence, {.occlusion = false});
  REQUIRE(additive.attention.size() == 1);
  CHECK(additive.attention[0].name == "attention");
  REQUIRE(additive.attribution.size() == 1);
  CHECK(method_pairs(additive).size() == 1);
  CHECK(encoder_self_attention(bahdanau, sentence).empty());
  CHECK(encoder_self_attention(transformer, sentence).size() == 2);

  CHECK_THROWS_WITH_AS(occlusion_scores(transformer, Batch{}), doctest::Contains("needs a batch of one sentence pair"),
                       ShapeError);
}

// ---- agreement bookkeeping ------------------------------------------------------------------

TEST_CASE("row_agreement and AgreementTable: means over rows, then over sentences") {
  // Row 0 agrees perfectly, row 1 is reversed, row 2 is constant in b (no ρ).
  const Matrix a = matrix_of(3, 3, {0.1, 0.2, 0.7, 0.5, 0.3, 0.2, 0.3, 0.3, 0.4});
  const Matrix b = matrix_of(3, 3, {1, 2, 3, 1, 2, 3, 5, 5, 5});
  const RowAgreement rows = row_agreement(a, b);
  CHECK(rows.mean == doctest::Approx(0));
  CHECK(rows.top1 == doctest::Approx(0.5));  // row 0 puts position 2 first on both sides, row 1 does not
  CHECK(rows.rows == 2);
  CHECK(rows.skipped_rows == 1);
  CHECK(std::isnan(row_agreement(matrix_of(1, 2, {1, 1}), matrix_of(1, 2, {1, 2})).mean));
  CHECK_THROWS_AS(row_agreement(a, matrix_of(1, 3, {1, 2, 3})), ShapeError);

  AgreementTable table;
  const std::vector<MethodPair> pairs = {{"x", "y"}, {"x", "z"}};
  const double none = std::numeric_limits<double>::quiet_NaN();
  table.add(pairs, {{.mean = 0.5, .top1 = 1, .rows = 2, .skipped_rows = 0},
                    {.mean = 1, .top1 = 0.5, .rows = 1, .skipped_rows = 1}});
  table.add(pairs, {{.mean = 0.1, .top1 = 0, .rows = 3, .skipped_rows = 0},
                    {.mean = none, .top1 = none, .rows = 0, .skipped_rows = 3}});
  const std::vector<PairAgreement> summary = table.summary();
  REQUIRE(summary.size() == 2);
  CHECK(summary[0].sentences.mean == doctest::Approx(0.3));
  CHECK(summary[0].sentences.count == 2);
  CHECK(summary[0].top1.mean == doctest::Approx(0.5));
  CHECK(summary[0].rows == 5);
  CHECK(summary[1].sentences.mean == doctest::Approx(1));  // the sentence without a ρ is left out
  CHECK(summary[1].sentences.count == 1);
  CHECK(summary[1].skipped_rows == 4);
  CHECK(table.sentences() == 2);
  // The table: rows are first methods, columns second methods, cells mean ± sd (n).
  const std::string markdown = agreement_markdown(summary, AgreementStatistic::spearman);
  CHECK(markdown == "| method | ρ with y | ρ with z |\n|---|---|---|\n| x | 0.300 ± 0.283 (2) | 1.000 ± 0.000 (1) |\n");
  CHECK(agreement_markdown(summary, AgreementStatistic::top1).find("| x | 0.500 ± 0.707 (2) | 0.500 ± 0.000 (1) |") !=
        std::string::npos);
  CHECK_THROWS_WITH_AS(table.add({{"x", "y"}, {"x", "w"}}, {{}, {}}), doctest::Contains("method pair 1 is x / w"), Error);
  // Paired over the sentences where both have a value: only the first here.
  const AgreementTable::Difference difference = table.difference({"x", "z"}, {"x", "y"});
  CHECK(difference.rho.count == 1);
  CHECK(difference.rho.mean == doctest::Approx(0.5));
  CHECK(difference.top1.mean == doctest::Approx(-0.5));
  CHECK_THROWS_WITH_AS(table.difference({"x", "q"}, {"x", "y"}), doctest::Contains("no method pair x / q"), Error);

  // Rollout and flow against their readout, paired per sentence: +0.2 and −0.1 in ρ.
  AgreementTable composed;
  const std::vector<MethodPair> methods = {{"mean", "occlusion"}, {"rollout · mean", "occlusion"}};
  composed.add(methods, {{.mean = 0.2, .top1 = 0.5, .rows = 1}, {.mean = 0.4, .top1 = 0.5, .rows = 1}});
  composed.add(methods, {{.mean = 0.3, .top1 = 1, .rows = 1}, {.mean = 0.2, .top1 = 0, .rows = 1}});
  // Differences +0.2 and −0.1: mean 0.05, sd 0.212, s.e. 0.15; top-1 0 and −1: −0.5 ± 0.5.
  CHECK(composed_against_readout_markdown(composed) ==
        "| attribution | method − its readout | Δρ ± s.e. | Δtop-1 ± s.e. | sentences |\n|---|---|---|---|---|\n"
        "| occlusion | rollout · mean − mean | +0.050 ± 0.150 | -0.500 ± 0.500 | 2 |\n");
  CHECK(composed_against_readout_markdown(table).empty());  // no rollout or flow in it
}
