// The ops and kernel paths added to speed up the Bahdanau decoder's step: each gives the values
// and gradients of the composition it replaces, passes gradcheck on every input, and names
// itself and the shapes on bad input. Sizes are chosen so that vectorised loops run both their
// full blocks and their remainders (19 = 2 blocks of 8 + 3).
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// Each input's gradient after one backward of `output` from `upstream`, cleared again so that
/// another graph of the same inputs can be compared with it.
std::vector<Array> gradients_of(Variable output, const Array& upstream, std::vector<Variable> inputs) {
  output.backward(upstream);
  std::vector<Array> gradients;
  for (Variable& x : inputs) {
    gradients.push_back(x.grad());
    x.zero_grad();
  }
  return gradients;
}

}  // namespace

TEST_CASE("attention_context: equals matmul(weights, values), values and gradients") {
  const Variable weights(random_array({3, 2, 5}, 31), true), values(random_array({3, 5, 19}, 32), true);
  Variable fused = attention_context(weights, values);  // [3, 2, 19]
  Variable composed = matmul(weights, values);          // [3, 2, 19]
  REQUIRE(fused.shape() == Shape{3, 2, 19});
  CHECK(max_abs_diff(fused.value(), composed.value()) < 1e-12);

  const Array upstream = random_array({3, 2, 19}, 33);
  fused.backward(upstream);
  const Array dw = weights.grad(), dv = values.grad();
  for (Variable x : {weights, values}) x.zero_grad();
  composed.backward(upstream);
  CHECK(max_abs_diff(dw, weights.grad()) < 1e-12);
  CHECK(max_abs_diff(dv, values.grad()) < 1e-12);
}

TEST_CASE("attention_context: one query per row, as a decoder step computes it by hand") {
  // weights [1, 1, 2] = [0.25, 0.75], values [1, 2, 3]: the weighted sum of the two rows.
  const Variable weights(array_of({1, 1, 2}, {0.25, 0.75}));
  const Variable values(array_of({1, 2, 3}, {1, 2, 3, 5, 6, 7}));
  const Variable context = attention_context(weights, values);
  REQUIRE(context.shape() == Shape{1, 1, 3});
  CHECK(context.value()(0, 0, 0) == doctest::Approx(4.0));
  CHECK(context.value()(0, 0, 1) == doctest::Approx(5.0));
  CHECK(context.value()(0, 0, 2) == doctest::Approx(6.0));
}

TEST_CASE("attention_context: gradcheck w.r.t. weights and values, and gradients that accumulate") {
  QKV_CHECK_GRADIENTS([](const auto& in) { return attention_context(in[0], in[1]); },
                      {Variable(random_array({2, 3, 4}, 34)), Variable(random_array({2, 4, 19}, 35))});
  QKV_CHECK_GRADIENTS([](const auto& in) { return attention_context(in[0], in[1]); },
                      {Variable(random_array({2, 1, 4}, 36)), Variable(random_array({2, 4, 3}, 37))});
  // The same values used twice: both uses add into one gradient buffer.
  QKV_CHECK_GRADIENTS(
      [](const auto& in) { return attention_context(in[0], in[1]) + attention_context(in[0] * in[0], in[1]); },
      {Variable(random_array({2, 2, 3}, 38)), Variable(random_array({2, 3, 5}, 39))});
}

TEST_CASE("attention_context: bad shapes name the op and the shapes") {
  CHECK_THROWS_WITH_AS(attention_context(Variable(zeros({2, 1, 4})), Variable(zeros({2, 5, 3}))),
                       "attention_context: weights must be [B, Tq, Tk] and values [B, Tk, dv], got weights "
                       "[2, 1, 4], values [2, 5, 3]",
                       ShapeError);
  CHECK_THROWS_AS(attention_context(Variable(zeros({2, 1, 4})), Variable(zeros({3, 4, 3}))), ShapeError);
  CHECK_THROWS_AS(attention_context(Variable(zeros({2, 4})), Variable(zeros({2, 4, 3}))), ShapeError);
}

