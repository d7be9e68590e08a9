#pragma once
// The fused kernels of scaled dot-product attention (autograd/ops_attention.cpp): the weights
// softmax(scale · q kᵀ) and the output dropout(weights) · v, each head read where it lies — in
// the rows [B, T, C] of a stacked projection or in a [B, H, T, d] cache — and the output written
// as rows [B, Tq, H·d]. What they save against the unfused ops: the copies of split_heads and
// merge_heads, the scores array, the dropped-out weights and a pass over [B, H, Tq, Tk] per op.
//
// Bits: each head's products are the unfused ops' own — blas::gemm on the same operands, read in
// place through their row strides — and so are the softmax, its backward and the dropout mask
// (lib/numerics/kernels.hpp). Fused and unfused attention agree bit for bit in the forward; in
// the backward too where the scale is a power of two (tests/f32/test_fused_attention.cpp), as
// the scale is applied to dS rather than inside the products (attention_kernels.cpp says why).
//
// Same conventions as lib/numerics/kernels.hpp: raw pointers, a null gradient pointer means "not
// needed", `real*` gradients are added into, GradientOut ones written or added as they say. Work
// is shared out by (sentence, key/value head): each output element is written by one chunk, in
// one order, whatever the thread count.
#include <cstddef>
#include <cstdint>

#include "lib/numerics/gradient_out.hpp"
#include "lib/numerics/shape.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv::kernels {

/// Where one tensor's heads lie: the head_dim floats of head h at step t of sentence b start at
/// offset + b·batch + h·head + t·step (rows [B, T, C]: batch T·C, head d, step C; heads
/// [B, H, T, d]: batch H·T·d, head T·d, step d).
struct HeadStrides {
  std::size_t batch = 0, head = 0, step = 0, offset = 0;
};

/// B sentences, H query heads attending with H_kv key/value heads (query head h reads key/value
/// head h / (H / H_kv)), Tq queries, Tk keys, d floats a head.
struct AttentionDims {
  std::size_t batch = 0, heads = 0, kv_heads = 0, queries = 0, keys = 0, head_dim = 0;
};

/// weights [B, H, Tq, Tk] = softmax over the allowed keys of scale · q kᵀ. `allowed` (null:
/// every key) is read through `mask_strides`, broadcast strides against [B, H, Tq, Tk].
void attention_weights_forward(const AttentionDims& dims, const real* q, HeadStrides q_at, const real* k,
                               HeadStrides k_at, const bool* allowed, const Shape& mask_strides, real scale,
                               real* weights);
/// From grad_weights and the weights: dS = weights ⊙ (grad - Σ grad ⊙ weights) per row, then
/// grad_q += scale · dS k and grad_k += scale · dSᵀ q (grad_q, grad_k laid out as q and k).
void attention_weights_backward(const AttentionDims& dims, const real* grad_weights, const real* weights,
                                const real* q, HeadStrides q_at, const real* k, HeadStrides k_at, real scale,
                                real* grad_q, real* grad_k);

/// out [B, Tq, H·d] = a v per head, a = weights ⊙ keep · keep_scale (keep [B, H, Tq, Tk] bytes,
/// null: a = weights).
void attend_values_forward(const AttentionDims& dims, const real* weights, const std::uint8_t* keep,
                           real keep_scale, const real* v, HeadStrides v_at, real* out);
/// From grad_out [B, Tq, H·d]: grad_weights = (grad_out vᵀ) ⊙ keep · keep_scale and
/// grad_v += aᵀ grad_out (grad_v laid out as v).
void attend_values_backward(const AttentionDims& dims, const real* grad_out, const real* weights,
                            const std::uint8_t* keep, real keep_scale, const real* v, HeadStrides v_at,
                            GradientOut grad_weights, real* grad_v);

}  // namespace qkv::kernels
