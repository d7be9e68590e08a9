// The attention options built apart, combined in one layer: grouped-query projections with
// σReparam and QK-norm (gradcheck, the KV cache), the block-sparse kernel on grouped heads (equal
// to the dense path), and int8 inference of grouped and σReparam layers (close to their float
// selves). Each option has its own tests beside it; these check that they compose.
#include <memory>

#include <xtensor/xview.hpp>

#include "layers/block_sparse.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/quantized.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

}  // namespace

TEST_CASE("GQA with σReparam and QK-norm: parameters per block, gradcheck, the KV cache equals one causal pass") {
  const Array x = random_array({2, 5, 8}, 70), memory = random_array({2, 3, 8}, 71);
  Rng rng(21);
  MultiheadAttention layer(8, 4, rng, {.num_kv_heads = 2, .qk_norm = true, .sigma_reparam = true});
  const auto state = layer.state_dict();
  // σReparam per projection block: q [E, E], k and v [H_kv·d, E] each.
  for (const char* name : {"in_proj_sigma_q.gamma", "in_proj_sigma_k.u", "in_proj_sigma_v.v", "q_norm.weight", "k_norm.bias"})
    CHECK_MESSAGE(state.count(name) == 1, name);
  CHECK(state.at("in_proj_sigma_k.u").shape() == Shape{4});  // 2 heads · d 2
  CHECK(state.at("in_proj_sigma_q.u").shape() == Shape{8});
  randomise_biases(layer, 72);
  layer.eval();  // σReparam's u, v fixed: a gradient check sees one function
  QKV_CHECK_GRADIENTS([&](const auto& in) { return layer.forward(in[0], {.causal = true}).output; }, {Variable(x)},
                      layer.named_parameters());
  QKV_CHECK_GRADIENTS([&](const auto& in) { return layer.forward(in[0], in[1], in[1]).output; },
                      {Variable(x), Variable(memory)}, layer.named_parameters());

  const AttentionMask causal{.causal = true};
  const Array full = layer.forward(Variable(x), causal).output.value();
  NoGradGuard no_grad;
  KVCache cache;
  for (std::size_t t = 0; t < 5; ++t) {
    const Variable step(Array(xt::view(x, xt::all(), xt::range(t, t + 1), xt::all())));  // [B, 1, E]
    const Array out = layer.forward(step, causal, &cache).output.value();
    REQUIRE(cache.keys.shape() == Shape{2, 2, t + 1, 2});
    CHECK(max_abs_diff(out, Array(xt::view(full, xt::all(), xt::range(t, t + 1), xt::all()))) < 1e-12);
  }
}

TEST_CASE("block-sparse kernel on grouped heads equals the dense path with the pattern's mask") {
  const BlockSparsePattern pattern{.block_size = 2, .global_tokens = 1, .window_blocks = 0, .random_blocks = 1,
                                   .seed = 3};
  const std::size_t E = 8, H = 4, T = 7;
  Rng sparse_rng(5), dense_rng(5);
  MultiheadAttention sparse(E, H, sparse_rng, {.num_kv_heads = 2, .block_sparse = pattern});
  MultiheadAttention dense(E, H, dense_rng, {.num_kv_heads = 2});
  const Array xa = random_array({2, T, E}, 80), ga = random_array({2, T, E}, 81);
  for (const bool causal : {false, true}) {
    CAPTURE(causal);
    const AttentionMask mask{.valid_lens = IndexArray{7, 4}, .causal = causal};
    Variable x1 = leaf(xa);
    const MultiheadAttentionOutput a = sparse.forward(x1, mask);
    CHECK_FALSE(a.weights.defined());  // the kernel ran
    sum(a.output * Variable(ga)).backward();
    AttentionMask dense_mask = mask;
    dense_mask.allowed = block_sparse_allowed(pattern, T, T, 0, causal);
    Variable x2 = leaf(xa);
    const MultiheadAttentionOutput b = dense.forward(x2, dense_mask);
    sum(b.output * Variable(ga)).backward();
    CHECK(max_abs_diff(a.output.value(), b.output.value()) < 1e-12);
    CHECK(max_abs_diff(x1.grad(), x2.grad()) < 1e-12);
    const auto sp = sparse.named_parameters(), dp = dense.named_parameters();
    REQUIRE(sp.size() == dp.size());
    for (std::size_t i = 0; i < sp.size(); ++i) {
      CAPTURE(sp[i].first);
      CHECK(max_abs_diff(sp[i].second.grad(), dp[i].second.grad()) < 1e-12);
    }
    sparse.zero_grad(), dense.zero_grad();
  }
  // What the kernel cannot form is refused by name.
  Rng rng(6);
  CHECK_THROWS_WITH_AS(MultiheadAttention(E, H, rng, {.memory_slots = 2, .block_sparse = pattern}),
                       doctest::Contains("persistent memory"), Error);
  CHECK_THROWS_WITH_AS(MultiheadAttention(E, H, rng, {.scale = ScoreScale::log_length(), .block_sparse = pattern}),
                       doctest::Contains("log_length"), Error);
}

