// Masks, masked softmax, dot-product and additive attention: values by hand, gradients by
// gradcheck (fully masked rows included), bad shapes and settings.
#include <cmath>
#include <limits>

#include "layers/attention.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

BoolArray bools(const Shape& shape, std::initializer_list<bool> values) {
  BoolArray a = BoolArray::from_shape(shape);
  REQUIRE(values.size() == a.size());
  std::copy(values.begin(), values.end(), a.data());
  return a;
}

/// Reference attention for q [B, Tq, d], k [B, Tk, d], v [B, Tk, dv] and allowed [B, Tq, Tk],
/// written as plain loops: softmax over allowed keys of factor * q·k, fully masked rows zero.
Array reference_attention(const Array& q, const Array& k, const Array& v, const BoolArray& allowed, double factor,
                          Array* weights_out = nullptr) {
  const std::size_t B = q.shape(0), Tq = q.shape(1), d = q.shape(2), Tk = k.shape(1), dv = v.shape(2);
  Array out = zeros({B, Tq, dv});
  Array weights = zeros({B, Tq, Tk});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk, 0);
      double largest = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j < Tk; ++j) {
        for (std::size_t c = 0; c < d; ++c) s[j] += q(b, i, c) * k(b, j, c);
        s[j] *= factor;
        if (allowed(b, i, j)) largest = std::max(largest, s[j]);
      }
      if (std::isinf(largest)) continue;
      double total = 0;
      for (std::size_t j = 0; j < Tk; ++j) total += allowed(b, i, j) ? std::exp(s[j] - largest) : 0;
      for (std::size_t j = 0; j < Tk; ++j) {
        weights(b, i, j) = allowed(b, i, j) ? std::exp(s[j] - largest) / total : 0;
        for (std::size_t c = 0; c < dv; ++c) out(b, i, c) += weights(b, i, j) * v(b, j, c);
      }
    }
  if (weights_out) *weights_out = weights;
  return out;
}

BoolArray all_allowed(const Shape& shape) {
  BoolArray a = BoolArray::from_shape(shape);
  std::fill(a.begin(), a.end(), true);
  return a;
}

}  // namespace

TEST_CASE("masks: valid lengths, causal and window all mean 'allowed'") {
  const BoolArray per_batch = allowed_from_valid_lens(IndexArray{2, 0}, 2, 3);
  CHECK(per_batch == bools({2, 2, 3}, {1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0}));
  const BoolArray per_query = allowed_from_valid_lens(IndexArray{{1, 3}}, 2, 3);
  CHECK(per_query == bools({1, 2, 3}, {1, 0, 0, 1, 1, 1}));
  CHECK(causal_allowed(2, 3) == bools({2, 3}, {1, 0, 0, 1, 1, 0}));
  CHECK(causal_allowed(1, 3, 1) == bools({1, 3}, {1, 1, 0}));  // the query sits at position 1
  CHECK(window_allowed(3, 4, 1) == bools({3, 4}, {1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1}));
  CHECK(*allowed_and(causal_allowed(2, 2), bools({2}, {0, 1})) == bools({2, 2}, {0, 0, 0, 1}));
  CHECK(!allowed_and(std::nullopt, std::nullopt));
  CHECK_THROWS_WITH_AS(allowed_from_valid_lens(IndexArray{4}, 2, 3),
                       "allowed_from_valid_lens: valid length 4 at batch 0 is outside [0, 3] (there are 3 keys)", Error);
  CHECK_THROWS_WITH_AS(allowed_from_valid_lens(IndexArray{{1, 2, 3}}, 2, 3),
                       "allowed_from_valid_lens: valid_lens must be [B] or [B, Tq] with Tq = 2, got [1, 3]", ShapeError);
}

TEST_CASE("masked_softmax: softmax over the allowed keys, exact zeros elsewhere") {
  const Variable scores(array_of({2, 3}, {1, 2, 3, 0.5, -1, 1000}));
  const Array y = masked_softmax(scores, bools({2, 3}, {1, 0, 1, 1, 1, 0})).value();
  const double e = std::exp(2.0);  // exp(3 - 1)
  CHECK(max_abs_diff(y, array_of({2, 3}, {1 / (1 + e), 0, e / (1 + e), 1 / (1 + std::exp(-1.5)),
                                          std::exp(-1.5) / (1 + std::exp(-1.5)), 0})) < 1e-14);
  // A huge masked score does not leak in, and no mask reproduces softmax.
  const Variable plain(random_array({3, 5}, 1));
  CHECK(max_abs_diff(masked_softmax(plain, all_allowed({3, 5})).value(), softmax(plain, -1).value()) < 1e-15);
}

