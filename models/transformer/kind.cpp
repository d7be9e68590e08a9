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
               .help = "score scale: inverse_sqrt_dim (1/sqrt(d_k)), inverse_dim (1/d_k), none, log_length "
                       "(s ln n / sqrt(d_k), n the keys a query sees) or scalable_softmax (the same, s learned per head)",
               .default_value = "inverse_sqrt_dim",
               .choices = {"inverse_sqrt_dim", "inverse_dim", "none", "log_length", "scalable_softmax"}},
              {.flag = "--attention-scale-value", .keys = {"/scale/value"},
               .help = "the scale's value: s of log_length (the initial s of scalable_softmax), inverse_dim's "
                       "numerator (8: muP's 8/d_k); inverse_sqrt_dim and none take none",
               .default_value = 1.0, .min = -1000, .max = 1000000},
              {.flag = "--kv-heads", .keys = {"/num_kv_heads"},
               .help = "key/value heads, grouped-query attention (must divide --heads; 1: multi-query; 0: --heads)",
               .default_value = 0u, .min = 0, .max = 1024},
              {.flag = "--memory-slots", .keys = {"/memory_slots"},
               .help = "persistent memory slots per head in self-attention (Sukhbaatar et al. 2019; 0: none)",
               .default_value = 0u, .min = 0, .max = 65536},
              {.flag = "--attention-pattern", .keys = {"/attention_pattern"},
               .help = "self-attention: dense, or block_sparse (global tokens + window + random blocks; dropout 0)",
               .default_value = "dense", .choices = names_of<AttentionPattern>()},
              {.flag = "--block-size", .keys = {"/block_sparse/block_size"}, .help = "block_sparse: block size",
               .default_value = 64u, .min = 1, .max = widest},
              {.flag = "--global-tokens", .keys = {"/block_sparse/global_tokens"},
               .help = "block_sparse: the first N positions see and are seen by all", .default_value = 0u, .min = 0,
               .max = widest},
              {.flag = "--window-blocks", .keys = {"/block_sparse/window_blocks"},
               .help = "block_sparse: blocks each side a query block sees", .default_value = 1u, .min = 0, .max = widest},
              {.flag = "--random-blocks", .keys = {"/block_sparse/random_blocks"},
               .help = "block_sparse: random key blocks per query block", .default_value = 0u, .min = 0, .max = widest},
              {.flag = "--qk-norm", .keys = {"/qk_norm"}, .help = "1: LayerNorm of each head's queries and keys",
               .default_value = 0u, .min = 0, .max = 1},
              {.flag = "--sigma-reparam", .keys = {"/sigma_reparam"},
               .help = "1: sigmaReparam (W <- gamma/sigma(W) W) on the attention and feed-forward weights",
               .default_value = 0u, .min = 0, .max = 1},
              {.flag = "--zero-query-init", .keys = {"/zero_query_init"},
               .help = "1: zero-initialised query projections (muP)", .default_value = 0u, .min = 0, .max = 1},
              {.flag = "--mup-base-d-model", .keys = {"/mup_base_d_model"},
               .help = "muP (Tensor Programs V) against this base width: hidden weights' Adam lr / (d_model / base), "
                       "readout logits x base / d_model, width-independent biases and embeddings (0: off; muP's "
                       "attention is --attention-scale inverse_dim --attention-scale-value 8 --zero-query-init 1)",
               .default_value = 0u, .min = 0, .max = widest},
          },
      // Real sentence pairs (--data). Chosen for a Tatoeba pair file cut to ~20,000 pairs (fra-eng:
      // 18,005 for training, 282 batches of 64) and a budget of minutes on two cores; the
      // README's corpus section has the measured BLEU by time and epoch.
      .corpus_defaults =
          {
              // 128 wide, 2+2 layers, feed-forward 4x (the paper's ratio): 2.1 M parameters with
              // fra-eng's vocabularies (2,340 and 3,573 words) — the
              // configuration issue 14 measured at 40.84 BLEU in 480 s, against 37.44 for PyTorch.
              // Wider trains fewer epochs in a budget of minutes on two cores.
              {.flag = "--d-model", .value = "128"},
              {.flag = "--ff", .value = "512"},
              // A corpus of ~18,000 training pairs is small for 2 M parameters: the paper's 0.1
              // against memorising it.
              {.flag = "--dropout", .value = "0.1"},
              // A sentence has many right translations (fra-eng's 1,995 validation pairs have 1,228
              // distinct sources): a one-hot target is over-confident. The paper's 0.1.
              {.flag = "--label-smoothing", .value = "0.1"},
              // A transformer's first Adam steps at the full rate are its unstable ones (the paper
              // warms up); Noam rises linearly, then decays as 1/sqrt(step). The
              // warm-up is counted in epochs, not steps, so it is the same share of what the
              // model sees on a smaller or larger pair file: 1.5 epochs ≈ 400 steps on fra-eng
              // (the 400 the issue-14 run used), at the peak --lr 1e-3.
              {.flag = "--schedule", .value = "noam"},
              {.flag = "--warmup-epochs", .value = "1.5"},
          },
      .make = [](const nlohmann::json& config) -> std::shared_ptr<Seq2SeqModel> {
        return TransformerModel::from_config(config);
      },
  };
}

}  // namespace qkv::models
