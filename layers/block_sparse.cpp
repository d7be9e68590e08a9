#include "layers/block_sparse.hpp"

#include <algorithm>
#include <utility>
#include <vector>

#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

void BlockSparsePattern::validate() const {
  check_arg(block_size > 0, "BlockSparsePattern", "block_size must be positive, got 0 (" + describe() + ")");
}

std::string BlockSparsePattern::describe() const {
  return "block_size " + std::to_string(block_size) + ", global_tokens " + std::to_string(global_tokens) +
         ", window_blocks " + std::to_string(window_blocks) + ", random_blocks " + std::to_string(random_blocks) +
         ", seed " + std::to_string(seed);
}

namespace {

/// A fixed pseudo-random rank of key block J for query block P: no stream, so any subset of
/// query blocks (one decoding step) draws what the whole sequence drew.
std::uint64_t block_rank(std::uint64_t seed, std::size_t query_block, std::size_t key_block) {
  const std::uint64_t a = splitmix64_mix(seed + splitmix64_increment * (query_block + 1));
  return splitmix64_mix(a ^ (splitmix64_increment * (key_block + 1) * 2 + 1));
}

/// Query block P's random key blocks, ascending.
std::vector<std::size_t> random_blocks_of(const BlockSparsePattern& pattern, std::size_t query_block,
                                          std::size_t key_blocks, bool causal) {
  if (pattern.random_blocks == 0 || key_blocks == 0) return {};
  const std::size_t last = causal ? std::min(query_block, key_blocks - 1) : key_blocks - 1;
  std::vector<std::pair<std::uint64_t, std::size_t>> candidates;  // (rank, key block)
  for (std::size_t j = 0; j <= last; ++j) {
    const std::size_t distance = j > query_block ? j - query_block : query_block - j;
    const bool in_window = distance <= pattern.window_blocks;
    const bool all_global = (j + 1) * pattern.block_size <= pattern.global_tokens;
    if (!in_window && !all_global) candidates.emplace_back(block_rank(pattern.seed, query_block, j), j);
  }
  const std::size_t take = std::min(pattern.random_blocks, candidates.size());
  std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(take), candidates.end());
  std::vector<std::size_t> chosen;
  for (std::size_t c = 0; c < take; ++c) chosen.push_back(candidates[c].second);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace

BlockSparseLayout block_sparse_layout(const BlockSparsePattern& pattern, std::size_t queries, std::size_t keys,
                                      std::size_t query_start, bool causal) {
  pattern.validate();
  const std::size_t bs = pattern.block_size;
  BlockSparseLayout layout;
  layout.block_size = bs;
  layout.queries = queries;
  layout.keys = keys;
  layout.query_start = query_start;
  layout.causal = causal;
  layout.global_tokens = pattern.global_tokens;
  const std::size_t key_blocks = layout.key_blocks();
  layout.tile_rows.push_back(0);
  layout.offsets.push_back(0);
  std::size_t row = 0;
  while (row < queries) {
    const std::size_t position = query_start + row, query_block = position / bs;
    const std::size_t tile_end = std::min(queries, (query_block + 1) * bs - query_start);  // local rows
    const std::size_t last_position = query_start + tile_end - 1;
    const bool global_rows = position < pattern.global_tokens;
    const std::vector<std::size_t> random = random_blocks_of(pattern, query_block, key_blocks, causal);
    for (std::size_t j = 0; j < key_blocks; ++j) {
      if (causal && j * bs > last_position) break;  // every key of the block is in the future
      const std::size_t distance = j > query_block ? j - query_block : query_block - j;
      const bool whole = distance <= pattern.window_blocks || std::binary_search(random.begin(), random.end(), j);
      const bool global_columns = j * bs < pattern.global_tokens;
      if (whole || global_columns || global_rows) layout.entries.push_back({j, whole});
    }
    row = tile_end;
    layout.tile_rows.push_back(row);
    layout.offsets.push_back(layout.entries.size());
  }
  return layout;
}

BoolArray layout_allowed(const BlockSparseLayout& layout) {
  BoolArray allowed = BoolArray::from_shape({layout.queries, layout.keys});  // [Tq, Tk]
  std::fill(allowed.begin(), allowed.end(), false);
  for (std::size_t t = 0; t < layout.tiles(); ++t)
    for (std::size_t e = layout.offsets[t]; e < layout.offsets[t + 1]; ++e) {
      const BlockSparseLayout::Entry& entry = layout.entries[e];
      const std::size_t c0 = entry.key_block * layout.block_size;
      const std::size_t c1 = std::min(c0 + layout.block_size, layout.keys);
      for (std::size_t i = layout.tile_rows[t]; i < layout.tile_rows[t + 1]; ++i)
        for (std::size_t j = c0; j < c1; ++j) allowed(i, j) = layout.allows(entry, i, j);
    }
  return allowed;
}

BoolArray block_sparse_allowed(const BlockSparsePattern& pattern, std::size_t queries, std::size_t keys,
                               std::size_t query_start, bool causal) {
  return layout_allowed(block_sparse_layout(pattern, queries, keys, query_start, causal));
}

}  // namespace qkv
