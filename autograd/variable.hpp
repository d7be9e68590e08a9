#pragma once
// The reverse-mode engine: a Variable is a value that remembers how it was computed.
//
// Every op computes its value eagerly and returns a Variable whose node keeps the op's inputs
// and a backward function. `backward()` orders the graph with an iterative depth-first sort
// (no recursion, so a 10,000-step unrolled RNN is fine) and runs each node's backward once, in
// reverse order, adding into its inputs' gradients. The graph is released as it goes.
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lib/numerics/gradient_out.hpp"
#include "lib/numerics/shape.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv {

class Variable;

/// How an op sends gradients to its inputs: given dL/d(output) and the forward value, add
/// dL/d(input) into `inputs[i]` (with `add_grad`, `grad_buffer` or `gradient_out`) for every
/// input that `requires_grad()`. It must add, never assign — unless `gradient_out` says the
/// buffer is fresh: an input used twice receives the sum.
using BackwardFn =
    std::function<void(const Array& grad_output, const Array& output, std::span<Variable> inputs)>;

namespace detail {
struct Node;
}

class Variable {
 public:
  /// An undefined variable (no value). Most calls on it throw.
  Variable() = default;
  /// A leaf holding `value`. Leaves with `requires_grad` collect gradients in `grad()`.
  explicit Variable(Array value, bool requires_grad = false);

  bool defined() const { return node_ != nullptr; }
  const Array& value() const;
  /// In-place access for optimizers and initialisers; never use it on a graph you will
  /// differentiate through.
  Array& mutable_value();
  Shape shape() const;
  std::size_t rank() const;
  /// Extent of dimension `axis` (negative counts from the end).
  std::size_t dim(long axis) const;
  std::size_t numel() const;
  /// The value of a one-element variable.
  real item() const;

  bool requires_grad() const;
  /// Marks a leaf as a parameter (or not). Throws on a non-leaf.
  Variable& set_requires_grad(bool requires_grad = true);
  bool is_leaf() const;
  /// Name of the op that made this variable ("leaf" for leaves).
  const std::string& op_name() const;

  /// True once a gradient has been accumulated (or `grad_buffer` / `gradient_out` allocated one).
  bool has_grad() const;
  /// The accumulated gradient, same shape as the value. Throws when there is none yet.
  const Array& grad() const;
  /// The gradient buffer, allocated as zeros on first use: ops accumulate into it in place
  /// (gemm with beta = 1). Allocation is lazy so that unused gradients cost nothing.
  Array& grad_buffer();
  /// For backward functions that can write a gradient as cheaply as add it (gemm with beta 0
  /// or 1): the buffer, with `accumulate` set to whether it already holds a gradient. When it
  /// comes back false the buffer is uninitialised and must be overwritten in full, which saves
  /// zero-filling it first (lib/numerics/gradient_out.hpp).
  GradientOut gradient_out();
  /// grad += gradient (same shape). For backward functions.
  void add_grad(const Array& gradient);
  /// Sets the gradient to zero, keeping its buffer for the next step. The zeros are written
  /// only when the gradient is next read or added to; a backward that overwrites the whole
  /// buffer (gradient_out() with accumulate false) skips them.
  void zero_grad();
  /// Keeps this non-leaf's gradient after backward (non-leaf gradients are freed by default).
  Variable& retain_grad();

  /// dL/dself = 1 for a one-element variable, then the reverse sweep.
  void backward(bool retain_graph = false);
  /// The reverse sweep seeded with `grad_output` (same shape as the value).
  void backward(const Array& grad_output, bool retain_graph = false);

  /// A leaf with a copy of this value and no history.
  Variable detach() const;

  /// Identity of the underlying node (two Variables may share one).
  const void* id() const { return node_.get(); }

 private:
  friend Variable make_op(std::string name, Array value, std::vector<Variable> inputs,
                          BackwardFn backward);
  friend struct detail::Node;
  detail::Node& node() const;
  std::shared_ptr<detail::Node> node_;
};

/// The one way ops are built — the built-in ones and yours. `value` is the op's result,
/// computed by your forward code; `backward` is called at most once, during the reverse
/// sweep. When gradient recording is off or no input requires a gradient, the result is a
/// plain leaf and `backward` is dropped. See docs/custom_ops.md for a worked example.
Variable make_op(std::string name, Array value, std::vector<Variable> inputs, BackwardFn backward);

/// Whether ops record graphs on this thread right now.
bool is_grad_enabled();

/// Inside its scope no graph is recorded: results are leaves without requires_grad.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

/// Anomaly detection, like torch.autograd.set_detect_anomaly: while it is on, make_op checks
/// every op's forward output and backward() checks every gradient each node produces, and the
/// first value that is NaN or ±Inf throws Error naming the op, the pass (forward or backward),
/// the input shapes and where the bad element is. Off by default: each check reads the whole
/// array. Process-wide (all threads), as in PyTorch.
void set_detect_anomaly(bool enabled);
bool is_anomaly_enabled();

/// Turns anomaly detection on (or off) for its scope, restoring the previous setting after.
class AnomalyModeGuard {
 public:
  explicit AnomalyModeGuard(bool enabled = true);
  ~AnomalyModeGuard();
  AnomalyModeGuard(const AnomalyModeGuard&) = delete;
  AnomalyModeGuard& operator=(const AnomalyModeGuard&) = delete;

 private:
  bool previous_;
};

/// Number of graph nodes alive in this process. Tests use it to show that graphs are freed.
std::size_t live_node_count();

}  // namespace qkv
