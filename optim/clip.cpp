#include "optim/clip.hpp"

#include <cmath>

#include <spdlog/spdlog.h>

#include "lib/numerics/error.hpp"
#include "lib/numerics/kernels.hpp"
#include "lib/numerics/parallel.hpp"
#include "optim/optimizer.hpp"

namespace qkv {

double clip_grad_norm(const std::vector<Variable>& parameters, double max_norm, bool error_if_nonfinite) {
  check_arg(max_norm > 0, "clip_grad_norm", "max_norm must be > 0, got " + format_number(max_norm));
  double sum_of_squares = 0;
  for (const Variable& parameter : parameters)
    if (parameter.has_grad()) sum_of_squares += kernels::sum_of_squares(parameter.grad().data(), parameter.numel());
  const double norm = std::sqrt(sum_of_squares);
  if (!std::isfinite(norm)) {
    const std::string message = "clip_grad_norm: the total gradient norm is " + format_number(norm) +
                                "; gradients were left unscaled (a NaN or infinite loss or gradient?)";
    if (error_if_nonfinite) throw Error(message);
    spdlog::warn("{}", message);
    return norm;
  }
  const double clip_coefficient = max_norm / (norm + 1e-6);
  if (clip_coefficient >= 1) return norm;
  const real scale = static_cast<real>(clip_coefficient);
  for (Variable parameter : parameters) {
    if (!parameter.has_grad()) continue;
    real* gradient = parameter.grad_buffer().data();
    parallel::for_chunks(parameter.numel(), parallel::min_elements_per_chunk, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) gradient[i] *= scale;
    });
  }
  return norm;
}

double clip_grad_norm(const std::vector<NamedVariable>& parameters, double max_norm, bool error_if_nonfinite) {
  std::vector<Variable> variables;
  variables.reserve(parameters.size());
  for (const auto& [name, variable] : parameters) variables.push_back(variable);
  return clip_grad_norm(variables, max_norm, error_if_nonfinite);
}

}  // namespace qkv
