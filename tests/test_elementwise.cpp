// Elementwise ops: forward values by hand, gradients by gradcheck, broadcasting both ways.
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

TEST_CASE("add/sub/mul/div forward values with broadcasting") {
  const Variable a(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  const Variable b(array_of({3}, {10, 20, 30}));
  CHECK(max_abs_diff((a + b).value(), array_of({2, 3}, {11, 22, 33, 14, 25, 36})) == 0);
  CHECK(max_abs_diff((a - b).value(), array_of({2, 3}, {-9, -18, -27, -6, -15, -24})) == 0);
  CHECK(max_abs_diff((a * b).value(), array_of({2, 3}, {10, 40, 90, 40, 100, 180})) == 0);
  CHECK(max_abs_diff((b / a).value(), array_of({2, 3}, {10, 10, 10, 2.5, 4, 5})) < 1e-12);
  const Variable column(array_of({2, 1}, {1, 2}));
  CHECK(max_abs_diff((column * b).value(), array_of({2, 3}, {10, 20, 30, 20, 40, 60})) == 0);
}

TEST_CASE("elementwise gradients, broadcasting included") {
  const Array a = random_array({2, 3, 4}, 1);
  const Array row = random_array({4}, 2);
  const Array column = random_array({2, 1, 4}, 3);
  const Array positive = uniform_array({3, 4}, 4, 0.5, 2.0);
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] + x[1]; }, {Variable(a), Variable(row)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] - x[1]; }, {Variable(a), Variable(column)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] * x[1]; }, {Variable(a), Variable(column)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] / x[1]; }, {Variable(a), Variable(positive)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[1] / x[0]; }, {Variable(positive), Variable(column)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] * x[0]; }, {Variable(a)});  // used twice
}

TEST_CASE("unary gradients") {
  const Array a = random_array({3, 5}, 5);
  const Array positive = uniform_array({3, 5}, 6, 0.2, 3.0);
  // Keep relu's inputs away from its kink at 0, where central differences are meaningless.
  Array away_from_zero = a;
  for (auto& v : away_from_zero) v = v >= 0 ? v + real(0.1) : v - real(0.1);
  QKV_CHECK_GRADIENTS([](const auto& x) { return -x[0]; }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return pow(x[0], real(3)); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return pow(x[0], real(-1.5)); }, {Variable(positive)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return pow(x[0], x[1]); }, {Variable(positive), Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return sqrt(x[0]); }, {Variable(positive)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return exp(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return log(x[0]); }, {Variable(positive)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return tanh(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return sigmoid(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return relu(x[0]); }, {Variable(away_from_zero)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return gelu(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return 2.0 * x[0] + 1.0 - x[0] / 4.0; }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return 3.0 - x[0]; }, {Variable(a)});
}

TEST_CASE("unary forward values") {
  const Variable x(array_of({4}, {-2, -0.5, 0, 1.5}));
  CHECK(max_abs_diff(relu(x).value(), array_of({4}, {0, 0, 0, 1.5})) == 0);
  CHECK(max_abs_diff(sigmoid(x).value(), array_of({4}, {0.11920292202211755, 0.3775406687981454, 0.5,
                                                          0.8175744761936437})) < 1e-12);
  // torch.nn.functional.gelu (exact) of the same values.
  CHECK(max_abs_diff(gelu(x).value(), array_of({4}, {-0.04550026389635842, -0.15426876936299344, 0,
                                                       1.399789198096713})) < 1e-12);
}

TEST_CASE("sigmoid does not overflow for large inputs") {
  const Variable x(array_of({2}, {-1000, 1000}));
  const Array y = sigmoid(x).value();
  CHECK(y(0) == 0);
  CHECK(y(1) == 1);
}

TEST_CASE("a failed broadcast names the op and both shapes") {
  const Variable a(zeros({2, 3})), b(zeros({4}));
  CHECK_THROWS_WITH_AS(a + b, "add: cannot broadcast [2, 3] with [4] (dimension 1: 3 vs 4)", ShapeError);
  CHECK_THROWS_AS(a * b, ShapeError);
}
