// Matrix products through BLAS gemm with transpose flags: transposed operands are read in
// place, never copied, and gradients are accumulated straight into their buffers (beta = 1).
#include <algorithm>
#include <memory>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/kernels.hpp"
#include "lib/numerics/parallel.hpp"

namespace qkv {

namespace {

bool transposed(Trans t) { return t == Trans::Yes; }
Trans flip(Trans t) { return transposed(t) ? Trans::No : Trans::Yes; }

/// Where each product of a batched matmul reads and writes, worked out once in the forward
/// pass and reused by the backward.
struct MatmulPlan {
  std::size_t m = 0, n = 0, k = 0;
  std::size_t a_cols = 0, b_cols = 0;  // row strides of A and B as stored
  std::vector<std::size_t> a_offsets, b_offsets;  // per output matrix, in elements
  bool folded = false;  // A's batch dims folded into M: one gemm for the whole batch
  bool a_broadcast = false, b_broadcast = false;  // an operand shared by several products
};

// Products smaller than this many multiply-adds (attention's [T, d] × [d, T] per head) are
// shared out among threads whole, a chunk of products per thread.
constexpr std::size_t products_per_chunk_work = std::size_t{1} << 16;

/// Chunk size, in products, for a batch of `count` products of m·n·k multiply-adds each.
std::size_t products_per_chunk(std::size_t m, std::size_t n, std::size_t k) {
  return std::max<std::size_t>(1, products_per_chunk_work / std::max<std::size_t>(m * n * k, 1));
}

std::string matmul_shapes(const Shape& a, Trans ta, const Shape& b, Trans tb) {
  return to_string(a) + (transposed(ta) ? "ᵀ" : "") + " by " + to_string(b) + (transposed(tb) ? "ᵀ" : "");
}

}  // namespace

Variable matmul(const Variable& a, const Variable& b, Trans ta, Trans tb, real scale) {
  const Shape sa = a.shape(), sb = b.shape();
  check_shape(sa.size() >= 2 && sb.size() >= 2, "matmul",
              [&] { return "operands need at least 2 dims, got " + matmul_shapes(sa, ta, sb, tb); });
  auto plan = std::make_shared<MatmulPlan>();
  const std::size_t ra = sa[sa.size() - 2], ca = sa.back(), rb = sb[sb.size() - 2], cb = sb.back();
  plan->m = transposed(ta) ? ca : ra;
  plan->k = transposed(ta) ? ra : ca;
  const std::size_t kb = transposed(tb) ? cb : rb;
  plan->n = transposed(tb) ? rb : cb;
  plan->a_cols = ca;
  plan->b_cols = cb;
  check_shape(plan->k == kb, "matmul", [&] {
    return "cannot multiply " + matmul_shapes(sa, ta, sb, tb) + ": inner dimensions " + std::to_string(plan->k) +
           " and " + std::to_string(kb) + " differ";
  });

  const Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  Shape batch;
  try {
    batch = broadcast_shapes("matmul", batch_a, batch_b);
  } catch (const ShapeError&) {
    // broadcast_shapes names only the batch dims; the user needs to see the operands.
    throw ShapeError("matmul: cannot multiply " + matmul_shapes(sa, ta, sb, tb) + ": batch dimensions " +
                     to_string(batch_a) + " and " + to_string(batch_b) + " do not broadcast");
  }
  Shape out_shape = batch;
  out_shape.push_back(plan->m);
  out_shape.push_back(plan->n);
  Array out = Array::from_shape(out_shape);
  const std::size_t count = numel(batch);
  const std::size_t m = plan->m, n = plan->n, k = plan->k;

  // [B..., M, K] x [K, N]: A's rows are contiguous across the batch, so it is one gemm.
  plan->folded = batch_b.empty() && !transposed(ta);
  if (plan->folded) {
    blas::gemm(ta, tb, count * m, n, k, scale, a.value().data(), plan->a_cols, b.value().data(), plan->b_cols,
               0, out.data(), n);
  } else {
    const Shape a_strides = broadcast_strides(batch_a, batch), b_strides = broadcast_strides(batch_b, batch);
    const std::size_t a_size = ra * ca, b_size = rb * cb;
    plan->a_offsets.resize(count);
    plan->b_offsets.resize(count);
    const Shape batch_strides = strides_of(batch);
    for (std::size_t i = 0; i < count; ++i) {
      std::size_t rest = i, oa = 0, ob = 0;
      for (std::size_t d = 0; d < batch.size(); ++d) {
        const std::size_t index = rest / batch_strides[d];
        rest %= batch_strides[d];
        oa += index * a_strides[d];
        ob += index * b_strides[d];
      }
      plan->a_offsets[i] = oa * a_size;
      plan->b_offsets[i] = ob * b_size;
    }
    plan->a_broadcast = numel(batch_a) != count;
    plan->b_broadcast = numel(batch_b) != count;
    // Each product writes its own output matrix, so the products can run on any thread.
    parallel::for_chunks(count, products_per_chunk(m, n, k), [&](std::size_t first, std::size_t last) {
      for (std::size_t i = first; i < last; ++i)
        blas::gemm(ta, tb, m, n, k, scale, a.value().data() + plan->a_offsets[i], plan->a_cols,
                   b.value().data() + plan->b_offsets[i], plan->b_cols, 0, out.data() + i * m * n, n);
    });
  }

  return make_op("matmul", std::move(out), {a, b},
                 [plan, ta, tb, scale](const Array& g, const Array&, std::span<Variable> in) {
    const MatmulPlan& p = *plan;
    const real* pa = in[0].value().data();
    const real* pb = in[1].value().data();
    const std::size_t m = p.m, n = p.n, k = p.k;
    // C = op(A) op(B): d op(A) = dC op(B)ᵀ and d op(B) = op(A)ᵀ dC. When an operand is
    // stored transposed, its stored gradient is the transpose of that, which gemm computes by
    // swapping the factors: dA_stored = op(B) dCᵀ, dB_stored = dCᵀ op(A).
    if (p.folded) {
      // Each gradient is one gemm over the whole buffer: a fresh buffer is written (beta 0).
      const std::size_t rows = g.size() / n;  // batch * M
      if (in[0].requires_grad()) {
        const GradientOut da = in[0].gradient_out();
        blas::gemm(Trans::No, flip(tb), rows, k, n, scale, g.data(), n, pb, p.b_cols, da.beta(), da.data, k);
      }
      if (in[1].requires_grad()) {
        const GradientOut db = in[1].gradient_out();
        if (transposed(tb))
          blas::gemm(Trans::Yes, Trans::No, n, k, rows, scale, g.data(), n, pa, p.a_cols, db.beta(), db.data, p.b_cols);
        else
          blas::gemm(Trans::Yes, Trans::No, k, n, rows, scale, pa, p.a_cols, g.data(), n, db.beta(), db.data, p.b_cols);
      }
      return;
    }
    // Runs product(i, grad, beta) for every product i into `input`'s gradient. A broadcast
    // operand's products add up into one zeroed buffer, in order on one thread; otherwise each
    // product owns its slice, a fresh buffer is written (beta 0) and threads share them out.
    const auto for_each_gradient = [&](Variable& input, bool broadcast, const auto& product) {
      const GradientOut grad = broadcast ? GradientOut{input.grad_buffer().data()} : input.gradient_out();
      const auto products = [&](std::size_t first, std::size_t last) {
        for (std::size_t i = first; i < last; ++i) product(i, grad.data, grad.beta());
      };
      if (broadcast) products(0, p.a_offsets.size());
      else parallel::for_chunks(p.a_offsets.size(), products_per_chunk(m, n, k), products);
    };
    if (in[0].requires_grad())
      for_each_gradient(in[0], p.a_broadcast, [&](std::size_t i, real* da, real beta) {
        const real* gi = g.data() + i * m * n;
        const real* bi = pb + p.b_offsets[i];
        real* dai = da + p.a_offsets[i];
        if (transposed(ta)) blas::gemm(tb, Trans::Yes, k, m, n, scale, bi, p.b_cols, gi, n, beta, dai, p.a_cols);
        else blas::gemm(Trans::No, flip(tb), m, k, n, scale, gi, n, bi, p.b_cols, beta, dai, p.a_cols);
      });
    if (in[1].requires_grad())
      for_each_gradient(in[1], p.b_broadcast, [&](std::size_t i, real* db, real beta) {
        const real* gi = g.data() + i * m * n;
        const real* ai = pa + p.a_offsets[i];
        real* dbi = db + p.b_offsets[i];
        if (transposed(tb)) blas::gemm(Trans::Yes, ta, n, k, m, scale, gi, n, ai, p.a_cols, beta, dbi, p.b_cols);
        else blas::gemm(flip(ta), Trans::No, k, n, m, scale, ai, p.a_cols, gi, n, beta, dbi, p.b_cols);
      });
  });
}

namespace {

/// linear's checks, product and graph node; `transposed` (Wᵀ [in, out]) when prepared.
Variable linear_impl(const Variable& x, const Variable& weight, const Array* transposed, const Variable& bias) {
  const Shape sx = x.shape(), sw = weight.shape();
  check_shape(sw.size() == 2, "linear", [&] { return "weight must be [out, in], got " + to_string(sw); });
  check_shape(!sx.empty() && sx.back() == sw[1], "linear", [&] {
    return "input " + to_string(sx) + " does not end in the weight's input size " + std::to_string(sw[1]) +
           " (weight " + to_string(sw) + ")";
  });
  const std::size_t in_features = sw[1], out_features = sw[0];
  if (bias.defined())
    check_shape(bias.shape() == Shape{out_features}, "linear",
                [&] { return "bias " + to_string(bias.shape()) + " does not match weight " + to_string(sw); });
  const std::size_t rows = x.numel() / in_features;
  Shape out_shape = sx;
  out_shape.back() = out_features;
  Array out = Array::from_shape(out_shape);
  real* po = out.data();
  // out[rows, out] = x[rows, in] · W[out, in]ᵀ (+ bias on every row), or · Wᵀ[in, out] as stored
  const Trans trans_w = transposed ? Trans::No : Trans::Yes;
  const real* pw = transposed ? transposed->data() : weight.value().data();
  const std::size_t ldw = transposed ? out_features : in_features;
  if (bias.defined())
    blas::gemm_plus_bias(Trans::No, trans_w, rows, out_features, in_features, x.value().data(), in_features, pw, ldw,
                         bias.value().data(), po, out_features);
  else
    blas::gemm(Trans::No, trans_w, rows, out_features, in_features, 1, x.value().data(), in_features, pw, ldw, 0,
               po, out_features);

  std::vector<Variable> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  // The backward reads W itself: dx = dy · W is the plain product already.
  return make_op("linear", std::move(out), std::move(inputs),
                 [rows, in_features, out_features](const Array& g, const Array&, std::span<Variable> in) {
    // A fresh gradient buffer is written with beta 0, one holding a gradient added to (beta 1).
    if (in[0].requires_grad()) {  // dx[rows, in] += dy[rows, out] · W[out, in]
      const GradientOut dx = in[0].gradient_out();
      blas::gemm(Trans::No, Trans::No, rows, in_features, out_features, 1, g.data(), out_features,
                 in[1].value().data(), in_features, dx.beta(), dx.data, in_features);
    }
    if (in[1].requires_grad()) {  // dW[out, in] += dyᵀ[out, rows] · x[rows, in]
      const GradientOut dw = in[1].gradient_out();
      blas::gemm(Trans::Yes, Trans::No, out_features, in_features, rows, 1, g.data(), out_features,
                 in[0].value().data(), in_features, dw.beta(), dw.data, in_features);
    }
    if (in.size() > 2 && in[2].requires_grad())  // db[out] += Σ_rows dy[rows, out]
      kernels::add_column_sums(g.data(), rows, out_features, in[2].grad_buffer().data());
  });
}

}  // namespace

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  return linear_impl(x, weight, nullptr, bias);
}

PreparedWeight prepare_weight(const Variable& weight) {
  const Shape sw = weight.shape();
  check_shape(sw.size() == 2, "prepare_weight", [&] { return "weight must be [out, in], got " + to_string(sw); });
  const std::size_t out_features = sw[0], in_features = sw[1];
  auto transposed = std::make_shared<Array>(Array::from_shape({in_features, out_features}));  // [in, out]
  blas::transpose(out_features, in_features, weight.value().data(), in_features, transposed->data());
  return {weight, std::move(transposed)};
}

Variable linear(const Variable& x, const PreparedWeight& weight, const Variable& bias) {
  const Shape sw = weight.weight.shape();
  const bool matches = weight.transposed && sw.size() == 2 && shape_of(*weight.transposed) == Shape{sw[1], sw[0]};
  check_shape(matches, "linear", [&] {
    return "the prepared weight's transposed copy must be [in, out] for weight " + to_string(sw) + ", got " +
           (weight.transposed ? to_string(shape_of(*weight.transposed)) : std::string("none"));
  });
  return linear_impl(x, weight.weight, weight.transposed.get(), bias);
}

}  // namespace qkv
