// Positional encodings: sinusoidal against the formula and d2l, learned absolute, Shaw's
// relative positions, RoPE's invariants, ALiBi's slopes; values by loops, gradients by
// gradcheck through MultiheadAttention, bad settings.
#include <cmath>
#include <functional>
#include <memory>

#include <xtensor/xview.hpp>

#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

TEST_CASE("sinusoidal_table: the formula, and d2l's values") {
  const Array table = sinusoidal_table(5, 6);
  CHECK(table.shape(0) == 5);
  CHECK(table.shape(1) == 6);
  for (std::size_t p = 0; p < 5; ++p)
    for (std::size_t i = 0; i < 3; ++i) {
      const double angle = double(p) / std::pow(10000.0, 2.0 * double(i) / 6.0);
      CHECK(std::abs(table(p, 2 * i) - std::sin(angle)) < 1e-15);
      CHECK(std::abs(table(p, 2 * i + 1) - std::cos(angle)) < 1e-15);
    }
  // d2l's PositionalEncoding(6, ...).P[0, 3] and P[0, 4], printed by PyTorch in float64.
  const Array d2l = array_of({2, 6}, {0.1411200080598672, -0.9899924966004454, 0.13879810108005056, 0.990320699135675,
                                      0.006463259070189646, 0.9999791129229608, -0.7568024953079282,
                                      -0.6536436208636119, 0.18459872362061747, 0.9828139759067526,
                                      0.008617632093856952, 0.9999628675191369});
  CHECK(max_abs_diff(Array(xt::view(table, xt::range(3, 5), xt::all())), d2l) < 1e-15);
  // An odd width keeps the last sine column.
  CHECK(std::abs(sinusoidal_table(3, 5)(2, 4) - std::sin(2.0 / std::pow(10000.0, 4.0 / 5.0))) < 1e-15);
}

TEST_CASE("SinusoidalPositionalEncoding: a buffer, added from position `start`") {
  SinusoidalPositionalEncoding encoding(6, 10);
  CHECK(encoding.named_parameters().empty());
  REQUIRE(encoding.named_buffers().size() == 1);
  CHECK(encoding.named_buffers()[0].first == "pe");
  const Array x = random_array({2, 3, 6}, 1);
  const Array table = sinusoidal_table(10, 6);
  const Array y = encoding.forward(Variable(x), 4).value();
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t t = 0; t < 3; ++t)
      for (std::size_t d = 0; d < 6; ++d) CHECK(std::abs(y(b, t, d) - (x(b, t, d) + table(4 + t, d))) < 1e-15);
  QKV_CHECK_GRADIENTS([&](const auto& in) { return encoding.forward(in[0], 2); }, {Variable(x)});
  CHECK_THROWS_WITH_AS(encoding.forward(Variable(x), 8),
                       "SinusoidalPositionalEncoding: positions 8..11 of input [2, 3, 6] exceed max_len 10", ShapeError);
  CHECK_THROWS_WITH_AS(encoding.forward(Variable(zeros({2, 3, 5}))),
                       "SinusoidalPositionalEncoding: input must be [B, T, 6], got [2, 3, 5]", ShapeError);
}

TEST_CASE("LearnedPositionalEmbedding: a parameter, gradients to the rows used") {
  Rng rng(3);
  LearnedPositionalEmbedding embedding(4, 6, rng);
  const auto parameters = embedding.named_parameters();
  REQUIRE(parameters.size() == 1);
  CHECK(parameters[0].first == "weight");
  CHECK(parameters[0].second.shape() == Shape{6, 4});
  const Array w = parameters[0].second.value();
  const Array x = random_array({2, 3, 4}, 2);
  const Array y = embedding.forward(Variable(x), 1).value();
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t t = 0; t < 3; ++t)
      for (std::size_t d = 0; d < 4; ++d) CHECK(y(b, t, d) == x(b, t, d) + w(1 + t, d));
  QKV_CHECK_GRADIENTS([&](const auto& in) { return embedding.forward(in[0], 2); }, {Variable(x)}, parameters);
  CHECK_THROWS_WITH_AS(embedding.forward(Variable(x), 4),
                       "LearnedPositionalEmbedding: positions 4..7 of input [2, 3, 4] exceed max_len 6", ShapeError);
}

