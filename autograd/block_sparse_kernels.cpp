#include "autograd/block_sparse_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/vector_math.hpp"

namespace qkv {

std::size_t BlockSparseLayout::allowed_pairs() const {
  std::size_t count = 0;
  for (std::size_t t = 0; t < tiles(); ++t)
    for (std::size_t e = offsets[t]; e < offsets[t + 1]; ++e) {
      const std::size_t c0 = entries[e].key_block * block_size, c1 = std::min(c0 + block_size, keys);
      for (std::size_t i = tile_rows[t]; i < tile_rows[t + 1]; ++i)
        for (std::size_t j = c0; j < c1; ++j) count += allows(entries[e], i, j);
    }
  return count;
}

namespace kernels {

namespace {

constexpr real kMinusInf = -std::numeric_limits<real>::infinity();

/// scores [rows, cols] = scale · q[r0:r1] k[c0:c1]ᵀ, with -inf wherever the layout's rule or the
/// extra mask forbids the element. Returns false when no element of the block is allowed.
bool block_scores(const BlockSparseProblem& p, std::size_t b, std::size_t h, const BlockSparseLayout::Entry& entry,
                  std::size_t r0, std::size_t r1, std::size_t c0, std::size_t c1, const real* q, const real* k,
                  real* scores) {
  const BlockSparseLayout& layout = *p.layout;
  const std::size_t rows = r1 - r0, cols = c1 - c0, d = p.head_dim;
  blas::gemm(blas::Trans::No, blas::Trans::Yes, rows, cols, d, p.scale, q + r0 * d, d, k + c0 * d, d, 0, scores,
             cols);  // [rows, cols]
  // A block needs element checks only when the causal edge, a global-only pair or the extra
  // mask cuts through it.
  const bool cut_by_causal = layout.causal && c1 - 1 > layout.query_start + r0;
  if (entry.whole && !cut_by_causal && p.mask == nullptr) return true;
  bool any = false;
  const bool* mask = p.mask ? p.mask + b * p.mask_strides[0] + h * p.mask_strides[1] : nullptr;
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) {
      const bool ok = layout.allows(entry, r0 + i, c0 + j) &&
                      (!mask || mask[(r0 + i) * p.mask_strides[2] + (c0 + j) * p.mask_strides[3]]);
      if (!ok) scores[i * cols + j] = kMinusInf;
      any = any || ok;
    }
  return any;
}

}  // namespace

void block_sparse_attention_forward(const BlockSparseProblem& p, const real* q, const real* k, const real* v,
                                    real* out, real* logsumexp) {
  const BlockSparseLayout& layout = *p.layout;
  const std::size_t tq = layout.queries, tk = layout.keys, d = p.head_dim, dv = p.value_dim, bs = layout.block_size;
  const std::size_t tiles = layout.tiles();
  // One work item per (batch, head, query tile): each writes its own output rows only.
  parallel::for_chunks(p.batch * p.heads * tiles, 1, [&](std::size_t begin, std::size_t end) {
    std::vector<real> scores(bs * bs), row_max(bs), row_sum(bs), accumulator(bs * dv);
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t t = item % tiles, bh = item / tiles, b = bh / p.heads, h = bh % p.heads;
      const real* qh = q + bh * tq * d;   // [Tq, d]
      const real* kh = k + bh * tk * d;   // [Tk, d]
      const real* vh = v + bh * tk * dv;  // [Tk, dv]
      const std::size_t r0 = layout.tile_rows[t], r1 = layout.tile_rows[t + 1], rows = r1 - r0;
      std::fill(row_max.begin(), row_max.end(), kMinusInf);
      std::fill(row_sum.begin(), row_sum.end(), real(0));
      std::fill(accumulator.begin(), accumulator.end(), real(0));
      for (std::size_t e = layout.offsets[t]; e < layout.offsets[t + 1]; ++e) {
        const std::size_t c0 = layout.entries[e].key_block * bs, c1 = std::min(c0 + bs, tk), cols = c1 - c0;
        if (!block_scores(p, b, h, layout.entries[e], r0, r1, c0, c1, qh, kh, scores.data())) continue;
        // Online softmax: rescale what earlier blocks summed to the new row maximum.
        for (std::size_t i = 0; i < rows; ++i) {
          real* s = scores.data() + i * cols;
          const real block_max = *std::max_element(s, s + cols);
          if (block_max == kMinusInf) {  // nothing allowed in this row here: weights 0
            std::fill(s, s + cols, real(0));
            continue;
          }
          const real new_max = std::max(row_max[i], block_max);
          const real correction = row_max[i] == kMinusInf ? real(0) : std::exp(row_max[i] - new_max);
          // Two loops: the exp loop vectorises (vector_math's branch-free exp in float32); a sum
          // beside it would not (its order is fixed without fast-math).
          for (std::size_t j = 0; j < cols; ++j)
            s[j] = s[j] == kMinusInf ? real(0) : vector_math::exp_of(s[j] - new_max);
          real sum = 0;
          for (std::size_t j = 0; j < cols; ++j) sum += s[j];
          row_sum[i] = row_sum[i] * correction + sum;
          row_max[i] = new_max;
          if (correction != 1)
            for (std::size_t c = 0; c < dv; ++c) accumulator[i * dv + c] *= correction;
        }
        blas::gemm(blas::Trans::No, blas::Trans::No, rows, dv, cols, 1, scores.data(), cols, vh + c0 * dv, dv, 1,
                   accumulator.data(), dv);  // [rows, dv] += P [rows, cols] · v [cols, dv]
      }
      real* o = out + (bh * tq + r0) * dv;         // [rows, dv]
      real* lse = logsumexp + bh * tq + r0;        // [rows]
      for (std::size_t i = 0; i < rows; ++i) {
        const bool empty = row_sum[i] == 0;
        const real inverse = empty ? real(0) : real(1) / row_sum[i];
        for (std::size_t c = 0; c < dv; ++c) o[i * dv + c] = accumulator[i * dv + c] * inverse;
        lse[i] = empty ? kMinusInf : row_max[i] + std::log(row_sum[i]);
      }
    }
  });
}

