#include "optim/optimizer.hpp"

#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

const char* const step_key = "step";

Array counter_array(std::int64_t count) {
  Array counter = Array::from_shape({});  // 0-d, as torch stores `step`
  counter() = static_cast<real>(count);
  return counter;
}

}  // namespace

Optimizer::Optimizer(std::string name, std::vector<NamedVariable> parameters, double learning_rate,
                     std::vector<std::string> slot_names)
    : name_(std::move(name)), parameters_(std::move(parameters)), slot_names_(std::move(slot_names)) {
  check_arg(!parameters_.empty(), name_.c_str(), "got an empty parameter list");
  std::set<std::string> seen;
  for (const auto& [parameter_name, variable] : parameters_) {
    check_arg(!parameter_name.empty(), name_.c_str(), "a parameter has an empty name");
    check_arg(variable.defined(), name_.c_str(), "parameter '" + parameter_name + "' is an undefined variable");
    check_arg(seen.insert(parameter_name).second, name_.c_str(),
              "parameter name '" + parameter_name + "' appears twice");
  }
  set_learning_rate(learning_rate);
  slots_.resize(parameters_.size());
  for (std::size_t i = 0; i < parameters_.size(); ++i)
    for (std::size_t s = 0; s < slot_names_.size(); ++s) slots_[i].push_back(zeros(parameters_[i].second.shape()));
  update_counts_.assign(parameters_.size(), 0);
}

void Optimizer::check_learning_rate(double learning_rate) const {
  // The open upper bound rejects infinity; the comparisons reject NaN.
  check_range(name_, "lr", learning_rate, 0, std::numeric_limits<double>::infinity());
}

void Optimizer::set_learning_rate(double learning_rate) {
  check_learning_rate(learning_rate);
  learning_rate_ = learning_rate;
}

void Optimizer::step() {
  ++step_count_;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    Variable& parameter = parameters_[i].second;
    if (!parameter.has_grad()) continue;
    update(i, parameter, ++update_counts_[i]);
  }
}

void Optimizer::zero_grad() {
  for (auto& [name, parameter] : parameters_) parameter.zero_grad();
}

std::map<std::string, Array> Optimizer::state() const {
  std::map<std::string, Array> state;
  state.emplace(step_key, counter_array(step_count_));
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const std::string& name = parameters_[i].first;
    state.emplace(name + ".step", counter_array(update_counts_[i]));
    for (std::size_t s = 0; s < slot_names_.size(); ++s) state.emplace(name + "." + slot_names_[s], slots_[i][s]);
  }
  return state;
}

void Optimizer::load_state(const std::map<std::string, Array>& state) {
  // Every name this optimizer expects, with the shape it must have.
  std::map<std::string, Shape> expected{{step_key, Shape{}}};
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const std::string& name = parameters_[i].first;
    expected.emplace(name + ".step", Shape{});
    for (const auto& slot_name : slot_names_) expected.emplace(name + "." + slot_name, parameters_[i].second.shape());
  }
  const std::string bad_counter = "counters that are not whole numbers >= 0";
  NameMismatch mismatch({"missing", "unexpected", "mis-shaped", bad_counter});
  for (const auto& [name, shape] : expected) {
    const auto found = state.find(name);
    if (found == state.end()) {
      mismatch.add("missing", name);
    } else if (shape_of(found->second) != shape) {
      mismatch.add("mis-shaped", name + " (expected " + to_string(shape) + ", got " + to_string(shape_of(found->second)) + ")");
    } else if (shape.empty()) {  // a counter: a non-negative whole number
      const double count = static_cast<double>(found->second());
      if (!(count >= 0) || std::floor(count) != count) mismatch.add(bad_counter, name + " = " + format_number(count));
    }
  }
  for (const auto& [name, value] : state)
    if (!expected.count(name)) mismatch.add("unexpected", name);
  mismatch.throw_if_any(name_ + ": load_state: the state does not fit this optimizer");
  step_count_ = static_cast<std::int64_t>(state.at(step_key)());
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const std::string& name = parameters_[i].first;
    update_counts_[i] = static_cast<std::int64_t>(state.at(name + ".step")());
    for (std::size_t s = 0; s < slot_names_.size(); ++s) slots_[i][s] = state.at(name + "." + slot_names_[s]);
  }
}

void Optimizer::save(const std::string& path) const {
  std::ostringstream exact_lr;
  exact_lr.precision(std::numeric_limits<double>::max_digits10);  // round-trips exactly
  exact_lr << learning_rate_;
  write_safetensors(path, state(), {}, {{"optimizer", name_}, {"lr", exact_lr.str()}});
}

void Optimizer::load(const std::string& path) {
  const TensorFile file = read_safetensors(path);
  const auto saved_by = file.metadata.find("optimizer");
  if (saved_by != file.metadata.end() && saved_by->second != name_)
    throw Error(path + ": " + name_ + ": load: this state was saved by " + saved_by->second);
  double learning_rate = learning_rate_;
  const auto saved_lr = file.metadata.find("lr");
  if (saved_lr != file.metadata.end()) {
    std::istringstream in(saved_lr->second);
    if (!(in >> learning_rate)) throw Error(path + ": " + name_ + ": load: bad lr '" + saved_lr->second + "' in metadata");
  }
  try {
    check_learning_rate(learning_rate);  // before anything changes
    load_state(file.reals);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  learning_rate_ = learning_rate;
}

}  // namespace qkv
