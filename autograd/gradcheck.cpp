#include "autograd/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

namespace {

constexpr std::size_t max_reported_failures = 5;

/// s = Σ y ⊙ R, computed without recording a graph.
double projected_output(const GradcheckFunction& function, const std::vector<Variable>& inputs,
                        const Array& projection) {
  NoGradGuard no_grad;
  const Variable output = function(inputs);
  const Array& y = output.value();
  double total = 0;
  for (std::size_t i = 0; i < y.size(); ++i) total += double(y.data()[i]) * double(projection.data()[i]);
  return total;
}

std::vector<std::size_t> elements_to_check(std::size_t count, std::size_t limit, Rng& rng) {
  std::vector<std::size_t> all(count);
  std::iota(all.begin(), all.end(), 0);
  if (count <= limit) return all;
  // Partial Fisher-Yates: a seeded sample without repeats, then in index order for the report.
  for (std::size_t i = 0; i < limit; ++i) std::swap(all[i], all[i + rng.below(count - i)]);
  all.resize(limit);
  std::sort(all.begin(), all.end());
  return all;
}

std::string format_double(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6e", value);
  return buffer;
}

std::string describe(const GradcheckEntry& e) {
  std::string where = e.tensor + (e.index.empty() ? "" : " at " + to_string(e.index));
  return where + ": analytic " + format_double(e.analytic) + ", numeric " + format_double(e.numeric) +
         ", abs error " + format_double(e.abs_error) + ", rel error " + format_double(e.rel_error);
}

}  // namespace

std::string GradcheckResult::report() const {
  std::string text = passed ? "gradcheck passed: " : "gradcheck FAILED: ";
  text += std::to_string(failed) + " of " + std::to_string(checked) + " values outside atol " +
          format_double(options.atol) + " + rtol " + format_double(options.rtol) + " * |numeric|" +
          (options.fast_mode ? " (fast mode: one random direction per tensor)" : "") + "\n" +
          "  values are derivatives of s = sum(output * R) for a fixed random R of the output's shape\n";
  if (checked > 0) text += "  worst: " + describe(worst) + "\n";
  for (const auto& failure : failures) text += "  failed: " + describe(failure) + "\n";
  for (const auto& t : tensors)
    text += "  " + t.name + " " + to_string(t.shape) + ": " + std::to_string(t.checked) + " checked, " +
            std::to_string(t.failed) + " failed, worst rel error " + format_double(t.worst_rel_error) + "\n";
  if (std::string(real_name) != "float64")
    text += "  note: this is a float32 build; gradient checks need the float64 (_f64) targets\n";
  return text;
}

GradcheckResult gradcheck(const GradcheckFunction& function, std::vector<Variable> inputs,
                          const GradcheckOptions& options) {
  return gradcheck(function, std::move(inputs), {}, options);
}

GradcheckResult gradcheck(const GradcheckFunction& function, std::vector<Variable> inputs,
                          std::vector<NamedVariable> parameters, const GradcheckOptions& options) {
  // Everything checked, inputs first, each with a name for the report.
  std::vector<NamedVariable> checked = std::move(parameters);
  for (std::size_t i = inputs.size(); i-- > 0;)
    checked.insert(checked.begin(), {"input[" + std::to_string(i) + "]", inputs[i]});
  for (auto& entry : checked) {
    // Named references, not a structured binding: clang 14 (the fuzz build) cannot capture one.
    const std::string& name = entry.first;
    Variable& variable = entry.second;
    check_arg(variable.defined(), "gradcheck", [&] { return name + " is undefined"; });
    check_arg(variable.is_leaf(), "gradcheck",
              [&] { return name + " must be a leaf (it is the result of '" + variable.op_name() + "')"; });
    variable.set_requires_grad(true);
    variable.zero_grad();
  }

  // Analytic side: one backward pass seeded with R gives ds/dx for every tensor at once.
  Rng rng(options.seed);
  Array projection;
  {
    Variable output = function(inputs);
    check_arg(output.requires_grad(), "gradcheck",
              "the function's output does not depend on any checked tensor");
    projection = normal(output.shape(), 0, 1, rng);
    output.backward(projection);
  }

  GradcheckResult result;
  result.options = options;
  auto record = [&](GradcheckTensorSummary& summary, GradcheckEntry entry) {
    entry.abs_error = std::abs(entry.analytic - entry.numeric);
    entry.rel_error = entry.abs_error / std::max({std::abs(entry.numeric), std::abs(entry.analytic), options.atol});
    entry.passed = std::isfinite(entry.analytic) && std::isfinite(entry.numeric) &&
                   entry.abs_error <= options.atol + options.rtol * std::abs(entry.numeric);
    if (!std::isfinite(entry.analytic) || !std::isfinite(entry.numeric)) entry.rel_error = INFINITY;
    ++summary.checked;
    ++result.checked;
    result.max_abs_error = std::max(result.max_abs_error, entry.abs_error);
    summary.worst_rel_error = std::max(summary.worst_rel_error, entry.rel_error);
    if (result.checked == 1 || entry.rel_error > result.worst.rel_error) result.worst = entry;
    if (!entry.passed) {
      ++summary.failed;
      ++result.failed;
      result.passed = false;
      if (result.failures.size() < max_reported_failures) result.failures.push_back(entry);
    }
  };

  for (auto& [name, variable] : checked) {
    GradcheckTensorSummary summary{name, variable.shape(), 0, 0, 0};
    const Array analytic = variable.has_grad() ? variable.grad() : zeros(variable.shape());
    Array& value = variable.mutable_value();
    if (options.fast_mode) {
      // Directional derivative along a random unit-variance direction u.
      const Array direction = normal(variable.shape(), 0, 1, rng);
      const Array original = value;
      auto shifted = [&](double sign) {
        for (std::size_t i = 0; i < value.size(); ++i)
          value.data()[i] = real(original.data()[i] + sign * options.eps * direction.data()[i]);
        return projected_output(function, inputs, projection);
      };
      const double plus = shifted(+1), minus = shifted(-1);
      value = original;
      GradcheckEntry entry;
      entry.tensor = name + " · random direction";
      entry.numeric = (plus - minus) / (2 * options.eps);
      for (std::size_t i = 0; i < value.size(); ++i)
        entry.analytic += double(analytic.data()[i]) * double(direction.data()[i]);
      record(summary, entry);
    } else {
      for (std::size_t flat : elements_to_check(value.size(), options.max_elements_per_tensor, rng)) {
        real& element = value.data()[flat];
        const real original = element;
        element = real(original + options.eps);
        const double plus = projected_output(function, inputs, projection);
        element = real(original - options.eps);
        const double minus = projected_output(function, inputs, projection);
        element = original;
        GradcheckEntry entry;
        entry.tensor = name;
        entry.index = unravel_index(flat, summary.shape);
        entry.analytic = analytic.data()[flat];
        entry.numeric = (plus - minus) / (2 * options.eps);
        record(summary, entry);
      }
    }
    result.tensors.push_back(summary);
  }
  return result;
}

}  // namespace qkv