void block_sparse_attention_backward(const BlockSparseProblem& p, const real* q, const real* k, const real* v,
                                     const real* out, const real* logsumexp, const real* grad_out, GradientOut dq,
                                     GradientOut dk, GradientOut dv) {
  const BlockSparseLayout& layout = *p.layout;
  const std::size_t tq = layout.queries, tk = layout.keys, d = p.head_dim, dvs = p.value_dim, bs = layout.block_size;
  const std::size_t tiles = layout.tiles();
  // One work item per (batch, head): dk and dv of a key block collect from every query tile,
  // so a head's tiles run in order on one thread (the same sums in the same order at any
  // thread count).
  parallel::for_chunks(p.batch * p.heads, 1, [&](std::size_t begin, std::size_t end) {
    std::vector<real> weights(bs * bs), grad_scores(bs * bs), row_dot(tq);
    for (std::size_t bh = begin; bh < end; ++bh) {
      const std::size_t b = bh / p.heads, h = bh % p.heads;
      const real* qh = q + bh * tq * d;
      const real* kh = k + bh * tk * d;
      const real* vh = v + bh * tk * dvs;
      const real* oh = out + bh * tq * dvs;
      const real* gh = grad_out + bh * tq * dvs;
      const real* lse = logsumexp + bh * tq;
      real* dqh = dq.data ? dq.data + bh * tq * d : nullptr;
      real* dkh = dk.data ? dk.data + bh * tk * d : nullptr;
      real* dvh = dv.data ? dv.data + bh * tk * dvs : nullptr;
      // Fresh buffers are written by adding into zeros: each element collects several blocks.
      if (dqh && !dq.accumulate) std::fill(dqh, dqh + tq * d, real(0));
      if (dkh && !dk.accumulate) std::fill(dkh, dkh + tk * d, real(0));
      if (dvh && !dv.accumulate) std::fill(dvh, dvh + tk * dvs, real(0));
      // D_i = Σ_c dO[i, c] · O[i, c] = Σ_j P[i, j] dP[i, j]: the softmax backward's row term.
      for (std::size_t i = 0; i < tq; ++i) {
        real dot = 0;
        for (std::size_t c = 0; c < dvs; ++c) dot += gh[i * dvs + c] * oh[i * dvs + c];
        row_dot[i] = dot;
      }
      for (std::size_t t = 0; t < tiles; ++t) {
        const std::size_t r0 = layout.tile_rows[t], r1 = layout.tile_rows[t + 1], rows = r1 - r0;
        for (std::size_t e = layout.offsets[t]; e < layout.offsets[t + 1]; ++e) {
          const std::size_t c0 = layout.entries[e].key_block * bs, c1 = std::min(c0 + bs, tk), cols = c1 - c0;
          if (!block_scores(p, b, h, layout.entries[e], r0, r1, c0, c1, qh, kh, weights.data())) continue;
          // P = exp(S - lse): the forward's weights, recomputed for this block only.
          for (std::size_t i = 0; i < rows; ++i) {
            real* s = weights.data() + i * cols;
            const real row_lse = lse[r0 + i];
            if (row_lse == kMinusInf) {  // a row with no allowed key: weights 0
              std::fill(s, s + cols, real(0));
              continue;
            }
            for (std::size_t j = 0; j < cols; ++j)
              s[j] = s[j] == kMinusInf ? real(0) : vector_math::exp_of(s[j] - row_lse);
          }
          if (dvh)  // dV[c0:c1] += Pᵀ dO[r0:r1]    [cols, dv]
            blas::gemm(blas::Trans::Yes, blas::Trans::No, cols, dvs, rows, 1, weights.data(), cols, gh + r0 * dvs,
                       dvs, 1, dvh + c0 * dvs, dvs);
          if (!dqh && !dkh) continue;
          // dP = dO Vᵀ [rows, cols]; dS = P ⊙ (dP - D)
          blas::gemm(blas::Trans::No, blas::Trans::Yes, rows, cols, dvs, 1, gh + r0 * dvs, dvs, vh + c0 * dvs, dvs,
                     0, grad_scores.data(), cols);
          for (std::size_t i = 0; i < rows; ++i)
            for (std::size_t j = 0; j < cols; ++j) {
              real& g = grad_scores[i * cols + j];
              g = weights[i * cols + j] * (g - row_dot[r0 + i]);
            }
          if (dqh)  // dQ[r0:r1] += scale · dS K[c0:c1]    [rows, d]
            blas::gemm(blas::Trans::No, blas::Trans::No, rows, d, cols, p.scale, grad_scores.data(), cols,
                       kh + c0 * d, d, 1, dqh + r0 * d, d);
          if (dkh)  // dK[c0:c1] += scale · dSᵀ Q[r0:r1]    [cols, d]
            blas::gemm(blas::Trans::Yes, blas::Trans::No, cols, d, rows, p.scale, grad_scores.data(), cols,
                       qh + r0 * d, d, 1, dkh + c0 * d, d);
        }
      }
    }
  });
}

}  // namespace kernels
}  // namespace qkv
