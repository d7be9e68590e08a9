#include "autograd/variable.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>

#include "lib/numerics/error.hpp"

namespace qkv {

namespace {
thread_local bool grad_enabled = true;
std::atomic<std::size_t> live_nodes{0};
// Marks nodes visited by the current sort; a fresh number per backward() means no clearing.
std::atomic<std::uint64_t> sweep_counter{0};
std::atomic<bool> anomaly_enabled{false};

// ---- anomaly detection --------------------------------------------------------------------

/// The index of the first NaN or ±Inf in `values`, or values.size() if all are finite.
std::size_t first_non_finite(const Array& values) {
  const real* data = values.data();
  for (std::size_t i = 0, n = values.size(); i < n; ++i)
    if (!std::isfinite(data[i])) return i;
  return values.size();
}

std::string describe_value(real value) {
  if (std::isnan(value)) return "NaN";
  return value > 0 ? "Inf" : "-Inf";
}

std::string describe_shapes(std::span<const Variable> inputs) {
  std::string text;
  for (const Variable& input : inputs)
    text += (text.empty() ? "" : ", ") + (input.defined() ? to_string(input.shape()) : std::string("(undefined)"));
  return text.empty() ? "none" : text;
}

void check_forward(const std::string& op, const Array& value, std::span<const Variable> inputs) {
  const std::size_t bad = first_non_finite(value);
  if (bad == value.size()) return;
  throw Error("anomaly detected in the forward pass of '" + op + "': its output " + to_string(shape_of(value)) +
              " holds " + describe_value(value.data()[bad]) + " at flat index " + std::to_string(bad) +
              "; input shapes: " + describe_shapes(inputs));
}

}  // namespace

namespace detail {

struct Node : std::enable_shared_from_this<Node> {
  Array value;
  Array grad;
  bool has_grad = false;
  // zero_grad() only sets this: the gradient reads as zeros, but `grad` still holds the last
  // step's numbers until something writes it (so a backward that overwrites the buffer skips
  // the zero-fill, and one that adds gets it filled first).
  bool grad_is_zero = false;
  bool requires_grad = false;
  bool is_leaf = true;
  bool retains_grad = false;
  std::uint64_t visit_mark = 0;
  std::string op = "leaf";
  std::vector<Variable> inputs;
  BackwardFn backward;

