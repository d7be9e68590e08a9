#pragma once
// Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_.
#include <vector>

#include "autograd/gradcheck.hpp"
#include "autograd/variable.hpp"

namespace qkv {

/// Computes the L2 norm of all gradients together, as if concatenated into one vector, and
/// when it exceeds `max_norm` scales every gradient in place by max_norm / (norm + 1e-6)
/// (torch's rule: scaled exactly when that factor is below 1). Parameters without a gradient
/// are skipped. Returns the norm before clipping; the sum of squares is accumulated in double.
///
/// A non-finite norm (a NaN or infinite gradient) is returned as is and the gradients are left
/// untouched — scaling by NaN would silently erase the evidence. With `error_if_nonfinite`
/// it throws Error instead (torch's option of the same name); otherwise it logs a warning.
/// Check `std::isfinite` on the result to skip the step. Throws Error for max_norm <= 0.
double clip_grad_norm(const std::vector<Variable>& parameters, double max_norm, bool error_if_nonfinite = false);
/// The same over named parameters (`Module::named_parameters()`, `Optimizer::parameters()`).
double clip_grad_norm(const std::vector<NamedVariable>& parameters, double max_norm, bool error_if_nonfinite = false);

}  // namespace qkv
