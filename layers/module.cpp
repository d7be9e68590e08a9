#include "layers/module.hpp"

#include <algorithm>
#include <atomic>

#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {
void check_new_name(const std::string& name, const std::string& what) {
  check_arg(!name.empty() && name.find('.') == std::string::npos, "Module",
            what + " name '" + name + "' must be non-empty and contain no '.'");
}
}  // namespace

void Module::check_unique(const std::string& name) const {
  // A repeated name would make state_dict() keep one of the two and silently drop the other.
  const auto same = [&](const auto& entry) { return entry.first == name; };
  check_arg(std::none_of(parameters_.begin(), parameters_.end(), same) &&
                std::none_of(buffers_.begin(), buffers_.end(), same) &&
                std::none_of(children_.begin(), children_.end(), same),
            "Module", "the name '" + name + "' is already registered in this module");
}

Variable Module::register_parameter(const std::string& name, Array value) {
  check_new_name(name, "parameter");
  check_unique(name);
  Variable parameter(std::move(value), true);
  parameters_.emplace_back(name, parameter);
  return parameter;
}

Variable Module::register_buffer(const std::string& name, Array value) {
  check_new_name(name, "buffer");
  check_unique(name);
  Variable buffer(std::move(value), false);
  buffers_.emplace_back(name, buffer);
  return buffer;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_arg(module != nullptr, "Module", "submodule '" + name + "' is null");
  // Numbered children of a list ("layers.0") are allowed a dot; each part must be non-empty.
  check_arg(!name.empty() && name.front() != '.' && name.back() != '.', "Module", "bad submodule name '" + name + "'");
  check_unique(name);
  children_.emplace_back(name, std::move(module));
}

void Module::collect(const std::string& prefix, bool buffers, std::vector<NamedVariable>& out) const {
  for (const auto& [name, variable] : buffers ? buffers_ : parameters_) out.emplace_back(prefix + name, variable);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", buffers, out);
}

std::vector<NamedVariable> Module::named_parameters() const {
  std::vector<NamedVariable> out;
  collect("", false, out);
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [name, variable] : named_parameters()) out.push_back(variable);
  return out;
}

std::vector<NamedVariable> Module::named_buffers() const {
  std::vector<NamedVariable> out;
  collect("", true, out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_)
    for (auto& [inner, module] : child->named_modules()) out.emplace_back(inner.empty() ? name : name + "." + inner, module);
  return out;
}

std::size_t Module::parameter_count() const {
  std::size_t count = 0;
  for (const auto& [name, variable] : named_parameters()) count += variable.numel();
  return count;
}

void Module::train(bool training) {
  training_ = training;
  for (auto& [name, child] : children_) child->train(training);
}

void Module::zero_grad() {
  for (auto& [name, variable] : named_parameters()) variable.zero_grad();
}

std::map<std::string, Array> Module::state_dict() const {
  std::map<std::string, Array> state;
  for (const auto& [name, variable] : named_parameters()) state.emplace(name, variable.value());
  for (const auto& [name, variable] : named_buffers()) state.emplace(name, variable.value());
  return state;
}

void Module::load_state_dict(const std::map<std::string, Array>& state) {
  std::vector<NamedVariable> own = named_parameters();
  for (auto& entry : named_buffers()) own.push_back(entry);
  NameMismatch mismatch({"missing", "unexpected", "mis-shaped"});
  for (const auto& [name, variable] : own) {
    const auto found = state.find(name);
    if (found == state.end()) mismatch.add("missing", name);
    else if (shape_of(found->second) != variable.shape())
      mismatch.add("mis-shaped", name + " (expected " + to_string(variable.shape()) + ", got " +
                                     to_string(shape_of(found->second)) + ")");
  }
  for (const auto& entry : state) {  // not a structured binding: clang 14 cannot capture those
    const std::string& name = entry.first;
    if (std::none_of(own.begin(), own.end(), [&](const NamedVariable& e) { return e.first == name; }))
      mismatch.add("unexpected", name);
  }
  mismatch.throw_if_any("load_state_dict: the state does not fit this module");
  for (auto& [name, variable] : own) variable.mutable_value() = state.at(name);
}

void Module::register_random_stream(const std::string& name, Rng& stream) {
  check_new_name(name, "random stream");
  for (const auto& [existing, pointer] : random_streams_)
    check_arg(existing != name, "Module", "the random stream name '" + name + "' is already registered in this module");
  random_streams_.emplace_back(name, &stream);
}

void Module::register_legacy_random_stream_name(const std::string& legacy_name, const std::string& name) {
  check_arg(legacy_name != name, "Module", "the legacy name of random stream '" + name + "' is its name");
  legacy_stream_names_.emplace_back(legacy_name, name);
}

std::map<std::string, std::string> Module::random_state() const {
  std::map<std::string, std::string> state;
  for (const auto& [name, stream] : random_streams_) state.emplace(name, stream->save_state());
  for (const auto& [child_name, child] : children_)
    for (const auto& [name, text] : child->random_state()) state.emplace(child_name + "." + name, text);
  return state;
}

