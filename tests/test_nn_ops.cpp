// Neural-network ops: values against PyTorch (scripts/fixtures/nn_ops.py), gradients by
// gradcheck, and the errors a user sees for bad targets, indices, axes and probabilities.
//
// `qkv::where` is called qualified: with a BoolArray argument, argument-dependent lookup also
// finds xt::where, whose forwarding-reference overload wins against ours.
#include <cmath>
#include <limits>

#include "lib/numerics/kernels.hpp"
#include "lib/numerics/parallel.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// PyTorch computed the fixtures in float64; a correct float64 kernel agrees to rounding.
constexpr double fixture_tolerance = 1e-10;

const TensorFile& fixture() {
  static const TensorFile file = load_fixture("nn_ops");
  return file;
}
const Array& reference(const std::string& name) { return fixture().reals.at(name); }
const IndexArray& reference_indices(const std::string& name) { return fixture().integers.at(name); }

/// Runs backward from `output` seeded with `grad_output`.
void backward_with(const Variable& output, const Array& grad_output) {
  Variable root = output;
  root.backward(grad_output);
}

/// The message of the exception `call` throws, or "" when it throws none.
template <class Call>
std::string error_message(Call call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

BoolArray bool_array(const Shape& shape, std::initializer_list<bool> values) {
  BoolArray a = BoolArray::from_shape(shape);
  REQUIRE(values.size() == a.size());
  std::copy(values.begin(), values.end(), a.data());
  return a;
}

}  // namespace

// ---- values against PyTorch --------------------------------------------------------------

TEST_CASE("softmax and log_softmax match PyTorch on every axis") {
  const Variable x(reference("softmax.x"));  // [3, 4, 5]
  for (long axis : {0L, 1L, 2L, -1L}) {
    CAPTURE(axis);
    const std::string name = axis < 0 ? "axism1" : "axis" + std::to_string(axis);
    CHECK(max_abs_diff(softmax(x, axis).value(), reference("softmax." + name)) < fixture_tolerance);
    CHECK(max_abs_diff(log_softmax(x, axis).value(), reference("log_softmax." + name)) < fixture_tolerance);
  }
}

TEST_CASE("cross_entropy matches PyTorch: ignored targets, label smoothing, its gradient") {
  struct Case {
    const char* name;
    CrossEntropyOptions options;
  };
  for (const Case& c : {Case{"plain", {}}, Case{"smooth", {.label_smoothing = 0.1}},
                        Case{"ignore2_smooth", {.ignore_index = 2, .label_smoothing = 0.1}}}) {
    CAPTURE(c.name);
    const std::string prefix = std::string("ce.") + c.name;
    const Variable logits(reference("ce.logits"), true);  // [2, 3, 5]
    const Variable loss = cross_entropy(logits, reference_indices(prefix + ".targets"), c.options);
    CHECK(loss.shape().empty());
    CHECK(std::abs(loss.item() - reference(prefix + ".loss")()) < fixture_tolerance);
    backward_with(loss, full({}, 1));
    CHECK(max_abs_diff(logits.grad(), reference(prefix + ".grad")) < fixture_tolerance);
  }
}

TEST_CASE("layer_norm matches PyTorch with and without affine parameters") {
  const Array& grad_out = reference("ln.grad_out");  // [2, 3, 6]
  SUBCASE("affine") {
    const Variable x(reference("ln.x"), true), weight(reference("ln.weight"), true), bias(reference("ln.bias"), true);
    const Variable y = layer_norm(x, weight, bias, 1e-5);
    CHECK(max_abs_diff(y.value(), reference("ln.y")) < fixture_tolerance);
    backward_with(y, grad_out);
    CHECK(max_abs_diff(x.grad(), reference("ln.grad_x")) < fixture_tolerance);
    CHECK(max_abs_diff(weight.grad(), reference("ln.grad_weight")) < fixture_tolerance);
    CHECK(max_abs_diff(bias.grad(), reference("ln.grad_bias")) < fixture_tolerance);
  }
  SUBCASE("no affine") {
    const Variable x(reference("ln.x"), true);
    const Variable y = layer_norm(x, Variable(), Variable(), 1e-5);
    CHECK(max_abs_diff(y.value(), reference("ln.plain.y")) < fixture_tolerance);
    backward_with(y, grad_out);
    CHECK(max_abs_diff(x.grad(), reference("ln.plain.grad_x")) < fixture_tolerance);
  }
}

