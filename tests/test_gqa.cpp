// Grouped-query and multi-query attention (MultiheadAttentionOptions::num_kv_heads): equal to
// multi-head attention whose key/value weights are the grouped ones repeated per group, float64
// gradcheck, the KV cache stepping equal to the full causal pass, the cache's bytes shrinking by
// H / H_kv (measured on a decoder of the dates model's size), the model config and the errors.
#include <algorithm>
#include <memory>

#include <xtensor/xview.hpp>

#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "layers/transformer.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// Rows [block · size, (block + 1) · size) of x, along axis 0.
Array rows_of(const Array& x, std::size_t start, std::size_t size) {
  return xt::view(x, xt::range(start, start + size));
}

/// x's rows in H_kv blocks of d, each block repeated `group` times: [H_kv·d, ...] -> [H·d, ...].
Array repeat_blocks(const Array& x, std::size_t kv_heads, std::size_t d, std::size_t group) {
  std::vector<Array> blocks;
  for (std::size_t g = 0; g < kv_heads; ++g)
    for (std::size_t r = 0; r < group; ++r) blocks.push_back(rows_of(x, g * d, d));
  Shape shape = shape_of(x);
  shape[0] = kv_heads * group * d;
  Array result = zeros(shape);
  const std::size_t block = blocks[0].size();
  for (std::size_t i = 0; i < blocks.size(); ++i) std::copy_n(blocks[i].data(), block, result.data() + i * block);
  return result;
}

/// The multi-head attention equal to `gqa`: in_proj_weight = [W_q; repeat(W_k); repeat(W_v)].
std::unique_ptr<MultiheadAttention> equivalent_mha(MultiheadAttention& gqa, MultiheadAttentionOptions options) {
  const std::size_t E = gqa.embed_dim(), H = gqa.num_heads(), Hkv = gqa.num_kv_heads(), d = gqa.head_dim();
  options.num_kv_heads = 0;
  Rng rng(0);  // every parameter is then loaded
  auto mha = std::make_unique<MultiheadAttention>(E, H, rng, options);
  std::map<std::string, Array> from;
  for (auto& [name, p] : gqa.named_parameters()) from[name] = p.value();
  const auto expanded = [&](const std::string& stacked, const std::string& q) {
    const Array& kv = from.at(stacked);
    const Array k = repeat_blocks(rows_of(kv, 0, Hkv * d), Hkv, d, H / Hkv);
    const Array v = repeat_blocks(rows_of(kv, Hkv * d, Hkv * d), Hkv, d, H / Hkv);
    return Array(xt::concatenate(xt::xtuple(from.at(q), k, v), 0));  // [3E, ...]
  };
  std::map<std::string, Array> state = from;
  state.erase("q_proj_weight"), state.erase("kv_proj_weight"), state.erase("q_proj_bias"), state.erase("kv_proj_bias");
  state["in_proj_weight"] = expanded("kv_proj_weight", "q_proj_weight");
  if (from.count("q_proj_bias")) state["in_proj_bias"] = expanded("kv_proj_bias", "q_proj_bias");
  REQUIRE(state.at("in_proj_weight").shape(0) == 3 * E);
  mha->load_state_dict(state);
  return mha;
}

}  // namespace

TEST_CASE("GQA: parameter names and shapes, num_kv_heads = num_heads is multi-head attention, bit for bit") {
  Rng rng(0);
  MultiheadAttention gqa(8, 4, rng, {.num_kv_heads = 2});  // d = 2
  const auto parameters = gqa.named_parameters();
  REQUIRE(parameters.size() == 6);
  CHECK(parameters[0].first == "q_proj_weight");
  CHECK(parameters[0].second.shape() == Shape{8, 8});
  CHECK(parameters[1].first == "kv_proj_weight");
  CHECK(parameters[1].second.shape() == Shape{8, 8});  // 2 · H_kv · d = 2 · 2 · 2
  CHECK(parameters[2].first == "q_proj_bias");
  CHECK(parameters[3].first == "kv_proj_bias");
  CHECK(parameters[3].second.shape() == Shape{8});
  CHECK(parameters[4].first == "out_proj.weight");
  Rng mqa_rng(0);
  MultiheadAttention mqa(8, 4, mqa_rng, {.num_kv_heads = 1});
  CHECK(mqa.named_parameters()[1].second.shape() == Shape{4, 8});
  CHECK(mqa.num_kv_heads() == 1);

  // num_kv_heads equal to num_heads (or 0) builds the PyTorch layer, drawing the same weights.
  Rng a(5), b(5);
  MultiheadAttention plain(8, 4, a), same(8, 4, b, {.num_kv_heads = 4});
  REQUIRE(same.named_parameters()[0].first == "in_proj_weight");
  for (std::size_t i = 0; i < plain.named_parameters().size(); ++i)
    CHECK(max_abs_diff(plain.named_parameters()[i].second.value(), same.named_parameters()[i].second.value()) == 0);
  CHECK(same.num_kv_heads() == 4);
}

