// The transformer as a model kind: its options, as qkv-train offers them, and its factory.
#include <limits>

#include "models/registry.hpp"
#include "models/transformer/transformer.hpp"

namespace qkv::models {

ModelKind transformer_model_kind() {
  constexpr double widest = 65536;
  // Defaults: the tiny model of the README's dates job (≈ 0.2 M parameters) — small enough to
  // train in minutes on two cores, wide enough (4 heads of 16) to show heads specialising.
  return {
      .name = "transformer",
      .summary = "encoder-decoder transformer (Vaswani et al. 2017)",
      .options =
          {
              {.flag = "--d-model", .keys = {"/d_model"}, .help = "model width", .default_value = 64u, .min = 1, .max = widest},
              {.flag = "--heads", .keys = {"/num_heads"}, .help = "attention heads (must divide --d-model)",
               .default_value = 4u, .min = 1, .max = 1024},
              {.flag = "--layers", .keys = {"/encoder_layers", "/decoder_layers"}, .help = "encoder and decoder layers",
               .default_value = 2u, .min = 1, .max = 64},
              {.flag = "--ff", .keys = {"/dim_feedforward"}, .help = "feed-forward width", .default_value = 128u,
               .min = 1, .max = 1048576},
              {.flag = "--dropout", .keys = {"/dropout"}, .help = "dropout probability", .default_value = 0.0,
               .min = 0, .max = 0.99},
              {.flag = "--positional", .keys = {"/positional"}, .help = "position encoding",
               .default_value = "sinusoidal", .choices = names_of<PositionalKind>()},
              {.flag = "--attention-scale", .keys = {"/scale/kind"},
               .help = "score scale: inverse_sqrt_dim (1/sqrt(d_k)), inverse_dim (1/d_k) or none",
               .default_value = "inverse_sqrt_dim", .choices = {"inverse_sqrt_dim", "inverse_dim", "none"}},
          },
      .make = [](const nlohmann::json& config) -> std::shared_ptr<Seq2SeqModel> {
        return TransformerModel::from_config(config);
      },
  };
}

}  // namespace qkv::models
