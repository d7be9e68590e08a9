// The length-aware score scales: s · ln n · q·k / √d_k with s fixed (ScoreScale::log_length,
// Chiang & Cholak 2022) or learned per head (ScoreScale::scalable_softmax, Nakanishi 2025's
// SSMax), n the keys each query may attend to. Values against loops, the key counts under
// padding, causal and broadcast masks, float64 gradchecks (parameters and fully masked rows
// included), incremental decoding of a transformer against its teacher-forced pass with every
// position scheme, and the errors.
#include <xtensor/xview.hpp>

#include <cmath>
#include <limits>

#include "layers/attention.hpp"
#include "layers/positional.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// softmax over the allowed keys of factor[b, i] · q·k / √d for q [B, Tq, d], k [B, Tk, d],
/// v [B, Tk, dv], allowed [B, Tq, Tk], written as loops; fully masked rows stay zero.
Array reference(const Array& q, const Array& k, const Array& v, const BoolArray& allowed,
                const std::function<double(std::size_t b, std::size_t i, std::size_t n)>& factor) {
  const std::size_t B = q.shape(0), Tq = q.shape(1), d = q.shape(2), Tk = k.shape(1), dv = v.shape(2);
  Array out = zeros({B, Tq, dv});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t i = 0; i < Tq; ++i) {
      std::size_t n = 0;
      for (std::size_t j = 0; j < Tk; ++j) n += allowed(b, i, j) ? 1 : 0;
      if (n == 0) continue;
      std::vector<double> s(Tk, 0);
      double largest = -std::numeric_limits<double>::infinity(), total = 0;
      for (std::size_t j = 0; j < Tk; ++j) {
        for (std::size_t c = 0; c < d; ++c) s[j] += q(b, i, c) * k(b, j, c);
        s[j] *= factor(b, i, n) / std::sqrt(double(d));
        if (allowed(b, i, j)) largest = std::max(largest, s[j]);
      }
      for (std::size_t j = 0; j < Tk; ++j) total += allowed(b, i, j) ? std::exp(s[j] - largest) : 0;
      for (std::size_t j = 0; j < Tk; ++j)
        if (allowed(b, i, j))
          for (std::size_t c = 0; c < dv; ++c) out(b, i, c) += std::exp(s[j] - largest) / total * v(b, j, c);
    }
  return out;
}

}  // namespace

TEST_CASE("allowed_key_counts: n is the allowed keys of each query, under every kind of mask") {
  // No mask: every query sees all Tk keys.
  CHECK(allowed_key_counts(std::nullopt, 7)(0) == 7);
  CHECK(log_allowed_keys(std::nullopt, 7)(0) == doctest::Approx(std::log(7.0)));
  // Padding: the valid length of the row's source.
  const Array padded = allowed_key_counts(allowed_from_valid_lens(IndexArray{5, 2}, 3, 5), 5);  // [2, 3, 1]
  REQUIRE(shape_of(padded) == Shape{2, 3, 1});
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(padded(0, i, 0) == 5);
    CHECK(padded(1, i, 0) == 2);
  }
  // Causal: query i (at absolute position start + i) sees start + i + 1 keys.
  const Array causal = allowed_key_counts(causal_allowed(3, 6, 2), 6);  // [3, 1]
  CHECK(causal(0, 0) == 3);
  CHECK(causal(2, 0) == 5);
  // Causal and padding together: the smaller of the two.
  const auto both = allowed_and(allowed_from_valid_lens(IndexArray{2}, 4, 4), causal_allowed(4, 4));
  const Array combined = allowed_key_counts(both, 4);  // [1, 4, 1]
  CHECK(combined(0, 0, 0) == 1);
  CHECK(combined(0, 1, 0) == 2);
  CHECK(combined(0, 3, 0) == 2);
  // A key mask broadcasting over heads and queries [B, 1, 1, Tk]; a mask of width 1 allows all
  // Tk keys or none; a fully masked row has ln n = 0 (its weights are zero anyway).
  BoolArray keys = BoolArray::from_shape({2, 1, 1, 4});
  std::fill(keys.begin(), keys.end(), true);
  keys(1, 0, 0, 3) = false;
  const Array per_batch = allowed_key_counts(keys, 4);
  CHECK(per_batch(0, 0, 0, 0) == 4);
  CHECK(per_batch(1, 0, 0, 0) == 3);
  BoolArray rows = BoolArray::from_shape({2, 1});
  rows(0, 0) = true, rows(1, 0) = false;
  const Array row_counts = allowed_key_counts(rows, 5);
  CHECK(row_counts(0, 0) == 5);
  CHECK(row_counts(1, 0) == 0);
  CHECK(log_allowed_keys(rows, 5)(1, 0) == 0);
  CHECK_THROWS_WITH_AS(static_cast<void>(allowed_key_counts(causal_allowed(2, 3), 4)),
                       "allowed_key_counts: the mask [2, 3] must end in the key count 4 or 1", ShapeError);
}

