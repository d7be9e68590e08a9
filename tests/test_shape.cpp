// Shape ops: forward values by hand, gradients by gradcheck, errors naming op and shapes.
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

TEST_CASE("reshape, unsqueeze and squeeze keep the elements in order") {
  const Variable x(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  CHECK(max_abs_diff(reshape(x, {3, -1}).value(), array_of({3, 2}, {1, 2, 3, 4, 5, 6})) == 0);
  CHECK(reshape(x, {-1}).shape() == Shape{6});
  CHECK(reshape(x, {1, 2, 1, 3}).shape() == Shape{1, 2, 1, 3});
  CHECK(reshape(Variable(array_of({1}, {7})), {}).shape() == Shape{});
  CHECK(reshape(Variable(zeros({0, 4})), {-1, 2}).shape() == Shape{0, 2});
  CHECK(max_abs_diff(unsqueeze(x, 0).value(), array_of({1, 2, 3}, {1, 2, 3, 4, 5, 6})) == 0);
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 3});
  CHECK(unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -3).shape() == Shape{1, 2, 3});
  const Variable column(array_of({2, 1, 3}, {1, 2, 3, 4, 5, 6}));
  CHECK(max_abs_diff(squeeze(column, 1).value(), x.value()) == 0);
  CHECK(squeeze(column, -2).shape() == Shape{2, 3});
}

TEST_CASE("expand broadcasts as NumPy does") {
  const Variable row(array_of({3}, {1, 2, 3}));
  CHECK(max_abs_diff(expand(row, {2, 3}).value(), array_of({2, 3}, {1, 2, 3, 1, 2, 3})) == 0);
  const Variable column(array_of({2, 1}, {4, 5}));
  CHECK(max_abs_diff(expand(column, {2, 2, 3}).value(),
                     array_of({2, 2, 3}, {4, 4, 4, 5, 5, 5, 4, 4, 4, 5, 5, 5})) == 0);
  CHECK(max_abs_diff(expand(row, {3}).value(), row.value()) == 0);
  CHECK(max_abs_diff(expand(Variable(array_of({}, {9})), {2}).value(), array_of({2}, {9, 9})) == 0);
}

TEST_CASE("transpose and permute") {
  const Variable x(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  CHECK(max_abs_diff(transpose(x, 0, 1).value(), array_of({3, 2}, {1, 4, 2, 5, 3, 6})) == 0);
  CHECK(max_abs_diff(transpose(x, -1, -2).value(), array_of({3, 2}, {1, 4, 2, 5, 3, 6})) == 0);
  CHECK(max_abs_diff(transpose(x, 1, 1).value(), x.value()) == 0);

  const Array cube = random_array({2, 3, 4}, 20);
  const Array swapped = transpose(Variable(cube), 0, 2).value();
  REQUIRE(shape_of(swapped) == Shape{4, 3, 2});
  const Array moved = permute(Variable(cube), {2, 0, 1}).value();
  REQUIRE(shape_of(moved) == Shape{4, 2, 3});
  bool all_match = true;
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t j = 0; j < 3; ++j)
      for (std::size_t k = 0; k < 4; ++k) {
        all_match = all_match && swapped(k, j, i) == cube(i, j, k);
        all_match = all_match && moved(k, i, j) == cube(i, j, k);
      }
  CHECK(all_match);
  CHECK(max_abs_diff(permute(Variable(cube), {0, 1, 2}).value(), cube) == 0);
}