TEST_CASE("additive_scores: a width past one vector block matches the composition and gradcheck") {
  const Variable q(random_array({2, 1, 19}, 41), true), k(random_array({2, 6, 19}, 42), true),
      v(random_array({19}, 43), true);
  Variable fused = additive_scores(q, k, v);  // [2, 1, 6]
  const Variable features = tanh(unsqueeze(q, 2) + unsqueeze(k, 1));                 // [2, 1, 6, 19]
  Variable composed = squeeze(linear(features, reshape(v, {1, 19}), Variable()), -1);  // [2, 1, 6]
  CHECK(max_abs_diff(fused.value(), composed.value()) < 1e-12);
  QKV_CHECK_GRADIENTS([](const auto& in) { return additive_scores(in[0], in[1], in[2]); },
                      {Variable(random_array({2, 1, 19}, 44)), Variable(random_array({2, 3, 19}, 45)),
                       Variable(random_array({19}, 46))});
}

TEST_CASE("additive_scores: gradients of several queries, of one variable as queries and keys, and without the keys' gradient") {
  // Two queries per row: each query's gradient sums over the keys, each key's over the queries.
  QKV_CHECK_GRADIENTS([](const auto& in) { return additive_scores(in[0], in[1], in[2]); },
                      {Variable(random_array({2, 2, 19}, 47)), Variable(random_array({2, 3, 19}, 48)),
                       Variable(random_array({19}, 49))});
  // Self-scoring: queries and keys are one variable, so both halves add into one buffer.
  QKV_CHECK_GRADIENTS([](const auto& in) { return additive_scores(in[0], in[0], in[1]); },
                      {Variable(random_array({2, 3, 19}, 40)), Variable(random_array({19}, 50))});
  // Keys that need no gradient (the kernel's other loop): q's and v's as the composition gives.
  const Array q_value = random_array({2, 2, 19}, 61), k_value = random_array({2, 5, 19}, 62),
              v_value = random_array({19}, 63), upstream = random_array({2, 2, 5}, 64);
  Variable q(q_value, true), k(k_value, false), v(v_value, true);
  const std::vector<Array> fused = gradients_of(additive_scores(q, k, v), upstream, {q, v});
  const Variable features = tanh(unsqueeze(q, 2) + unsqueeze(k, 1));  // [2, 2, 5, 19]
  const std::vector<Array> composed =
      gradients_of(squeeze(linear(features, reshape(v, {1, 19}), Variable()), -1), upstream, {q, v});
  CHECK(max_abs_diff(fused[0], composed[0]) < 1e-12);
  CHECK(max_abs_diff(fused[1], composed[1]) < 1e-12);
  CHECK_FALSE(k.requires_grad());
}

TEST_CASE("additive_scores: without a backward to come (no grad mode, no input needing one) the same scores") {
  const Array q_value = random_array({3, 1, 19}, 65), k_value = random_array({3, 7, 19}, 66),
              v_value = random_array({19}, 67);
  const Variable q(q_value, true), k(k_value, true), v(v_value, true);
  const Array kept = additive_scores(q, k, v).value();  // the features kept for the backward
  Array unneeded, no_grad;
  unneeded = additive_scores(Variable(q_value), Variable(k_value), Variable(v_value)).value();
  {
    NoGradGuard decoding;
    no_grad = additive_scores(q, k, v).value();
  }
  CHECK(max_abs_diff(kept, unneeded) == 0);
  CHECK(max_abs_diff(kept, no_grad) == 0);
}

TEST_CASE("gru_cell: gradients written into fresh buffers and added into used ones agree with gradcheck") {
  // Every gradient buffer fresh when gru_cell's backward runs (written, not added).
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell(in[0], in[1], in[2]); },
                      {Variable(random_array({2, 57}, 51, 2)), Variable(random_array({2, 57}, 52, 2)),
                       Variable(random_array({2, 19}, 53))});
  // h also read after the cell: its buffer already holds the product's gradient (added to).
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell(in[0], in[1], in[2]) * in[2]; },
                      {Variable(random_array({2, 57}, 54, 2)), Variable(random_array({2, 57}, 55, 2)),
                       Variable(random_array({2, 19}, 56))});
  // One variable as both gate halves: the first half's gradient is written, the second's added.
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell(in[0], in[0], in[1]); },
                      {Variable(random_array({3, 57}, 57, 2)), Variable(random_array({3, 19}, 58))});
}