void Module::load_random_state(const std::map<std::string, std::string>& given) {
  // Flatten our own streams with their dotted names first, so nothing changes on a mismatch.
  std::vector<std::pair<std::string, Rng*>> own;
  std::map<std::string, std::string> state = given;
  std::vector<std::pair<std::string, const Module*>> pending{{"", this}};
  while (!pending.empty()) {
    auto [prefix, module] = pending.back();
    pending.pop_back();
    for (const auto& [name, stream] : module->random_streams_) own.emplace_back(prefix + name, stream);
    for (const auto& [legacy, name] : module->legacy_stream_names_) {
      const auto found = state.find(prefix + legacy);
      if (found == state.end() || state.contains(prefix + name)) continue;
      state.emplace(prefix + name, found->second);
      state.erase(found);
    }
    for (const auto& [name, child] : module->children_) pending.emplace_back(prefix + name + ".", child.get());
  }
  NameMismatch mismatch({"missing", "unexpected"});
  for (const auto& [name, stream] : own)
    if (!state.contains(name)) mismatch.add("missing", name);
  for (const auto& entry : state) {  // not a structured binding: clang 14 cannot capture those
    const std::string& name = entry.first;
    if (std::none_of(own.begin(), own.end(), [&](const auto& e) { return e.first == name; })) mismatch.add("unexpected", name);
  }
  mismatch.throw_if_any("load_random_state: the random streams do not fit this module");
  for (auto& [name, stream] : own) stream->load_state(state.at(name));
}

// ---- hook points ---------------------------------------------------------------------------

namespace {
HookId next_hook_id() {
  // Ids are unique across every model of the process, so one can never remove another's hook.
  static std::atomic<HookId> next{1};
  return next++;
}
}  // namespace

void Module::register_hook_point(const std::string& name, HookPoint& point) {
  check_new_name(name, "hook point");
  for (const auto& [existing, pointer] : hook_points_)
    check_arg(existing != name, "Module", "the hook point name '" + name + "' is already registered in this module");
  hook_points_.emplace_back(name, &point);
}

void Module::adopt_hook_point(Module& child, const std::string& child_name, const std::string& name) {
  const auto found = std::find_if(child.hook_points_.begin(), child.hook_points_.end(),
                                  [&](const auto& entry) { return entry.first == child_name; });
  check_arg(found != child.hook_points_.end(), "Module", "the submodule has no hook point '" + child_name + "'");
  HookPoint& point = *found->second;
  child.hook_points_.erase(found);
  register_hook_point(name, point);
}

void Module::collect_hook_points(const std::string& prefix,
                                 std::vector<std::pair<std::string, HookPoint*>>& out) const {
  for (const auto& [name, point] : hook_points_) out.emplace_back(prefix + name, point);
  for (const auto& [name, child] : children_) child->collect_hook_points(prefix + name + ".", out);
}

std::vector<std::string> Module::hook_point_names() const {
  std::vector<std::pair<std::string, HookPoint*>> points;
  collect_hook_points("", points);
  std::vector<std::string> names;
  for (const auto& [name, point] : points) names.push_back(name);
  return names;
}

HookId Module::add_hook(const std::string& name, Hook hook) {
  check_arg(static_cast<bool>(hook), "add_hook", "the hook for '" + name + "' is empty");
  std::vector<std::pair<std::string, HookPoint*>> points;
  collect_hook_points("", points);
  for (auto& [point_name, point] : points)
    if (point_name == name) {
      check_arg(!point->firing_, "add_hook", "a hook on '" + name + "' cannot add hooks to the point it runs on");
      const HookId id = next_hook_id();
      point->hooks_.push_back({id, name, std::move(hook)});
      return id;
    }
  std::vector<std::string> names;
  for (const auto& [point_name, point] : points) names.push_back(point_name);
  if (names.empty()) throw Error("add_hook: no hook point '" + name + "': this module has no hook points");
  std::string closest;
  for (const std::string& candidate : closest_names(name, names)) closest += "\n  " + candidate;
  throw Error("add_hook: no hook point '" + name + "'; the closest of the " + std::to_string(names.size()) +
              " valid names are:" + closest);
}

void Module::remove_hook(HookId id) {
  std::vector<std::pair<std::string, HookPoint*>> points;
  collect_hook_points("", points);
  for (auto& [name, point] : points) {
    auto& hooks = point->hooks_;
    const auto found = std::find_if(hooks.begin(), hooks.end(), [&](const HookPoint::Entry& e) { return e.id == id; });
    if (found != hooks.end()) {
      check_arg(!point->firing_, "remove_hook", "a hook on '" + name + "' cannot remove hooks of the point it runs on");
      hooks.erase(found);
      return;
    }
  }
  throw Error("remove_hook: no hook with id " + std::to_string(id) + " is attached to this module");
}

void Module::clear_hooks() {
  std::vector<std::pair<std::string, HookPoint*>> points;
  collect_hook_points("", points);
  for (auto& [name, point] : points) {
    check_arg(!point->firing_, "clear_hooks", "a hook on '" + name + "' cannot remove hooks of the point it runs on");
    point->hooks_.clear();
  }
}

HookId ScopedHooks::add(const std::string& name, Hook hook) {
  const HookId id = model_.add_hook(name, std::move(hook));
  ids_.push_back(id);
  return id;
}

void ScopedHooks::remove_all() {
  // Newest first; a hook already removed by hand (or by clear_hooks) is skipped, not an error,
  // since this runs in a destructor.
  for (auto id = ids_.rbegin(); id != ids_.rend(); ++id) {
    try {
      model_.remove_hook(*id);
    } catch (const Error&) {
    }
  }
  ids_.clear();
}

void Module::save(const std::string& path, const std::map<std::string, std::string>& metadata) const {
  write_safetensors(path, state_dict(), {}, metadata);
}

void Module::load(const std::string& path) {
  TensorFile file = read_safetensors(path);
  try {
    load_state_dict(file.reals);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

}  // namespace qkv