TEST_CASE("embedding matches PyTorch, repeated indices accumulate their gradients") {
  const Variable weight(reference("emb.weight"), true);  // [7, 4]
  const IndexArray& indices = reference_indices("emb.indices");  // [2, 3], row 3 three times
  const Variable y = embedding(weight, indices);
  CHECK(y.shape() == Shape{2, 3, 4});
  CHECK(max_abs_diff(y.value(), reference("emb.y")) < fixture_tolerance);
  backward_with(y, reference("emb.grad_out"));
  CHECK(max_abs_diff(weight.grad(), reference("emb.grad_weight")) < fixture_tolerance);
}

TEST_CASE("gelu matches PyTorch's exact gelu") {
  CHECK(max_abs_diff(gelu(Variable(reference("gelu.x"))).value(), reference("gelu.y")) < fixture_tolerance);
}

// ---- values by hand ------------------------------------------------------------------------

TEST_CASE("softmax by hand: rows sum to 1, shift invariance, a size-1 axis") {
  const Variable x(array_of({2, 3}, {1, 2, 3, 1001, 1002, 1003}));
  const Array y = softmax(x, -1).value();
  // e^0, e^1, e^2 over their sum, for both rows: softmax ignores a constant shift.
  const double total = 1 + std::exp(1.0) + std::exp(2.0);
  const Array expected = array_of({2, 3}, {1 / total, std::exp(1.0) / total, std::exp(2.0) / total, 1 / total,
                                           std::exp(1.0) / total, std::exp(2.0) / total});
  CHECK(max_abs_diff(y, expected) < 1e-15);
  Array log_expected = expected;
  for (real& v : log_expected) v = std::log(v);
  CHECK(max_abs_diff(log_softmax(x, 1).value(), log_expected) < 1e-13);
  CHECK(max_abs_diff(softmax(Variable(random_array({4, 1}, 3)), 1).value(), full({4, 1}, 1)) == 0);
}

TEST_CASE("softmax and log_softmax of empty arrays are empty") {
  for (const Shape& shape : {Shape{2, 0}, Shape{0, 3}}) {
    CAPTURE(to_string(shape));
    const Variable x(zeros(shape), true);
    Variable y = softmax(x, -1), log_y = log_softmax(x, 0);
    CHECK(y.shape() == shape);
    CHECK(log_y.shape() == shape);
    y.backward(zeros(shape));
  }
}

TEST_CASE("cross_entropy by hand: two rows, one ignored, and label smoothing") {
  const Array z = array_of({3, 2}, {0, std::log(3.0), 5, -5, 1, 1});
  const IndexArray targets = {1, -100, 0};
  // Row 0: p = [1/4, 3/4], target 1 -> -log(3/4). Row 2: p = [1/2, 1/2] -> log 2. Row 1 ignored.
  const double nll0 = -std::log(0.75), nll2 = std::log(2.0);
  CHECK(std::abs(cross_entropy(Variable(z), targets).item() - (nll0 + nll2) / 2) < 1e-15);
  // With ε = 0.2 and C = 2: (1 - ε) nll + ε · mean(-log p_c).
  const double smooth0 = 0.8 * nll0 + 0.2 * (-std::log(0.25) - std::log(0.75)) / 2;
  const double smooth2 = 0.8 * nll2 + 0.2 * std::log(2.0);
  CHECK(std::abs(cross_entropy(Variable(z), targets, {.label_smoothing = 0.2}).item() - (smooth0 + smooth2) / 2) <
        1e-15);
}

