#include "optim/sgd.hpp"

#include <cmath>
#include <limits>

#include "lib/numerics/error.hpp"

namespace qkv {

namespace {
std::vector<std::string> sgd_slots(const SGDOptions& options) {
  if (options.momentum != 0) return {"momentum_buffer"};
  return {};
}
}  // namespace

SGD::SGD(std::vector<NamedVariable> parameters, const SGDOptions& options)
    : Optimizer("SGD", std::move(parameters), std::isnan(options.lr) ? 0.0 : options.lr, sgd_slots(options)),
      options_(options) {
  constexpr double unbounded = std::numeric_limits<double>::infinity();
  check_arg(!std::isnan(options.lr), "SGD", "lr must be given (torch.optim.SGD has no default either)");
  check_range("SGD", "momentum", options.momentum, 0, unbounded);
  check_range("SGD", "dampening", options.dampening, 0, 1, true);
  check_range("SGD", "weight_decay", options.weight_decay, 0, unbounded);
  check_arg(!options.nesterov || (options.momentum > 0 && options.dampening == 0), "SGD",
            "nesterov requires momentum > 0 and dampening = 0, got momentum " + format_number(options.momentum) +
                " and dampening " + format_number(options.dampening));
}

void SGD::update(std::size_t index, Variable& parameter, std::int64_t updates) {
  const real lr = static_cast<real>(learning_rate() * lr_multiplier(index));
  const real weight_decay = static_cast<real>(options_.weight_decay * weight_decay_multiplier(index));
  const real momentum = static_cast<real>(options_.momentum);
  const real keep_gradient = static_cast<real>(1 - options_.dampening);
  const bool use_momentum = options_.momentum != 0;
  const bool first_update = updates == 1;
  const bool nesterov = options_.nesterov;

  real* value = parameter.mutable_value().data();
  const real* gradient = parameter.grad().data();
  real* buffer = use_momentum ? slot(index, 0).data() : nullptr;
  for (std::size_t i = 0, size = parameter.numel(); i < size; ++i) {
    real direction = gradient[i];
    // Skipped when zero so that an infinite weight does not turn into NaN through 0 · inf.
    if (weight_decay != 0) direction += weight_decay * value[i];
    if (use_momentum) {
      buffer[i] = first_update ? direction : momentum * buffer[i] + keep_gradient * direction;
      direction = nesterov ? direction + momentum * buffer[i] : buffer[i];
    }
    value[i] -= lr * direction;
  }
}

}  // namespace qkv
