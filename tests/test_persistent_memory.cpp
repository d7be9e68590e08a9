// Persistent memory (Sukhbaatar et al. 2019, MultiheadAttentionOptions::memory_slots): learned
// key/value slots appended to every call's keys and values — against a reference written with
// plain ops, never masked, float64 gradcheck (the slots included), with the KV cache equal to
// the full pass, with grouped-query attention, in the transformer model, and its errors.
#include <algorithm>
#include <cmath>
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

Variable parameter(Module& module, const std::string& name) {
  for (auto& [n, p] : module.named_parameters())
    if (n == name) return p;
  FAIL("no parameter " << name);
  return {};
}

/// softmax([q·kᵀ, q·mᵀ] / √d) [V; M_v] through out_proj, spelled out with plain ops on
/// multi-head attention's parameters: the reference the layer must match.
Variable reference_attention(MultiheadAttention& mha, const Variable& x, const Variable& memory,
                             const BoolArray& allowed /* [B, 1, Tq, Tk] */) {
  const std::size_t E = mha.embed_dim(), H = mha.num_heads(), d = mha.head_dim(), N = mha.memory_slots();
  const std::vector<Variable> w = split(parameter(mha, "in_proj_weight"), {E, E, E}, 0);
  const std::vector<Variable> b = split(parameter(mha, "in_proj_bias"), {E, E, E}, 0);
  const Variable q = split_heads(linear(x, w[0], b[0]), H);       // [B, H, Tq, d]
  const Variable k = split_heads(linear(memory, w[1], b[1]), H);  // [B, H, Tk, d]
  const Variable v = split_heads(linear(memory, w[2], b[2]), H);
  const std::size_t B = x.dim(0), Tq = x.dim(1), Tk = memory.dim(1);
  const Shape slots{B, H, N, d};
  const Variable keys = concat({k, expand(unsqueeze(parameter(mha, "memory_keys"), 0), slots)}, 2);      // [B, H, Tk + N, d]
  const Variable values = concat({v, expand(unsqueeze(parameter(mha, "memory_values"), 0), slots)}, 2);  // [B, H, Tk + N, d]
  BoolArray with_slots = BoolArray::from_shape({B, 1, Tq, Tk + N});
  for (std::size_t bi = 0; bi < B; ++bi)
    for (std::size_t i = 0; i < Tq; ++i)
      for (std::size_t j = 0; j < Tk + N; ++j) with_slots(bi, 0, i, j) = j >= Tk || allowed(bi, 0, i, j);
  const Variable scores = matmul(q, keys, Trans::No, Trans::Yes) * (1 / std::sqrt(real(d)));  // [B, H, Tq, Tk + N]
  const Variable attended = matmul(masked_softmax(scores, with_slots), values);                // [B, H, Tq, d]
  return linear(merge_heads(attended), parameter(mha, "out_proj.weight"), parameter(mha, "out_proj.bias"));
}

}  // namespace

TEST_CASE("Persistent memory: parameters memory_keys and memory_values [H, N, d], drawn after the rest") {
  Rng rng(1), plain_rng(1);
  MultiheadAttention mha(8, 2, rng, {.memory_slots = 3});
  MultiheadAttention plain(8, 2, plain_rng);
  const auto parameters = mha.named_parameters();
  REQUIRE(parameters.size() == 6);  // the layer's own first, then out_proj's
  CHECK(parameters[2].first == "memory_keys");
  CHECK(parameters[2].second.shape() == Shape{2, 3, 4});
  CHECK(parameters[3].first == "memory_values");
  CHECK(parameters[3].second.shape() == Shape{2, 3, 4});
  CHECK(mha.memory_slots() == 3);
  // The other parameters are the ones a layer without memory draws.
  for (const char* name : {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"})
    CHECK(max_abs_diff(parameter(mha, name).value(), parameter(plain, name).value()) == 0);
  CHECK_THROWS_WITH_AS(MultiheadAttention(8, 2, rng, {.positions = std::make_shared<RotaryPositionEncoding>(4),
                                                      .memory_slots = 2}),
                       doctest::Contains("MultiheadAttention: persistent memory slots take no position"), Error);
}

TEST_CASE("Persistent memory equals the reference, the slots are never masked") {
  Rng rng(2);
  MultiheadAttention mha(8, 2, rng, {.memory_slots = 3});
  for (auto& [name, p] : mha.named_parameters())
    if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), 5, 0.5);
  const Variable x(random_array({2, 4, 8}, 3)), memory(random_array({2, 5, 8}, 4));
  AttentionMask mask;
  mask.valid_lens = IndexArray{5, 0};  // batch 1 sees no key of the sequence: only the slots
  const MultiheadAttentionOutput out = mha.forward(x, memory, memory, mask);
  REQUIRE(out.weights.shape() == Shape{2, 2, 4, 8});  // Tk + N
  const BoolArray allowed = allowed_from_valid_lens(*mask.valid_lens, 4, 5);
  BoolArray allowed4 = allowed;
  allowed4.reshape({2, 1, 4, 5});
  CHECK(max_abs_diff(out.output.value(), reference_attention(mha, x, memory, allowed4).value()) < 1e-12);
  const Array row_sums = sum(out.weights, {3}).value();
  CHECK(max_abs_diff(row_sums, xt::ones_like(row_sums)) < 1e-12);
  for (std::size_t h = 0; h < 2; ++h)
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK(out.weights.value()(1, h, i, 0) == 0);
      CHECK(out.weights.value()(1, h, i, 5) > 0);
    }
}