TEST_CASE("masked_softmax: a fully masked row has zero weights and zero gradients, never NaN") {
  const Variable scores(random_array({2, 3, 4}, 2), true);
  BoolArray allowed = bools({2, 3, 4}, {1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,   //
                                        0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1});
  Variable y = masked_softmax(scores, allowed);
  for (std::size_t j = 0; j < 4; ++j) {
    CHECK(y.value()(0, 1, j) == 0);
    CHECK(y.value()(1, 0, j) == 0);
  }
  CHECK(std::abs(y.value()(0, 0, 0) + y.value()(0, 0, 1) - 1) < 1e-15);
  y.backward(random_array({2, 3, 4}, 3));
  for (std::size_t i = 0; i < scores.numel(); ++i) {
    CHECK(std::isfinite(scores.grad().data()[i]));
    if (!allowed.data()[i]) CHECK(scores.grad().data()[i] == 0);
  }
  QKV_CHECK_GRADIENTS([&](const auto& x) { return masked_softmax(x[0], allowed); }, {Variable(scores.value())});
  // Broadcast masks: [Tk] and [Tq, Tk] over [B, Tq, Tk].
  QKV_CHECK_GRADIENTS([&](const auto& x) { return masked_softmax(x[0], bools({4}, {0, 1, 1, 0})); },
                      {Variable(scores.value())});
  QKV_CHECK_GRADIENTS([&](const auto& x) { return masked_softmax(x[0], causal_allowed(3, 4)); },
                      {Variable(scores.value())});
}

TEST_CASE("masked_softmax: a mask that does not broadcast names the op and both shapes") {
  const Variable scores(zeros({2, 3, 4}));
  CHECK_THROWS_WITH_AS(masked_softmax(scores, BoolArray::from_shape({3, 3})),
                       "masked_softmax: allowed mask [3, 3] does not broadcast to scores [2, 3, 4]", ShapeError);
}

TEST_CASE("DotProductAttention: values for every scale setting, against loops") {
  const Array q = random_array({2, 3, 4}, 10), k = random_array({2, 5, 4}, 11), v = random_array({2, 5, 3}, 12);
  const IndexArray lens{5, 2};
  const BoolArray allowed = allowed_from_valid_lens(lens, 3, 5);
  const struct {
    ScoreScale scale;
    double factor;
  } settings[] = {{ScoreScale::inverse_sqrt_dim(), 0.5},
                  {ScoreScale::none(), 1},
                  {ScoreScale::inverse_dim(), 0.25},
                  {ScoreScale::fixed(0.7), 0.7},
                  {ScoreScale::learned_temperature(3), 1.0 / 3}};
  for (const auto& setting : settings) {
    DotProductAttention attention(setting.scale);
    const AttentionOutput out = attention.forward(Variable(q), Variable(k), Variable(v), allowed);
    Array expected_weights;
    const Array expected = reference_attention(q, k, v, allowed, setting.factor, &expected_weights);
    CHECK(max_abs_diff(out.output.value(), expected) < 1e-13);
    CHECK(max_abs_diff(out.weights.value(), expected_weights) < 1e-14);
  }
  CHECK(DotProductAttention(ScoreScale::learned_temperature(3)).named_parameters().size() == 1);
  CHECK(DotProductAttention().named_parameters().empty());
}

TEST_CASE("DotProductAttention: gradients w.r.t. q, k, v and a learned temperature, fully masked rows included") {
  const Array q = random_array({2, 3, 4}, 20), k = random_array({2, 5, 4}, 21), v = random_array({2, 5, 3}, 22);
  // Batch 1 has no valid key at all: every row of it is fully masked.
  const BoolArray allowed = allowed_from_valid_lens(IndexArray{3, 0}, 3, 5);
  DotProductAttention scaled;
  QKV_CHECK_GRADIENTS([&](const auto& x) { return scaled.forward(x[0], x[1], x[2], allowed).output; },
                      {Variable(q), Variable(k), Variable(v)});
  QKV_CHECK_GRADIENTS([&](const auto& x) { return scaled.forward(x[0], x[1], x[2], allowed).weights; },
                      {Variable(q), Variable(k), Variable(v)});
  DotProductAttention learned(ScoreScale::learned_temperature(1.5));
  QKV_CHECK_GRADIENTS([&](const auto& x) { return learned.forward(x[0], x[1], x[2], causal_allowed(3, 5)).output; },
                      {Variable(q), Variable(k), Variable(v)}, learned.named_parameters());
  // Extra leading axes (heads) broadcast like any batch axis.
  const Array q4 = random_array({2, 2, 3, 4}, 23), k4 = random_array({2, 2, 5, 4}, 24), v4 = random_array({2, 2, 5, 3}, 25);
  QKV_CHECK_GRADIENTS([&](const auto& x) { return scaled.forward(x[0], x[1], x[2], causal_allowed(3, 5)).output; },
                      {Variable(q4), Variable(k4), Variable(v4)});
}