TEST_CASE("gru_cell_rows: equals gru_cell on a slice plus the extra gates, values and gradients") {
  // input_gates [3·2, 57]: rows [2, 4) are this step's, plus extra gates [2, 57] (H = 19).
  const Variable all(random_array({6, 57}, 61, 2), true), extra(random_array({2, 57}, 62, 2), true),
      hidden_gates(random_array({2, 57}, 63, 2), true), h(random_array({2, 19}, 64), true);
  Variable fused = gru_cell_rows(all, 2, extra, hidden_gates, h);                   // [2, 19]
  Variable composed = gru_cell(slice(all, 0, 2, 4) + extra, hidden_gates, h);      // [2, 19]
  CHECK(max_abs_diff(fused.value(), composed.value()) == 0);
  const Array upstream = random_array({2, 19}, 65);
  const std::vector<Variable> inputs{all, extra, hidden_gates, h};
  const std::vector<Array> fused_grads = gradients_of(fused, upstream, inputs);
  const std::vector<Array> composed_grads = gradients_of(composed, upstream, inputs);
  for (std::size_t i = 0; i < inputs.size(); ++i) CHECK(max_abs_diff(fused_grads[i], composed_grads[i]) == 0);
  // Rows outside [2, 4) get no gradient.
  for (std::size_t r : {0, 1, 4, 5})
    for (std::size_t j = 0; j < 57; ++j) CHECK(fused_grads[0](r, j) == 0);
}

TEST_CASE("gru_cell_rows: gradcheck with and without extra gates, and steps sharing one gate table") {
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell_rows(in[0], 3, in[1], in[2], in[3]); },
                      {Variable(random_array({6, 57}, 71, 2)), Variable(random_array({3, 57}, 72, 2)),
                       Variable(random_array({3, 57}, 73, 2)), Variable(random_array({3, 19}, 74))});
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell_rows(in[0], 0, Variable(), in[1], in[2]); },
                      {Variable(random_array({2, 57}, 75, 2)), Variable(random_array({2, 57}, 76, 2)),
                       Variable(random_array({2, 19}, 77))});
  // The extra gates the same variable as the hidden gates, fresh when the backward runs: the
  // extra gates' gradient is put first, so it must be the one written.
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell_rows(in[0], 0, in[1], in[1], in[2]); },
                      {Variable(random_array({2, 57}, 91, 2)), Variable(random_array({2, 57}, 92, 2)),
                       Variable(random_array({2, 19}, 93))});
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell_rows(in[0], 2, in[1], in[1], in[2]); },
                      {Variable(random_array({4, 57}, 94, 2)), Variable(random_array({2, 57}, 95, 2)),
                       Variable(random_array({2, 19}, 96))});
  // The input gates the same variable as the extra gates (whole, so written fresh first).
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell_rows(in[0], 0, in[0], in[1], in[2]); },
                      {Variable(random_array({2, 57}, 97, 2)), Variable(random_array({2, 57}, 98, 2)),
                       Variable(random_array({2, 19}, 99))});
  // Two steps reading rows [0, 2) and [2, 4) of one table, the second from the first's state,
  // with the extra gates the same variable as the hidden gates (added after written).
  QKV_CHECK_GRADIENTS(
      [](const auto& in) {
        const Variable first = gru_cell_rows(in[0], 0, in[1], in[1], in[2]);
        return gru_cell_rows(in[0], 2, Variable(), in[1], first);
      },
      {Variable(random_array({4, 57}, 78, 2)), Variable(random_array({2, 57}, 79, 2)),
       Variable(random_array({2, 19}, 80))});
}