TEST_CASE("GQA: num_kv_heads must divide num_heads, and the error names the layer and the numbers") {
  Rng rng(0);
  CHECK_THROWS_WITH_AS(MultiheadAttention(8, 4, rng, {.num_kv_heads = 3}),
                       "MultiheadAttention: num_kv_heads 3 does not divide num_heads 4", Error);
  TransformerLayerOptions options;
  options.d_model = 8, options.nhead = 4, options.dim_feedforward = 8, options.num_kv_heads = 3;
  CHECK_THROWS_WITH_AS(TransformerDecoderLayer(options, rng),
                       "TransformerDecoderLayer(d_model=8, nhead=4): num_kv_heads 3 does not divide nhead 4", Error);
  models::TransformerConfig config = tiny_transformer_config();
  config.num_kv_heads = 3;
  CHECK_THROWS_WITH_AS(config.validate(), "TransformerConfig: num_kv_heads 3 does not divide num_heads 2", Error);
}

TEST_CASE("GQA equals multi-head attention with each key/value head repeated for its group") {
  const Array x = random_array({2, 5, 12}, 1), memory = random_array({2, 4, 12}, 2);
  AttentionMask padded;
  padded.valid_lens = IndexArray{4, 2};
  const AttentionMask causal{.causal = true};
  for (const std::size_t kv_heads : {3, 2, 1}) {
    for (const bool rope : {false, true}) {
      CAPTURE(kv_heads);
      CAPTURE(rope);
      MultiheadAttentionOptions options{.num_kv_heads = kv_heads};
      if (rope) options.positions = std::make_shared<RotaryPositionEncoding>(2);
      Rng rng(11);
      MultiheadAttention gqa(12, 6, rng, options);
      randomise_biases(gqa, 20);
      auto mha = equivalent_mha(gqa, options);
      const Variable xs(x), mem(memory);
      double worst = 0;
      const auto compare = [&](const MultiheadAttentionOutput& a, const MultiheadAttentionOutput& b) {
        worst = std::max({worst, max_abs_diff(a.output.value(), b.output.value()),
                          max_abs_diff(a.weights.value(), b.weights.value())});
      };
      compare(gqa.forward(xs, causal), mha->forward(xs, causal));                          // self, one gemm path
      compare(gqa.forward(xs, mem, mem, padded), mha->forward(xs, mem, mem, padded));      // cross
      compare(gqa.attend_to_memory(xs, gqa.project_memory(mem), padded),
              mha->attend_to_memory(xs, mha->project_memory(mem), padded));
      CHECK(worst < 1e-12);
    }
  }
}

TEST_CASE("GQA: gradcheck w.r.t. inputs and every parameter, multi-query included") {
  const Array x = random_array({2, 4, 8}, 30), memory = random_array({2, 3, 8}, 31);
  AttentionMask padded;
  padded.valid_lens = IndexArray{3, 1};
  for (const std::size_t kv_heads : {2, 1}) {
    CAPTURE(kv_heads);
    Rng rng(12);
    MultiheadAttention gqa(8, 4, rng, {.num_kv_heads = kv_heads});
    randomise_biases(gqa, 40);
    QKV_CHECK_GRADIENTS([&](const auto& in) { return gqa.forward(in[0], {.causal = true}).output; }, {Variable(x)},
                        gqa.named_parameters());
    QKV_CHECK_GRADIENTS([&](const auto& in) { return gqa.forward(in[0], in[1], in[1], padded).output; },
                        {Variable(x), Variable(memory)}, gqa.named_parameters());
    Rng rope_rng(13);
    MultiheadAttention rotary(8, 4, rope_rng,
                              {.bias = false, .positions = std::make_shared<RotaryPositionEncoding>(2),
                               .num_kv_heads = kv_heads});
    QKV_CHECK_GRADIENTS([&](const auto& in) { return rotary.forward(in[0], {.causal = true}).weights; },
                        {Variable(x)}, rotary.named_parameters());
  }
}

