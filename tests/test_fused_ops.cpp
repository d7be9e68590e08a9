// Fused ops added for speed: each must give the values of the primitive ops it replaces, pass
// gradcheck on every input, and name itself and the shapes on bad input.
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

TEST_CASE("additive_scores: equals vᵀ tanh(q + k) composed from primitive ops") {
  const Variable q(random_array({2, 3, 5}, 1), true), k(random_array({2, 4, 5}, 2), true), v(random_array({5}, 3), true);
  const Variable fused = additive_scores(q, k, v);  // [2, 3, 4]
  const Variable features = tanh(unsqueeze(q, 2) + unsqueeze(k, 1));                // [2, 3, 4, 5]
  const Variable composed = squeeze(linear(features, reshape(v, {1, 5}), Variable()), -1);  // [2, 3, 4]
  REQUIRE(fused.shape() == Shape{2, 3, 4});
  CHECK(max_abs_diff(fused.value(), composed.value()) < 1e-12);

  // Gradients match the composition's too, for a non-uniform upstream gradient.
  const Array upstream = random_array({2, 3, 4}, 4);
  fused.backward(upstream);
  const Array dq = q.grad(), dk = k.grad(), dv = v.grad();
  for (Variable x : {q, k, v}) x.zero_grad();
  composed.backward(upstream);
  CHECK(max_abs_diff(dq, q.grad()) < 1e-12);
  CHECK(max_abs_diff(dk, k.grad()) < 1e-12);
  CHECK(max_abs_diff(dv, v.grad()) < 1e-12);
}

TEST_CASE("additive_scores: gradcheck w.r.t. queries, keys and v, and the same variable as both") {
  QKV_CHECK_GRADIENTS([](const auto& in) { return additive_scores(in[0], in[1], in[2]); },
                      {Variable(random_array({2, 3, 4}, 5)), Variable(random_array({2, 2, 4}, 6)),
                       Variable(random_array({4}, 7))});
  // q and k the same variable: both gradients land in one buffer.
  QKV_CHECK_GRADIENTS([](const auto& in) { return additive_scores(in[0], in[0], in[1]); },
                      {Variable(random_array({2, 3, 4}, 8)), Variable(random_array({4}, 9))});
}

TEST_CASE("additive_scores: bad shapes name the op and the shapes") {
  const Variable q(zeros({2, 3, 4})), k(zeros({2, 5, 4}));
  CHECK_THROWS_WITH_AS(additive_scores(q, Variable(zeros({2, 5, 3})), Variable(zeros({4}))),
                       "additive_scores: queries must be [B, Tq, A], keys [B, Tk, A] and v [A], got queries "
                       "[2, 3, 4], keys [2, 5, 3], v [4]",
                       ShapeError);
  CHECK_THROWS_AS(additive_scores(q, Variable(zeros({3, 5, 4})), Variable(zeros({4}))), ShapeError);
  CHECK_THROWS_AS(additive_scores(q, k, Variable(zeros({3}))), ShapeError);
}

namespace {
/// The GRU update composed from primitive ops, as layers/gru.cpp wrote it before gru_cell.
Variable composed_gru(const Variable& input_gates, const Variable& hidden_gates, const Variable& h) {
  const std::size_t hidden = h.dim(1);
  const auto xi = split(input_gates, {hidden, hidden, hidden}, 1);
  const auto hi = split(hidden_gates, {hidden, hidden, hidden}, 1);
  const Variable r = sigmoid(xi[0] + hi[0]);
  const Variable z = sigmoid(xi[1] + hi[1]);
  const Variable n = tanh(xi[2] + r * hi[2]);
  return n + z * (h - n);
}
}  // namespace

TEST_CASE("gru_cell: equals the GRU equations composed from primitive ops, values and gradients") {
  const Variable xi(random_array({3, 12}, 21, 2), true), hg(random_array({3, 12}, 22, 2), true),
      h(random_array({3, 4}, 23), true);
  const Variable fused = gru_cell(xi, hg, h), composed = composed_gru(xi, hg, h);
  CHECK(max_abs_diff(fused.value(), composed.value()) < 1e-12);
  const Array upstream = random_array({3, 4}, 24);
  fused.backward(upstream);
  const Array dxi = xi.grad(), dhg = hg.grad(), dh = h.grad();
  for (Variable x : {xi, hg, h}) x.zero_grad();
  composed.backward(upstream);
  CHECK(max_abs_diff(dxi, xi.grad()) < 1e-12);
  CHECK(max_abs_diff(dhg, hg.grad()) < 1e-12);
  CHECK(max_abs_diff(dh, h.grad()) < 1e-12);
}

TEST_CASE("gru_cell: gradcheck w.r.t. both gate halves and the state") {
  QKV_CHECK_GRADIENTS([](const auto& in) { return gru_cell(in[0], in[1], in[2]); },
                      {Variable(random_array({2, 9}, 25, 2)), Variable(random_array({2, 9}, 26, 2)),
                       Variable(random_array({2, 3}, 27))});
}

TEST_CASE("gru_cell: bad shapes name the op and the shapes") {
  CHECK_THROWS_WITH_AS(gru_cell(Variable(zeros({2, 9})), Variable(zeros({2, 6})), Variable(zeros({2, 3}))),
                       "gru_cell: input_gates and hidden_gates must be [B, 3H] for h [B, H], got input_gates [2, 9], "
                       "hidden_gates [2, 6], h [2, 3]",
                       ShapeError);
  CHECK_THROWS_AS(gru_cell(Variable(zeros({3, 9})), Variable(zeros({3, 9})), Variable(zeros({2, 3}))), ShapeError);
}
