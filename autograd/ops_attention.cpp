// Dense attention on heads where they lie: the checks, then autograd/attention_kernels.*. The
// two ops split attention where a user may look — the weights are a Variable like any other,
// differentiable and hookable — and fuse everything on either side of them.
#include <memory>
#include <string>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/kernels.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

namespace {

std::string describe(const HeadView& view) {
  return to_string(view.tensor.shape()) + " read as " + std::to_string(view.heads) + " heads of " +
         std::to_string(view.head_dim) + " at " + std::to_string(view.steps) + " steps";
}

/// A view built by hand could reach past its tensor: every head's last float must lie inside it.
void check_inside(const char* op, const char* name, const HeadView& view) {
  check_shape(view.tensor.defined() && !view.tensor.shape().empty(), op,
              [&] { return std::string(name) + " needs a tensor with a batch axis"; });
  const std::size_t batch = view.tensor.dim(0);
  if (batch == 0 || view.heads == 0 || view.steps == 0 || view.head_dim == 0) return;
  const kernels::HeadStrides at = view.at;
  const std::size_t last = at.offset + (batch - 1) * at.batch + (view.heads - 1) * at.head +
                           (view.steps - 1) * at.step + view.head_dim - 1;
  check_shape(last < view.tensor.numel(), op, [&] {
    return std::string(name) + " " + describe(view) + " reaches float " + std::to_string(last) + " of a tensor of " +
           std::to_string(view.tensor.numel()) + " (make views with head_view or head_view_of_rows)";
  });
}

/// The shape of the weights of q attending over k: [B, H, Tq, Tk].
Shape weights_shape(const HeadView& q, const HeadView& k) { return {q.tensor.dim(0), q.heads, q.steps, k.steps}; }

kernels::AttentionDims dims_of(const Shape& weights, const HeadView& kv) {
  return {weights[0], weights[1], kv.heads, weights[2], weights[3], kv.head_dim};
}

}  // namespace

HeadView head_view_of_rows(const Variable& rows, std::size_t heads, std::size_t first_column, std::size_t columns) {
  const Shape shape = rows.shape();
  check_shape(shape.size() == 3 && heads > 0 && columns % heads == 0 && first_column + columns <= shape[2],
              "head_view_of_rows", [&] {
    return "needs [B, T, C] with columns [" + std::to_string(first_column) + ", " +
           std::to_string(first_column + columns) + ") inside C and divisible by the " + std::to_string(heads) +
           " heads, got " + to_string(shape);
  });
  const std::size_t d = columns / heads;
  return {rows, heads, shape[1], d, {.batch = shape[1] * shape[2], .head = d, .step = shape[2], .offset = first_column}};
}

HeadView head_view(const Variable& x) {
  const Shape shape = x.shape();
  check_shape(shape.size() == 4, "head_view", [&] { return "needs [B, H, T, d], got " + to_string(shape); });
  return {x, shape[1], shape[2], shape[3],
          {.batch = shape[1] * shape[2] * shape[3], .head = shape[2] * shape[3], .step = shape[3], .offset = 0}};
}

Variable attention_weights(const HeadView& q, const HeadView& k, const std::optional<BoolArray>& allowed, real scale) {
  constexpr const char* kOp = "attention_weights";
  const auto shapes = [&] { return "q " + describe(q) + ", k " + describe(k); };
  check_inside(kOp, "q", q);
  check_inside(kOp, "k", k);
  check_shape(q.tensor.dim(0) == k.tensor.dim(0), kOp,
              [&] { return "q and k must hold the same sentences, got " + shapes(); });
  check_shape(q.head_dim == k.head_dim && q.head_dim > 0, kOp,
              [&] { return "q and k must have the same (positive) head size, got " + shapes(); });
  check_shape(k.heads > 0 && q.heads % k.heads == 0, kOp,
              [&] { return "the key heads must divide the query heads, got " + shapes(); });
  const Shape shape = weights_shape(q, k);
  Shape mask_strides(4, 0);
  if (allowed) {
    const Shape mask_shape = shape_of(*allowed);
    check_shape(broadcasts_to(mask_shape, shape), kOp, [&] {
      return "allowed mask " + to_string(mask_shape) + " does not broadcast to the weights " + to_string(shape) + " (" +
             shapes() + ")";
    });
    mask_strides = broadcast_strides(mask_shape, shape);
  }
  Array out = Array::from_shape(shape);  // [B, H, Tq, Tk]
  const kernels::AttentionDims dims = dims_of(shape, k);
  kernels::attention_weights_forward(dims, q.tensor.value().data(), q.at, k.tensor.value().data(), k.at,
                                     allowed ? allowed->data() : nullptr, mask_strides, scale, out.data());
  return make_op(kOp, std::move(out), {q.tensor, k.tensor},
                 [dims, q_at = q.at, k_at = k.at, scale](const Array& g, const Array& weights, std::span<Variable> in) {
    // q and k may be one tensor (a stacked projection): each adds into its own columns.
    real* grad_q = in[0].requires_grad() ? in[0].grad_buffer().data() : nullptr;
    real* grad_k = in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr;
    if (grad_q == nullptr && grad_k == nullptr) return;
    kernels::attention_weights_backward(dims, g.data(), weights.data(), in[0].value().data(), q_at,
                                        in[1].value().data(), k_at, scale, grad_q, grad_k);
  });
}