TEST_CASE("GQA: the KV cache holds H_kv heads, and stepping it equals one causal pass") {
  const Array x = random_array({2, 6, 8}, 50);
  for (const bool rope : {false, true}) {
    CAPTURE(rope);
    MultiheadAttentionOptions options{.num_kv_heads = 2};
    if (rope) options.positions = std::make_shared<RotaryPositionEncoding>(2);
    Rng rng(14);
    MultiheadAttention gqa(8, 4, rng, options);
    randomise_biases(gqa, 60);
    const AttentionMask causal{.causal = true};
    const MultiheadAttentionOutput full = gqa.forward(Variable(x), causal);
    NoGradGuard no_grad;
    KVCache cache;
    for (std::size_t t = 0; t < 6; ++t) {
      const Variable step(Array(xt::view(x, xt::all(), xt::range(t, t + 1), xt::all())));  // [B, 1, E]
      const MultiheadAttentionOutput out = gqa.forward(step, causal, &cache);
      REQUIRE(cache.keys.shape() == Shape{2, 2, t + 1, 2});
      CHECK(max_abs_diff(out.output.value(), slice(full.output, 1, t, t + 1).value()) < 1e-12);
      const Array expected = xt::view(full.weights.value(), xt::all(), xt::all(), xt::range(t, t + 1), xt::range(0, t + 1));
      CHECK(max_abs_diff(out.weights.value(), expected) < 1e-12);
    }
    Rng other(14);
    MultiheadAttention wide(8, 4, other);
    KVCache wide_cache;
    wide.forward(Variable(x), causal, &wide_cache);
    CHECK(wide_cache.bytes() == 2 * cache.bytes());  // H / H_kv = 2
  }
}

TEST_CASE("GQA in the transformer model: the config key, and decode_step equals forward's rows") {
  // An old config.json has no num_kv_heads: multi-head attention, the parameter names as before.
  nlohmann::json old_config = tiny_transformer_config();
  old_config.erase("num_kv_heads");
  old_config.erase("memory_slots");
  const models::TransformerConfig loaded = old_config.get<models::TransformerConfig>();
  CHECK(loaded.num_kv_heads == 0);
  const auto names = models::TransformerModel(loaded).named_parameters();
  CHECK(std::any_of(names.begin(), names.end(),
                    [](const auto& p) { return p.first == "decoder.layers.0.self_attn.in_proj_weight"; }));

  models::TransformerConfig config = tiny_transformer_config(models::PositionalKind::rope);
  config.d_model = 16, config.nhead = 4, config.num_kv_heads = 1;
  const nlohmann::json json = config;
  CHECK(json.at("num_kv_heads") == 1);
  CHECK(json.get<models::TransformerConfig>().num_kv_heads == 1);
  models::TransformerModel model(config);
  const auto grouped = model.named_parameters();
  CHECK(std::any_of(grouped.begin(), grouped.end(), [](const auto& p) {
    return p.first == "decoder.layers.1.multihead_attn.kv_proj_weight" && p.second.shape() == Shape{8, 16};
  }));
  model.eval();
  const IndexArray source = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}}, lengths = {5, 3};
  const IndexArray target = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 0, 0}};
  const Array full = model.forward(source, lengths, target).logits.value();  // [B, T, V]
  NoGradGuard no_grad;
  auto state = model.start_decoding(source, lengths);
  for (std::size_t t = 0; t < 6; ++t) {
    const IndexArray previous = xt::view(target, xt::all(), t);
    const Array expected = xt::view(full, xt::all(), t, xt::all());
    CHECK(max_abs_diff(model.decode_step(*state, previous).logits.value(), expected) < 1e-10);
  }
}

TEST_CASE("GQA: a decoder's KV cache bytes shrink by H / H_kv (measured at the dates model's size)") {
  // The dates model's size: d_model 64, 4 heads of 16, 2 decoder layers. 12 target steps over a
  // 10-token source; the bytes are read off the caches themselves (in this float64 build; the
  // float32 build's are half).
  const Array memory = random_array({1, 10, 64}, 70), target = random_array({1, 12, 64}, 71);
  std::size_t mha_self = 0, mha_memory = 0;
  for (const std::size_t kv_heads : {4, 2, 1}) {
    CAPTURE(kv_heads);
    TransformerLayerOptions options;
    options.d_model = 64, options.nhead = 4, options.dim_feedforward = 128, options.dropout = 0;
    options.num_kv_heads = kv_heads;
    Rng rng(15);
    TransformerDecoder decoder(options, 2, false, rng);
    NoGradGuard no_grad;
    TransformerDecoderCache cache = decoder.start(Variable(memory));
    for (std::size_t t = 0; t < 12; ++t) decoder.step(slice(Variable(target), 1, t, t + 1), cache);
    const std::size_t self = cache.self_attention_bytes(), cross = cache.memory_bytes();
    // keys and values, 2 layers, H_kv heads of 16, 12 steps (10 source tokens).
    CHECK(self == 2 * 2 * kv_heads * 16 * 12 * sizeof(real));
    CHECK(cross == 2 * 2 * kv_heads * 16 * 10 * sizeof(real));
    if (kv_heads == 4) mha_self = self, mha_memory = cross;
    CHECK(mha_self == self * (4 / kv_heads));
    CHECK(mha_memory == cross * (4 / kv_heads));
    MESSAGE("H_kv " << kv_heads << ": self-attention cache " << self / 12 << " bytes per target token, "
                    << "cross-attention memory " << cross / 10 << " bytes per source token (float64; "
                    << sizeof(real) << "-byte reals)");
  }
}
