// Block-sparse attention: patterns (masks by hand, layout sizes, random blocks, causal patterns
// that do not depend on the length), the fused op against dense masked attention with the same
// mask (values and gradients, partial blocks, global tokens that cut blocks, extra masks, fully
// masked rows, query offsets), float64 gradcheck, bad inputs, and MultiheadAttention's route
// (kernel vs dense, hooks, no-grad, the KV cache).
#include <memory>
#include <set>

#include <xtensor/xview.hpp>

#include "layers/block_sparse.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// The dense reference: matmul, masked_softmax, matmul — what DotProductAttention composes.
Variable dense_attention(const Variable& q, const Variable& k, const Variable& v, const BoolArray& allowed,
                         real scale) {
  return matmul(masked_softmax(matmul(q, k, Trans::No, Trans::Yes, scale), allowed), v);  // [B, H, Tq, dv]
}

BoolArray mask_of(std::initializer_list<std::initializer_list<int>> rows) {
  const std::size_t n = rows.size(), m = rows.begin()->size();
  BoolArray mask = BoolArray::from_shape({n, m});
  std::size_t i = 0;
  for (const auto& row : rows) {
    std::size_t j = 0;
    for (int x : row) mask(i, j++) = x != 0;
    ++i;
  }
  return mask;
}

/// Output and gradients of the kernel against the dense reference, for one configuration.
void check_against_dense(const BlockSparsePattern& pattern, std::size_t tq, std::size_t tk, std::size_t query_start,
                         bool causal, const std::optional<BoolArray>& extra, std::uint64_t seed) {
  const std::size_t B = 2, H = 2, d = 3, dv = 4;
  const Array qa = random_array({B, H, tq, d}, seed), ka = random_array({B, H, tk, d}, seed + 1),
              va = random_array({B, H, tk, dv}, seed + 2), ga = random_array({B, H, tq, dv}, seed + 3);
  const BlockSparseLayout layout = block_sparse_layout(pattern, tq, tk, query_start, causal);
  BoolArray allowed = layout_allowed(layout);  // [Tq, Tk]
  BoolArray dense_mask = extra ? BoolArray(allowed && *extra) : allowed;
  const real scale = real(0.7);

  Variable q1 = leaf(qa), k1 = leaf(ka), v1 = leaf(va);
  const Variable sparse = block_sparse_attention(q1, k1, v1, layout, extra, scale);
  sum(sparse * Variable(ga)).backward();
  Variable q2 = leaf(qa), k2 = leaf(ka), v2 = leaf(va);
  const Variable dense = dense_attention(q2, k2, v2, dense_mask, scale);
  sum(dense * Variable(ga)).backward();
  CHECK(max_abs_diff(sparse.value(), dense.value()) < 1e-12);
  CHECK(max_abs_diff(q1.grad(), q2.grad()) < 1e-12);
  CHECK(max_abs_diff(k1.grad(), k2.grad()) < 1e-12);
  CHECK(max_abs_diff(v1.grad(), v2.grad()) < 1e-12);
}

}  // namespace

TEST_CASE("block-sparse pattern: global tokens and a window of blocks, by hand") {
  // block 2, 1 global token, window 0 (own block), no random blocks, 6 positions.
  const BlockSparsePattern pattern{.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 0};
  const BoolArray expected = mask_of({{1, 1, 1, 1, 1, 1},
                                      {1, 1, 0, 0, 0, 0},
                                      {1, 0, 1, 1, 0, 0},
                                      {1, 0, 1, 1, 0, 0},
                                      {1, 0, 0, 0, 1, 1},
                                      {1, 0, 0, 0, 1, 1}});
  CHECK(block_sparse_allowed(pattern, 6, 6) == expected);
  const BoolArray causal = mask_of({{1, 0, 0, 0, 0, 0},
                                    {1, 1, 0, 0, 0, 0},
                                    {1, 0, 1, 0, 0, 0},
                                    {1, 0, 1, 1, 0, 0},
                                    {1, 0, 0, 0, 1, 0},
                                    {1, 0, 0, 0, 1, 1}});
  CHECK(block_sparse_allowed(pattern, 6, 6, 0, true) == causal);
  // Window 1: neighbouring blocks too; 7 positions, so the last block is short.
  const BlockSparsePattern wide{.block_size = 2, .global_tokens = 0, .window_blocks = 1};
  const BoolArray windowed = mask_of({{1, 1, 1, 1, 0, 0, 0},
                                      {1, 1, 1, 1, 0, 0, 0},
                                      {1, 1, 1, 1, 1, 1, 0},
                                      {1, 1, 1, 1, 1, 1, 0},
                                      {0, 0, 1, 1, 1, 1, 1},
                                      {0, 0, 1, 1, 1, 1, 1},
                                      {0, 0, 0, 0, 1, 1, 1}});
  CHECK(block_sparse_allowed(wide, 7, 7) == windowed);
}