TEST_CASE("cross_entropy accepts a single unbatched row: logits [C], targets []") {
  const Variable logits(array_of({3}, {0.5, -1, 2}));
  IndexArray target = IndexArray::from_shape({});
  target() = 2;
  const double expected = -(2 - std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0)));
  CHECK(std::abs(cross_entropy(logits, target).item() - expected) < 1e-14);
}

TEST_CASE("cross_entropy with every target ignored: loss 0, zero gradients, no NaN") {
  const Variable logits(random_array({2, 3, 4}, 7), true);
  const IndexArray targets = xt::full_like(IndexArray::from_shape({2, 3}), -100);
  const Variable loss = cross_entropy(logits, targets, {.label_smoothing = 0.1});
  CHECK(loss.item() == 0);
  backward_with(loss, full({}, 1));
  CHECK(max_abs_diff(logits.grad(), zeros({2, 3, 4})) == 0);
}

TEST_CASE("layer_norm by hand: zero mean, unit variance, then scale and shift") {
  const Variable x(array_of({2, 4}, {1, 2, 3, 4, -2, 0, 2, 4}));
  const Array y = layer_norm(x, Variable(), Variable(), 0).value();
  // Row 0: mean 2.5, biased variance 1.25.
  const double s = 1 / std::sqrt(1.25);
  CHECK(max_abs_diff(y, array_of({2, 4}, {-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s, -1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s})) <
        1e-15);
  const Variable weight(array_of({4}, {1, 2, 3, 4})), bias(array_of({4}, {0, 0, 0, 10}));
  const Array affine = layer_norm(x, weight, bias, 0).value();
  CHECK(std::abs(affine(0, 3) - (4 * 1.5 * s + 10)) < 1e-14);
  CHECK(std::abs(affine(1, 1) - (2 * -0.5 * s)) < 1e-14);
}

TEST_CASE("where and masked_fill forward values with broadcasting") {
  const Variable a(array_of({2, 3}, {1, 2, 3, 4, 5, 6}));
  const Variable b(array_of({3}, {-1, -2, -3}));
  const BoolArray column = bool_array({2, 1}, {true, false});
  CHECK(max_abs_diff(qkv::where(column, a, b).value(), array_of({2, 3}, {1, 2, 3, -1, -2, -3})) == 0);
  const BoolArray row = bool_array({3}, {false, true, false});
  CHECK(max_abs_diff(qkv::where(row, a, b).value(), array_of({2, 3}, {-1, 2, -3, -1, 5, -3})) == 0);
  // All three broadcast: condition [2, 1], a [1, 3], b [] -> [2, 3].
  const Array out = qkv::where(column, Variable(array_of({1, 3}, {7, 8, 9})), Variable(full({}, 0))).value();
  CHECK(max_abs_diff(out, array_of({2, 3}, {7, 8, 9, 0, 0, 0})) == 0);
  const real minus_inf = -std::numeric_limits<real>::infinity();
  const Array filled = masked_fill(a, row, minus_inf).value();
  CHECK(filled(0, 1) == minus_inf);
  CHECK(filled(1, 1) == minus_inf);
  CHECK(filled(1, 2) == 6);
}

TEST_CASE("masked_fill sends no gradient through the filled positions") {
  const Variable x(array_of({2, 2}, {1, 2, 3, 4}), true);
  backward_with(masked_fill(x, bool_array({2, 2}, {true, false, false, true}), 0), full({2, 2}, 1));
  CHECK(max_abs_diff(x.grad(), array_of({2, 2}, {0, 1, 1, 0})) == 0);
}

