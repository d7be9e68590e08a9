// The public gradient checker and the custom-op API it is meant to vet.
#include <cmath>

#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// y = x³ as a user-defined op. With `wrong_gradient` the backward returns 2x instead of 3x²,
/// the kind of slip gradcheck exists to catch.
Variable cube(const Variable& x, bool wrong_gradient = false) {
  Array y = x.value();
  for (auto& v : y) v = v * v * v;
  return make_op("cube", std::move(y), {x},
                 [wrong_gradient](const Array& grad_out, const Array&, std::span<Variable> inputs) {
                   if (!inputs[0].requires_grad()) return;
                   const Array& x = inputs[0].value();
                   Array& dx = inputs[0].grad_buffer();
                   for (std::size_t i = 0; i < x.size(); ++i) {
                     const real local = wrong_gradient ? 2 * x.data()[i] : 3 * x.data()[i] * x.data()[i];
                     dx.data()[i] += grad_out.data()[i] * local;
                   }
                 });
}

/// y = x · w with a slip in w's gradient only (it forgets the upstream gradient's sign).
Variable scale_by(const Variable& x, const Variable& w) {
  Array y = x.value() * w.value();
  return make_op("scale_by", std::move(y), {x, w},
                 [](const Array& g, const Array&, std::span<Variable> in) {
                   if (in[0].requires_grad()) in[0].add_grad(Array(g * in[1].value()));
                   if (in[1].requires_grad()) in[1].add_grad(Array(xt::abs(g) * in[0].value()));
                 });
}

}  // namespace

TEST_CASE("a correct custom op passes and composes with built-in ops") {
  const Array x = random_array({3, 4}, 11);
  QKV_CHECK_GRADIENTS([](const auto& in) { return tanh(cube(in[0])) * in[0]; }, {Variable(x)});
  Variable v(array_of({2}, {1, -2}), true);
  Variable y = cube(v) + v;
  CHECK(y.op_name() == "add");
  y.backward(full({2}, 1));
  CHECK(max_abs_diff(v.grad(), array_of({2}, {4, 13})) < 1e-12);
}

TEST_CASE("gradcheck rejects a wrong backward and names the tensor") {
  const Array x = random_array({2, 3}, 12);
  const GradcheckResult result = gradcheck([](const auto& in) { return cube(in[0], true); }, {Variable(x)});
  CHECK_FALSE(result.passed);
  CHECK(result.failed > 0);
  CHECK(result.worst.tensor == "input[0]");
  const std::string report = result.report();
  INFO(report);
  CHECK(report.find("gradcheck FAILED") != std::string::npos);
  CHECK(report.find("input[0] at [") != std::string::npos);
  CHECK(report.find("analytic") != std::string::npos);
  CHECK(report.find("numeric") != std::string::npos);
  // The report stays short: verdict, worst, at most five failures, one line per tensor.
  CHECK(std::count(report.begin(), report.end(), '\n') <= 9);
  // The entries are derivatives of s = Σ y ⊙ R, so for this elementwise op each is R_i times
  // the local derivative: analytic / numeric = 2x / 3x².
  const Shape& index = result.worst.index;
  const double v = x(index[0], index[1]);
  CHECK(result.worst.analytic / result.worst.numeric == doctest::Approx(2 / (3 * v)).epsilon(1e-6));
}

TEST_CASE("gradcheck names a wrong parameter gradient by its name, in both modes") {
  const Array x = uniform_array({4}, 13, 0.5, 1.5);
  Variable weight(uniform_array({4}, 14, 0.5, 1.5));
  auto function = [&](const std::vector<Variable>& in) { return scale_by(in[0], weight); };
  for (bool fast : {false, true}) {
    CAPTURE(fast);
    GradcheckOptions options;
    options.fast_mode = fast;
    const GradcheckResult result = gradcheck(function, {Variable(x)}, {{"attn.weight", weight}}, options);
    INFO(result.report());
    CHECK_FALSE(result.passed);
    REQUIRE(result.tensors.size() == 2);
    CHECK(result.tensors[0].name == "input[0]");
    CHECK(result.tensors[0].failed == 0);
    CHECK(result.tensors[1].name == "attn.weight");
    CHECK(result.tensors[1].failed > 0);
    CHECK(result.worst.tensor.find("attn.weight") == 0);
  }
}

TEST_CASE("gradcheck samples large tensors and checks small ones whole") {
  const Array big = random_array({50, 100}, 15);
  const Array small = random_array({3, 3}, 16);
  GradcheckOptions options;
  options.max_elements_per_tensor = 64;
  const GradcheckResult result =
      gradcheck([](const auto& in) { return in[0] * 2.0; }, {Variable(big)}, {{"small", Variable(small)}}, options);
  // `small` is unused by the function: its analytic gradient is zero and so is the numeric one.
  INFO(result.report());
  CHECK(result.passed);
  CHECK(result.tensors[0].checked == 64);
  CHECK(result.tensors[1].checked == 9);
  // A different seed samples different elements, the same seed the same ones.
  options.seed = 1;
  const GradcheckResult again = gradcheck([](const auto& in) { return cube(in[0], true); }, {Variable(big)}, options);
  const GradcheckResult same = gradcheck([](const auto& in) { return cube(in[0], true); }, {Variable(big)}, options);
  CHECK(again.worst.index == same.worst.index);
}

TEST_CASE("gradcheck fast mode passes correct ops") {
  GradcheckOptions options;
  options.fast_mode = true;
  const Array a = random_array({4, 5}, 17), b = random_array({5, 3}, 18);
  const GradcheckResult result =
      gradcheck([](const auto& in) { return tanh(matmul(in[0], in[1])); }, {Variable(a), Variable(b)}, options);
  INFO(result.report());
  CHECK(result.passed);
  CHECK(result.checked == 2);
}

TEST_CASE("gradcheck refuses non-leaf inputs and outputs that ignore every input") {
  Variable p(random_array({2}, 19), true);
  Variable derived = p * 2.0;
  CHECK_THROWS_WITH_AS(gradcheck([](const auto& in) { return in[0]; }, {derived}),
                       doctest::Contains("must be a leaf"), Error);
  CHECK_THROWS_WITH_AS(gradcheck([](const auto&) { return Variable(zeros({2})); }, {Variable(zeros({2}))}),
                       doctest::Contains("does not depend"), Error);
}
