#include "autograd/attention_kernels.hpp"

#include <algorithm>
#include <vector>

#include "lib/numerics/blas.hpp"
#include "lib/numerics/kernels.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/simd.hpp"

namespace qkv::kernels {

using blas::Trans;

namespace {

// One unit of work is one (sentence b, key/value head g) pair and the query heads that read g:
// a unit writes only its own heads' weights, outputs and query gradients and its own key/value
// head's gradients, so units run in any order, on any thread, with the same result.

std::size_t group_of(const AttentionDims& dims) { return dims.heads / dims.kv_heads; }

/// Units per chunk, so that a chunk holds at least parallel::min_elements_per_chunk weights.
std::size_t units_per_chunk(const AttentionDims& dims) {
  const std::size_t weights_per_unit = std::max<std::size_t>(1, group_of(dims) * dims.queries * dims.keys);
  return std::max<std::size_t>(1, parallel::min_elements_per_chunk / weights_per_unit);
}

/// unit(b, g, scratch) for every unit, `scratch` holding `scratch_floats` floats of the chunk's
/// own (allocated once a chunk, not once a unit).
template <class Unit>
void for_units(const AttentionDims& dims, std::size_t scratch_floats, const Unit& unit) {
  parallel::for_chunks(dims.batch * dims.kv_heads, units_per_chunk(dims), [&](std::size_t first, std::size_t last) {
    std::vector<real> scratch(scratch_floats);
    for (std::size_t u = first; u < last; ++u) unit(u / dims.kv_heads, u % dims.kv_heads, scratch.data());
  });
}

/// The first float of head h of sentence b (step 0).
const real* head_start(const real* x, HeadStrides at, std::size_t b, std::size_t h) {
  return x + at.offset + b * at.batch + h * at.head;
}
real* head_start(real* x, HeadStrides at, std::size_t b, std::size_t h) {
  return x + at.offset + b * at.batch + h * at.head;
}

/// The dropped-out weights of one head, a = weights ⊙ keep · keep_scale, as the dropout op forms them.
QKV_SIMD_CLONES void dropped_out(const real* weights, const std::uint8_t* keep, real keep_scale, std::size_t count,
                                 real* a) {
  for (std::size_t i = 0; i < count; ++i) a[i] = weights[i] * (keep_scale * static_cast<real>(keep[i]));
}

/// The a one head multiplies v by, from element `offset` of the [B, H, Tq, Tk] weights: the
/// weights themselves without a dropout mask, their dropped-out copy in `scratch` with one.
const real* attended_head(const real* weights, const std::uint8_t* keep, real keep_scale, std::size_t offset,
                          std::size_t count, real* scratch) {
  if (keep == nullptr) return weights + offset;
  dropped_out(weights + offset, keep + offset, keep_scale, count, scratch);
  return scratch;
}

}  // namespace

// Each head's products are the ones the unfused ops run — blas::gemm on the same operands, read
// in place through their row strides — so they take the same kernels and give the same bits. A
// head's gradient is added in place by its gemm (beta 1): into the zeroed buffer of a projection
// that only this attention reads, the same bits as the unfused ops' fresh product added to it.

void attention_weights_forward(const AttentionDims& dims, const real* q, HeadStrides q_at, const real* k,
                               HeadStrides k_at, const bool* allowed, const Shape& mask_strides, real scale,
                               real* weights) {
  const std::size_t group = group_of(dims), Tq = dims.queries, Tk = dims.keys, d = dims.head_dim;
  for_units(dims, 0, [&](std::size_t b, std::size_t g, real*) {
    const real* k_head = head_start(k, k_at, b, g);  // [Tk, d], rows k_at.step apart
    for (std::size_t h = g * group; h < (g + 1) * group; ++h) {
      real* head_weights = weights + (b * dims.heads + h) * Tq * Tk;  // [Tq, Tk]: the scores, then the weights
      blas::gemm(Trans::No, Trans::Yes, Tq, Tk, d, scale, head_start(q, q_at, b, h), q_at.step, k_head, k_at.step, 0,
                 head_weights, Tk);
      // Without a mask, softmax's rows (masked_softmax_row's exps may differ from them in the last bit).
      if (allowed == nullptr) {
        softmax_rows(head_weights, head_weights, Tq, Tk);
        continue;
      }
      for (std::size_t i = 0; i < Tq; ++i)
        masked_softmax_row(head_weights + i * Tk, allowed + b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2],
                           mask_strides[3], Tk, head_weights + i * Tk);
    }
  });
}