namespace {

/// Attention for one batch, written as loops over [H, T, d] with optional position hooks:
///   s_hij = scale · q_hi · (k_hj + key_table(i, j)) + bias(h, i, j),
///   out_hi = Σ_j softmax(s)_hij (v_hj + value_table(i, j)).
struct LoopHooks {
  std::function<double(std::size_t, std::size_t, std::size_t)> bias;
  std::function<double(std::size_t, std::size_t, std::size_t)> key_table;    // (i, j, c)
  std::function<double(std::size_t, std::size_t, std::size_t)> value_table;  // (i, j, c)
};
Array loop_attention(const Array& q, const Array& k, const Array& v, double scale, const LoopHooks& hooks) {
  const std::size_t H = q.shape(1), Tq = q.shape(2), d = q.shape(3), Tk = k.shape(2);
  Array out = zeros({1, H, Tq, d});
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk, 0);
      double total = 0;
      for (std::size_t j = 0; j < Tk; ++j) {
        for (std::size_t c = 0; c < d; ++c)
          s[j] += q(0, h, i, c) * (k(0, h, j, c) + (hooks.key_table ? hooks.key_table(i, j, c) : 0));
        s[j] = s[j] * scale + (hooks.bias ? hooks.bias(h, i, j) : 0);
      }
      for (double& e : s) total += (e = std::exp(e));
      for (std::size_t j = 0; j < Tk; ++j)
        for (std::size_t c = 0; c < d; ++c)
          out(0, h, i, c) += s[j] / total * (v(0, h, j, c) + (hooks.value_table ? hooks.value_table(i, j, c) : 0));
    }
  return out;
}

}  // namespace

TEST_CASE("RelativePositionEncoding (Shaw): clipped distances, values against loops") {
  Rng rng(4);
  RelativePositionEncoding relative(3, 2, rng);
  const auto parameters = relative.named_parameters();
  REQUIRE(parameters.size() == 2);
  CHECK(parameters[0].first == "relative_keys");
  CHECK(parameters[1].first == "relative_values");
  CHECK(parameters[0].second.shape() == Shape{5, 3});
  // Distances j - i clipped to [-2, 2], shifted by 2; the query sits at position 1 + i.
  const IndexArray indices = relative.relative_indices(2, 1, 5);
  CHECK(indices == IndexArray{{1, 2, 3, 4, 4}, {0, 1, 2, 3, 4}});

  const Array q = random_array({1, 2, 3, 3}, 10), k = random_array({1, 2, 4, 3}, 11), v = random_array({1, 2, 4, 3}, 12);
  DotProductAttention attention;
  const Array keys_table = parameters[0].second.value(), values_table = parameters[1].second.value();
  const auto clipped = [](std::size_t i, std::size_t j) {
    return static_cast<std::size_t>(std::clamp<long>(long(j) - long(i), -2, 2) + 2);
  };
  LoopHooks hooks;
  hooks.key_table = [&](std::size_t i, std::size_t j, std::size_t c) { return keys_table(clipped(i, j), c); };
  hooks.value_table = [&](std::size_t i, std::size_t j, std::size_t c) { return values_table(clipped(i, j), c); };
  const Array out = attention.forward(Variable(q), Variable(k), Variable(v), std::nullopt, &relative).output.value();
  CHECK(max_abs_diff(out, loop_attention(q, k, v, 1 / std::sqrt(3.0), hooks)) < 1e-13);

  RelativePositionEncoding keys_only(3, 2, rng, false);
  CHECK(keys_only.named_parameters().size() == 1);
}