TEST_CASE("int8 inference of grouped and σReparam layers follows their float selves") {
  const Variable x(random_array({2, 5, 16}, 90)), memory(random_array({2, 3, 16}, 91));
  struct Case {
    const char* name;
    MultiheadAttentionOptions options;
    std::size_t weights;  // matrices converted
  };
  for (const Case& c : {Case{"grouped", {.num_kv_heads = 2}, 3},                      // q_proj, kv_proj, out_proj
                        Case{"sigma_reparam", {.sigma_reparam = true}, 2},            // in_proj, out_proj
                        Case{"grouped + sigma_reparam + qk_norm", {.num_kv_heads = 1, .qk_norm = true, .sigma_reparam = true}, 3}}) {
    CAPTURE(c.name);
    Rng float_rng(31), int8_rng(31);
    MultiheadAttention float_layer(16, 4, float_rng, c.options), int8_layer(16, 4, int8_rng, c.options);
    randomise_biases(float_layer, 92), randomise_biases(int8_layer, 92);
    if (c.options.sigma_reparam) {
      // Move W away from its initial value, so that W_eff = γ/σ·W differs from W: the int8 path must
      // quantize the effective weight, not the stored one.
      for (MultiheadAttention* layer : {&float_layer, &int8_layer})
        for (auto& [name, p] : layer->named_parameters())
          if (name.ends_with("gamma")) p.mutable_value() *= real(1.7);
    }
    float_layer.eval(), int8_layer.eval();
    const Int8Report report = quantize_for_inference(int8_layer);
    CHECK(report.weights == c.weights);
    NoGradGuard no_grad;
    const Array expected = float_layer.forward(x, {.causal = true}).output.value();
    const double scale = xt::amax(xt::abs(expected))();
    CHECK(max_abs_diff(int8_layer.forward(x, {.causal = true}).output.value(), expected) < 0.03 * scale);
    const Array cross = float_layer.attend_to_memory(x, float_layer.project_memory(memory)).output.value();
    CHECK(max_abs_diff(int8_layer.attend_to_memory(x, int8_layer.project_memory(memory)).output.value(), cross) <
          0.03 * xt::amax(xt::abs(cross))());
  }
}

TEST_CASE("QK-norm normalises queries and keys, never values: cross-attention stays linear in its values") {
  // Without biases, doubling the value input doubles v and so the output; a LayerNorm on v (the
  // bug this guards against) would make the output blind to the values' scale.
  const Variable query(random_array({2, 3, 8}, 100)), key(random_array({2, 4, 8}, 101));
  const Array value = random_array({2, 4, 8}, 102);
  for (const std::size_t kv_heads : {4, 2}) {
    CAPTURE(kv_heads);
    Rng rng(41);
    MultiheadAttention layer(8, 4, rng, {.bias = false, .num_kv_heads = kv_heads, .qk_norm = true});
    const Array once = layer.forward(query, key, Variable(value)).output.value();
    const Array twice = layer.forward(query, key, Variable(Array(value * real(2)))).output.value();
    CHECK(max_abs_diff(twice, Array(once * real(2))) < 1e-12);
  }
}