TEST_CASE("DotProductAttention: dropout acts on the weights in training only, returned weights are pre-dropout") {
  const Variable q(random_array({2, 4, 4}, 30)), k(random_array({2, 6, 4}, 31)), v(random_array({2, 6, 3}, 32));
  DotProductAttention attention(ScoreScale::inverse_sqrt_dim(), 0.5, Rng(7));
  const AttentionOutput trained = attention.forward(q, k, v);
  attention.eval();
  const AttentionOutput evaluated = attention.forward(q, k, v);
  CHECK(max_abs_diff(trained.weights.value(), evaluated.weights.value()) < 1e-15);
  CHECK(max_abs_diff(trained.output.value(), evaluated.output.value()) > 1e-3);
  CHECK(max_abs_diff(evaluated.output.value(), reference_attention(q.value(), k.value(), v.value(),
                                                                   all_allowed({2, 4, 6}), 0.5)) < 1e-13);
}

TEST_CASE("DotProductAttention: bad shapes and settings name the layer and the shapes") {
  DotProductAttention attention;
  const Variable q(zeros({2, 3, 4})), k(zeros({2, 5, 4})), v(zeros({2, 5, 3}));
  CHECK_THROWS_WITH_AS(attention.forward(q, Variable(zeros({2, 5, 6})), v),
                       "DotProductAttention: queries and keys must have the same size in the last axis, got "
                       "queries [2, 3, 4], keys [2, 5, 6], values [2, 5, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(attention.forward(q, k, Variable(zeros({2, 4, 3}))),
                       "DotProductAttention: keys and values must have the same number of steps, got "
                       "queries [2, 3, 4], keys [2, 5, 4], values [2, 4, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(attention.forward(q, k, v, BoolArray::from_shape({3, 4})),
                       "DotProductAttention: allowed mask [3, 4] does not broadcast to the scores [2, 3, 5] "
                       "(queries [2, 3, 4], keys [2, 5, 4], values [2, 5, 3])",
                       ShapeError);
  CHECK_THROWS_WITH_AS(DotProductAttention(ScoreScale::learned_temperature(0)),
                       "DotProductAttention: a learned temperature must start positive, got 0", Error);
  CHECK_THROWS_WITH_AS(DotProductAttention(ScoreScale{}, 1.0), "DotProductAttention: dropout must be in [0, 1), got 1",
                       Error);
}

