#include "optim/adam.hpp"

#include <cmath>
#include <limits>

#include "lib/numerics/parallel.hpp"
#include "lib/numerics/simd.hpp"

namespace qkv {

namespace {

const std::vector<std::string> adam_slots = {"exp_avg", "exp_avg_sq"};

/// Everything Adam and AdamW share: the hyperparameters one update needs.
struct AdamStep {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool decoupled;  // AdamW
};

/// The per-element constants of one Adam update.
struct AdamScalars {
  real step_size, bias_correction2_sqrt, beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
  real l2;            // Adam's L2 penalty folded into the gradient (0: none)
  real decay_factor;  // AdamW's decoupled decay (1: none)
};

QKV_SIMD_CLONES void adam_chunk(const AdamScalars& s, std::size_t begin, std::size_t end, real* value,
                                const real* gradient, real* m, real* v) {
  for (std::size_t i = begin; i < end; ++i) {
    if (s.decay_factor != 1) value[i] *= s.decay_factor;
    real g = gradient[i];
    if (s.l2 != 0) g += s.l2 * value[i];
    m[i] = m[i] * s.beta1 + s.one_minus_beta1 * g;
    v[i] = v[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    const real denominator = std::sqrt(v[i]) / s.bias_correction2_sqrt + s.eps;
    value[i] += -s.step_size * (m[i] / denominator);
  }
}

/// One fused pass over a parameter: decay, both moment updates and the parameter update, in
/// torch's order of operations (so float64 results agree to rounding).
void adam_update(const AdamStep& step, std::int64_t updates, Variable& parameter, Array& exp_avg, Array& exp_avg_sq) {
  // Scalars in double, as torch computes them in Python floats.
  const double bias_correction1 = 1 - std::pow(step.beta1, static_cast<double>(updates));
  const double bias_correction2 = 1 - std::pow(step.beta2, static_cast<double>(updates));
  const real step_size = static_cast<real>(step.lr / bias_correction1);
  const real bias_correction2_sqrt = static_cast<real>(std::sqrt(bias_correction2));
  const real beta1 = static_cast<real>(step.beta1);
  const real beta2 = static_cast<real>(step.beta2);
  const real one_minus_beta1 = static_cast<real>(1 - step.beta1);
  const real one_minus_beta2 = static_cast<real>(1 - step.beta2);
  const real eps = static_cast<real>(step.eps);
  const real l2 = step.decoupled ? 0 : static_cast<real>(step.weight_decay);
  const real decay_factor = static_cast<real>(1 - step.lr * step.weight_decay);
  const bool decay_weights = step.decoupled && step.weight_decay != 0;

  const AdamScalars scalars{step_size, bias_correction2_sqrt, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, l2,
                            decay_weights ? decay_factor : real(1)};
  real* value = parameter.mutable_value().data();
  const real* gradient = parameter.grad().data();
  real* m = exp_avg.data();
  real* v = exp_avg_sq.data();
  // Elementwise, so the elements can be shared out among threads without changing a bit.
  parallel::for_chunks(parameter.numel(), parallel::min_elements_per_chunk, [&](std::size_t begin, std::size_t end) {
    adam_chunk(scalars, begin, end, value, gradient, m, v);
  });
}

/// The checks Adam and AdamW share.
template <class Options>
void check_adam_options(const std::string& optimizer, const Options& options) {
  constexpr double unbounded = std::numeric_limits<double>::infinity();
  check_range(optimizer, "beta1", options.betas.first, 0, 1);
  check_range(optimizer, "beta2", options.betas.second, 0, 1);
  check_range(optimizer, "eps", options.eps, 0, unbounded);
  check_range(optimizer, "weight_decay", options.weight_decay, 0, unbounded);
}

}  // namespace

Adam::Adam(std::vector<NamedVariable> parameters, const AdamOptions& options)
    : Optimizer("Adam", std::move(parameters), options.lr, adam_slots), options_(options) {
  check_adam_options(name(), options_);
}

void Adam::update(std::size_t index, Variable& parameter, std::int64_t updates) {
  const AdamStep step{learning_rate() * lr_multiplier(index), options_.betas.first, options_.betas.second,
                      options_.eps, options_.weight_decay * weight_decay_multiplier(index), false};
  adam_update(step, updates, parameter, slot(index, 0), slot(index, 1));
}

AdamW::AdamW(std::vector<NamedVariable> parameters, const AdamWOptions& options)
    : Optimizer("AdamW", std::move(parameters), options.lr, adam_slots), options_(options) {
  check_adam_options(name(), options_);
}

void AdamW::update(std::size_t index, Variable& parameter, std::int64_t updates) {
  const AdamStep step{learning_rate() * lr_multiplier(index), options_.betas.first, options_.betas.second,
                      options_.eps, options_.weight_decay * weight_decay_multiplier(index), true};
  adam_update(step, updates, parameter, slot(index, 0), slot(index, 1));
}

}  // namespace qkv
