// matmul and linear: forward values against xtensor-blas, gradients by gradcheck, bad shapes.
#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// The product computed independently of qkv's gemm plan: broadcast both operands to the full
/// batch with xtensor, then one xt::linalg::dot per batch entry.
Array reference_matmul(const Array& a, const Array& b, Trans ta, Trans tb) {
  const Shape sa = shape_of(a), sb = shape_of(b);
  const Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  const Shape batch = broadcast_shapes("reference", batch_a, batch_b);
  const std::size_t count = numel(batch);
  Shape full_a = batch, full_b = batch;
  full_a.insert(full_a.end(), sa.end() - 2, sa.end());
  full_b.insert(full_b.end(), sb.end() - 2, sb.end());
  Array wide_a = xt::broadcast(a, full_a);
  Array wide_b = xt::broadcast(b, full_b);
  wide_a.reshape({count, sa[sa.size() - 2], sa.back()});  // [count, rows, cols] as stored
  wide_b.reshape({count, sb[sb.size() - 2], sb.back()});
  const std::size_t m = ta == Trans::Yes ? sa.back() : sa[sa.size() - 2];
  const std::size_t n = tb == Trans::Yes ? sb[sb.size() - 2] : sb.back();
  Array out = Array::from_shape({count, m, n});
  for (std::size_t i = 0; i < count; ++i) {
    Array ai = xt::view(wide_a, i, xt::all(), xt::all());
    Array bi = xt::view(wide_b, i, xt::all(), xt::all());
    if (ta == Trans::Yes) ai = xt::transpose(ai);
    if (tb == Trans::Yes) bi = xt::transpose(bi);
    xt::view(out, i, xt::all(), xt::all()) = xt::linalg::dot(ai, bi);
  }
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  out.reshape(out_shape);
  return out;
}

struct MatmulCase {
  const char* name;
  Shape a, b;
  Trans ta, tb;
};

/// The shapes every path of matmul takes: plain 2-d, each transpose flag, batched, broadcast
/// batch dims, and the folded [B, T, D] x [D, E] single gemm.
const std::vector<MatmulCase>& matmul_cases() {
  static const std::vector<MatmulCase> cases = {
      {"2-d", {3, 4}, {4, 5}, Trans::No, Trans::No},
      {"2-d, a transposed", {4, 3}, {4, 5}, Trans::Yes, Trans::No},
      {"2-d, b transposed", {3, 4}, {5, 4}, Trans::No, Trans::Yes},
      {"2-d, both transposed", {4, 3}, {5, 4}, Trans::Yes, Trans::Yes},
      {"batched", {2, 3, 4}, {2, 4, 5}, Trans::No, Trans::No},
      {"batched, a transposed", {2, 4, 3}, {2, 4, 5}, Trans::Yes, Trans::No},
      {"batched, b transposed", {2, 3, 4}, {2, 5, 4}, Trans::No, Trans::Yes},
      {"batched, both transposed", {2, 4, 3}, {2, 5, 4}, Trans::Yes, Trans::Yes},
      {"broadcast batch dims", {2, 1, 3, 4}, {3, 4, 5}, Trans::No, Trans::No},
      {"broadcast batch dims, both transposed", {2, 1, 4, 3}, {3, 5, 4}, Trans::Yes, Trans::Yes},
      {"2-d times batched", {3, 4}, {2, 4, 5}, Trans::No, Trans::No},
      {"folded [B, T, D] x [D, E]", {2, 3, 4}, {4, 5}, Trans::No, Trans::No},
      {"folded [B, T, D] x [E, D]ᵀ", {2, 3, 4}, {5, 4}, Trans::No, Trans::Yes},
      {"[B, D, T]ᵀ x [D, E] (not foldable)", {2, 4, 3}, {4, 5}, Trans::Yes, Trans::No},
  };
  return cases;
}

}  // namespace

TEST_CASE("matmul forward values match xt::linalg::dot") {
  std::uint64_t seed = 100;
  for (const MatmulCase& c : matmul_cases()) {
    CAPTURE(c.name);
    const Array a = random_array(c.a, ++seed), b = random_array(c.b, ++seed);
    const Array expected = reference_matmul(a, b, c.ta, c.tb);
    const Array got = matmul(Variable(a), Variable(b), c.ta, c.tb).value();
    CHECK(shape_of(got) == shape_of(expected));
    if (shape_of(got) == shape_of(expected)) CHECK(max_abs_diff(got, expected) < 1e-12);
  }
}