TEST_CASE("AdditiveAttention: v·tanh(W_q q + W_k k) by hand, and precomputed keys give the same") {
  Rng rng(0);
  AdditiveAttention attention(3, 2, 4, rng);
  const auto parameters = attention.named_parameters();
  REQUIRE(parameters.size() == 3);
  CHECK(parameters[0].first == "W_q");
  CHECK(parameters[1].first == "W_k");
  CHECK(parameters[2].first == "v");
  CHECK(parameters[0].second.shape() == Shape{4, 3});
  CHECK(parameters[1].second.shape() == Shape{4, 2});
  CHECK(parameters[2].second.shape() == Shape{4});
  const Array wq = parameters[0].second.value(), wk = parameters[1].second.value(), w = parameters[2].second.value();

  const Array q = random_array({2, 2, 3}, 40), k = random_array({2, 4, 2}, 41), v = random_array({2, 4, 5}, 42);
  const BoolArray allowed = allowed_from_valid_lens(IndexArray{4, 1}, 2, 4);
  const AttentionOutput out = attention.forward(Variable(q), Variable(k), Variable(v), allowed);
  Array scores = zeros({2, 2, 4});
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t i = 0; i < 2; ++i)
      for (std::size_t j = 0; j < 4; ++j)
        for (std::size_t h = 0; h < 4; ++h) {
          double feature = 0;
          for (std::size_t c = 0; c < 3; ++c) feature += wq(h, c) * q(b, i, c);
          for (std::size_t c = 0; c < 2; ++c) feature += wk(h, c) * k(b, j, c);
          scores(b, i, j) += w(h) * std::tanh(feature);
        }
  // The reference takes factor * q·k; feed it the scores as q = scores, k = identity.
  Array identity = zeros({2, 4, 4});
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t j = 0; j < 4; ++j) identity(b, j, j) = 1;
  Array expected_weights;
  const Array expected = reference_attention(scores, identity, v, allowed, 1, &expected_weights);
  CHECK(max_abs_diff(out.output.value(), expected) < 1e-13);
  CHECK(max_abs_diff(out.weights.value(), expected_weights) < 1e-14);

  const Variable projected = attention.project_keys(Variable(k));
  CHECK(projected.shape() == Shape{2, 4, 4});
  const AttentionOutput again = attention.forward_projected(Variable(q), projected, Variable(v), allowed);
  CHECK(max_abs_diff(again.output.value(), out.output.value()) == 0);
  // W_q transposed once, as a decoder does for its steps: the same output; another layer's is refused.
  const std::optional<PreparedWeight> query_weight = attention.prepare_query_weight();
  REQUIRE(query_weight.has_value());
  const AttentionOutput prepared =
      attention.forward_projected(Variable(q), projected, Variable(v), allowed, nullptr, &*query_weight);
  CHECK(max_abs_diff(prepared.output.value(), out.output.value()) < 1e-14);
  Rng other_rng(1);
  AdditiveAttention other(3, 2, 4, other_rng);
  const std::optional<PreparedWeight> not_its_own = other.prepare_query_weight();
  CHECK_THROWS_WITH_AS(attention.forward_projected(Variable(q), projected, Variable(v), allowed, nullptr, &*not_its_own),
                       "AdditiveAttention: the prepared query weight is not this layer's float W_q: prepare it with "
                       "prepare_query_weight()",
                       Error);
}

TEST_CASE("AdditiveAttention: gradients w.r.t. inputs and W_q, W_k, v, fully masked rows included") {
  Rng rng(5);
  AdditiveAttention attention(3, 2, 4, rng);
  const Array q = random_array({2, 2, 3}, 50), k = random_array({2, 4, 2}, 51), v = random_array({2, 4, 5}, 52);
  const BoolArray allowed = allowed_from_valid_lens(IndexArray{3, 0}, 2, 4);
  QKV_CHECK_GRADIENTS([&](const auto& x) { return attention.forward(x[0], x[1], x[2], allowed).output; },
                      {Variable(q), Variable(k), Variable(v)}, attention.named_parameters());
  QKV_CHECK_GRADIENTS([&](const auto& x) { return attention.forward(x[0], x[1], x[2], allowed).weights; },
                      {Variable(q), Variable(k), Variable(v)}, attention.named_parameters());
  // Through precomputed keys: the gradient reaches W_k via project_keys.
  QKV_CHECK_GRADIENTS(
      [&](const auto& x) { return attention.forward_projected(x[0], attention.project_keys(x[1]), x[2]).output; },
      {Variable(q), Variable(k), Variable(v)}, attention.named_parameters());
}

TEST_CASE("AdditiveAttention: bad shapes name the layer and the shapes") {
  Rng rng(0);
  AdditiveAttention attention(3, 2, 4, rng);
  const Variable q(zeros({2, 2, 3})), k(zeros({2, 4, 2})), v(zeros({2, 4, 5}));
  CHECK_THROWS_WITH_AS(attention.forward(Variable(zeros({2, 2, 5})), k, v),
                       "AdditiveAttention: queries must be [B, Tq, 3], got queries [2, 2, 5], projected keys "
                       "[2, 4, 4], values [2, 4, 5]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(attention.forward(q, Variable(zeros({2, 4, 3})), v),
                       "AdditiveAttention: keys must be [B, Tk, 2], got [2, 4, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(attention.forward(q, k, Variable(zeros({2, 3, 5}))),
                       "AdditiveAttention: values must be [B, Tk, dv] with the keys' B and Tk, got queries "
                       "[2, 2, 3], projected keys [2, 4, 4], values [2, 3, 5]",
                       ShapeError);
  CHECK_THROWS_AS(AdditiveAttention(0, 2, 4, rng), Error);
}