TEST_CASE("dropout: seeded masks, scaling, eval and the p edge cases") {
  const Array ones = full({50, 40}, 1);
  SUBCASE("the same seed gives the same mask; another seed another") {
    Rng first(42), second(42), other(43);
    const Array y1 = dropout(Variable(ones), 0.3, true, first).value();
    const Array y2 = dropout(Variable(ones), 0.3, true, second).value();
    const Array y3 = dropout(Variable(ones), 0.3, true, other).value();
    CHECK(max_abs_diff(y1, y2) == 0);
    CHECK(max_abs_diff(y1, y3) > 0);
    // Kept elements are scaled by 1/(1-p); about p of them are dropped.
    std::size_t dropped = 0;
    for (real v : y1) {
      CHECK((v == 0 || std::abs(v - 1 / 0.7) < 1e-15));
      dropped += v == 0;
    }
    CHECK(std::abs(double(dropped) / double(ones.size()) - 0.3) < 0.05);
  }
  SUBCASE("eval mode and p = 0 are the identity and draw nothing") {
    Rng rng(1), untouched(1);
    const Variable x(random_array({3, 4}, 2), true);
    CHECK(dropout(x, 0.5, false, rng).id() == x.id());
    CHECK(dropout(x, 0, true, rng).id() == x.id());
    CHECK(rng.next_u64() == untouched.next_u64());
  }
  SUBCASE("p = 1 gives zeros and zero gradients") {
    Rng rng(3);
    const Variable x(random_array({3, 4}, 4), true);
    const Variable y = dropout(x, 1, true, rng);
    CHECK(max_abs_diff(y.value(), zeros({3, 4})) == 0);
    backward_with(y, full({3, 4}, 1));
    CHECK(max_abs_diff(x.grad(), zeros({3, 4})) == 0);
  }
}

TEST_CASE("dropout: element i's decision is the documented hash of the one draw and i") {
  // kernels.hpp: element i keeps when its 32-bit uniform (the low half of SplitMix64's output
  // i / 2 for the drawn key when i is even, the high half when odd) is at least ceil(p · 2^32).
  for (const real p : {real(0.1), real(0.5), real(0.999)}) {
    CAPTURE(p);
    const std::size_t count = 10001;
    Rng rng(31), copy(31);
    const Array y = dropout(Variable(full({count}, 1)), p, true, rng).value();
    const std::uint64_t key = copy.next_u64();
    const auto threshold = static_cast<std::uint64_t>(std::ceil(double(p) * 0x1.0p32));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint64_t bits = splitmix64_mix(key + (i / 2) * splitmix64_increment);
      const std::uint64_t u = i % 2 == 0 ? (bits & 0xffffffffULL) : (bits >> 32);
      wrong += (u >= threshold) != (y(i) != 0);
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("dropout: both halves of a hash drop p, neighbours independently") {
  // dropout_forward decides elements 2j and 2j + 1 from the halves of one SplitMix64 output: each
  // position must drop p, and neighbours (same hash or not) must not agree more than chance.
  const std::size_t count = 1000003;  // odd: the last hash is used in part
  const Array ones = full({count}, 1);
  Rng rng(77);
  const real p = real(0.1);
  const Array y = dropout(Variable(ones), p, true, rng).value();
  double dropped[4] = {}, both_dropped[4] = {};
  for (std::size_t i = 0; i < count; ++i) {
    dropped[i % 4] += y(i) == 0;
    if (i + 1 < count) both_dropped[i % 4] += y(i) == 0 && y(i + 1) == 0;
  }
  for (std::size_t lane = 0; lane < 4; ++lane) {
    CAPTURE(lane);
    CHECK(std::abs(dropped[lane] / (count / 4.0) - 0.1) < 0.003);  // σ ≈ 0.0006
    CHECK(std::abs(both_dropped[lane] / (count / 4.0) - 0.01) < 0.001);  // σ ≈ 0.0002
  }
}

TEST_CASE("relu_dropout is dropout(relu(x)) bit for bit: values, mask, gradients, eval mode") {
  const Array x = random_array({7, 50}, 21, 2);
  const Array grad = random_array({7, 50}, 22);
  Rng fused_rng(5), composed_rng(5);
  const Variable fused_x(x, true), composed_x(x, true);
  const Variable fused = relu_dropout(fused_x, 0.3, true, fused_rng);
  const Variable composed = dropout(relu(composed_x), 0.3, true, composed_rng);
  CHECK(max_abs_diff(fused.value(), composed.value()) == 0);
  CHECK(fused_rng.next_u64() == composed_rng.next_u64());  // one draw each
  backward_with(fused, grad);
  backward_with(composed, grad);
  CHECK(max_abs_diff(fused_x.grad(), composed_x.grad()) == 0);
  // Both the mask and relu matter: some positive inputs are dropped, every negative one is 0.
  std::size_t dropped_positive = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x.data()[i] <= 0) CHECK(fused.value().data()[i] == 0);
    dropped_positive += x.data()[i] > 0 && fused.value().data()[i] == 0;
  }
  CHECK(dropped_positive > 0);
  Rng eval_rng(5);
  CHECK(max_abs_diff(relu_dropout(Variable(x), 0.3, false, eval_rng).value(), relu(Variable(x)).value()) == 0);
  CHECK_THROWS_AS(relu_dropout(Variable(x), 1.5, true, eval_rng), Error);
}