TEST_CASE("block-sparse pattern: layout sizes and allowed pairs") {
  // T = 256 in blocks of 64, window 1: 2 + 3 + 3 + 2 blocks.
  const BlockSparseLayout window = block_sparse_layout({.block_size = 64, .window_blocks = 1}, 256, 256);
  CHECK(window.tiles() == 4);
  CHECK(window.key_blocks() == 4);
  CHECK(window.entries.size() == 10);
  CHECK(window.allowed_pairs() == 10 * 64 * 64);
  // One global block and 1 random block: global rows see all 4 blocks, every other row gets
  // block 0, its window and one random block (if one is left).
  const BlockSparsePattern bigbird{.block_size = 64, .global_tokens = 64, .window_blocks = 1, .random_blocks = 1,
                                   .seed = 5};
  const BlockSparseLayout layout = block_sparse_layout(bigbird, 512, 512);
  CHECK(layout.tiles() == 8);
  CHECK(layout.offsets[1] - layout.offsets[0] == 8);  // the global tile
  for (std::size_t t = 2; t < 7; ++t) CHECK(layout.offsets[t + 1] - layout.offsets[t] == 5);  // global, 3 window, 1 random
  CHECK(layout.offsets[8] - layout.offsets[7] == 4);  // global, 2 window, 1 random
  CHECK(layout.allowed_pairs() == static_cast<std::size_t>(xt::sum(layout_allowed(layout))()));
  // Query tiles follow the absolute blocks: queries from position 3 in blocks of 4.
  const BlockSparseLayout offset = block_sparse_layout({.block_size = 4}, 6, 9, 3, true);
  CHECK(offset.tile_rows == std::vector<std::size_t>{0, 1, 5, 6});
}

TEST_CASE("block-sparse pattern: random blocks are seeded, counted and causal") {
  const BlockSparsePattern pattern{.block_size = 4, .global_tokens = 0, .window_blocks = 0, .random_blocks = 2,
                                   .seed = 11};
  const BoolArray a = block_sparse_allowed(pattern, 64, 64), b = block_sparse_allowed(pattern, 64, 64);
  CHECK(a == b);
  BlockSparsePattern other = pattern;
  other.seed = 12;
  CHECK(a != block_sparse_allowed(other, 64, 64));
  // Every query block sees exactly 1 + 2 blocks (its own and two random ones).
  const BlockSparseLayout layout = block_sparse_layout(pattern, 64, 64);
  std::set<std::size_t> seen;
  for (std::size_t t = 0; t < layout.tiles(); ++t) {
    CHECK(layout.offsets[t + 1] - layout.offsets[t] == 3);
    for (std::size_t e = layout.offsets[t]; e < layout.offsets[t + 1]; ++e) seen.insert(layout.entries[e].key_block);
  }
  CHECK(seen.size() > 8);  // the draws spread over the blocks
  // Causal: random blocks only in the past, and the pattern of query p does not depend on the
  // length — a decoding step (one query at position p, keys 0..p) sees row p of the whole pass.
  const BoolArray whole = block_sparse_allowed(pattern, 40, 40, 0, true);
  for (std::size_t p = 0; p < 40; ++p) {
    const BoolArray step = block_sparse_allowed(pattern, 1, p + 1, p, true);
    for (std::size_t j = 0; j <= p; ++j) CHECK(step(0, j) == whole(p, j));
    for (std::size_t j = p + 1; j < 40; ++j) CHECK_FALSE(whole(p, j));
  }
  // Query block 9 (positions 36..39) has 2 random past blocks besides its own.
  const BlockSparseLayout causal = block_sparse_layout(pattern, 40, 40, 0, true);
  CHECK(causal.offsets[10] - causal.offsets[9] == 3);
}