TEST_CASE("Persistent memory: gradcheck w.r.t. inputs and every parameter, slots included, with GQA too") {
  const Array x = random_array({2, 4, 8}, 10), memory = random_array({2, 3, 8}, 11);
  AttentionMask padded;
  padded.valid_lens = IndexArray{3, 0};
  for (const std::size_t kv_heads : {0, 1}) {
    CAPTURE(kv_heads);
    Rng rng(3);
    MultiheadAttention mha(8, 2, rng, {.num_kv_heads = kv_heads, .memory_slots = 2});
    for (auto& [name, p] : mha.named_parameters())
      if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), 6, 0.5);
    QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], {.causal = true}).output; }, {Variable(x)},
                        mha.named_parameters());
    QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], in[1], in[1], padded).weights; },
                        {Variable(x), Variable(memory)}, mha.named_parameters());
  }
}

TEST_CASE("Persistent memory: stepping a KV cache equals the causal pass, the slots are not cached") {
  const Array x = random_array({2, 5, 8}, 20);
  Rng rng(4);
  MultiheadAttention mha(8, 4, rng, {.num_kv_heads = 2, .memory_slots = 3});
  const AttentionMask causal{.causal = true};
  const MultiheadAttentionOutput full = mha.forward(Variable(x), causal);
  NoGradGuard no_grad;
  KVCache cache;
  for (std::size_t t = 0; t < 5; ++t) {
    const MultiheadAttentionOutput out = mha.forward(slice(Variable(x), 1, t, t + 1), causal, &cache);
    CHECK(cache.length() == t + 1);
    CHECK(max_abs_diff(out.output.value(), slice(full.output, 1, t, t + 1).value()) < 1e-12);
    REQUIRE(out.weights.shape() == Shape{2, 4, 1, t + 1 + 3});
    // The step's weights: the causal row's first t + 1 keys, then the slots (the full pass's last 3).
    const Array row = xt::view(full.weights.value(), xt::all(), xt::all(), xt::range(t, t + 1), xt::all());
    const Array seen = xt::concatenate(
        xt::xtuple(xt::view(row, xt::all(), xt::all(), xt::all(), xt::range(0, t + 1)),
                   xt::view(row, xt::all(), xt::all(), xt::all(), xt::range(5, 8))), 3);
    CHECK(max_abs_diff(out.weights.value(), seen) < 1e-12);
  }
}

TEST_CASE("Persistent memory in the transformer model: self-attention only, config key, plots cut the slots") {
  models::TransformerConfig config = tiny_transformer_config();
  config.memory_slots = 3;
  config.encoder_layers = config.decoder_layers = 1;
  const nlohmann::json json = config;
  CHECK(json.at("memory_slots") == 3);
  CHECK(json.get<models::TransformerConfig>().memory_slots == 3);
  models::TransformerModel model(config);
  std::vector<std::string> names;
  for (const auto& [name, p] : model.named_parameters())
    if (name.find("memory_") != std::string::npos) names.push_back(name);
  CHECK(names == std::vector<std::string>{"encoder.layers.0.self_attn.memory_keys",
                                          "encoder.layers.0.self_attn.memory_values",
                                          "decoder.layers.0.self_attn.memory_keys",
                                          "decoder.layers.0.self_attn.memory_values"});
  const IndexArray source = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}}, lengths = {5, 3};
  const IndexArray target = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 4, 3}};
  model.eval();
  const Array full = model.forward(source, lengths, target).logits.value();
  {
    NoGradGuard no_grad;
    auto state = model.start_decoding(source, lengths);
    for (std::size_t t = 0; t < 6; ++t) {
      const IndexArray previous = xt::view(target, xt::all(), t);
      const Array expected = xt::view(full, xt::all(), t, xt::all());
      CHECK(max_abs_diff(model.decode_step(*state, previous).logits.value(), expected) < 1e-10);
    }
  }
  const auto groups = model.attention_groups(source, lengths, target);
  REQUIRE(groups.size() == 3);
  CHECK(shape_of(groups[1].maps[0].second) == Shape{2, 5, 5});  // encoder self-attention, slots cut
  CHECK(shape_of(groups[2].maps[0].second) == Shape{2, 6, 6});

  GradcheckOptions options;
  options.fast_mode = true;
  model.train();
  const GradcheckResult result = gradcheck([&](const auto&) { return model.forward(source, lengths, target).logits; },
                                           {}, model.named_parameters(), options);
  INFO(result.report());
  CHECK(result.passed);

  config.positional = models::PositionalKind::rope;
  CHECK_THROWS_WITH_AS(config.validate(), doctest::Contains("TransformerConfig: memory_slots 3 need positions added to"),
                       Error);
}
