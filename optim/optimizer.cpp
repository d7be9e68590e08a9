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
const char* const groups_key = "parameter_groups";

/// Text that reads back as the same double (max_digits10).
std::string exact(double value) {
  std::ostringstream out;
  out.precision(std::numeric_limits<double>::max_digits10);
  out << value;
  return out.str();
}

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
  lr_multipliers_.assign(parameters_.size(), 1);
  weight_decay_multipliers_.assign(parameters_.size(), 1);
}

void Optimizer::set_parameter_groups(const std::vector<ParameterGroup>& groups) {
  const std::string owner = name_ + ": set_parameter_groups";
  std::map<std::string, std::size_t> index_of;
  for (std::size_t i = 0; i < parameters_.size(); ++i) index_of.emplace(parameters_[i].first, i);
  std::vector<double> lr(parameters_.size(), 1), decay(parameters_.size(), 1);
  std::map<std::string, std::string> group_of;  // parameter -> the group that claimed it
  std::set<std::string> group_names;
  for (const ParameterGroup& group : groups) {
    check_arg(!group.name.empty(), owner.c_str(), "a parameter group has an empty name");
    check_arg(group_names.insert(group.name).second, owner.c_str(),
              "parameter group name '" + group.name + "' appears twice");
    const std::string group_owner = owner + ": group '" + group.name + "'";
    // Open at 0: a zero multiplier would freeze the group silently; isfinite rejects inf and NaN.
    for (const auto& [option, value] : {std::pair{"lr_multiplier", group.lr_multiplier},
                                        std::pair{"weight_decay_multiplier", group.weight_decay_multiplier}})
      check_arg(value > 0 && std::isfinite(value), group_owner.c_str(),
                std::string(option) + " must be > 0 and finite, got " + format_number(value));
    for (const std::string& parameter : group.parameters) {
      const auto found = index_of.find(parameter);
      check_arg(found != index_of.end(), group_owner.c_str(), "no parameter named '" + parameter + "'");
      const auto [claimed, inserted] = group_of.emplace(parameter, group.name);
      check_arg(inserted, owner.c_str(),
                "parameter '" + parameter + "' is in two groups, '" + claimed->second + "' and '" + group.name + "'");
      lr[found->second] = group.lr_multiplier;
      decay[found->second] = group.weight_decay_multiplier;
    }
  }
  groups_ = groups;
  lr_multipliers_ = std::move(lr);
  weight_decay_multipliers_ = std::move(decay);
}

std::string Optimizer::groups_record() const {
  // Per parameter, in the optimizer's order, only those off 1: what the update depends on.
  std::string record;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (lr_multipliers_[i] == 1 && weight_decay_multipliers_[i] == 1) continue;
    if (!record.empty()) record += "; ";
    record += parameters_[i].first + ": lr x " + exact(lr_multipliers_[i]) + ", weight_decay x " +
              exact(weight_decay_multipliers_[i]);
  }
  return record;
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
  std::map<std::string, std::string> metadata{{"optimizer", name_}, {"lr", exact(learning_rate_)}};
  const std::string groups = groups_record();
  if (!groups.empty()) metadata.emplace(groups_key, groups);  // files without groups stay as before
  write_safetensors(path, state(), {}, metadata);
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
  // A state saved under other multipliers would resume on different rates without a word.
  const auto saved_groups = file.metadata.find(groups_key);
  const std::string saved = saved_groups == file.metadata.end() ? "" : saved_groups->second;
  const std::string current = groups_record();
  if (saved != current)
    throw Error(path + ": " + name_ + ": load: the state was saved with parameter groups [" + saved +
                "] but this optimizer has [" + current + "]");
  try {
    check_learning_rate(learning_rate);  // before anything changes
    load_state(file.reals);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  learning_rate_ = learning_rate;
}

}  // namespace qkv