TEST_CASE("relu_dropout gradients (the same mask in every evaluation)") {
  const Array x = random_array({4, 9}, 23, 2);
  QKV_CHECK_GRADIENTS([](const auto& in) {
    Rng rng(9);
    return relu_dropout(in[0], 0.25, true, rng);
  }, {Variable(x)});
}

TEST_CASE("add_dropout is residual + dropout(x) bit for bit: values, mask, gradients, the unfused cases") {
  const Array r = random_array({7, 50}, 24), x = random_array({7, 50}, 25, 2), grad = random_array({7, 50}, 26);
  Rng fused_rng(6), composed_rng(6);
  const Variable fused_r(r, true), fused_x(x, true), composed_r(r, true), composed_x(x, true);
  const Variable fused = add_dropout(fused_r, fused_x, 0.3, true, fused_rng);
  const Variable composed = composed_r + dropout(composed_x, 0.3, true, composed_rng);
  CHECK(max_abs_diff(fused.value(), composed.value()) == 0);
  CHECK(fused_rng.next_u64() == composed_rng.next_u64());  // one draw each
  backward_with(fused, grad);
  backward_with(composed, grad);
  CHECK(max_abs_diff(fused_r.grad(), composed_r.grad()) == 0);
  CHECK(max_abs_diff(fused_x.grad(), composed_x.grad()) == 0);
  // The mask matters: some elements are the residual alone.
  std::size_t residual_only = 0;
  for (std::size_t i = 0; i < x.size(); ++i) residual_only += fused.value().data()[i] == r.data()[i];
  CHECK(residual_only > 0);
  // Eval, p = 1 and a residual that broadcasts are the two ops themselves.
  Rng a(7), b(7);
  CHECK(max_abs_diff(add_dropout(Variable(r), Variable(x), 0.3, false, a).value(), r + x) == 0);
  CHECK(max_abs_diff(add_dropout(Variable(r), Variable(x), 1, true, a).value(), r) == 0);
  const Array row = random_array({50}, 27);
  CHECK(max_abs_diff(add_dropout(Variable(row), Variable(x), 0.3, true, a).value(),
                     (Variable(row) + dropout(Variable(x), 0.3, true, b)).value()) == 0);
  CHECK_THROWS_AS(add_dropout(Variable(r), Variable(x), -0.5, true, a), Error);
}

TEST_CASE("add_dropout gradients (the same mask in every evaluation)") {
  QKV_CHECK_GRADIENTS([](const auto& in) {
    Rng rng(9);
    return add_dropout(in[0], in[1], 0.25, true, rng);
  }, {Variable(random_array({4, 9}, 28)), Variable(random_array({4, 9}, 29))});
}

