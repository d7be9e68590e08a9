// The ops and kernel paths added to speed up the Bahdanau decoder's step: each gives the values
// and gradients of the composition it replaces, passes gradcheck on every input, and names
// itself and the shapes on bad input. Sizes are chosen so that vectorised loops run both their
// full blocks and their remainders (19 = 2 blocks of 8 + 3).
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

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
