// Numerical stability of the fused kernels in the float32 build that training uses: huge
// logits must not overflow exp(), and a batch whose targets are all padding must not give NaN.
#include <cmath>

#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

bool all_finite(const Array& a) {
  for (real v : a)
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

TEST_CASE("float32 softmax and log_softmax of logits around ±1e4 are finite and correct") {
  // Each row differs from its max by 0, -1, -2 (or is all equal), so the exact answers are
  // known in closed form; a naive exp(1e4) would be inf.
  const Variable x(array_of({3, 3}, {1e4f, 1e4f - 1, 1e4f - 2, -1e4f, -1e4f - 1, -1e4f - 2, 1e4f, 1e4f, 1e4f}));
  const double total = 1 + std::exp(-1.0) + std::exp(-2.0);
  const double log_total = std::log(total);
  const Array expected_log = array_of(
      {3, 3}, {real(-log_total), real(-1 - log_total), real(-2 - log_total), real(-log_total), real(-1 - log_total),
               real(-2 - log_total), real(-std::log(3.0)), real(-std::log(3.0)), real(-std::log(3.0))});
  const Array y = softmax(x, -1).value();
  const Array log_y = log_softmax(x, -1).value();
  CHECK(all_finite(y));
  CHECK(all_finite(log_y));
  Array expected = expected_log;
  for (real& v : expected) v = std::exp(v);
  CHECK(max_abs_diff(y, expected) < 1e-6);
  CHECK(max_abs_diff(log_y, expected_log) < 1e-5);
  // The same along axis 0 (the strided path).
  const Variable column(array_of({3, 1}, {-1e4f, -1e4f - 1, -1e4f - 2}));
  CHECK(max_abs_diff(log_softmax(column, 0).value(), array_of({3, 1}, {real(-log_total), real(-1 - log_total),
                                                                          real(-2 - log_total)})) < 1e-5);
  // Mixed signs: the max dominates completely.
  const Array mixed = softmax(Variable(array_of({1, 2}, {1e4f, -1e4f})), 1).value();
  CHECK(mixed(0, 0) == 1);
  CHECK(mixed(0, 1) == 0);
}

TEST_CASE("float32 softmax gradients stay finite for huge logits") {
  const Variable x(array_of({2, 3}, {1e4f, 0, -1e4f, 3e4f, 3e4f - 1, 3e4f - 2}), true);
  Variable y = log_softmax(x, 1);
  y.backward(full({2, 3}, 1));
  CHECK(all_finite(x.grad()));
}

TEST_CASE("float32 cross_entropy with every target ignored: loss 0 and zero gradients") {
  const Variable logits(random_array({4, 7}, 1), true);
  const IndexArray targets = {-100, -100, -100, -100};
  Variable loss = cross_entropy(logits, targets, {.label_smoothing = 0.1f});
  CHECK(loss.item() == 0);
  loss.backward();
  CHECK(max_abs_diff(logits.grad(), zeros({4, 7})) == 0);
}

TEST_CASE("float32 cross_entropy with huge logits is finite and correct") {
  // Row 0: the target has the largest logit by 1e4: the loss is ~e^-1e4 = 0.
  // Row 1: the target is 2e4 below the max: -log p = 2e4 exactly (to float precision).
  const Variable logits(array_of({2, 3}, {1e4f, 0, -1e4f, 1e4f, 0, -1e4f}), true);
  const IndexArray targets = {0, 2};
  Variable loss = cross_entropy(logits, targets, {.label_smoothing = 0.1f});
  CHECK(std::isfinite(loss.item()));
  // (1-ε)·nll + ε·mean_c(-log p_c) with -log p = [0, 1e4, 2e4] in each row.
  const double uniform_nll = (0 + 1e4 + 2e4) / 3;
  const double expected = (0.9 * 0 + 0.1 * uniform_nll + 0.9 * 2e4 + 0.1 * uniform_nll) / 2;
  CHECK(std::abs(loss.item() - expected) / expected < 1e-6);
  loss.backward();
  CHECK(all_finite(logits.grad()));
  // Row 1's gradient: softmax [1, 0, 0] minus the smoothed target [ε/3, ε/3, 1-ε+ε/3], halved.
  CHECK(std::abs(logits.grad()(1, 0) - (1 - 0.1 / 3) / 2) < 1e-6);
  CHECK(std::abs(logits.grad()(1, 2) - (0 - (0.9 + 0.1 / 3)) / 2) < 1e-6);
}