TEST_CASE("block_sparse_attention equals dense masked attention with the same mask") {
  // Partial last blocks (11 = 3·3 + 2), global tokens that cut a block (2 of 3), random blocks.
  const BlockSparsePattern pattern{.block_size = 3, .global_tokens = 2, .window_blocks = 0, .random_blocks = 1,
                                   .seed = 3};
  SUBCASE("self-attention") { check_against_dense(pattern, 11, 11, 0, false, std::nullopt, 10); }
  SUBCASE("causal") { check_against_dense(pattern, 11, 11, 0, true, std::nullopt, 20); }
  SUBCASE("queries from position 4 against 11 keys, causal") { check_against_dense(pattern, 7, 11, 4, true, std::nullopt, 30); }
  SUBCASE("with a padding mask and a fully masked row") {
    BoolArray extra = BoolArray::from_shape({2, 1, 11, 11});  // [B, 1, Tq, Tk]
    std::fill(extra.begin(), extra.end(), true);
    for (std::size_t i = 0; i < 11; ++i)
      for (std::size_t j = 8; j < 11; ++j) extra(1, 0, i, j) = false;  // batch 1 has 8 keys
    for (std::size_t j = 0; j < 11; ++j) extra(0, 0, 5, j) = false;    // batch 0, query 5 sees nothing
    check_against_dense(pattern, 11, 11, 0, false, extra, 40);
  }
  SUBCASE("every block allowed: the dense case") {
    check_against_dense({.block_size = 4, .window_blocks = 100}, 9, 9, 0, true, std::nullopt, 50);
  }
}

TEST_CASE("block_sparse_attention: a fully masked row gives zeros and passes no gradient") {
  BoolArray nothing = BoolArray::from_shape({1, 1, 1, 5});
  std::fill(nothing.begin(), nothing.end(), false);
  const BlockSparseLayout layout = block_sparse_layout({.block_size = 2, .window_blocks = 10}, 1, 5);
  Variable q = leaf(random_array({1, 1, 1, 2}, 1)), k = leaf(random_array({1, 1, 5, 2}, 2)),
           v = leaf(random_array({1, 1, 5, 2}, 3));
  const Variable out = block_sparse_attention(q, k, v, layout, nothing, 1);
  CHECK(xt::all(xt::equal(out.value(), 0.0)));
  sum(out).backward();
  CHECK(xt::all(xt::equal(q.grad(), 0.0)));
  CHECK(xt::all(xt::equal(v.grad(), 0.0)));
}

TEST_CASE("block_sparse_attention: float64 gradcheck") {
  const BlockSparsePattern pattern{.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 1,
                                   .seed = 7};
  for (const bool causal : {false, true}) {
    CAPTURE(causal);
    const BlockSparseLayout layout = block_sparse_layout(pattern, 5, 7, 2, causal);
    BoolArray keys = BoolArray::from_shape({2, 1, 1, 7});  // batch 1: 6 real keys
    std::fill(keys.begin(), keys.end(), true);
    keys(1, 0, 0, 6) = false;
    QKV_CHECK_GRADIENTS(
        [&](const std::vector<Variable>& in) { return block_sparse_attention(in[0], in[1], in[2], layout, keys, 0.8); },
        {Variable(random_array({2, 2, 5, 3}, 1)), Variable(random_array({2, 2, 7, 3}, 2)),
         Variable(random_array({2, 2, 7, 2}, 3))});
  }
}

TEST_CASE("block_sparse_attention: bad inputs name the op and the shapes") {
  const BlockSparseLayout layout = block_sparse_layout({.block_size = 2}, 4, 4);
  const Variable q(zeros({1, 1, 4, 2})), k(zeros({1, 1, 4, 2})), v(zeros({1, 1, 4, 3}));
  CHECK_THROWS_WITH_AS(block_sparse_attention(Variable(zeros({4, 2})), k, v, layout, std::nullopt, 1),
                       "block_sparse_attention: q, k and v must be [B, H, T, d], got q [4, 2], k [1, 1, 4, 2], v [1, 1, 4, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(block_sparse_attention(q, Variable(zeros({1, 1, 4, 3})), v, layout, std::nullopt, 1),
                       "block_sparse_attention: q and k must have the same d, and k and v the same number of steps, "
                       "got q [1, 1, 4, 2], k [1, 1, 4, 3], v [1, 1, 4, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(block_sparse_attention(q, k, v, block_sparse_layout({.block_size = 2}, 4, 6), std::nullopt, 1),
                       "block_sparse_attention: the layout covers 4 queries x 6 keys, but the call has q [1, 1, 4, 2], "
                       "k [1, 1, 4, 2], v [1, 1, 4, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(block_sparse_attention(q, k, v, layout, BoolArray(xt::ones<bool>({3, 4})), 1),
                       "block_sparse_attention: allowed mask [3, 4] does not broadcast to the scores [1, 1, 4, 4] "
                       "(q [1, 1, 4, 2], k [1, 1, 4, 2], v [1, 1, 4, 3])",
                       ShapeError);
  CHECK_THROWS_WITH_AS(block_sparse_layout({.block_size = 0}, 4, 4),
                       "BlockSparsePattern: block_size must be positive, got 0 (block_size 0, global_tokens 0, "
                       "window_blocks 1, random_blocks 0, seed 0)",
                       Error);
}