TEST_CASE("gru_cell_rows: bad shapes and rows outside the gate table name the op and the shapes") {
  CHECK_THROWS_WITH_AS(gru_cell_rows(Variable(zeros({4, 9})), 3, Variable(), Variable(zeros({2, 9})),
                                     Variable(zeros({2, 3}))),
                       "gru_cell_rows: hidden_gates (and extra_input_gates) must be [B, 3H] for h [B, H] and "
                       "input_gates [R, 3H] with rows [3, 3 + B) inside R, got input_gates [4, 9], extra_input_gates "
                       "none, hidden_gates [2, 9], h [2, 3]",
                       ShapeError);
  CHECK_THROWS_AS(gru_cell_rows(Variable(zeros({4, 9})), 0, Variable(zeros({3, 9})), Variable(zeros({2, 9})),
                                Variable(zeros({2, 3}))),
                  ShapeError);
  CHECK_THROWS_AS(gru_cell_rows(Variable(zeros({4, 6})), 0, Variable(), Variable(zeros({2, 9})),
                                Variable(zeros({2, 3}))),
                  ShapeError);
}

namespace {
/// x [N, ...] -> [B, ...] with row b = x[rows[b]], through the embedding op (it has a backward).
Variable gathered(const Variable& x, const IndexArray& rows) {
  const Shape x_shape = x.shape();
  const long n = static_cast<long>(x_shape[0]), rest = static_cast<long>(x.numel()) / n;
  std::vector<long> shape(x_shape.begin(), x_shape.end());
  shape[0] = static_cast<long>(rows.size());
  return reshape(embedding(reshape(x, {n, rest}), rows), shape);
}
}  // namespace

TEST_CASE("additive_scores and attention_context with key rows: equal the ops on gathered rows, and gradcheck") {
  // Four rows reading two sentences' keys, one of them by three rows (beam hypotheses).
  IndexArray rows = IndexArray::from_shape({4});
  rows(0) = 1, rows(1) = 0, rows(2) = 1, rows(3) = 1;
  const Variable q(random_array({4, 1, 19}, 81), true), k(random_array({2, 5, 19}, 82), true),
      v(random_array({19}, 83), true), values(random_array({2, 5, 19}, 84), true);
  Variable shared = attention_context(softmax(additive_scores(q, k, rows, v), -1), values, rows);  // [4, 1, 19]
  Variable copied = attention_context(softmax(additive_scores(q, gathered(k, rows), v), -1), gathered(values, rows));
  CHECK(max_abs_diff(shared.value(), copied.value()) == 0);
  const Array upstream = random_array({4, 1, 19}, 85);
  const std::vector<Variable> inputs{q, k, v, values};
  const std::vector<Array> shared_grads = gradients_of(shared, upstream, inputs);
  const std::vector<Array> copied_grads = gradients_of(copied, upstream, inputs);
  for (std::size_t i = 0; i < inputs.size(); ++i) CHECK(max_abs_diff(shared_grads[i], copied_grads[i]) < 1e-12);

  QKV_CHECK_GRADIENTS([&](const auto& in) { return additive_scores(in[0], in[1], rows, in[2]); },
                      {Variable(random_array({4, 1, 19}, 86)), Variable(random_array({2, 3, 19}, 87)),
                       Variable(random_array({19}, 88))});
  QKV_CHECK_GRADIENTS([&](const auto& in) { return attention_context(in[0], in[1], rows); },
                      {Variable(random_array({4, 2, 3}, 89)), Variable(random_array({2, 3, 19}, 90))});
}

TEST_CASE("additive_scores and attention_context: key rows of the wrong shape or outside the keys are errors") {
  IndexArray rows = IndexArray::from_shape({2});
  rows(0) = 0, rows(1) = 2;
  const Variable q(zeros({2, 1, 4})), k(zeros({2, 3, 4})), v(zeros({4})), w(zeros({2, 1, 3}));
  CHECK_THROWS_WITH_AS(additive_scores(q, k, rows, v), "additive_scores: key row 2 (batch row 1) is outside [0, 2)",
                       Error);
  CHECK_THROWS_WITH_AS(attention_context(w, k, rows), "attention_context: value row 2 (batch row 1) is outside [0, 2)",
                       Error);
  CHECK_THROWS_WITH_AS(additive_scores(q, k, IndexArray::from_shape({3}), v),
                       "additive_scores: key rows must be [2], one per batch row, got [3]", ShapeError);
}