void attention_weights_backward(const AttentionDims& dims, const real* grad_weights, const real* weights,
                                const real* q, HeadStrides q_at, const real* k, HeadStrides k_at, real scale,
                                real* grad_q, real* grad_k) {
  const std::size_t group = group_of(dims), Tq = dims.queries, Tk = dims.keys, d = dims.head_dim;
  for_units(dims, Tq * Tk, [&](std::size_t b, std::size_t g, real* grad_scores) {  // grad_scores [Tq, Tk]
    const real* k_head = head_start(k, k_at, b, g);
    for (std::size_t h = g * group; h < (g + 1) * group; ++h) {
      const std::size_t head_weights = (b * dims.heads + h) * Tq * Tk;
      for (std::size_t i = 0; i < Tq; ++i)
        softmax_backward_row(grad_weights + head_weights + i * Tk, weights + head_weights + i * Tk, Tk,
                             GradientOut{grad_scores + i * Tk, false});
      // The scale goes into dS rather than into the products: a gemm adds into the heads in
      // place only with alpha 1 (blas.cpp). For a power-of-two scale (1/√d_k at d_k = 4^n) the
      // product is exact, and the bits are the unfused ops'.
      if (scale != real(1))
        for (std::size_t i = 0; i < Tq * Tk; ++i) grad_scores[i] *= scale;
      if (grad_q != nullptr)  // dq += dS k
        blas::gemm(Trans::No, Trans::No, Tq, d, Tk, 1, grad_scores, Tk, k_head, k_at.step, 1,
                   head_start(grad_q, q_at, b, h), q_at.step);
      if (grad_k != nullptr)  // dk += dSᵀ q
        blas::gemm(Trans::Yes, Trans::No, Tk, d, Tq, 1, grad_scores, Tk, head_start(q, q_at, b, h), q_at.step,
                   1, head_start(grad_k, k_at, b, g), k_at.step);
    }
  });
}

void attend_values_forward(const AttentionDims& dims, const real* weights, const std::uint8_t* keep,
                           real keep_scale, const real* v, HeadStrides v_at, real* out) {
  const std::size_t group = group_of(dims), Tq = dims.queries, Tk = dims.keys, d = dims.head_dim;
  const std::size_t out_row = dims.heads * d;
  for_units(dims, keep ? Tq * Tk : 0, [&](std::size_t b, std::size_t g, real* attended) {  // attended [Tq, Tk]
    const real* v_head = head_start(v, v_at, b, g);
    for (std::size_t h = g * group; h < (g + 1) * group; ++h) {
      const real* a = attended_head(weights, keep, keep_scale, (b * dims.heads + h) * Tq * Tk, Tq * Tk, attended);
      blas::gemm(Trans::No, Trans::No, Tq, d, Tk, 1, a, Tk, v_head, v_at.step, 0, out + b * Tq * out_row + h * d,
                 out_row);
    }
  });
}

void attend_values_backward(const AttentionDims& dims, const real* grad_out, const real* weights,
                            const std::uint8_t* keep, real keep_scale, const real* v, HeadStrides v_at,
                            GradientOut grad_weights, real* grad_v) {
  const std::size_t group = group_of(dims), Tq = dims.queries, Tk = dims.keys, d = dims.head_dim;
  const std::size_t out_row = dims.heads * d;
  for_units(dims, keep ? 2 * Tq * Tk : 0, [&](std::size_t b, std::size_t g, real* scratch) {
    real* attended = scratch;                  // [Tq, Tk]
    real* grad_attended = keep ? scratch + Tq * Tk : nullptr;  // [Tq, Tk]
    const real* v_head = head_start(v, v_at, b, g);
    for (std::size_t h = g * group; h < (g + 1) * group; ++h) {
      const std::size_t head_weights = (b * dims.heads + h) * Tq * Tk;
      const real* grad_head_out = grad_out + b * Tq * out_row + h * d;  // [Tq, d], rows out_row apart
      if (grad_weights.data) {  // d(weights) = (grad vᵀ) ⊙ keep · keep_scale, the dropout op's backward
        real* to = grad_weights.data + head_weights;
        if (keep) {
          blas::gemm(Trans::No, Trans::Yes, Tq, Tk, d, 1, grad_head_out, out_row, v_head, v_at.step, 0,
                     grad_attended, Tk);
          const std::uint8_t* head_keep = keep + head_weights;
          if (grad_weights.accumulate)
            for (std::size_t i = 0; i < Tq * Tk; ++i) to[i] += grad_attended[i] * (keep_scale * static_cast<real>(head_keep[i]));
          else
            for (std::size_t i = 0; i < Tq * Tk; ++i) to[i] = grad_attended[i] * (keep_scale * static_cast<real>(head_keep[i]));
        } else {
          blas::gemm(Trans::No, Trans::Yes, Tq, Tk, d, 1, grad_head_out, out_row, v_head, v_at.step,
                     grad_weights.beta(), to, Tk);
        }
      }
      if (grad_v) {  // dv += aᵀ grad
        const real* a = attended_head(weights, keep, keep_scale, head_weights, Tq * Tk, attended);
        blas::gemm(Trans::Yes, Trans::No, Tk, d, Tq, 1, a, Tk, grad_head_out, out_row, 1, head_start(grad_v, v_at, b, g),
                   v_at.step);
      }
    }
  });
}

}  // namespace qkv::kernels
