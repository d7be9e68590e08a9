#pragma once
// The block-sparse attention kernel (flash-attention style, restricted to allowed blocks) and
// the layout it walks. layers/block_sparse.hpp turns a pattern (global tokens, a sliding
// window, random blocks) into a layout; the op block_sparse_attention (autograd/ops.hpp) runs
// these kernels.
//
// The kernel never forms [B, H, Tq, Tk]: per (batch, head, query tile) it visits the layout's
// key blocks only, with an online softmax (running row maximum and sum), and keeps one
// log-sum-exp per query row for the backward, which recomputes each allowed block's scores.
// Work and memory grow with the allowed pairs, not with Tq · Tk.
#include <cstddef>
#include <optional>
#include <vector>

#include "lib/numerics/gradient_out.hpp"
#include "lib/numerics/tensor.hpp"

namespace qkv {

/// Which (query tile, key block) pairs attention visits, and which elements inside them are
/// allowed. Keys 0..Tk-1 are cut into blocks of `block_size` (the last may be short). Queries
/// sit at absolute positions query_start + i; query tile t holds rows
/// [tile_rows[t], tile_rows[t + 1]) — tiles follow the absolute blocks, so the first may be
/// short when query_start is not a multiple of block_size.
///
/// Element (query at absolute position p, key j) of a listed pair is allowed iff
///   (!causal || j <= p) && (entry.whole || j < global_tokens || p < global_tokens),
/// i.e. a pair is listed either because every element of it is allowed (window, random
/// blocks: `whole`) or because it holds global rows or columns.
struct BlockSparseLayout {
  struct Entry {
    std::size_t key_block = 0;
    bool whole = false;
  };
  std::size_t block_size = 0;
  std::size_t queries = 0;      // Tq
  std::size_t keys = 0;         // Tk
  std::size_t query_start = 0;  // absolute position of query row 0
  bool causal = false;
  std::size_t global_tokens = 0;
  std::vector<std::size_t> tile_rows;  // [tiles + 1]
  std::vector<std::size_t> offsets;    // [tiles + 1]: entries of tile t are [offsets[t], offsets[t + 1])
  std::vector<Entry> entries;          // key blocks of each tile, ascending

  std::size_t tiles() const { return tile_rows.empty() ? 0 : tile_rows.size() - 1; }
  std::size_t key_blocks() const { return (keys + block_size - 1) / block_size; }
  /// Whether query row i (local) may see key j under the rule above, for an entry of i's tile.
  bool allows(const Entry& entry, std::size_t i, std::size_t j) const {
    const std::size_t p = query_start + i;
    return (!causal || j <= p) && (entry.whole || j < global_tokens || p < global_tokens);
  }
  /// Allowed (query, key) pairs, counted element by element (for reports and benches).
  std::size_t allowed_pairs() const;
};

namespace kernels {

/// Everything one call of the kernel reads. q [B, H, Tq, d], k [B, H, Tk, d], v [B, H, Tk, dv],
/// all contiguous; `mask` (may be null) is an extra allowed mask read at element
/// mask[b·mask_strides[0] + h·mask_strides[1] + i·mask_strides[2] + j·mask_strides[3]] (strides 0
/// along broadcast axes), ANDed with the layout's rule.
struct BlockSparseProblem {
  const BlockSparseLayout* layout = nullptr;
  std::size_t batch = 0, heads = 0, head_dim = 0, value_dim = 0;
  real scale = 1;
  const bool* mask = nullptr;
  std::size_t mask_strides[4] = {0, 0, 0, 0};
};

/// out [B, H, Tq, dv] = softmax over allowed keys of (scale · q kᵀ) times v; logsumexp
/// [B, H, Tq] of each row's allowed scaled scores, -inf for a row with no allowed key (whose
/// output is 0, as masked_softmax gives such a row all-zero weights).
void block_sparse_attention_forward(const BlockSparseProblem& problem, const real* q, const real* k, const real* v,
                                    real* out, real* logsumexp);

/// The gradients of the forward's output with respect to q, k and v (each GradientOut may be
/// null: not wanted), from the output's gradient `grad_out` [B, H, Tq, dv], the forward's
/// `out` and `logsumexp`. Scores are recomputed block by block; nothing of size Tq · Tk.
void block_sparse_attention_backward(const BlockSparseProblem& problem, const real* q, const real* k, const real* v,
                                     const real* out, const real* logsumexp, const real* grad_out, GradientOut dq,
                                     GradientOut dk, GradientOut dv);

}  // namespace kernels
}  // namespace qkv
