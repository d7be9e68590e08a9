// Elementwise ops. Binary ones broadcast; their backward sums each input's gradient back to
// that input's shape (add_reduced_to).
#include <cmath>
#include <numbers>

#include "autograd/ops.hpp"
#include "lib/numerics/broadcast.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/vector_math.hpp"

namespace qkv {

namespace {

/// Adds `gradient` (the output's shape) into `input`'s gradient, reduced to its shape.
void accumulate_reduced(Variable& input, const Array& gradient) {
  if (!input.requires_grad()) return;
  // Same shape: add_grad copies into a fresh buffer instead of zero-filling and adding.
  if (gradient.shape() == input.value().shape()) input.add_grad(gradient);
  else add_reduced_to(gradient, input.shape(), input.grad_buffer());
}

/// An op y = f(x) whose derivative is written from x and y: dy/dx = derivative(x, y).
template <class Forward, class Derivative>
Variable unary(const char* name, const Variable& x, Forward forward, Derivative derivative) {
  const Array& in = x.value();
  Array out = Array::from_shape(in.shape());
  const real* px = in.data();
  real* py = out.data();
  parallel::for_chunks(in.size(), parallel::min_elements_per_chunk, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) py[i] = forward(px[i]);
  });
  return make_op(name, std::move(out), {x},
                 [derivative](const Array& g, const Array& y, std::span<Variable> inputs) {
                   // Distinct buffers (restrict) so that the loop vectorises.
                   const real* __restrict px = inputs[0].value().data();
                   const real* __restrict py = y.data();
                   const real* __restrict pg = g.data();
                   const GradientOut dx = inputs[0].gradient_out();
                   real* __restrict pd = dx.data;
                   parallel::for_chunks(g.size(), parallel::min_elements_per_chunk, [&](std::size_t begin, std::size_t end) {
                     if (dx.accumulate)
                       for (std::size_t i = begin; i < end; ++i) pd[i] += pg[i] * derivative(px[i], py[i]);
                     else  // a fresh buffer: write, no zero-fill first
                       for (std::size_t i = begin; i < end; ++i) pd[i] = pg[i] * derivative(px[i], py[i]);
                   });
                 });
}

}  // namespace

Variable add(const Variable& a, const Variable& b) {
  return make_op("add", broadcast_map("add", a.value(), b.value(), std::plus<real>()), {a, b},
                 [](const Array& g, const Array&, std::span<Variable> in) {
                   accumulate_reduced(in[0], g);
                   accumulate_reduced(in[1], g);
                 });
}

Variable sub(const Variable& a, const Variable& b) {
  return make_op("sub", broadcast_map("sub", a.value(), b.value(), std::minus<real>()), {a, b},
                 [](const Array& g, const Array&, std::span<Variable> in) {
                   accumulate_reduced(in[0], g);
                   if (in[1].requires_grad()) {
                     Array negated = -g;
                     accumulate_reduced(in[1], negated);
                   }
                 });
}

Variable mul(const Variable& a, const Variable& b) {
  return make_op("mul", broadcast_map("mul", a.value(), b.value(), std::multiplies<real>()), {a, b},
                 [](const Array& g, const Array&, std::span<Variable> in) {
                   // d(a*b)/da = b, d(a*b)/db = a, each broadcast to the output's shape first.
                   if (in[0].requires_grad()) accumulate_reduced(in[0], broadcast_map("mul", g, in[1].value(), std::multiplies<real>()));
                   if (in[1].requires_grad()) accumulate_reduced(in[1], broadcast_map("mul", g, in[0].value(), std::multiplies<real>()));
                 });
}

Variable div(const Variable& a, const Variable& b) {
  return make_op("div", broadcast_map("div", a.value(), b.value(), std::divides<real>()), {a, b},
                 [](const Array& g, const Array& y, std::span<Variable> in) {
                   const Array g_over_b = broadcast_map("div", g, in[1].value(), std::divides<real>());
                   accumulate_reduced(in[0], g_over_b);
                   // d(a/b)/db = -a/b² = -y/b.
                   if (in[1].requires_grad())
                     accumulate_reduced(in[1], broadcast_map("div", g_over_b, y, [](real gb, real yv) { return -gb * yv; }));
                 });
}

