#pragma once
// Hook points: named places inside a layer's forward where a user can read or replace a value
// (TransformerLens's HookPoint). A layer holds a HookPoint member per place and registers it
// with Module::register_hook_point; the model then reports it under the layer's dotted path,
// e.g. `decoder.layers.1.multihead_attn.weights`, and Module::add_hook attaches functions to it
// by that name.
//
// A hook is `void(Variable& value, const HookCall& call)`: it may only look (reading), or assign
// a new value of the same shape (zero a head, patch in another run's activation, multiply by a
// mask that requires grad). The replacement is what the layer goes on computing with, so
// gradients flow through it. Hooks stay for every forward pass that follows until removed;
// they fire in the order they were added.
//
// Cost with no hook attached: one test of an empty vector per point and forward (the value is
// one the layer computes anyway; no copy, no allocation).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "autograd/variable.hpp"

namespace qkv {

class Module;

/// What a hook is told besides the value.
struct HookCall {
  const std::string& name;  // the point's dotted name, as given to add_hook
  /// How many times this hook fired before: the decoding step on the KV-cache path, or the
  /// target step inside a Bahdanau forward (its attention runs once per step).
  std::size_t call;
};

using Hook = std::function<void(Variable& value, const HookCall& call)>;

/// Identifies one added hook, for Module::remove_hook.
using HookId = std::uint64_t;

class HookPoint {
 public:
  HookPoint() = default;
  HookPoint(const HookPoint&) = delete;
  HookPoint& operator=(const HookPoint&) = delete;

  /// Runs the attached hooks on `value` (which they may replace): inline, so a point with no
  /// hook costs one branch.
  void operator()(Variable& value) const {
    if (!hooks_.empty()) run(value);
  }
  bool empty() const { return hooks_.empty(); }

 private:
  friend class Module;
  struct Entry {
    HookId id;
    std::string name;
    Hook hook;
    std::size_t calls = 0;
  };
  void run(Variable& value) const;

  // Mutable: forward passes are const in some layers (Embedding), and firing a hook counts its
  // calls without changing what the layer computes.
  mutable std::vector<Entry> hooks_;
  mutable bool firing_ = false;
};

/// Every value each hook point took during one run, by dotted name.
class ActivationCache {
 public:
  /// The value of `name` when the point fired exactly once. Throws Error for a name that did
  /// not fire (listing the closest that did) or fired several times (use calls()).
  const Array& at(const std::string& name) const;
  /// Every value of `name`, in firing order (one per decoding step on the KV-cache path).
  const std::vector<Array>& calls(const std::string& name) const;
  bool contains(const std::string& name) const { return values_.contains(name); }
  /// The names that fired, sorted.
  std::vector<std::string> names() const;
  std::size_t size() const { return values_.size(); }

  void add(const std::string& name, Array value) { values_[name].push_back(std::move(value)); }

 private:
  std::map<std::string, std::vector<Array>> values_;
};

/// Runs `run` (one or more forward passes of `model`, or decoding) with a reading hook on every
/// hook point of `model` whose name `select` accepts (all by default), and returns what they
/// saw. The hooks are removed afterwards, also when `run` throws. Values are copies: what the
/// point held after any earlier hook replaced it.
ActivationCache run_with_cache(Module& model, const std::function<void()>& run,
                               const std::function<bool(const std::string& name)>& select = nullptr);

/// Levenshtein distance between two names (insertions, deletions, substitutions).
std::size_t edit_distance(const std::string& a, const std::string& b);
/// The (at most) `count` names closest to `name` by edit distance, nearest first (ties in
/// `candidates`' order).
std::vector<std::string> closest_names(const std::string& name, const std::vector<std::string>& candidates,
                                       std::size_t count = 5);

}  // namespace qkv
