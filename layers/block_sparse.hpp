#pragma once
// Block-sparse attention patterns (Longformer, Beltagy et al. 2020; BigBird, Zaheer et al.
// 2020): global tokens, a sliding window of blocks, and random blocks per query block. A
// pattern gives a block layout for the fused kernel (block_sparse_attention in
// autograd/ops.hpp, whose cost grows with the allowed pairs) and the same pattern as a
// BoolArray `allowed` mask [Tq, Tk], usable with any attention (AttentionMask::allowed, dense
// or additive) — the kernel and dense masked attention then give the same values.
//
// The rule, on absolute positions (query p, key j, blocks P = p / block_size, J = j / block_size):
//   p may see j  iff  (!causal || j <= p) and
//                     (j < global_tokens or p < global_tokens        — global tokens
//                      or |P - J| <= window_blocks                  — sliding window
//                      or J is one of P's random blocks)             — random blocks
// P's random blocks are the `random_blocks` blocks with the smallest hash (seed, P, J) among
// those the window and the global tokens do not already give P — over all key blocks, or
// over blocks <= P when causal, so a causal pattern does not depend on the sequence length
// (incremental decoding with a KV cache sees the same pattern as the whole-sequence pass).
#include <cstdint>
#include <string>

#include "autograd/ops.hpp"
#include "lib/numerics/enum_names.hpp"

namespace qkv {

struct BlockSparsePattern {
  std::size_t block_size = 64;
  /// The first global_tokens positions see every key and are seen by every query.
  std::size_t global_tokens = 0;
  /// Query block P sees key blocks P - window_blocks .. P + window_blocks (0: its own block).
  std::size_t window_blocks = 1;
  /// Extra key blocks per query block, drawn by the seed.
  std::size_t random_blocks = 0;
  std::uint64_t seed = 0;

  /// Throws Error naming the field for a zero block size.
  void validate() const;
  /// "block_size 64, global_tokens 64, window_blocks 1, random_blocks 2, seed 0".
  std::string describe() const;
  bool operator==(const BlockSparsePattern&) const = default;
};

/// Which attention a model's self-attention uses: every pair (dense), or a block-sparse pattern.
enum class AttentionPattern { dense, block_sparse };
constexpr EnumNames<AttentionPattern, 2> enum_names(AttentionPattern) {
  return {"attention pattern",
          {{{AttentionPattern::dense, "dense"}, {AttentionPattern::block_sparse, "block_sparse"}}}};
}

/// The pattern's layout for queries at absolute positions query_start .. query_start + Tq - 1
/// against keys 0 .. Tk - 1.
BlockSparseLayout block_sparse_layout(const BlockSparsePattern& pattern, std::size_t queries, std::size_t keys,
                                      std::size_t query_start = 0, bool causal = false);
/// The same pattern as a mask [Tq, Tk], true where a query may attend (the one polarity).
BoolArray block_sparse_allowed(const BlockSparsePattern& pattern, std::size_t queries, std::size_t keys,
                               std::size_t query_start = 0, bool causal = false);
/// A layout's mask [Tq, Tk], element by element from its rule.
BoolArray layout_allowed(const BlockSparseLayout& layout);

}  // namespace qkv