TEST_CASE("rotary_embedding: rotates pairs, preserves norms, and q·k depends only on the offset") {
  // d = 4: the first pair turns by p radians, the second by p / 100.
  const Variable x(array_of({1, 3, 4}, {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}));
  const Array y = rotary_embedding(x, 0).value();
  for (std::size_t p = 0; p < 3; ++p) {
    CHECK(std::abs(y(0, p, 0) - std::cos(double(p))) < 1e-15);
    CHECK(std::abs(y(0, p, 1) - std::sin(double(p))) < 1e-15);
    CHECK(std::abs(y(0, p, 2) - std::cos(p / 100.0)) < 1e-15);
    CHECK(std::abs(y(0, p, 3) - std::sin(p / 100.0)) < 1e-15);
  }

  const Array values = random_array({2, 7, 6}, 20);
  const Array rotated = rotary_embedding(Variable(values), 0).value();
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t t = 0; t < 7; ++t) {
      double before = 0, after = 0;
      for (std::size_t c = 0; c < 6; ++c) {
        before += values(b, t, c) * values(b, t, c);
        after += rotated(b, t, c) * rotated(b, t, c);
      }
      CHECK(std::abs(before - after) < 1e-13);
    }

  // The same query vector at every position, the same key vector at every position: after
  // rotation, q_m · k_n must depend on n - m only.
  const Array q0 = random_array({6}, 21), k0 = random_array({6}, 22);
  Array queries = zeros({8, 6}), keys = zeros({8, 6});
  for (std::size_t t = 0; t < 8; ++t)
    for (std::size_t c = 0; c < 6; ++c) queries(t, c) = q0(c), keys(t, c) = k0(c);
  const Array rq = rotary_embedding(Variable(queries), 0).value(), rk = rotary_embedding(Variable(keys), 0).value();
  const auto dot = [&](std::size_t m, std::size_t n) {
    double total = 0;
    for (std::size_t c = 0; c < 6; ++c) total += rq(m, c) * rk(n, c);
    return total;
  };
  for (std::size_t m = 0; m < 4; ++m)
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t shift = 1; shift < 4; ++shift) CHECK(std::abs(dot(m, n) - dot(m + shift, n + shift)) < 1e-12);
  CHECK(std::abs(dot(0, 3) - dot(3, 0)) > 1e-3);  // and it does depend on the offset's sign

  // `start` shifts the positions: row 0 at start 3 is row 3 at start 0.
  const Array shifted = rotary_embedding(Variable(queries), 3).value();
  CHECK(max_abs_diff(Array(xt::view(shifted, xt::range(0, 5), xt::all())),
                     Array(xt::view(rq, xt::range(3, 8), xt::all()))) < 1e-14);

  QKV_CHECK_GRADIENTS([](const auto& in) { return rotary_embedding(in[0], 2); }, {Variable(values)});
  CHECK_THROWS_WITH_AS(rotary_embedding(Variable(zeros({2, 3, 5})), 0),
                       "rotary_embedding: input must be [..., T, d] with d even, got [2, 3, 5]", ShapeError);
  CHECK_THROWS_WITH_AS(RotaryPositionEncoding(5),
                       "RotaryPositionEncoding: head_dim must be even and positive (it rotates pairs), got 5", Error);
}

