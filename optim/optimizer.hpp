#pragma once
// Optimizer: the base of SGD, Adam and AdamW. Parameters are held by name — the dotted names
// `Module::named_parameters()` gives — so the optimizer's state (momentum buffers, moment
// estimates, step counters) is saved and loaded by name, like a module's weights, and a
// checkpoint survives reordering or adding layers as long as the names still match.
//
// State layout (what `state()` returns and `load_state()` expects):
//   "step"                  0-d, number of `step()` calls so far (what schedules read)
//   "<param>.step"          0-d, number of updates that parameter received (it is skipped on a
//                           step where it has no gradient, so this can lag behind "step");
//                           Adam's bias correction uses it, as torch.optim.Adam does
//   "<param>.<slot>"        same shape as the parameter: "momentum_buffer" (SGD with momentum),
//                           "exp_avg" and "exp_avg_sq" (Adam, AdamW)
// Counters are stored as `real`, so in float32 they are exact up to 2^24 (16.7M) steps.
//
// State is allocated for every parameter when the optimizer is built (zeros, counters 0), so a
// loaded state must name every parameter and slot: nothing is filled in silently.
//
// Parameter groups (torch's param_groups, as microsoft/mup's MuAdam builds them): a group's
// parameters update with the optimizer's learning rate times the group's lr_multiplier, and its
// weight decay times weight_decay_multiplier. The multipliers are relative, so a schedule keeps
// setting one rate and every group follows it (what mup's README asks of schedulers).
// Parameters in no group keep multiplier 1. The groups are configuration, not state: they are
// not in `state()`; `save` records them in the file's metadata and `load` refuses a file saved
// with other groups (a file without the record — every file from before groups — counts as
// saved with none).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "autograd/gradcheck.hpp"
#include "autograd/variable.hpp"

namespace qkv {

/// Parameters (by name) whose learning rate and weight decay are multiples of the optimizer's.
struct ParameterGroup {
  std::string name;                     // for messages and the saved record, e.g. "mup hidden"
  std::vector<std::string> parameters;  // names as in the optimizer's parameter list
  double lr_multiplier = 1;             // > 0 and finite
  double weight_decay_multiplier = 1;   // > 0 and finite
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// One update of every parameter that has a gradient (`has_grad()`); the others are
  /// skipped, as PyTorch skips parameters whose `.grad` is None. Note that `zero_grad()` keeps
  /// gradient buffers as zeros (PyTorch's `set_to_none=False`), so a parameter once touched by
  /// backward takes zero-gradient steps afterwards (momentum and weight decay still act).
  void step();
  /// Zeroes every parameter's gradient buffer.
  void zero_grad();

  double learning_rate() const { return learning_rate_; }
  /// Throws Error naming the optimizer for a negative or non-finite rate.
  void set_learning_rate(double learning_rate);
  /// Number of `step()` calls so far (restored by `load_state`). Schedules read this.
  std::int64_t step_count() const { return step_count_; }

  /// Replaces the groups (see the top of this file). Throws Error naming the optimizer, the
  /// group and the option for a multiplier that is not > 0 and finite, an empty or repeated
  /// group name, a parameter the optimizer does not have, or one named in two groups; nothing
  /// changes then.
  void set_parameter_groups(const std::vector<ParameterGroup>& groups);
  const std::vector<ParameterGroup>& parameter_groups() const { return groups_; }
  /// The learning rate and weight decay multipliers of parameter `index` (1 outside groups).
  double lr_multiplier(std::size_t index) const { return lr_multipliers_.at(index); }
  double weight_decay_multiplier(std::size_t index) const { return weight_decay_multipliers_.at(index); }

  /// "SGD", "Adam", "AdamW": used in error messages and checked by `load`.
  const std::string& name() const { return name_; }
  const std::vector<NamedVariable>& parameters() const { return parameters_; }

  /// The state by name (see the layout above). Copies.
  std::map<std::string, Array> state() const;
  /// Replaces the state. Every missing, unexpected and mis-shaped name is reported in one
  /// Error, and nothing changes unless everything fits.
  void load_state(const std::map<std::string, Array>& state);
  /// `state()` to a safetensors file (atomic). The header's metadata records the optimizer's
  /// name and learning rate, and the parameter groups when there are any.
  void save(const std::string& path) const;
  /// `load_state()` from a file written by `save`. Also restores the learning rate saved with
  /// it (as torch's `load_state_dict` restores the param groups' lr); a schedule applied
  /// afterwards overrides it. Throws Error when the file was written by another optimizer.
  void load(const std::string& path);

 protected:
  /// `slot_names` are the per-parameter buffers this optimizer keeps, each shaped like its
  /// parameter. Throws Error for an empty list, an undefined variable, or a repeated name.
  Optimizer(std::string name, std::vector<NamedVariable> parameters, double learning_rate,
            std::vector<std::string> slot_names);

  /// Updates parameter `index` in place from its gradient. `updates` counts this update
  /// (1 on the first). Called only for parameters with a gradient. The rate to use is
  /// `learning_rate() * lr_multiplier(index)` (and the weight decay likewise).
  virtual void update(std::size_t index, Variable& parameter, std::int64_t updates) = 0;

  /// Buffer `slot` (index into `slot_names`) of parameter `index`.
  Array& slot(std::size_t index, std::size_t slot) { return slots_[index][slot]; }

 private:
  void check_learning_rate(double learning_rate) const;
  /// The groups as one line, for the saved record: "" without groups.
  std::string groups_record() const;

  std::string name_;
  std::vector<NamedVariable> parameters_;
  std::vector<std::string> slot_names_;
  std::vector<std::vector<Array>> slots_;    // [parameter][slot], each shaped like the parameter
  std::vector<std::int64_t> update_counts_;  // [parameter]
  std::int64_t step_count_ = 0;
  double learning_rate_ = 0;
  std::vector<ParameterGroup> groups_;
  std::vector<double> lr_multipliers_;            // [parameter]
  std::vector<double> weight_decay_multipliers_;  // [parameter]
};


}  // namespace qkv