TEST_CASE("DotProductAttention: log_length and scalable_softmax values against loops") {
  const Array q = random_array({2, 3, 4}, 30), k = random_array({2, 5, 4}, 31), v = random_array({2, 5, 3}, 32);
  const BoolArray allowed = allowed_from_valid_lens(IndexArray{5, 2}, 3, 5);  // n = 5 and 2
  for (const double s : {1.0, 0.4, -0.3}) {
    CAPTURE(s);
    DotProductAttention attention(ScoreScale::log_length(real(s)));
    CHECK(attention.named_parameters().empty());
    CHECK(attention.scale_factor(4) == doctest::Approx(0.5));
    const Array expected =
        reference(q, k, v, allowed, [s](std::size_t, std::size_t, std::size_t n) { return s * std::log(double(n)); });
    CHECK(max_abs_diff(attention.forward(Variable(q), Variable(k), Variable(v), allowed).output.value(), expected) <
          1e-13);
  }
  // With no mask n = Tk for every query.
  DotProductAttention unmasked(ScoreScale::log_length());
  const Array expected_unmasked =
      reference(q, k, v, allowed_from_valid_lens(IndexArray{5, 5}, 3, 5),
                [](std::size_t, std::size_t, std::size_t) { return std::log(5.0); });
  CHECK(max_abs_diff(unmasked.forward(Variable(q), Variable(k), Variable(v)).output.value(), expected_unmasked) < 1e-13);

  // SSMax with two heads, each its own s: head h of [B, H, T, d] against the loop with s_h.
  const Array q4 = random_array({2, 2, 3, 4}, 33), k4 = random_array({2, 2, 5, 4}, 34), v4 = random_array({2, 2, 5, 3}, 35);
  DotProductAttention ssmax(ScoreScale::scalable_softmax(real(0.5)), 0, Rng(0), 2);
  const auto parameters = ssmax.named_parameters();
  REQUIRE(parameters.size() == 1);
  CHECK(parameters[0].first == "length_scale");
  Variable length_scale = parameters[0].second;
  REQUIRE(length_scale.shape() == Shape{2});
  CHECK(length_scale.value()(0) == 0.5);
  length_scale.mutable_value()(0) = real(0.8), length_scale.mutable_value()(1) = real(-0.2);
  const BoolArray causal = causal_allowed(3, 5, 2);  // queries at 2, 3, 4 see 3, 4, 5 keys
  const Array out = ssmax.forward(Variable(q4), Variable(k4), Variable(v4), causal).output.value();  // [2, 2, 3, 3]
  for (std::size_t h = 0; h < 2; ++h) {
    const double s = h == 0 ? 0.8 : -0.2;
    const Array qh = xt::view(q4, xt::all(), h), kh = xt::view(k4, xt::all(), h), vh = xt::view(v4, xt::all(), h);
    BoolArray mask = BoolArray::from_shape({2, 3, 5});
    for (std::size_t b = 0; b < 2; ++b)
      for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t j = 0; j < 5; ++j) mask(b, i, j) = causal(i, j);
    const Array expected =
        reference(qh, kh, vh, mask, [s](std::size_t, std::size_t, std::size_t n) { return s * std::log(double(n)); });
    const Array got = xt::view(out, xt::all(), h);
    CHECK(max_abs_diff(got, expected) < 1e-13);
  }
}

TEST_CASE("DotProductAttention: float64 gradients through log_length and scalable_softmax, s included") {
  const Array q = random_array({2, 3, 4}, 40), k = random_array({2, 5, 4}, 41), v = random_array({2, 5, 3}, 42);
  // Batch 1 has no valid key: its rows are fully masked (ln n = 0 there, zero weights).
  const BoolArray padded = allowed_from_valid_lens(IndexArray{4, 0}, 3, 5);
  DotProductAttention fixed(ScoreScale::log_length(real(0.7)));
  QKV_CHECK_GRADIENTS([&](const auto& x) { return fixed.forward(x[0], x[1], x[2], padded).output; },
                      {Variable(q), Variable(k), Variable(v)});
  QKV_CHECK_GRADIENTS([&](const auto& x) { return fixed.forward(x[0], x[1], x[2], padded).weights; },
                      {Variable(q), Variable(k), Variable(v)});
  // One head: s is a scalar parameter, whatever the layout.
  DotProductAttention one(ScoreScale::scalable_softmax(real(0.6)));
  QKV_CHECK_GRADIENTS([&](const auto& x) { return one.forward(x[0], x[1], x[2], causal_allowed(3, 5, 2)).output; },
                      {Variable(q), Variable(k), Variable(v)}, one.named_parameters());
  // Two heads, per-head s, with ALiBi's bias inside (the whole softmax input is multiplied).
  const Array q4 = random_array({2, 2, 3, 4}, 43), k4 = random_array({2, 2, 5, 4}, 44), v4 = random_array({2, 2, 5, 3}, 45);
  DotProductAttention heads(ScoreScale::scalable_softmax(real(0.6)), 0, Rng(0), 2);
  heads.named_parameters()[0].second.mutable_value()(1) = real(1.3);
  const ALiBi alibi(2);
  BoolArray keys = BoolArray::from_shape({2, 1, 1, 5});
  std::fill(keys.begin(), keys.end(), true);
  keys(1, 0, 0, 4) = keys(1, 0, 0, 3) = false;
  QKV_CHECK_GRADIENTS([&](const auto& x) { return heads.forward(x[0], x[1], x[2], keys, &alibi).output; },
                      {Variable(q4), Variable(k4), Variable(v4)}, heads.named_parameters());
}