TEST_CASE("slice, concat, stack and split forward values") {
  const Variable x(array_of({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
  CHECK(max_abs_diff(slice(x, 1, 1, 3).value(), array_of({2, 2}, {2, 3, 6, 7})) == 0);
  CHECK(max_abs_diff(slice(x, -2, 1, 2).value(), array_of({1, 4}, {5, 6, 7, 8})) == 0);
  CHECK(slice(x, 1, 2, 2).shape() == Shape{2, 0});

  const Variable y(array_of({2, 1}, {9, 10}));
  CHECK(max_abs_diff(concat({x, y}, 1).value(), array_of({2, 5}, {1, 2, 3, 4, 9, 5, 6, 7, 8, 10})) == 0);
  CHECK(max_abs_diff(concat({y, x, y}, -1).value(),
                     array_of({2, 6}, {9, 1, 2, 3, 4, 9, 10, 5, 6, 7, 8, 10})) == 0);
  const Variable z(array_of({1, 4}, {0, 0, 0, -1}));
  CHECK(max_abs_diff(concat({x, z}, 0).value(), array_of({3, 4}, {1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, -1})) == 0);
  CHECK(max_abs_diff(concat({x}, 0).value(), x.value()) == 0);

  const Variable a(array_of({2, 2}, {1, 2, 3, 4}));
  const Variable b(array_of({2, 2}, {5, 6, 7, 8}));
  CHECK(max_abs_diff(stack({a, b}, 0).value(), array_of({2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8})) == 0);
  CHECK(max_abs_diff(stack({a, b}, 1).value(), array_of({2, 2, 2}, {1, 2, 5, 6, 3, 4, 7, 8})) == 0);
  CHECK(max_abs_diff(stack({a, b}, -1).value(), array_of({2, 2, 2}, {1, 5, 2, 6, 3, 7, 4, 8})) == 0);
  CHECK(stack({a, b, a}, -3).shape() == Shape{3, 2, 2});

  const std::vector<Variable> pieces = split(x, {1, 3}, 1);
  REQUIRE(pieces.size() == 2);
  CHECK(max_abs_diff(pieces[0].value(), array_of({2, 1}, {1, 5})) == 0);
  CHECK(max_abs_diff(pieces[1].value(), array_of({2, 3}, {2, 3, 4, 6, 7, 8})) == 0);
  const std::vector<Variable> rows = split(x, {0, 1, 1}, -2);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].shape() == Shape{0, 4});
  CHECK(max_abs_diff(rows[2].value(), array_of({1, 4}, {5, 6, 7, 8})) == 0);
}

TEST_CASE("shape op gradients") {
  const Array a = random_array({2, 3, 4}, 21);
  const Array b = random_array({2, 5, 4}, 22);
  const Array c = random_array({2, 3, 4}, 23);
  QKV_CHECK_GRADIENTS([](const auto& x) { return reshape(x[0], {4, -1}); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return unsqueeze(x[0], -2); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return squeeze(unsqueeze(x[0], 1), 1); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return expand(x[0], {3, 2, 3, 4}); }, {Variable(random_array({2, 1, 4}, 24))});
  QKV_CHECK_GRADIENTS([](const auto& x) { return expand(x[0], {2, 3, 4}); }, {Variable(random_array({4}, 25))});
  QKV_CHECK_GRADIENTS([](const auto& x) { return transpose(x[0], 0, -1); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return permute(x[0], {1, 3, 0, 2}); },
                      {Variable(random_array({2, 3, 4, 5}, 26))});
  QKV_CHECK_GRADIENTS([](const auto& x) { return slice(x[0], 1, 1, 3); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return slice(x[0], -1, 0, 1); }, {Variable(a)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return concat({x[0], x[1], x[0]}, 1); }, {Variable(a), Variable(b)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return stack({x[0], x[1]}, 2); }, {Variable(a), Variable(c)});
  QKV_CHECK_GRADIENTS([](const auto& x) { return stack({x[1], x[0], x[1]}, 0); }, {Variable(a), Variable(c)});
}

TEST_CASE("split pieces used in different ways each add their share to the input's gradient") {
  const Array a = random_array({3, 7}, 31);
  // Piece 0 squared, piece 1 unused, piece 2 used twice, piece 3 through exp.
  const auto f = [](const std::vector<Variable>& x) {
    const std::vector<Variable> p = split(x[0], {2, 1, 3, 1}, -1);
    return concat({p[0] * p[0], p[2] + mul_scalar(p[2], 3), exp(p[3])}, 1);
  };
  QKV_CHECK_GRADIENTS(f, {Variable(a)});

  // The unused piece's columns get exactly zero.
  Variable x = leaf(a);
  sum(f({x})).backward();
  bool unused_column_is_zero = true;
  for (std::size_t row = 0; row < 3; ++row) unused_column_is_zero = unused_column_is_zero && x.grad()(row, 2) == 0;
  CHECK(unused_column_is_zero);
  // Piece 2 enters as p + 3p, so its gradient is 4 everywhere.
  CHECK(x.grad()(1, 4) == doctest::Approx(4));
}

TEST_CASE("bad shapes in shape ops throw naming the op and the shapes") {
  const Variable x(zeros({2, 3}));
  CHECK_THROWS_WITH_AS(reshape(x, {4, 2}),
                       "reshape: cannot reshape [2, 3] (6 elements) to [4, 2]: element counts differ", ShapeError);
  CHECK_THROWS_WITH_AS(reshape(x, {-1, 4}),
                       "reshape: cannot reshape [2, 3] (6 elements) to [-1, 4]: element counts differ",
                       ShapeError);
  CHECK_THROWS_WITH_AS(reshape(x, {-1, -1}),
                       "reshape: cannot reshape [2, 3] (6 elements) to [-1, -1]: only one extent may be -1",
                       ShapeError);
  CHECK_THROWS_WITH_AS(reshape(x, {-2, -3}),
                       "reshape: cannot reshape [2, 3] (6 elements) to [-2, -3]: extents must be non-negative or -1",
                       ShapeError);
  CHECK_THROWS_WITH_AS(reshape(Variable(zeros({0, 3})), {0, -1}),
                       "reshape: cannot reshape [0, 3] (0 elements) to [0, -1]: the -1 is ambiguous next to an extent of 0",
                       ShapeError);

  CHECK_THROWS_WITH_AS(unsqueeze(x, 3),
                       "unsqueeze: axis 3 is out of range for inserting a dimension into [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(unsqueeze(x, -4),
                       "unsqueeze: axis -4 is out of range for inserting a dimension into [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(squeeze(x, 0), "squeeze: axis 0 of [2, 3] has extent 2, not 1", ShapeError);
  CHECK_THROWS_WITH_AS(squeeze(x, 2), "squeeze: axis 2 is out of range for shape [2, 3]", ShapeError);

  CHECK_THROWS_WITH_AS(expand(x, {4, 3}), "expand: cannot expand [2, 3] to [4, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(expand(x, {3}), "expand: cannot expand [2, 3] to [3]", ShapeError);
  CHECK_THROWS_WITH_AS(expand(Variable(zeros({2, 1})), {1, 4}), "expand: cannot expand [2, 1] to [1, 4]",
                       ShapeError);

  CHECK_THROWS_WITH_AS(transpose(x, 0, 2), "transpose: axis 2 is out of range for shape [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(permute(x, {0, 0}), "permute: axis 0 appears twice in order [0, 0] for [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(permute(x, {1, 2}), "permute: axis 2 in order [1, 2] is out of range for [2, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(permute(x, {1, 0, 2}),
                       "permute: order [1, 0, 2] has 3 axes but the input [2, 3] has 2", ShapeError);

  CHECK_THROWS_WITH_AS(slice(x, 1, 2, 1), "slice: range [2, 1) is invalid for axis 1 (extent 3) of [2, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(slice(x, -1, 1, 4), "slice: range [1, 4) is invalid for axis -1 (extent 3) of [2, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(slice(x, 2, 0, 1), "slice: axis 2 is out of range for shape [2, 3]", ShapeError);

  const Variable y(zeros({3, 3}));
  CHECK_THROWS_WITH_AS(concat({x, y}, 1), "concat: shapes [2, 3], [3, 3] differ outside axis 1", ShapeError);
  CHECK_THROWS_WITH_AS(concat({x, Variable(zeros({2, 3, 1}))}, 0),
                       "concat: shapes [2, 3], [2, 3, 1] differ outside axis 0", ShapeError);
  CHECK_THROWS_WITH_AS(concat({}, 0), "concat: needs at least one part", ShapeError);
  CHECK_THROWS_WITH_AS(stack({x, y}, 0), "stack: parts must all have one shape, got [2, 3], [3, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(stack({x, x}, 3),
                       "stack: axis 3 is out of range for inserting a dimension into [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(split(x, {1, 1}, 1), "split: sizes [1, 1] add up to 2, but axis 1 of [2, 3] has extent 3",
                       ShapeError);
  CHECK_THROWS_WITH_AS(split(x, {2, 2}, -1),
                       "split: sizes [2, 2] add up to 4, but axis -1 of [2, 3] has extent 3", ShapeError);
}

TEST_CASE("split_heads and merge_heads equal the reshape + permute they replace, and check") {
  const Variable x(random_array({2, 3, 8}, 71));  // [B, T, H·d] with H = 4, d = 2
  const Variable heads = split_heads(x, 4);
  CHECK(heads.shape() == Shape{2, 4, 3, 2});
  CHECK(max_abs_diff(heads.value(), permute(reshape(x, {2, 3, 4, 2}), {0, 2, 1, 3}).value()) == 0);
  const Variable merged = merge_heads(heads);
  CHECK(merged.shape() == Shape{2, 3, 8});
  CHECK(max_abs_diff(merged.value(), x.value()) == 0);  // the round trip is the identity
  QKV_CHECK_GRADIENTS([](const auto& in) { return split_heads(in[0], 4); }, {Variable(x.value())});
  QKV_CHECK_GRADIENTS([](const auto& in) { return merge_heads(in[0]); }, {Variable(heads.value())});
  // Used twice: both gradients add up.
  QKV_CHECK_GRADIENTS([](const auto& in) { return split_heads(in[0], 2) * split_heads(in[0], 2); },
                      {Variable(x.value())});
  CHECK_THROWS_WITH_AS(split_heads(x, 3), doctest::Contains("split_heads: needs [B, T, E] with E divisible by the 3 heads, got [2, 3, 8]"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(merge_heads(x), doctest::Contains("merge_heads: needs [B, H, T, d], got [2, 3, 8]"), ShapeError);
}

TEST_CASE("split_heads of a column block equals slicing the block out first, and its gradients add up") {
  // Multi-head attention splits q, k and v out of one stacked projection [B, T, 3E] this way.
  const Variable x(random_array({2, 3, 12}, 72));  // [B, T, 3·H·d] with H = 2, d = 2
  for (std::size_t first : {0u, 4u, 8u}) {
    const Variable block = split_heads(x, 2, first, 4);
    CHECK(block.shape() == Shape{2, 2, 3, 2});
    CHECK(max_abs_diff(block.value(), split_heads(slice(x, -1, first, first + 4), 2).value()) == 0);
  }
  // All three blocks of one input, as attention uses them: each adds its columns' gradient.
  QKV_CHECK_GRADIENTS(
      [](const auto& in) {
        return split_heads(in[0], 2, 0, 4) * split_heads(in[0], 2, 4, 4) + split_heads(in[0], 2, 8, 4);
      },
      {Variable(x.value())});
  // One block alone: the other columns' gradient stays zero.
  QKV_CHECK_GRADIENTS([](const auto& in) { return split_heads(in[0], 2, 4, 4); }, {Variable(x.value())});
  CHECK_THROWS_WITH_AS(split_heads(x, 2, 10, 4),
                       doctest::Contains("split_heads: needs [B, T, C] with columns [10, 14) inside C and divisible "
                                         "by the 2 heads, got [2, 3, 12]"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(split_heads(x, 3, 0, 4), doctest::Contains("divisible by the 3 heads"), ShapeError);
}