  Node() { ++live_nodes; }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Releasing a long chain through nested shared_ptr destructors would recurse once per node
  // and overflow the stack; instead, inputs whose last owner is this node are unlinked here,
  // in a loop.
  ~Node() {
    std::vector<Variable> pending = std::move(inputs);
    backward = nullptr;
    while (!pending.empty()) {
      Variable input = std::move(pending.back());
      pending.pop_back();
      if (input.node_ && input.node_.use_count() == 1) {
        Node& owned = *input.node_;
        for (auto& grand_input : owned.inputs) pending.push_back(std::move(grand_input));
        owned.inputs.clear();
        owned.backward = nullptr;  // a user's closure may hold variables too
      }
    }
    --live_nodes;
  }
};

}  // namespace detail

namespace {

/// After `node`'s backward ran: the inputs' gradients must all be finite. A gradient that was
/// finite before (every earlier producer was checked) and is not now went bad in this node.
void check_backward(const detail::Node& node) {
  for (std::size_t i = 0; i < node.inputs.size(); ++i) {
    const Variable& input = node.inputs[i];
    if (!input.requires_grad() || !input.has_grad()) continue;
    const Array& gradient = input.grad();
    const std::size_t bad = first_non_finite(gradient);
    if (bad == gradient.size()) continue;
    throw Error("anomaly detected in the backward pass of '" + node.op + "': the gradient it produced for input " +
                std::to_string(i) + " " + to_string(shape_of(gradient)) + " holds " +
                describe_value(gradient.data()[bad]) + " at flat index " + std::to_string(bad) +
                "; input shapes: " +
                describe_shapes(node.inputs));
  }
}

}  // namespace

Variable::Variable(Array value, bool requires_grad) : node_(std::make_shared<detail::Node>()) {
  node_->value = std::move(value);
  node_->requires_grad = requires_grad;
}

detail::Node& Variable::node() const {
  if (!node_) throw Error("Variable: used before it was given a value");
  return *node_;
}

const Array& Variable::value() const { return node().value; }
Array& Variable::mutable_value() { return node().value; }
Shape Variable::shape() const { return shape_of(node().value); }
std::size_t Variable::rank() const { return node().value.dimension(); }
std::size_t Variable::dim(long axis) const {
  const Shape own = shape();
  return own[normalize_axis("Variable::dim", axis, own)];
}
std::size_t Variable::numel() const { return node().value.size(); }

real Variable::item() const {
  const Array& v = node().value;
  check_shape(v.size() == 1, "item", [&] { return "needs exactly one element, got shape " + to_string(shape_of(v)); });
  return v.data()[0];
}

bool Variable::requires_grad() const { return node().requires_grad; }

Variable& Variable::set_requires_grad(bool requires_grad) {
  check_arg(node().is_leaf, "set_requires_grad",
            [&] { return "only leaves can be marked; '" + node().op + "' is the result of an op"; });
  node_->requires_grad = requires_grad;
  return *this;
}

bool Variable::is_leaf() const { return node().is_leaf; }
const std::string& Variable::op_name() const { return node().op; }
bool Variable::has_grad() const { return node().has_grad; }

namespace {
/// Makes a zero_grad()-ed gradient hold its zeros.
void materialise_zero_grad(detail::Node& n) {
  if (!n.grad_is_zero) return;
  std::fill(n.grad.begin(), n.grad.end(), real(0));
  n.grad_is_zero = false;
}
}  // namespace

const Array& Variable::grad() const {
  check_arg(node().has_grad, "grad", [&] {
    return "no gradient yet for this " + to_string(shape()) + " '" + node_->op +
           "' variable (call backward() first; non-leaf gradients need retain_grad())";
  });
  materialise_zero_grad(*node_);
  return node_->grad;
}

Array& Variable::grad_buffer() {
  detail::Node& n = node();
  if (!n.has_grad || n.grad.shape() != n.value.shape()) {
    n.grad = zeros(shape_of(n.value));
    n.has_grad = true;
    n.grad_is_zero = false;
  }
  materialise_zero_grad(n);
  return n.grad;
}

GradientOut Variable::gradient_out() {
  detail::Node& n = node();
  const bool fits = n.has_grad && n.grad.shape() == n.value.shape();
  const bool accumulate = fits && !n.grad_is_zero;
  // A zeroed gradient's buffer is handed out as fresh: the caller overwrites all of it.
  if (!fits) n.grad = Array::from_shape(shape_of(n.value));
  n.has_grad = true;
  n.grad_is_zero = false;
  return {n.grad.data(), accumulate};
}

void Variable::add_grad(const Array& gradient) {
  detail::Node& n = node();
  check_shape(gradient.shape() == n.value.shape(), "add_grad", [&] {
    return "gradient of shape " + to_string(shape_of(gradient)) + " for a value of shape " +
           to_string(shape_of(n.value)) + " (op '" + n.op + "')";
  });
  if (!n.has_grad) {
    n.grad = gradient;
    n.has_grad = true;
    return;
  }
  real* out = n.grad.data();
  const real* in = gradient.data();
  if (n.grad_is_zero) {
    std::copy(in, in + gradient.size(), out);
    n.grad_is_zero = false;
    return;
  }
  for (std::size_t i = 0, size = gradient.size(); i < size; ++i) out[i] += in[i];
}

void Variable::zero_grad() {
  detail::Node& n = node();
  if (n.has_grad) n.grad_is_zero = true;
}

Variable& Variable::retain_grad() {
  node().retains_grad = true;
  return *this;
}

void Variable::backward(bool retain_graph) {
  check_shape(numel() == 1, "backward", [&] {
    return "without a gradient argument the output must have one element, got shape " + to_string(shape());
  });
  backward(full(shape(), real(1)), retain_graph);
}

void Variable::backward(const Array& grad_output, bool retain_graph) {
  detail::Node& root = node();
  check_arg(root.requires_grad, "backward", [&] {
    return "this '" + root.op +
           "' variable does not require a gradient (no input did, or it was made under NoGradGuard)";
  });
  check_shape(grad_output.shape() == root.value.shape(), "backward", [&] {
    return "grad_output of shape " + to_string(shape_of(grad_output)) + " for an output of shape " + to_string(shape());
  });

  // Iterative post-order depth-first sort: `order` ends with the root, and every node comes
  // after all of its inputs. `order` owns the nodes during the sweep, so releasing a node's
  // inputs cannot free one that is still to be visited.
  const std::uint64_t mark = ++sweep_counter;
  std::vector<std::shared_ptr<detail::Node>> order;
  std::vector<std::pair<detail::Node*, std::size_t>> stack{{&root, 0}};
  root.visit_mark = mark;
  while (!stack.empty()) {
    auto& [current, next_input] = stack.back();
    if (next_input < current->inputs.size()) {
      const std::shared_ptr<detail::Node>& input = current->inputs[next_input++].node_;
      if (input->requires_grad && input->visit_mark != mark) {
        input->visit_mark = mark;
        stack.emplace_back(input.get(), 0);
      }
    } else {
      order.push_back(current == &root ? node_ : current->shared_from_this());
      stack.pop_back();
    }
  }

  if (anomaly_enabled.load(std::memory_order_relaxed)) {
    const std::size_t bad = first_non_finite(grad_output);
    check_arg(bad == grad_output.size(), "backward", [&] {
      return "anomaly detected: the gradient backward() was given holds " +
             (bad < grad_output.size() ? describe_value(grad_output.data()[bad]) : std::string()) + " at flat index " +
             std::to_string(bad);
    });
  }
  add_grad(grad_output);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    detail::Node& current = **it;
    if (current.is_leaf) {
      it->reset();
      continue;
    }
    if (current.has_grad && current.backward) {
      current.backward(current.grad, current.value, std::span<Variable>(current.inputs));
      if (anomaly_enabled.load(std::memory_order_relaxed)) check_backward(current);
    }
    if (!retain_graph) {
      current.backward = nullptr;
      current.inputs.clear();
    }
    if (!current.retains_grad) {
      current.grad = Array();
      current.has_grad = false;
      current.grad_is_zero = false;
    }
    // Every consumer of this node came earlier in the sweep: drop our hold on it now, so that
    // without retain_graph its value is freed as soon as nothing else needs it.
    it->reset();
  }
}

