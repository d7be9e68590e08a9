// The block-sparse attention op: checks, then the fused kernel of autograd/block_sparse_kernels.*;
// the backward keeps one log-sum-exp per query row, never the [B, H, Tq, Tk] weights.
#include <memory>
#include <string>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

Variable block_sparse_attention(const Variable& q, const Variable& k, const Variable& v,
                                const BlockSparseLayout& layout, const std::optional<BoolArray>& allowed, real scale) {
  constexpr const char* kOp = "block_sparse_attention";
  const Shape sq = q.shape(), sk = k.shape(), sv = v.shape();
  const auto shapes = [&] { return "q " + to_string(sq) + ", k " + to_string(sk) + ", v " + to_string(sv); };
  check_shape(sq.size() == 4 && sk.size() == 4 && sv.size() == 4, kOp,
              [&] { return "q, k and v must be [B, H, T, d], got " + shapes(); });
  check_shape(sk[0] == sq[0] && sv[0] == sq[0] && sk[1] == sq[1] && sv[1] == sq[1], kOp,
              [&] { return "q, k and v must have the same B and H, got " + shapes(); });
  check_shape(sk[3] == sq[3] && sv[2] == sk[2], kOp, [&] {
    return "q and k must have the same d, and k and v the same number of steps, got " + shapes();
  });
  check_shape(layout.queries == sq[2] && layout.keys == sk[2], kOp, [&] {
    return "the layout covers " + std::to_string(layout.queries) + " queries x " + std::to_string(layout.keys) +
           " keys, but the call has " + shapes();
  });
  check_arg(layout.block_size > 0 && layout.tile_rows.size() == layout.offsets.size() &&
                (layout.tile_rows.empty() ? sq[2] == 0 : layout.tile_rows.back() == sq[2]) &&
                (layout.offsets.empty() || layout.offsets.back() == layout.entries.size()),
            kOp, [&] { return "the layout is inconsistent (block_size " + std::to_string(layout.block_size) +
                              ", " + std::to_string(layout.tiles()) + " tiles) for " + shapes(); });
  for (const BlockSparseLayout::Entry& entry : layout.entries)
    check_arg(entry.key_block < layout.key_blocks(), kOp, [&] {
      return "the layout lists key block " + std::to_string(entry.key_block) + " of " +
             std::to_string(layout.key_blocks()) + " for " + shapes();
    });

  const Shape score_shape{sq[0], sq[1], sq[2], sk[2]};
  kernels::BlockSparseProblem problem;
  problem.batch = sq[0], problem.heads = sq[1], problem.head_dim = sq[3], problem.value_dim = sv[3];
  problem.scale = scale;
  auto saved_mask = allowed ? std::make_shared<const BoolArray>(*allowed) : nullptr;
  if (saved_mask) {
    const Shape mask_shape = shape_of(*saved_mask);
    check_shape(broadcasts_to(mask_shape, score_shape), kOp, [&] {
      return "allowed mask " + to_string(mask_shape) + " does not broadcast to the scores " + to_string(score_shape) +
             " (" + shapes() + ")";
    });
    const Shape strides = broadcast_strides(mask_shape, score_shape);
    for (std::size_t a = 0; a < 4; ++a) problem.mask_strides[a] = strides[a];
  }
  auto saved_layout = std::make_shared<const BlockSparseLayout>(layout);

  Array out = Array::from_shape({sq[0], sq[1], sq[2], sv[3]});  // [B, H, Tq, dv]
  auto logsumexp = std::make_shared<Array>(Array::from_shape({sq[0], sq[1], sq[2]}));  // [B, H, Tq]
  problem.layout = saved_layout.get();
  problem.mask = saved_mask ? saved_mask->data() : nullptr;
  kernels::block_sparse_attention_forward(problem, q.value().data(), k.value().data(), v.value().data(), out.data(),
                                          logsumexp->data());
  return make_op(kOp, std::move(out), {q, k, v},
                 [problem, saved_layout, saved_mask, logsumexp](const Array& g, const Array& y,
                                                                std::span<Variable> in) {
                   kernels::BlockSparseProblem p = problem;  // the saved copies outlive the forward's
                   p.layout = saved_layout.get();
                   p.mask = saved_mask ? saved_mask->data() : nullptr;
                   const auto wanted = [&](std::size_t i) {
                     return in[i].requires_grad() ? in[i].gradient_out() : GradientOut{};
                   };
                   const GradientOut dq = wanted(0), dk = wanted(1), dv = wanted(2);
                   kernels::block_sparse_attention_backward(p, in[0].value().data(), in[1].value().data(),
                                                            in[2].value().data(), y.data(), logsumexp->data(),
                                                            g.data(), dq, dk, dv);
                 });
}

}  // namespace qkv
