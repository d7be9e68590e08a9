// Attention sinks (StreamingLLM, Xiao et al. 2023; KVCacheLimit): a self-attention KV cache
// bounded to the first S steps plus the last W. It never holds more than S + W steps, holds
// exactly those, equals the unbounded cache when S + W covers the sequence, equals a causal
// pass under the sink + window mask when attention has no positions, and is refused by models
// without a KV cache; greedy and beam decoding with it never grow a layer's cache past S + W.
#include <xtensor/xview.hpp>

#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "models/decoding.hpp"
#include "models/bahdanau/bahdanau.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// [T, T]: step i sees step j iff j <= i and (j < sinks or j > i - window).
BoolArray sink_window_allowed(std::size_t steps, std::size_t sinks, std::size_t window) {
  BoolArray allowed = BoolArray::from_shape({steps, steps});
  for (std::size_t i = 0; i < steps; ++i)
    for (std::size_t j = 0; j < steps; ++j) allowed(i, j) = j <= i && (j < sinks || j + window > i);
  return allowed;
}

}  // namespace

TEST_CASE("Attention sinks: the cache keeps the first S and the last W steps, never more") {
  const Array x = random_array({2, 9, 8}, 1);
  Rng rng(1);
  MultiheadAttention mha(8, 4, rng, {.num_kv_heads = 2});
  NoGradGuard no_grad;
  KVCache full, bounded;
  bounded.limit = {.sink_tokens = 2, .window = 3};
  const AttentionMask causal{.causal = true};
  for (std::size_t t = 0; t < 9; ++t) {
    const Variable step = slice(Variable(x), 1, t, t + 1);
    mha.forward(step, causal, &full);
    mha.forward(step, causal, &bounded);
    CHECK(bounded.length() == std::min<std::size_t>(t + 1, 5));
  }
  // Steps 0, 1 (sinks) and 6, 7, 8 (window) of the full cache.
  const Array expected = xt::concatenate(xt::xtuple(xt::view(full.keys.value(), xt::all(), xt::all(), xt::range(0, 2)),
                                                    xt::view(full.keys.value(), xt::all(), xt::all(), xt::range(6, 9))),
                                         2);
  CHECK(max_abs_diff(bounded.keys.value(), expected) == 0);
}

TEST_CASE("Attention sinks: without positions inside attention, stepping equals a causal pass under the sink mask") {
  const Array x = random_array({2, 10, 8}, 2);
  for (const std::size_t sinks : {0, 1, 3}) {
    CAPTURE(sinks);
    Rng rng(2);
    MultiheadAttention mha(8, 2, rng);
    AttentionMask masked;
    masked.allowed = sink_window_allowed(10, sinks, 4);
    const MultiheadAttentionOutput full = mha.forward(Variable(x), masked);
    NoGradGuard no_grad;
    KVCache cache;
    cache.limit = {.sink_tokens = sinks, .window = 4};
    for (std::size_t t = 0; t < 10; ++t) {
      const MultiheadAttentionOutput out = mha.forward(slice(Variable(x), 1, t, t + 1), {.causal = true}, &cache);
      CHECK(max_abs_diff(out.output.value(), slice(full.output, 1, t, t + 1).value()) < 1e-12);
    }
  }
}

TEST_CASE("Attention sinks: with S + W covering the sequence the bounded cache is the full one, bit for bit") {
  const Array x = random_array({1, 7, 8}, 3);
  Rng rng(3);
  MultiheadAttention mha(8, 2, rng, {.positions = std::make_shared<RotaryPositionEncoding>(4)});
  NoGradGuard no_grad;
  KVCache full, bounded;
  bounded.limit = {.sink_tokens = 3, .window = 4};
  for (std::size_t t = 0; t < 7; ++t) {
    const Variable step = slice(Variable(x), 1, t, t + 1);
    const Array a = mha.forward(step, {.causal = true}, &full).output.value();
    const Array b = mha.forward(step, {.causal = true}, &bounded).output.value();
    CHECK(max_abs_diff(a, b) == 0);
  }
}

TEST_CASE("Attention sinks: errors") {
  Rng rng(4);
  MultiheadAttention mha(8, 2, rng);
  KVCache cache;
  cache.limit = {.sink_tokens = 1, .window = 2};
  CHECK_THROWS_WITH_AS(mha.forward(Variable(random_array({1, 3, 8}, 5)), {.causal = true}, &cache),
                       "MultiheadAttention: a KV cache window of 2 steps cannot take 3 new steps at once", Error);
  models::TransformerModel model(tiny_transformer_config());
  auto state = model.start_decoding(IndexArray{{4, 5, 2}}, IndexArray{3});
  CHECK_THROWS_WITH_AS(state->limit_cache({.sink_tokens = 2, .window = 0}),
                       "TransformerDecoderCache: sink tokens 2 need a cache window (window 0 keeps everything)", Error);
  models::BahdanauModel bahdanau(tiny_bahdanau_config());
  auto recurrent = bahdanau.start_decoding(IndexArray{{4, 5, 2}}, IndexArray{3});
  CHECK_THROWS_WITH_AS(recurrent->limit_cache({.sink_tokens = 1, .window = 4}),
                       "this model's decoder keeps no KV cache to bound (sink tokens 1, cache window 4)", Error);
}

TEST_CASE("Attention sinks in decoding: greedy and beam with S + W >= max_length decode as the full cache") {
  models::TransformerConfig config = tiny_transformer_config(models::PositionalKind::rope);
  config.max_len = 20;
  models::TransformerModel model(config);
  model.eval();
  const IndexArray source = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}}, lengths = {5, 3};
  for (const std::size_t beam : {1, 3}) {
    CAPTURE(beam);
    models::DecodeOptions options{.beam = beam, .max_length = 12};
    const auto full = models::decode(model, source, lengths, options);
    options.cache_limit = {.sink_tokens = 4, .window = 8};
    const auto bounded = models::decode(model, source, lengths, options);
    for (std::size_t b = 0; b < 2; ++b) {
      CHECK(full[b].tokens == bounded[b].tokens);
      CHECK(full[b].log_probability == bounded[b].log_probability);
    }
    options.cache_limit = {.sink_tokens = 1, .window = 2};  // evicts: still decodes to the end
    const auto small = models::decode(model, source, lengths, options);
    CHECK(small.size() == 2);
  }
}