Variable neg(const Variable& x) {
  return unary("neg", x, [](real v) { return -v; }, [](real, real) { return real(-1); });
}

Variable pow(const Variable& x, real exponent) {
  return unary("pow", x, [exponent](real v) { return std::pow(v, exponent); },
               [exponent](real v, real) { return exponent * std::pow(v, exponent - 1); });
}

Variable pow(const Variable& x, const Variable& y) {
  return make_op("pow", broadcast_map("pow", x.value(), y.value(), [](real a, real b) { return std::pow(a, b); }),
                 {x, y}, [](const Array& g, const Array& out, std::span<Variable> in) {
                   if (in[0].requires_grad()) {
                     // d(x^y)/dx = y x^(y-1)
                     Array dx = broadcast_map("pow", in[0].value(), in[1].value(),
                                              [](real a, real b) { return b * std::pow(a, b - 1); });
                     accumulate_reduced(in[0], broadcast_map("pow", g, dx, std::multiplies<real>()));
                   }
                   if (in[1].requires_grad()) {
                     // d(x^y)/dy = x^y log x
                     Array log_x = broadcast_map("pow", in[0].value(), out, [](real a, real) { return std::log(a); });
                     Array dy = broadcast_map("pow", out, log_x, std::multiplies<real>());
                     accumulate_reduced(in[1], broadcast_map("pow", g, dy, std::multiplies<real>()));
                   }
                 });
}

Variable add_scalar(const Variable& x, real value) {
  return unary("add_scalar", x, [value](real v) { return v + value; }, [](real, real) { return real(1); });
}

Variable mul_scalar(const Variable& x, real value) {
  return unary("mul_scalar", x, [value](real v) { return v * value; }, [value](real, real) { return value; });
}

Variable sqrt(const Variable& x) {
  return unary("sqrt", x, [](real v) { return std::sqrt(v); }, [](real, real y) { return real(0.5) / y; });
}

Variable exp(const Variable& x) {
  return unary("exp", x, [](real v) { return std::exp(v); }, [](real, real y) { return y; });
}

Variable log(const Variable& x) {
  return unary("log", x, [](real v) { return std::log(v); }, [](real v, real) { return real(1) / v; });
}

Variable tanh(const Variable& x) {
  return unary("tanh", x, [](real v) { return vector_math::tanh_of(v); }, [](real, real y) { return real(1) - y * y; });
}

Variable sigmoid(const Variable& x) {
  return unary("sigmoid", x, [](real v) { return vector_math::sigmoid_of(v); },
               [](real, real y) { return y * (real(1) - y); });
}

Variable relu(const Variable& x) {
  return unary("relu", x, [](real v) { return v > 0 ? v : real(0); },
               [](real v, real) { return static_cast<real>(v > 0); });
}

Variable gelu(const Variable& x) {
  constexpr real inv_sqrt2 = real(1) / std::numbers::sqrt2_v<real>;
  constexpr real inv_sqrt_2pi = real(0.5) * std::numbers::inv_sqrtpi_v<real> * std::numbers::sqrt2_v<real>;
  return unary(
      "gelu", x, [](real v) { return real(0.5) * v * (real(1) + std::erf(v * inv_sqrt2)); },
      [](real v, real) {
        // d/dv [v Phi(v)] = Phi(v) + v phi(v)
        const real cdf = real(0.5) * (real(1) + std::erf(v * inv_sqrt2));
        const real pdf = inv_sqrt_2pi * std::exp(real(-0.5) * v * v);
        return cdf + v * pdf;
      });
}

Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }
Variable operator-(const Variable& x) { return neg(x); }
Variable operator+(const Variable& x, real value) { return add_scalar(x, value); }
Variable operator+(real value, const Variable& x) { return add_scalar(x, value); }
Variable operator-(const Variable& x, real value) { return add_scalar(x, -value); }
Variable operator-(real value, const Variable& x) { return add_scalar(neg(x), value); }
Variable operator*(const Variable& x, real value) { return mul_scalar(x, value); }
Variable operator*(real value, const Variable& x) { return mul_scalar(x, value); }
Variable operator/(const Variable& x, real value) { return mul_scalar(x, real(1) / value); }

}  // namespace qkv