TEST_CASE("MultiheadAttention with block_sparse: the kernel equals the dense path with the pattern's mask") {
  const BlockSparsePattern pattern{.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 1,
                                   .seed = 2};
  const std::size_t E = 6, H = 2, T = 7;
  Rng sparse_rng(4), dense_rng(4);
  MultiheadAttention sparse(E, H, sparse_rng, {.block_sparse = pattern});
  MultiheadAttention dense(E, H, dense_rng);
  const Array xa = random_array({2, T, E}, 8), ga = random_array({2, T, E}, 9);
  IndexArray lengths = {7, 5};
  for (const bool causal : {false, true}) {
    CAPTURE(causal);
    AttentionMask mask{.valid_lens = lengths, .causal = causal};
    Variable x1 = leaf(xa);
    const MultiheadAttentionOutput a = sparse.forward(x1, mask);
    CHECK_FALSE(a.weights.defined());  // the kernel ran: no [B, H, T, T]
    sum(a.output * Variable(ga)).backward();
    AttentionMask dense_mask = mask;
    dense_mask.allowed = block_sparse_allowed(pattern, T, T, 0, causal);
    Variable x2 = leaf(xa);
    const MultiheadAttentionOutput b = dense.forward(x2, dense_mask);
    sum(b.output * Variable(ga)).backward();
    CHECK(max_abs_diff(a.output.value(), b.output.value()) < 1e-12);
    CHECK(max_abs_diff(x1.grad(), x2.grad()) < 1e-12);
    const auto sp = sparse.named_parameters(), dp = dense.named_parameters();
    for (std::size_t i = 0; i < sp.size(); ++i) {
      CAPTURE(sp[i].first);
      CHECK(max_abs_diff(sp[i].second.grad(), dp[i].second.grad()) < 1e-12);
    }
    sparse.zero_grad();
    dense.zero_grad();

    // A hook on "weights" makes the layer form them (dense path, same values); so does NoGradGuard.
    std::optional<Array> hooked;
    const HookId id = sparse.add_hook("weights", [&](Variable& w, const HookCall&) { hooked = w.value(); });
    const MultiheadAttentionOutput c = sparse.forward(Variable(xa), mask);
    sparse.remove_hook(id);
    REQUIRE(hooked.has_value());
    CHECK(max_abs_diff(*hooked, b.weights.value()) < 1e-12);
    CHECK(max_abs_diff(c.output.value(), b.output.value()) < 1e-12);
    const NoGradGuard no_grad;
    const MultiheadAttentionOutput e = sparse.forward(Variable(xa), mask);
    REQUIRE(e.weights.defined());
    CHECK(max_abs_diff(e.weights.value(), b.weights.value()) < 1e-12);
  }
}

TEST_CASE("MultiheadAttention with block_sparse: gradcheck, rotary positions and the KV cache") {
  const BlockSparsePattern pattern{.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 1,
                                   .seed = 6};
  Rng rng(5);
  MultiheadAttention mha(4, 2, rng, {.positions = std::make_shared<RotaryPositionEncoding>(2), .block_sparse = pattern});
  for (auto& [name, p] : mha.named_parameters())
    if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), 4, 0.5);
  QKV_CHECK_GRADIENTS([&](const std::vector<Variable>& in) { return mha.forward(in[0], {.causal = true}).output; },
                      {Variable(random_array({2, 6, 4}, 30))}, mha.named_parameters());

  // Decoding one step at a time through the cache (no graph: the dense path with the pattern's
  // row) equals the kernel's causal pass over the whole sequence.
  const Array x = random_array({1, 6, 4}, 31);
  const Array whole = mha.forward(Variable(x), {.causal = true}).output.value();  // [1, 6, 4]
  const NoGradGuard no_grad;
  KVCache cache;
  for (std::size_t t = 0; t < 6; ++t) {
    const Variable step(Array(xt::view(x, xt::all(), xt::range(t, t + 1), xt::all())));
    const Array out = mha.forward(step, {.causal = true}, &cache).output.value();  // [1, 1, 4]
    CHECK(max_abs_diff(out, Array(xt::view(whole, xt::all(), xt::range(t, t + 1), xt::all()))) < 1e-12);
  }
}

