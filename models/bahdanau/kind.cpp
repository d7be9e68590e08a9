// The Bahdanau model as a model kind: its options, as qkv-train offers them, and its factory.
#include "models/bahdanau/bahdanau.hpp"
#include "models/registry.hpp"

namespace qkv::models {

ModelKind bahdanau_model_kind() {
  constexpr double widest = 65536;
  // Defaults: the small model of the dates job, which passes 99% exact match in about a minute
  // on two cores; real sentence pairs want wider ones (README, "Training translation models").
  return {
      .name = "bahdanau",
      .summary = "GRU encoder-decoder with additive attention (Bahdanau et al. 2015)",
      .options =
          {
              {.flag = "--embed", .keys = {"/embed_size"}, .help = "embedding width", .default_value = 32u, .min = 1,
               .max = widest},
              {.flag = "--hidden", .keys = {"/hidden_size", "/attention_size"}, .help = "GRU and attention width",
               .default_value = 64u, .min = 1, .max = widest},
              {.flag = "--decoder-hidden", .keys = {"/decoder_hidden_size"},
               .help = "decoder GRU width; 0: as --hidden", .default_value = 0u, .min = 0, .max = widest},
              {.flag = "--readout", .keys = {"/readout"},
               .help = "what the output layer reads: state (the decoder state, d2l) or deep ([state; context; "
                       "previous word's embedding], Bahdanau 2015)",
               .default_value = "state", .choices = names_of<BahdanauReadout>()},
              {.flag = "--layers", .keys = {"/encoder_layers", "/decoder_layers"}, .help = "encoder and decoder layers",
               .default_value = 2u, .min = 1, .max = 64},
              {.flag = "--dropout", .keys = {"/dropout"}, .help = "dropout probability", .default_value = 0.0,
               .min = 0, .max = 0.99},
          },
      .make = [](const nlohmann::json& config) -> std::shared_ptr<Seq2SeqModel> {
        return BahdanauModel::from_config(config);
      },
  };
}

}  // namespace qkv::models