TEST_CASE("DotProductAttention: the length scales' bad settings and layouts name the layer") {
  CHECK_THROWS_WITH_AS(DotProductAttention(ScoreScale::log_length(std::numeric_limits<real>::quiet_NaN())),
                       "DotProductAttention: the length scale s must be finite, got nan", Error);
  CHECK_THROWS_WITH_AS(DotProductAttention(ScoreScale::scalable_softmax(1), 0, Rng(0), 0),
                       "DotProductAttention: heads must be positive, got 0", Error);
  DotProductAttention three(ScoreScale::scalable_softmax(1), 0, Rng(0), 3);
  const Variable q(random_array({2, 3, 4}, 1)), k(random_array({2, 5, 4}, 2)), v(random_array({2, 5, 3}, 3));
  CHECK_THROWS_WITH_AS(three.forward(q, k, v),
                       "DotProductAttention: scalable_softmax with 3 heads needs [B, 3, T, d] inputs, got queries "
                       "[2, 3, 4], keys [2, 5, 4], values [2, 5, 3]",
                       ShapeError);
}

TEST_CASE("TransformerModel: log_length and scalable_softmax decode step by step as forward does, every position scheme") {
  using models::PositionalKind;
  for (const ScoreScale scale : {ScoreScale::log_length(real(0.8)), ScoreScale::scalable_softmax(real(0.5))})
    for (const PositionalKind positional : {PositionalKind::sinusoidal, PositionalKind::learned,
                                            PositionalKind::relative, PositionalKind::rope, PositionalKind::alibi}) {
      CAPTURE(name_of(scale.kind));
      CAPTURE(name_of(positional));
      models::TransformerConfig config = tiny_transformer_config(positional);
      config.scale = scale;
      models::TransformerModel model(config);
      model.eval();
      // Row 1's source is padded: its cross-attention has n = 3 keys, row 0's has 5.
      const IndexArray source = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}}, lengths = {5, 3};
      const IndexArray target = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 0, 0}};
      const Array full = model.forward(source, lengths, target).logits.value();  // [2, 6, 7]
      NoGradGuard no_grad;
      auto state = model.start_decoding(source, lengths);
      for (std::size_t t = 0; t < 6; ++t) {
        const IndexArray previous = xt::view(target, xt::all(), t);
        const Array expected = xt::view(full, xt::all(), t, xt::all());
        CHECK(max_abs_diff(model.decode_step(*state, previous).logits.value(), expected) < 1e-10);
      }
      // The SSMax parameters: one [heads] vector per attention layer (2 + 2·2 of them).
      std::size_t length_scales = 0;
      for (const auto& [name, p] : model.named_parameters())
        if (name.ends_with("length_scale")) {
          ++length_scales;
          CHECK(p.shape() == Shape{2});
        }
      CHECK(length_scales == (scale.kind == ScoreScale::Kind::scalable_softmax ? 6u : 0u));
    }
}

TEST_CASE("TransformerConfig: the length scales round-trip through JSON, a value no scale uses is refused") {
  models::TransformerConfig config = tiny_transformer_config(models::PositionalKind::alibi);
  config.scale = ScoreScale::scalable_softmax(real(0.25));
  const nlohmann::json json = config;
  CHECK(json.at("scale").at("kind") == "scalable_softmax");
  CHECK(json.at("positional") == "alibi");
  const auto back = json.get<models::TransformerConfig>();
  CHECK(back.scale.kind == ScoreScale::Kind::scalable_softmax);
  CHECK(back.scale.value == real(0.25));
  CHECK(back.positional == models::PositionalKind::alibi);
  nlohmann::json bad = json;
  bad["scale"] = {{"kind", "inverse_sqrt_dim"}, {"value", 2}};
  CHECK_THROWS_WITH_AS(bad.get<models::TransformerConfig>(),
                       "TransformerConfig: scale inverse_sqrt_dim takes no value, got 2", Error);
}
