// Reductions: forward values by hand, gradients by gradcheck, max's tie rule, bad axes.
#include <cmath>
#include <limits>

#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// 0, 1, ..., n-1 in the given shape.
Array iota_array(const Shape& shape) {
  Array a = Array::from_shape(shape);
  for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = static_cast<real>(i);
  return a;
}

}  // namespace

TEST_CASE("sum forward values") {
  const Variable x(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  const Variable total = sum(x);
  CHECK(total.shape() == Shape{});
  CHECK(total.item() == 21);
  CHECK(max_abs_diff(sum(x, {0}).value(), array_of({3}, {5, 7, 9})) == 0);
  CHECK(max_abs_diff(sum(x, {1}).value(), array_of({2}, {6, 15})) == 0);
  CHECK(max_abs_diff(sum(x, {-1}, true).value(), array_of({2, 1}, {6, 15})) == 0);
  CHECK(max_abs_diff(sum(x, {0, 1}).value(), array_of({}, {21})) == 0);
  CHECK(sum(x, {1, 0}, true).shape() == Shape{1, 1});

  // x[i, j, k] = 12 i + 4 j + k; summing over i and k gives 32 j + 60.
  const Variable cube(iota_array({2, 3, 4}));
  CHECK(max_abs_diff(sum(cube, {0, 2}).value(), array_of({3}, {60, 92, 124})) == 0);
  CHECK(max_abs_diff(sum(cube, {-3, -1}, true).value(), array_of({1, 3, 1}, {60, 92, 124})) == 0);
  // Over the middle axis: 3 (12 i + k) + 12.
  CHECK(max_abs_diff(sum(cube, {1}).value(),
                     array_of({2, 4}, {12, 15, 18, 21, 48, 51, 54, 57})) == 0);
}

TEST_CASE("sum of a scalar and of an empty array") {
  const Variable scalar(array_of({}, {2.5}));
  CHECK(sum(scalar).shape() == Shape{});
  CHECK(sum(scalar).item() == 2.5);
  const Variable empty(zeros({0, 3}));
  CHECK(sum(empty).item() == 0);
  CHECK(max_abs_diff(sum(empty, {0}).value(), zeros({3})) == 0);
  CHECK(sum(empty, {1}).shape() == Shape{0});
}

TEST_CASE("mean forward values") {
  const Variable x(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  CHECK(mean(x).shape() == Shape{});
  CHECK(mean(x).item() == doctest::Approx(3.5));
  CHECK(max_abs_diff(mean(x, {1}).value(), array_of({2}, {2, 5})) < 1e-12);
  CHECK(max_abs_diff(mean(x, {0}, true).value(), array_of({1, 3}, {2.5, 3.5, 4.5})) < 1e-12);
  const Variable cube(iota_array({2, 3, 4}));
  CHECK(max_abs_diff(mean(cube, {2, -3}).value(), array_of({3}, {7.5, 11.5, 15.5})) < 1e-12);
  // PyTorch gives NaN for the mean of nothing; so does qkv.
  CHECK(std::isnan(mean(Variable(zeros({0}))).item()));
}

TEST_CASE("max forward values") {
  const Variable x(array_of({2, 3}, {1, 5, 3, 7, 2, 7}));
  CHECK(max_abs_diff(max(x, {1}).value(), array_of({2}, {5, 7})) == 0);
  CHECK(max_abs_diff(max(x, {0}).value(), array_of({3}, {7, 5, 7})) == 0);
  CHECK(max_abs_diff(max(x, {-1}, true).value(), array_of({2, 1}, {5, 7})) == 0);
  CHECK(max(x, {0, 1}).shape() == Shape{});
  CHECK(max(x, {0, 1}).item() == 7);
  const Variable negative(array_of({3}, {-4, -2, -3}));
  CHECK(max(negative, {0}).item() == -2);
  const Variable cube(iota_array({2, 3, 4}));
  CHECK(max_abs_diff(max(cube, {0, 2}, true).value(), array_of({1, 3, 1}, {15, 19, 23})) == 0);
  CHECK(max_abs_diff(max(cube, {1}).value(), array_of({2, 4}, {8, 9, 10, 11, 20, 21, 22, 23})) == 0);
}

TEST_CASE("max propagates NaN, as PyTorch does") {
  const real nan = std::numeric_limits<real>::quiet_NaN();
  const Variable x(array_of({2, 3}, {1, nan, 3, nan, 5, 6}));
  const Array y = max(x, {1}).value();
  CHECK(std::isnan(y(0)));
  CHECK(std::isnan(y(1)));
}

TEST_CASE("max sends each group's gradient to its first maximal element") {
  Variable x = leaf(array_of({2, 3}, {1, 5, 5, 7, 2, 7}));
  sum(max(x, {1})).backward();
  CHECK(max_abs_diff(x.grad(), array_of({2, 3}, {0, 1, 0, 1, 0, 0})) == 0);

  // Ties across the outer axis: the first row wins.
  Variable y = leaf(array_of({2, 2}, {3, 1, 3, 1}));
  max(y, {0}).backward(array_of({2}, {2, 5}));
  CHECK(max_abs_diff(y.grad(), array_of({2, 2}, {2, 5, 0, 0})) == 0);

  // Over several axes "first" means first in row-major order of x.
  Variable z = leaf(array_of({2, 2, 2}, {0, 4, 4, 1, 4, 0, 2, 4}));
  max(z, {0, 2}, true).backward(array_of({1, 2, 1}, {1, 10}));
  CHECK(max_abs_diff(z.grad(), array_of({2, 2, 2}, {0, 1, 10, 0, 0, 0, 0, 0})) == 0);
}

TEST_CASE("reduction gradients") {
  const Array a = random_array({3, 4, 5}, 11);
  QKV_CHECK_GRADIENTS([](const auto& x) { return sum(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return sum(x[0], {1}); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return sum(x[0], {-1, 0}, true); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return sum(x[0], {0, 1, 2}); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return mean(x[0]); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return mean(x[0], {2}); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return mean(x[0], {0, -1}, true); }, {Variable(a)});
  // Random normals are distinct, so no ±eps step changes which element is the maximum.
  QKV_CHECK_GRADIENTS([](const auto& x) { return max(x[0], {1}); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return max(x[0], {0, 2}, true); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return max(x[0], {-3, -2, -1}); }, {Variable(a)});
  // A reduced value used again downstream: x - mean(x) needs the broadcast backward.
  QKV_CHECK_GRADIENTS([](const auto& x) { return x[0] * (x[0] - mean(x[0], {-1}, true)); }, {Variable(a)});
}

TEST_CASE("bad reduction axes throw naming the op, the axes and the shape") {
  const Variable x(zeros({2, 3}));
  CHECK_THROWS_WITH_AS(sum(x, {2}), "sum: axis 2 is out of range for shape [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(mean(x, {-3}), "mean: axis -3 is out of range for shape [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(sum(x, {1, -1}), "sum: axis 1 appears twice in axes (1, -1) for shape [2, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(max(x, {0, 0}), "max: axis 0 appears twice in axes (0, 0) for shape [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(sum(x, {}), "sum: no axes given for [2, 3]; pass every axis to reduce them all",
                       ShapeError);
  CHECK_THROWS_WITH_AS(max(Variable(zeros({2, 0})), {1}),
                       "max: cannot take the maximum of an empty group: [2, 0] has extent 0 along a reduced axis",
                       ShapeError);
}
