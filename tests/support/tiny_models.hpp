#pragma once
// The tiny models several test files share: 9 source and 7 target ids, a few units wide, so a
// forward pass, a gradcheck or a central difference takes milliseconds.
#include <cstdint>

#include "models/bahdanau/bahdanau.hpp"
#include "models/transformer/transformer.hpp"

namespace qkv::test {

/// A 2 + 2-layer transformer, d_model 8, 2 heads, feed-forward 12, positions up to 16.
inline models::TransformerConfig tiny_transformer_config(
    models::PositionalKind positional = models::PositionalKind::sinusoidal, real dropout = 0, std::uint64_t seed = 3) {
  models::TransformerConfig config;
  config.source_vocab_size = 9;
  config.target_vocab_size = 7;
  config.d_model = 8;
  config.nhead = 2;
  config.encoder_layers = 2;
  config.decoder_layers = 2;
  config.dim_feedforward = 12;
  config.dropout = dropout;
  config.positional = positional;
  config.relative_max_distance = 2;  // used by the relative positions only
  config.max_len = 16;
  config.seed = seed;
  return config;
}

/// A Bahdanau model with embeddings 4, GRUs 5 wide and attention 6 wide (the other fields as
/// BahdanauConfig's defaults: bidirectional encoder, one layer each side).
inline models::BahdanauConfig tiny_bahdanau_config(real dropout = 0, std::uint64_t seed = 7) {
  models::BahdanauConfig config;
  config.source_vocab_size = 9;
  config.target_vocab_size = 7;
  config.embedding_dim = 4;
  config.hidden_size = 5;
  config.attention_size = 6;
  config.dropout = dropout;
  config.seed = seed;
  return config;
}

/// A batch of 2 for the tiny models: row 0 has source length 5, row 1 length 3 (padded with 0).
inline const IndexArray kTinySource = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}};
inline const IndexArray kTinySourceLengths = {5, 3};

}  // namespace qkv::test