Variable Variable::detach() const { return Variable(node().value, false); }

Variable make_op(std::string name, Array value, std::vector<Variable> inputs, BackwardFn backward) {
  if (anomaly_enabled.load(std::memory_order_relaxed)) check_forward(name, value, inputs);
  Variable result(std::move(value), false);
  if (!grad_enabled) return result;
  const bool any_requires_grad =
      std::any_of(inputs.begin(), inputs.end(), [](const Variable& v) { return v.requires_grad(); });
  if (!any_requires_grad) return result;
  detail::Node& n = *result.node_;
  n.op = std::move(name);
  n.is_leaf = false;
  n.requires_grad = true;
  n.inputs = std::move(inputs);
  n.backward = std::move(backward);
  return result;
}

bool is_grad_enabled() { return grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(grad_enabled) { grad_enabled = false; }
NoGradGuard::~NoGradGuard() { grad_enabled = previous_; }
std::size_t live_node_count() { return live_nodes.load(); }

void set_detect_anomaly(bool enabled) { anomaly_enabled = enabled; }
bool is_anomaly_enabled() { return anomaly_enabled.load(); }
AnomalyModeGuard::AnomalyModeGuard(bool enabled) : previous_(anomaly_enabled.exchange(enabled)) {}
AnomalyModeGuard::~AnomalyModeGuard() { anomaly_enabled = previous_; }

}  // namespace qkv