Variable attend_values(const Variable& weights, const HeadView& v, real p, bool training, Rng& rng) {
  constexpr const char* kOp = "attend_values";
  check_range(kOp, "dropout probability p", p, 0, 1, true);  // NaN fails too
  check_inside(kOp, "v", v);
  const Shape shape = weights.shape();
  const auto shapes = [&] { return "weights " + to_string(shape) + ", v " + describe(v); };
  check_shape(shape.size() == 4 && v.tensor.dim(0) == shape[0] && v.steps == shape[3] &&
                  v.heads > 0 && shape[1] % v.heads == 0 && v.head_dim > 0,
              kOp, [&] {
    return "needs weights [B, H, Tq, Tk] and values of the same B with Tk steps and a number of heads dividing H, got " +
           shapes();
  });
  const std::size_t count = weights.numel();
  // The dropout op's mask, drawn as it draws it: nothing when it would return its input, no
  // draw when it drops everything, the global batch's decisions under a batch shard.
  std::shared_ptr<std::uint8_t[]> keep;
  real keep_scale = 1;
  if (training && p > 0) {
    keep.reset(new std::uint8_t[count]);  // 1 kept, 0 dropped; every byte written
    if (p == 1) {
      std::fill_n(keep.get(), count, std::uint8_t{0});
      keep_scale = 0;  // 1/(1 - p) would be infinite: every weight is dropped, and so is its gradient
    } else if (const kernels::BatchShard* shard = kernels::current_batch_shard()) {
      check_shape(shape[0] % shard->rows == 0, kOp, [&] {
        return "under a batch shard of " + std::to_string(shard->rows) + " rows, the weights' first axis must hold " +
               "the batch, got " + shapes();
      });
      Array dropped = Array::from_shape(shape);  // the dropout op's output, not needed here
      kernels::dropout_forward_shard(weights.value().data(), p, rng, *shard, 1, count / shard->rows, keep.get(),
                                     dropped.data());
      keep_scale = real(1) / (real(1) - p);
    } else {
      kernels::dropout_mask(p, rng, count, keep.get());
      keep_scale = real(1) / (real(1) - p);
    }
  }
  Array out = Array::from_shape({shape[0], shape[2], shape[1] * v.head_dim});  // [B, Tq, H·d]
  const kernels::AttentionDims dims = dims_of(shape, v);
  kernels::attend_values_forward(dims, weights.value().data(), keep.get(), keep_scale, v.tensor.value().data(), v.at,
                                 out.data());
  return make_op(kOp, std::move(out), {weights, v.tensor},
                 [dims, keep, keep_scale, v_at = v.at](const Array& g, const Array&, std::span<Variable> in) {
    const GradientOut grad_weights = in[0].requires_grad() ? in[0].gradient_out() : GradientOut{};
    real* grad_v = in[1].requires_grad() ? in[1].grad_buffer().data() : nullptr;
    if (grad_weights.data == nullptr && grad_v == nullptr) return;
    kernels::attend_values_backward(dims, g.data(), in[0].value().data(), keep.get(), keep_scale,
                                    in[1].value().data(), v_at, grad_weights, grad_v);
  });
}

}  // namespace qkv