TEST_CASE("matmul forward value by hand") {
  const Variable a(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  const Variable b(array_of({3, 2}, {7, 8, 9, 10, 11, 12}));
  CHECK(max_abs_diff(matmul(a, b).value(), array_of({2, 2}, {58, 64, 139, 154})) == 0);
  // aᵀ a: [3, 2] x [2, 3]
  CHECK(max_abs_diff(matmul(a, a, Trans::Yes, Trans::No).value(),
                     array_of({3, 3}, {17, 22, 27, 22, 29, 36, 27, 36, 45})) == 0);
}

TEST_CASE("matmul gradients on every path") {
  std::uint64_t seed = 200;
  for (const MatmulCase& c : matmul_cases()) {
    CAPTURE(c.name);
    const Array a = random_array(c.a, ++seed), b = random_array(c.b, ++seed);
    const Trans ta = c.ta, tb = c.tb;
    QKV_CHECK_GRADIENTS([ta, tb](const auto& x) { return matmul(x[0], x[1], ta, tb); }, {Variable(a), Variable(b)});
  }
  // One operand used on both sides: x xᵀ, batched.
  QKV_CHECK_GRADIENTS([](const auto& x) { return matmul(x[0], x[0], Trans::No, Trans::Yes); },
                      {Variable(random_array({2, 3, 4}, 250))});
}

TEST_CASE("matmul with an empty dimension gives zeros, not garbage") {
  // K = 0: every entry is an empty sum.
  Variable a = leaf(zeros({2, 3, 0})), b = leaf(zeros({0, 4}));
  const Variable c = matmul(a, b);
  CHECK(max_abs_diff(c.value(), zeros({2, 3, 4})) == 0);
  sum(c).backward();
  CHECK(b.grad().size() == 0);
  // An empty batch and an empty M on the batched path.
  CHECK(matmul(Variable(zeros({0, 2, 3})), Variable(zeros({0, 3, 4}))).shape() == Shape{0, 2, 4});
  CHECK(matmul(Variable(zeros({2, 0, 3})), Variable(zeros({2, 4, 3})), Trans::No, Trans::Yes).shape() ==
        Shape{2, 0, 4});
}

TEST_CASE("matmul sends gradients only to operands that want them") {
  Variable a = leaf(random_array({2, 3, 4}, 260));
  const Variable b(random_array({4, 5}, 261));
  sum(matmul(a, b)).backward();
  CHECK(a.has_grad());
  CHECK_FALSE(b.has_grad());
}

TEST_CASE("linear forward values match xt::linalg::dot") {
  const Array x = random_array({2, 3, 4}, 300);
  const Array w = random_array({5, 4}, 301);
  const Array bias = random_array({5}, 302);
  Array flat = x;
  flat.reshape({6, 4});
  Array expected = xt::linalg::dot(flat, xt::transpose(w));  // [6, 5]
  expected.reshape({2, 3, 5});
  CHECK(max_abs_diff(linear(Variable(x), Variable(w), Variable()).value(), expected) < 1e-12);
  Array with_bias = expected + bias;
  CHECK(max_abs_diff(linear(Variable(x), Variable(w), Variable(bias)).value(), with_bias) < 1e-12);
  // A single vector of features: [in] -> [out].
  const Array v = random_array({4}, 303);
  Array expected_v = xt::linalg::dot(w, v);
  CHECK(max_abs_diff(linear(Variable(v), Variable(w), Variable()).value(), expected_v) < 1e-12);
}

TEST_CASE("linear gradients with and without bias") {
  const Array x = random_array({2, 3, 4}, 310);
  const Array w = random_array({5, 4}, 311);
  const Array bias = random_array({5}, 312);
  QKV_CHECK_GRADIENTS([](const auto& in) { return linear(in[0], in[1], in[2]); },
                      {Variable(x), Variable(w), Variable(bias)});
  QKV_CHECK_GRADIENTS([](const auto& in) { return linear(in[0], in[1], Variable()); }, {Variable(x), Variable(w)});
  // The weight and bias as named parameters, the way a layer holds them.
  const Variable weight(w), b(bias);
  QKV_CHECK_GRADIENTS([weight, b](const auto& in) { return linear(in[0], weight, b); },
                      {Variable(random_array({3, 4}, 313))}, {{"weight", weight}, {"bias", b}});
}

TEST_CASE("linear over a prepared weight: linear's values and gradients, and bad copies refused") {
  const Array x = random_array({2, 3, 4}, 320);
  const Array w = random_array({5, 4}, 321);
  const Array bias = random_array({5}, 322);
  const PreparedWeight prepared = prepare_weight(Variable(w));
  CHECK(shape_of(*prepared.transposed) == Shape{4, 5});
  CHECK(max_abs_diff(linear(Variable(x), prepared, Variable(bias)).value(),
                     linear(Variable(x), Variable(w), Variable(bias)).value()) < 1e-14);
  // Prepared inside the function, so each perturbed weight is transposed afresh.
  QKV_CHECK_GRADIENTS([](const auto& in) { return linear(in[0], prepare_weight(in[1]), in[2]); },
                      {Variable(x), Variable(w), Variable(bias)});
  QKV_CHECK_GRADIENTS([](const auto& in) { return linear(in[0], prepare_weight(in[1]), Variable()); },
                      {Variable(x), Variable(w)});
  CHECK_THROWS_WITH_AS(prepare_weight(Variable(zeros({3}))), "prepare_weight: weight must be [out, in], got [3]",
                       ShapeError);
  const PreparedWeight wrong{Variable(w), std::make_shared<const Array>(zeros({5, 4}))};
  CHECK_THROWS_WITH_AS(linear(Variable(x), wrong, Variable()),
                       "linear: the prepared weight's transposed copy must be [in, out] for weight [5, 4], got [5, 4]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(linear(Variable(zeros({2, 5})), prepared, Variable()),
                       "linear: input [2, 5] does not end in the weight's input size 4 (weight [5, 4])", ShapeError);
}

TEST_CASE("bad matmul shapes throw naming the op and both shapes") {
  const Variable a(zeros({2, 3})), b(zeros({4, 5}));
  CHECK_THROWS_WITH_AS(matmul(a, b), "matmul: cannot multiply [2, 3] by [4, 5]: inner dimensions 3 and 4 differ",
                       ShapeError);
  CHECK_THROWS_WITH_AS(matmul(a, b, Trans::Yes, Trans::No),
                       "matmul: cannot multiply [2, 3]ᵀ by [4, 5]: inner dimensions 2 and 4 differ", ShapeError);
  CHECK_THROWS_WITH_AS(matmul(Variable(zeros({3})), Variable(zeros({3, 4}))),
                       "matmul: operands need at least 2 dims, got [3] by [3, 4]", ShapeError);
  CHECK_THROWS_WITH_AS(matmul(Variable(zeros({2, 3})), Variable(zeros({3}))),
                       "matmul: operands need at least 2 dims, got [2, 3] by [3]", ShapeError);
  CHECK_THROWS_WITH_AS(matmul(Variable(zeros({2, 3, 4})), Variable(zeros({3, 4, 5}))),
                       "matmul: cannot multiply [2, 3, 4] by [3, 4, 5]: batch dimensions [2] and [3] do not broadcast",
                       ShapeError);
}

TEST_CASE("bad linear shapes throw naming the op and the shapes") {
  const Variable x(zeros({2, 3})), w(zeros({5, 4}));
  CHECK_THROWS_WITH_AS(linear(x, w, Variable()),
                       "linear: input [2, 3] does not end in the weight's input size 4 (weight [5, 4])", ShapeError);
  CHECK_THROWS_WITH_AS(linear(x, Variable(zeros({3})), Variable()), "linear: weight must be [out, in], got [3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(linear(x, Variable(zeros({5, 3})), Variable(zeros({4}))),
                       "linear: bias [4] does not match weight [5, 3]", ShapeError);
}

TEST_CASE("matmul with a scale equals the scaled product, and its gradients check") {
  // Folded ([B, M, K] x [K, N]), batched and broadcast products, transposed or not.
  const std::vector<std::pair<Shape, Shape>> shapes = {{{2, 3, 4}, {4, 5}}, {{2, 3, 4}, {2, 4, 5}}, {{3, 4}, {2, 4, 5}}};
  for (const auto& shape_pair : shapes) {
    const Shape& sa = shape_pair.first;
    const Shape& sb = shape_pair.second;
    CAPTURE(to_string(sa));
    CAPTURE(to_string(sb));
    const Variable a(random_array(sa, 401)), b(random_array(sb, 402));
    const Array plain = matmul(a, b).value();
    const Array scaled = matmul(a, b, Trans::No, Trans::No, 0.25).value();
    CHECK(max_abs_diff(scaled, Array(plain * 0.25)) < 1e-12);
    QKV_CHECK_GRADIENTS([](const auto& x) { return matmul(x[0], x[1], Trans::No, Trans::No, -0.3); },
                        {Variable(a.value()), Variable(b.value())});
  }
  // q kᵀ · 1/√d, the attention score product, against the unfused scale.
  const Variable q(random_array({2, 2, 5, 4}, 403)), k(random_array({2, 2, 6, 4}, 404));
  CHECK(max_abs_diff(matmul(q, k, Trans::No, Trans::Yes, 0.5).value(), (matmul(q, k, Trans::No, Trans::Yes) * 0.5).value()) <
        1e-12);
  QKV_CHECK_GRADIENTS([](const auto& x) { return matmul(x[0], x[1], Trans::No, Trans::Yes, 0.5); },
                      {Variable(q.value()), Variable(k.value())});
}