TEST_CASE("MultiheadAttention with block_sparse: what the kernel cannot do is an Error naming it") {
  const BlockSparsePattern pattern{.block_size = 4};
  Rng rng(0);
  CHECK_THROWS_WITH_AS(MultiheadAttention(4, 2, rng, {.dropout = 0.1, .block_sparse = pattern}),
                       "MultiheadAttention: block-sparse attention has no dropout on the attention weights: dropout "
                       "must be 0, got 0.1 (block-sparse attention, block_size 4, global_tokens 0, window_blocks 1, "
                       "random_blocks 0, seed 0)",
                       Error);
  CHECK_THROWS_WITH_AS(
      MultiheadAttention(4, 2, rng, {.scale = ScoreScale::learned_temperature(2), .block_sparse = pattern}),
      "MultiheadAttention: block-sparse attention needs a constant score scale, got learned_temperature (block-sparse "
      "attention, block_size 4, global_tokens 0, window_blocks 1, random_blocks 0, seed 0)",
      Error);
  Rng positions_rng(1);
  CHECK_THROWS_AS(MultiheadAttention(4, 2, rng,
                                     {.positions = std::make_shared<RelativePositionEncoding>(2, 2, positions_rng),
                                      .block_sparse = pattern}),
                  Error);
}

TEST_CASE("TransformerModel with attention_pattern block_sparse: config, the kernel in training, the dense path in eval") {
  models::TransformerConfig config = tiny_transformer_config(models::PositionalKind::rope);
  config.attention_pattern = AttentionPattern::block_sparse;
  config.block_sparse = {.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 1, .seed = 4};
  const nlohmann::json json = config;
  CHECK(json.at("attention_pattern") == "block_sparse");
  CHECK(json.at("block_sparse") == nlohmann::json{{"block_size", 2}, {"global_tokens", 1}, {"window_blocks", 0},
                                                  {"random_blocks", 1}, {"seed", 4}});
  const models::TransformerConfig back = json.get<models::TransformerConfig>();
  CHECK(back.attention_pattern == AttentionPattern::block_sparse);
  CHECK(back.block_sparse == config.block_sparse);

  // The same model dense, with the pattern's mask: built from the same seed, so the same weights.
  models::TransformerModel sparse(config);
  const IndexArray source = {{4, 5, 6, 7, 2, 3, 8}, {8, 4, 2, 0, 0, 0, 0}}, lengths = {7, 3};
  const IndexArray target = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 0, 0}};
  const models::Seq2SeqOutput trained = sparse.forward(source, lengths, target);  // the kernel (a graph is recorded)
  sum(trained.logits).backward();
  const NoGradGuard no_grad;
  const models::Seq2SeqOutput evaluated = sparse.forward(source, lengths, target);  // the dense path, same mask
  CHECK(max_abs_diff(trained.logits.value(), evaluated.logits.value()) < 1e-12);
  std::size_t with_gradient = 0;
  for (const auto& [name, p] : sparse.named_parameters()) with_gradient += p.has_grad();
  CHECK(with_gradient == sparse.named_parameters().size());

  models::TransformerConfig bad = config;
  bad.dropout = real(0.1);
  CHECK_THROWS_WITH_AS(bad.validate(),
                       "TransformerConfig: block_sparse attention has no dropout on the attention weights: dropout must "
                       "be 0, got 0.1",
                       Error);
  nlohmann::json unknown = json;
  unknown["block_sparse"]["window"] = 1;
  CHECK_THROWS_WITH_AS(unknown.get<models::TransformerConfig>(),
                       "TransformerConfig block_sparse: unknown field \"window\"", Error);
}