// ---- gradients -------------------------------------------------------------------------------

TEST_CASE("softmax and log_softmax gradients on axis 0, 1 and -1") {
  const Array x = random_array({3, 4, 5}, 11, 2);
  for (long axis : {0L, 1L, -1L}) {
    CAPTURE(axis);
    QKV_CHECK_GRADIENTS([axis](const auto& in) { return softmax(in[0], axis); }, {Variable(x)});
    QKV_CHECK_GRADIENTS([axis](const auto& in) { return log_softmax(in[0], axis); }, {Variable(x)});
  }
}

TEST_CASE("cross_entropy gradients: label smoothing, ignored targets, a custom ignore_index") {
  const Array logits = random_array({2, 3, 5}, 12, 2);
  const IndexArray targets = {{4, -100, 0}, {2, 2, -100}};
  QKV_CHECK_GRADIENTS([&](const auto& in) { return cross_entropy(in[0], targets); }, {Variable(logits)});
  QKV_CHECK_GRADIENTS([&](const auto& in) { return cross_entropy(in[0], targets, {.label_smoothing = 0.1}); },
                      {Variable(logits)});
  const IndexArray with_class_ignored = {{4, 1, 0}, {2, 2, 3}};
  QKV_CHECK_GRADIENTS(
      [&](const auto& in) { return cross_entropy(in[0], with_class_ignored, {.ignore_index = 2, .label_smoothing = 0.25}); },
      {Variable(logits)});
  // Composed with a scale, so the upstream gradient is not 1.
  QKV_CHECK_GRADIENTS([&](const auto& in) { return cross_entropy(in[0] * in[1], targets); },
                      {Variable(logits), Variable(uniform_array({5}, 13, 0.5, 2))});
}

TEST_CASE("layer_norm gradients with and without affine parameters") {
  const Array x = random_array({2, 3, 6}, 14, 3);
  const Array weight = uniform_array({6}, 15, 0.5, 1.5);
  const Array bias = random_array({6}, 16);
  QKV_CHECK_GRADIENTS([](const auto& in) { return layer_norm(in[0], in[1], in[2]); },
                      {Variable(x), Variable(weight), Variable(bias)});
  QKV_CHECK_GRADIENTS([](const auto& in) { return layer_norm(in[0], Variable(), Variable()); }, {Variable(x)});
  QKV_CHECK_GRADIENTS([](const auto& in) { return layer_norm(in[0], in[1], Variable()); },
                      {Variable(x), Variable(weight)});
  QKV_CHECK_GRADIENTS([](const auto& in) { return layer_norm(in[0], Variable(), in[1]); },
                      {Variable(x), Variable(bias)});
}

TEST_CASE("embedding gradient with repeated indices") {
  const IndexArray indices = {{1, 4, 1}, {0, 1, 4}};
  QKV_CHECK_GRADIENTS([&](const auto& in) { return embedding(in[0], indices); }, {Variable(random_array({5, 3}, 17))});
}

TEST_CASE("embedding_padding: the identity, with no gradient through the padding positions") {
  const IndexArray indices = {{1, 2, 1}, {2, 0, 1}};
  const std::int64_t pad = 1;
  Array keep = zeros({2, 3, 1});  // 1 where the index is not the padding index
  for (std::size_t i = 0; i < indices.size(); ++i) keep.data()[i] = indices.data()[i] == pad ? 0 : 1;
  // With the padding positions multiplied away, their true derivative is 0 as well, so the
  // finite differences check how the op routes every other position's gradient.
  QKV_CHECK_GRADIENTS([&](const auto& in) { return embedding_padding(in[0], indices, pad) * Variable(keep); },
                      {Variable(random_array({2, 3, 4}, 23))});

  Variable rows(random_array({2, 3, 4}, 29), true);
  const Variable padded = embedding_padding(rows, indices, pad);  // [2, 3, 4]
  CHECK(max_abs_diff(padded.value(), rows.value()) == 0);
  sum(padded).backward();
  for (std::size_t i = 0; i < indices.size(); ++i)
    for (std::size_t j = 0; j < 4; ++j) CHECK(rows.grad().data()[i * 4 + j] == keep.data()[i]);
  // No position reads the padding index: the rows come back as they are.
  CHECK(embedding_padding(rows, indices, 3).id() == rows.id());
  CHECK_THROWS_WITH_AS(embedding_padding(rows, IndexArray{0, 1}, pad),
                       "embedding_padding: rows must be [..., D] for indices [...], got rows [2, 3, 4] and indices [2]",
                       ShapeError);
}

