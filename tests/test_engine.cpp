// The engine itself: accumulation, no-grad, detach, graph release, deep graphs, custom ops.
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {
/// The sum of a row [1, N] as a [1, 1] matrix, built only from matmul, for engine tests that
/// should not depend on the reduction ops.
Variable total(const Variable& x) {
  REQUIRE(x.rank() == 2);
  REQUIRE(x.dim(0) == 1);  // a row [1, N]
  return matmul(x, Variable(full({x.numel(), 1}, 1)));
}
}  // namespace

TEST_CASE("a variable used twice receives the sum of both gradients") {
  Variable x(array_of({1, 3}, {1, 2, 3}), true);
  Variable y = x * x + x;  // dy/dx = 2x + 1
  y.backward(full({1, 3}, 1));
  CHECK(max_abs_diff(x.grad(), array_of({1, 3}, {3, 5, 7})) == 0);
  // Gradients accumulate across backward calls until zeroed.
  Variable z = x * 2.0;
  z.backward(full({1, 3}, 1));
  CHECK(max_abs_diff(x.grad(), array_of({1, 3}, {5, 7, 9})) == 0);
  x.zero_grad();
  CHECK(max_abs_diff(x.grad(), zeros({1, 3})) == 0);
}

TEST_CASE("gradients are allocated lazily and only where needed") {
  Variable a(array_of({2}, {1, 2}), true);
  Variable constant(array_of({2}, {3, 4}));
  CHECK_FALSE(a.has_grad());
  Variable y = a * constant;
  CHECK_FALSE(a.has_grad());
  y.backward(full({2}, 1));
  CHECK(a.has_grad());
  CHECK_FALSE(constant.has_grad());
  CHECK_THROWS_AS(constant.grad(), Error);
  // Intermediate gradients are freed unless retained.
  Variable b(array_of({2}, {1, 2}), true);
  Variable hidden = b * 3.0;
  Variable kept = (b * 2.0).retain_grad();
  (hidden + kept).backward(full({2}, 1));
  CHECK(max_abs_diff(kept.grad(), full({2}, 1)) == 0);
  CHECK_FALSE(hidden.has_grad());
}

TEST_CASE("no-grad guard records no graph, detach cuts history") {
  Variable x(array_of({2}, {1, 2}), true);
  {
    NoGradGuard no_grad;
    CHECK_FALSE(is_grad_enabled());
    Variable y = x * x;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    CHECK(max_abs_diff(y.value(), array_of({2}, {1, 4})) == 0);
  }
  CHECK(is_grad_enabled());
  Variable d = (x * 3.0).detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  Variable y = x * d;  // d is a constant here
  y.backward(full({2}, 1));
  CHECK(max_abs_diff(x.grad(), array_of({2}, {3, 6})) == 0);
}

TEST_CASE("backward on something that needs no gradient is a clear error") {
  Variable x(array_of({2}, {1, 2}));
  CHECK_THROWS_WITH_AS((x * 2.0).backward(full({2}, 1)), doctest::Contains("does not require a gradient"), Error);
  Variable p(array_of({2}, {1, 2}), true);
  CHECK_THROWS_WITH_AS((p * 2.0).backward(), doctest::Contains("must have one element, got shape [2]"), ShapeError);
  CHECK_THROWS_AS((p * 2.0).backward(full({3}, 1)), ShapeError);
  CHECK_THROWS_AS(Variable().value(), Error);
}

TEST_CASE("a chain of 10,000 ops backpropagates and is destroyed without recursion") {
  const std::size_t baseline = live_node_count();
  {
    Variable h(array_of({1, 4}, {0.1, -0.2, 0.3, 0.05}), true);
    Variable w(full({4, 4}, 0.1), true);
    Variable state = h;
    // A long unrolled RNN: state = tanh(state W + state), 10,000 steps deep (20,000 nodes).
    for (int step = 0; step < 10000; ++step) state = tanh(matmul(state, w) + state);
    CHECK(live_node_count() - baseline > 20000);
    total(state).backward();
    CHECK(w.has_grad());
    CHECK(h.has_grad());
    for (real g : w.grad()) CHECK(std::isfinite(g));
  }
  CHECK(live_node_count() == baseline);
  {
    // Destroying a deep graph that was never differentiated must not recurse either.
    Variable x(full({1}, 0.5), true);
    Variable y = x;
    for (int step = 0; step < 100000; ++step) y = y * 1.0;
  }
  CHECK(live_node_count() == baseline);
}

