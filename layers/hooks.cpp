#include "layers/hooks.hpp"

#include <algorithm>
#include <numeric>

#include "layers/module.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

void HookPoint::run(Variable& value) const {
  const Shape shape = value.shape();
  // Module refuses to add or remove hooks of a point while it fires (a hook that did would
  // move the entries under this loop).
  firing_ = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{firing_};
  for (Entry& entry : hooks_) {
    entry.hook(value, HookCall{entry.name, entry.calls});
    ++entry.calls;
    check_shape(value.defined() && value.shape() == shape, "hook", [&] {
      return "the hook on '" + entry.name + "' replaced a value of shape " + to_string(shape) + " by " +
             (value.defined() ? "one of shape " + to_string(value.shape()) : std::string("an undefined variable")) +
             "; a replacement must keep the shape";
    });
  }
}

// ---- cache --------------------------------------------------------------------------------

const std::vector<Array>& ActivationCache::calls(const std::string& name) const {
  const auto found = values_.find(name);
  if (found == values_.end()) {
    std::string closest;
    for (const std::string& candidate : closest_names(name, names())) closest += "\n  " + candidate;
    throw Error("ActivationCache: '" + name + "' did not fire in the cached run" +
                (values_.empty() ? std::string(" (nothing did)") : "; the closest names that did are:" + closest));
  }
  return found->second;
}

const Array& ActivationCache::at(const std::string& name) const {
  const std::vector<Array>& values = calls(name);
  check_arg(values.size() == 1, "ActivationCache", [&] {
    return "'" + name + "' fired " + std::to_string(values.size()) +
           " times in the cached run; calls(name) returns each value";
  });
  return values.front();
}

std::vector<std::string> ActivationCache::names() const {
  std::vector<std::string> names;
  for (const auto& entry : values_) names.push_back(entry.first);
  return names;
}

ActivationCache run_with_cache(Module& model, const std::function<void()>& run,
                               const std::function<bool(const std::string& name)>& select) {
  ActivationCache cache;
  ScopedHooks hooks(model);
  for (const std::string& name : model.hook_point_names())
    if (!select || select(name))
      hooks.add(name, [&cache](Variable& value, const HookCall& call) { cache.add(call.name, value.value()); });
  run();
  return cache;
}

// ---- names --------------------------------------------------------------------------------

std::size_t edit_distance(const std::string& a, const std::string& b) {
  // One row of the dynamic programme at a time: row[j] = distance(a[0..i), b[0..j)).
  std::vector<std::size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];  // distance(a[0..i-1), b[0..j-1))
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::vector<std::string> closest_names(const std::string& name, const std::vector<std::string>& candidates,
                                       std::size_t count) {
  std::vector<std::pair<std::size_t, std::size_t>> ranked;  // distance, index in candidates
  for (std::size_t i = 0; i < candidates.size(); ++i) ranked.emplace_back(edit_distance(name, candidates[i]), i);
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string> closest;
  for (std::size_t i = 0; i < std::min(count, ranked.size()); ++i) closest.push_back(candidates[ranked[i].second]);
  return closest;
}

}  // namespace qkv