TEST_CASE("where and masked_fill gradients with broadcasting") {
  const BoolArray condition = bool_array({2, 1, 4}, {true, false, false, true, false, true, true, false});
  QKV_CHECK_GRADIENTS([&](const auto& in) { return qkv::where(condition, in[0], in[1]); },
                      {Variable(random_array({3, 4}, 18)), Variable(random_array({2, 3, 1}, 19))});
  QKV_CHECK_GRADIENTS([&](const auto& in) { return qkv::where(condition, in[0], in[0] * in[0]); },
                      {Variable(random_array({2, 3, 4}, 20))});
  const BoolArray row_mask = bool_array({4}, {false, true, true, false});
  QKV_CHECK_GRADIENTS([&](const auto& in) { return masked_fill(in[0], row_mask, -7); },
                      {Variable(random_array({2, 3, 4}, 21))});
}

TEST_CASE("dropout gradient in training mode with a fixed seed") {
  // A fresh generator with the same seed on every call: gradcheck re-evaluates the function
  // and needs the same mask each time.
  QKV_CHECK_GRADIENTS(
      [](const auto& in) {
        Rng rng(5);
        return dropout(in[0], 0.4, true, rng);
      },
      {Variable(random_array({4, 6}, 22))});
}

// ---- errors --------------------------------------------------------------------------------------

TEST_CASE("cross_entropy rejects bad targets and mismatched shapes") {
  const Variable logits(zeros({2, 3, 5}));
  CHECK_THROWS_WITH_AS(cross_entropy(logits, IndexArray{{0, 1, 5}, {0, 0, 0}}),
                       "cross_entropy: target 5 at [0, 2] of targets [2, 3] is out of range [0, 5) for logits "
                       "[2, 3, 5] (ignore_index is -100)",
                       Error);
  CHECK(error_message([&] { cross_entropy(logits, IndexArray{{0, 1, 2}, {-1, 0, 0}}); })
            .find("cross_entropy: target -1 at [1, 0]") == 0);
  // -100 is only ignored while it is the ignore_index.
  CHECK_THROWS_AS(cross_entropy(logits, IndexArray{{0, 1, -100}, {0, 0, 0}}, {.ignore_index = 4}), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, IndexArray{0, 1, 2}),
                       "cross_entropy: logits [2, 3, 5] do not match targets [3] (expected logits [..., C] and "
                       "targets [...] with the same leading dims)",
                       ShapeError);
  CHECK_THROWS_AS(cross_entropy(logits, IndexArray{{0, 1}, {0, 1}}), ShapeError);
  CHECK(error_message([&] { cross_entropy(logits, IndexArray{{0, 1, 2}, {0, 0, 0}}, {.label_smoothing = 1.5}); })
            .find("cross_entropy: label_smoothing must be in [0, 1], got 1.5") == 0);
}

TEST_CASE("embedding rejects bad indices and a weight that is not [V, D]") {
  const Variable weight(zeros({4, 3}));
  CHECK_THROWS_WITH_AS(embedding(weight, IndexArray{{0, 4}}),
                       "embedding: index 4 at [0, 1] of indices [1, 2] is out of range [0, 4) for weight [4, 3]", Error);
  CHECK(error_message([&] { embedding(weight, IndexArray{2, -1}); }).find("embedding: index -1 at [1]") == 0);
  CHECK_THROWS_WITH_AS(embedding(Variable(zeros({4})), IndexArray{0}), "embedding: weight must be [V, D], got [4]",
                       ShapeError);
}