TEST_CASE("memory stays flat over 1,000 training steps: the graph is released by backward") {
  Rng rng(7);
  Variable w(normal({3, 1}, 0, 1, rng), true);
  Variable x(normal({8, 3}, 0, 1, rng));
  Variable target(normal({8, 1}, 0, 1, rng));
  const std::size_t nodes_before = live_node_count();
  real first_loss = 0, last_loss = 0;
  for (int step = 0; step < 1000; ++step) {
    Variable error = matmul(x, w) - target;                         // [8, 1]
    Variable loss = matmul(error, error, Trans::Yes, Trans::No);    // [1, 1] = eᵀe
    if (step == 0) first_loss = loss.item();
    last_loss = loss.item();
    w.zero_grad();
    loss.backward();
    {
      NoGradGuard no_grad;
      Array& value = w.mutable_value();
      for (std::size_t i = 0; i < value.size(); ++i) value.data()[i] -= real(0.01) * w.grad().data()[i];
    }
    // Only the two named results are still alive; the unnamed matmul(x, w) node behind them
    // was released by backward, so nothing grows from step to step.
    CHECK(live_node_count() == nodes_before + 2);
  }
  CHECK(last_loss < first_loss);
}

TEST_CASE("retain_graph allows a second backward") {
  Variable x(array_of({2}, {1, 2}), true);
  Variable y = x * x;
  y.backward(full({2}, 1), /*retain_graph=*/true);
  y.backward(full({2}, 1));
  CHECK(max_abs_diff(x.grad(), array_of({2}, {4, 8})) == 0);
}

TEST_CASE("set_requires_grad only on leaves") {
  Variable x(array_of({2}, {1, 2}), true);
  Variable y = x * 2.0;
  CHECK_THROWS_WITH_AS(y.set_requires_grad(false), doctest::Contains("only leaves"), Error);
  CHECK(y.op_name() == "mul_scalar");
}

TEST_CASE("after zero_grad every way of writing a gradient starts from zero") {
  // zero_grad only marks the gradient zero; each path that writes it must honour the mark.
  const Array x_value = random_array({3, 4}, 91), w_value = random_array({5, 4}, 92);
  Variable x(x_value, true), w(w_value, true);
  const auto backward_once = [&] {
    Variable y = linear(x, w, Variable());  // dW written with beta 0 when fresh
    (sum(y * y) + sum(relu(x))).backward();  // x gets linear's dx and relu's
  };
  backward_once();
  const Array first_x = x.grad(), first_w = w.grad();
  backward_once();
  CHECK(max_abs_diff(x.grad(), Array(2 * first_x)) < 1e-12);  // without zero_grad they add up
  x.zero_grad();
  w.zero_grad();
  CHECK(x.has_grad());
  CHECK(max_abs_diff(x.grad(), zeros({3, 4})) == 0);  // reads as zeros
  w.zero_grad();
  backward_once();
  CHECK(max_abs_diff(x.grad(), first_x) < 1e-12);
  CHECK(max_abs_diff(w.grad(), first_w) < 1e-12);
  // add_grad onto a zeroed gradient gives the added gradient.
  w.zero_grad();
  w.add_grad(w_value);
  CHECK(max_abs_diff(w.grad(), w_value) == 0);
  w.zero_grad();
  w.grad_buffer()(0, 0) += 1;  // the accumulate path sees zeros
  CHECK(w.grad()(0, 0) == 1);
  CHECK(w.grad()(4, 3) == 0);
}