TEST_CASE("ALiBi: the paper's slopes and a linear bias on the scores") {
  const std::vector<real> eight = alibi_slopes(8);
  REQUIRE(eight.size() == 8);
  for (std::size_t h = 0; h < 8; ++h) CHECK(eight[h] == std::pow(0.5, double(h + 1)));  // 1/2 .. 1/256
  // Not a power of two: the paper's code gives these (printed from its get_slopes).
  const std::vector<real> six = alibi_slopes(6);
  const std::vector<real> six_expected{0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  CHECK(six == six_expected);
  const std::vector<real> twelve = alibi_slopes(12);
  CHECK(std::abs(twelve[8] - 0.7071067811865476) < 1e-15);
  CHECK(std::abs(twelve[11] - 0.08838834764831849) < 1e-15);

  ALiBi alibi(2);
  CHECK(alibi.named_parameters().empty());
  const Array bias = alibi.score_bias(2, 2, 1, 3).value();  // queries at positions 1 and 2
  const real m0 = alibi.slopes()[0], m1 = alibi.slopes()[1];
  CHECK(max_abs_diff(bias, array_of({2, 2, 3}, {-m0, 0, -m0, -2 * m0, -m0, 0, -m1, 0, -m1, -2 * m1, -m1, 0})) == 0);

  const Array q = random_array({1, 2, 3, 4}, 30), k = random_array({1, 2, 5, 4}, 31), v = random_array({1, 2, 5, 4}, 32);
  LoopHooks hooks;
  hooks.bias = [&](std::size_t h, std::size_t i, std::size_t j) {
    return -alibi.slopes()[h] * std::abs(double(i) - double(j));
  };
  DotProductAttention attention;
  const Array out = attention.forward(Variable(q), Variable(k), Variable(v), std::nullopt, &alibi).output.value();
  CHECK(max_abs_diff(out, loop_attention(q, k, v, 0.5, hooks)) < 1e-13);
  CHECK_THROWS_WITH_AS(alibi.score_bias(4, 2, 0, 2), "ALiBi: built for 2 heads but the scores have 4", ShapeError);
}

TEST_CASE("RoPE inside attention rotates q and k at their positions") {
  const Array q = random_array({1, 2, 3, 4}, 40), k = random_array({1, 2, 5, 4}, 41), v = random_array({1, 2, 5, 4}, 42);
  RotaryPositionEncoding rope(4);
  DotProductAttention attention;
  const Array out = attention.forward(Variable(q), Variable(k), Variable(v), std::nullopt, &rope, 2).output.value();
  const Array rq = rotary_embedding(Variable(q), 2).value(), rk = rotary_embedding(Variable(k), 0).value();
  CHECK(max_abs_diff(out, loop_attention(rq, rk, v, 0.5, {})) < 1e-13);
}

TEST_CASE("position encodings inside MultiheadAttention: gradcheck w.r.t. inputs and parameters") {
  const Array x = random_array({2, 4, 8}, 50), memory = random_array({2, 5, 8}, 51);
  AttentionMask mask;
  mask.valid_lens = IndexArray{4, 0};  // batch 1 fully masked
  SUBCASE("relative (Shaw)") {
    Rng mha_rng(1);
    MultiheadAttention mha(8, 2, mha_rng, {.positions = std::make_shared<RelativePositionEncoding>(4, 2, mha_rng)});
    CHECK(mha.named_parameters().size() == 6);
    CHECK(mha.named_parameters()[4].first == "positions.relative_keys");
    QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], in[1], in[1], mask).output; },
                        {Variable(x), Variable(memory)}, mha.named_parameters());
  }
  SUBCASE("rotary") {
    Rng mha_rng(2);
    MultiheadAttention mha(8, 2, mha_rng, {.positions = std::make_shared<RotaryPositionEncoding>(4)});
    QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], in[1], in[1], mask).output; },
                        {Variable(x), Variable(memory)}, mha.named_parameters());
  }
  SUBCASE("ALiBi") {
    Rng mha_rng(3);
    MultiheadAttention mha(8, 2, mha_rng, {.positions = std::make_shared<ALiBi>(2)});
    AttentionMask causal;
    causal.causal = true;
    QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], causal).output; }, {Variable(x)},
                        mha.named_parameters());
  }
}

TEST_CASE("position encodings: bad settings and shapes name the layer") {
  CHECK_THROWS_WITH_AS(SinusoidalPositionalEncoding(0), "SinusoidalPositionalEncoding: d_model and max_len must be "
                                                        "positive, got 0 and 1000",
                       Error);
  Rng rng(0);
  CHECK_THROWS_WITH_AS(LearnedPositionalEmbedding(4, 6, rng, 1.5),
                       "LearnedPositionalEmbedding: dropout must be in [0, 1), got 1.5", Error);
  RelativePositionEncoding relative(4, 2, rng);
  CHECK_THROWS_WITH_AS(relative.score_term(Variable(zeros({1, 2, 3, 5})), 0, 3),
                       "RelativePositionEncoding: queries must be [B, H, Tq, 4], got [1, 2, 3, 5]", ShapeError);
  DotProductAttention attention;
  const Variable flat(zeros({2, 3, 4}));
  CHECK_THROWS_WITH_AS(attention.forward(flat, flat, flat, std::nullopt, &relative),
                       "DotProductAttention: position encodings inside attention need [B, H, T, d] tensors, got "
                       "queries [2, 3, 4], keys [2, 3, 4], values [2, 3, 4]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(alibi_slopes(0), "alibi_slopes: num_heads must be positive, got 0", Error);
}