TEST_CASE("softmax and log_softmax reject an axis out of range") {
  const Variable x(zeros({2, 3}));
  CHECK_THROWS_WITH_AS(softmax(x, 2), "softmax: axis 2 is out of range for shape [2, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(log_softmax(x, -3), "log_softmax: axis -3 is out of range for shape [2, 3]", ShapeError);
}

TEST_CASE("dropout rejects p outside [0, 1]") {
  Rng rng(0);
  const Variable x(zeros({2}));
  CHECK_THROWS_WITH_AS(dropout(x, -0.1, true, rng), "dropout: probability p must be in [0, 1], got -0.1", Error);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5, false, rng), "dropout: probability p must be in [0, 1], got 1.5", Error);
  CHECK_THROWS_AS(dropout(x, std::numeric_limits<real>::quiet_NaN(), true, rng), Error);
}

TEST_CASE("layer_norm rejects parameters that do not match the last dim") {
  const Variable x(zeros({2, 3, 4}));
  CHECK_THROWS_WITH_AS(layer_norm(x, Variable(zeros({3})), Variable()),
                       "layer_norm: weight [3] does not match the last dim of x [2, 3, 4] (expected [4])", ShapeError);
  CHECK_THROWS_WITH_AS(layer_norm(x, Variable(), Variable(zeros({4, 1}))),
                       "layer_norm: bias [4, 1] does not match the last dim of x [2, 3, 4] (expected [4])", ShapeError);
}

TEST_CASE("where and masked_fill reject shapes that do not broadcast") {
  const Variable a(zeros({2, 3})), b(zeros({3}));
  CHECK_THROWS_WITH_AS(qkv::where(BoolArray::from_shape({4}), a, b),
                       "where: cannot broadcast [4] with [2, 3] (dimension 1: 4 vs 3)", ShapeError);
  CHECK_THROWS_WITH_AS(masked_fill(a, BoolArray::from_shape({5, 2, 3}), 0),
                       "masked_fill: mask [5, 2, 3] does not broadcast to x [2, 3]", ShapeError);
  CHECK_THROWS_AS(masked_fill(a, BoolArray::from_shape({2}), 0), ShapeError);
}

TEST_CASE("add_column_sums and sum_of_squares: values, and the same bits on 1 and 2 threads") {
  const std::size_t rows = 300, cols = 70;
  const Array x = random_array({rows, cols}, 77);
  Array expected = xt::zeros<real>({cols});
  double squares = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      expected(c) += x(r, c);
      squares += double(x(r, c)) * double(x(r, c));
    }
  Array one = xt::ones<real>({cols});
  kernels::add_column_sums(x.data(), rows, cols, one.data());
  CHECK(max_abs_diff(one, Array(expected + 1.0)) < 1e-10);  // adds into what was there
  const double serial_squares = kernels::sum_of_squares(x.data(), x.size());
  CHECK(serial_squares == doctest::Approx(squares).epsilon(1e-12));
  // A big array, so that both split: the results must not depend on the thread count.
  const Array big = random_array({2000, 70}, 78);
  Array sums_1 = xt::zeros<real>({70}), sums_2 = xt::zeros<real>({70});
  kernels::add_column_sums(big.data(), 2000, 70, sums_1.data());
  const double squares_1 = kernels::sum_of_squares(big.data(), big.size());
  parallel::set_num_threads(2);
  kernels::add_column_sums(big.data(), 2000, 70, sums_2.data());
  const double squares_2 = kernels::sum_of_squares(big.data(), big.size());
  parallel::set_num_threads(1);
  CHECK(max_abs_diff(sums_1, sums_2) == 0);
  CHECK(squares_1 == squares_2);
}
