#pragma once
// The Bahdanau attention seq2seq model (Bahdanau, Cho & Bengio 2015; d2l.ai §11.4, "Bahdanau
// Attention"), a Seq2SeqModel.
//
//   encoder   source ids [B, S] -> Embedding (row 0 = <pad>, zero, never trained) [B, S, E]
//             -> GRU (bidirectional by default) over each source's valid length
//             -> outputs [B, S, D·H] (zeros past the length), one per source position.
//   bridge    the decoder's initial state. Bidirectional, unequal layer counts or a decoder
//             wider than the encoder: the top encoder layer's final forward and backward states
//             [B, D·H] -> Linear -> tanh -> [B, L_dec·H_dec], one H_dec-slice per decoder layer
//             (Bahdanau 2015, s_0 = tanh(W_s h←_1), with the forward state added). Otherwise
//             (unidirectional, equal layer counts and widths) the encoder's final states are used
//             as they are (d2l).
//   decoder   per target step t, with s = the previous decoder state (top layer), H_dec wide:
//               weights_t = masked softmax over the valid source positions of vᵀ tanh(W_q s + W_k k_j)
//               context_t = Σ_j weights_t[j] · k_j                            [B, D·H]
//               s_t       = stacked GRUCells on [embedding(y_{t-1}); context_t] (input feeding)
//               logits_t  = Linear(s_t)                                  readout "state" (d2l)
//                         = Linear([s_t; context_t; embedding(y_{t-1})])  readout "deep"
//             "deep" is Bahdanau's deep output (2015, appendix A.2.2, without its maxout) as the
//             textbook PyTorch model has it: the readout sees the context and the previous word
//             directly instead of only through the GRU. On fra-eng it is most of the difference
//             between this model and that one (scripts/reference/torch_bahdanau.py; README,
//             "Training on a corpus"). Either way the output is one gemm over all steps.
//
// Hoisted out of the time loop, so a step does only what depends on the previous step:
// the source keys' projection W_k k (once per batch, `AdditiveAttention::project_keys`), the
// embedding of all target inputs (one lookup) and their half of the bottom cell's input gates
// (one gemm), the mask, and the output projection (one gemm over all steps in `forward`).
//
// Dropout (config.dropout) acts on both embeddings' outputs, between stacked encoder GRU layers
// and between stacked decoder cells, in training mode only.
//
// Parameter names: source_embedding.weight, encoder.weight_ih_l0(_reverse)..., bridge.weight
// (when present), attention.W_q / W_k / v, target_embedding.weight, decoder.<l>.weight_ih...,
// output.weight / output.bias.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "layers/attention.hpp"
#include "layers/embedding.hpp"
#include "layers/gru.hpp"
#include "layers/linear.hpp"
#include "layers/normalization.hpp"
#include "models/seq2seq.hpp"

namespace qkv::models {

/// What the output layer reads: the decoder state only (d2l) or [s_t; context_t; embedding].
enum class BahdanauReadout { state, deep };
constexpr EnumNames<BahdanauReadout, 2> enum_names(BahdanauReadout) {
  return {"Bahdanau readout", {{{BahdanauReadout::state, "state"}, {BahdanauReadout::deep, "deep"}}}};
}

struct BahdanauConfig {
  std::size_t source_vocab_size = 0;  // required: no default fits every corpus
  std::size_t target_vocab_size = 0;  // required
  std::size_t embedding_dim = 64;    // config.json: "embed_size"
  std::size_t hidden_size = 128;      // per direction in the encoder
  /// The decoder's state size; 0: hidden_size (what every config before this field meant).
  std::size_t decoder_hidden_size = 0;
  std::size_t encoder_layers = 1;
  bool bidirectional = true;          // the encoder
  std::size_t decoder_layers = 1;
  std::size_t attention_size = 128;   // width of W_q q + W_k k
  BahdanauReadout readout = BahdanauReadout::state;  // config.json "readout"; absent from old configs: state
  real dropout = 0.1;
  std::uint64_t seed = 0;             // initial weights and dropout masks

  /// Throws Error naming the field for a zero size or a dropout outside [0, 1).
  void validate() const;
  std::size_t decoder_width() const { return decoder_hidden_size > 0 ? decoder_hidden_size : hidden_size; }
  friend bool operator==(const BahdanauConfig&, const BahdanauConfig&) = default;
};

/// Every field, by name (the seed as a number).
void to_json(nlohmann::json& json, const BahdanauConfig& config);
/// Missing fields take their defaults, except the two vocabulary sizes, which are required.
/// Throws Error for a missing vocabulary size, an unknown key (a typo would otherwise be
/// silently ignored) or a value of the wrong type, and validates the result.
void from_json(const nlohmann::json& json, BahdanauConfig& config);

/// What the Bahdanau decoder carries between steps. Rows of `allowed` and `hidden` are the
/// decoder's B rows (beam hypotheses, in beam search); the encoder's outputs stay one row per
/// source sentence (N of them), which row b reads through sentence_of_row[b].
class BahdanauState : public DecoderState {
 public:
  Variable encoder_outputs;          // [N, S, D·H] — the attention's keys and values
  Variable projected_keys;           // [N, S, A]   — W_k k, computed once
  IndexArray sentence_of_row;        // [B] in [0, N) — row b's sentence; 0..N-1 after encode
  BoolArray allowed;                 // [B, 1, S]   — true at valid source positions
  std::vector<Variable> hidden;      // L_dec x [B, H_dec], bottom layer first

  /// Reorders the decoder rows: gathers the hidden states through the `embedding` op (a row
  /// gather with a backward, so a state built with gradients on keeps them) and the masks, and
  /// maps the new rows to their sentences — the encoder outputs and keys, the same for every
  /// hypothesis of a sentence, are not copied per row.
  void select_rows(const std::vector<std::size_t>& rows) override;
  std::size_t batch_size() const { return allowed.shape()[0]; }
};

class BahdanauModel : public Seq2SeqModel {
 public:
  explicit BahdanauModel(const BahdanauConfig& config);
  /// Rebuilds a model from `config()` output (the weights are the seed's, not a checkpoint's).
  static std::shared_ptr<BahdanauModel> from_config(const nlohmann::json& config);

  /// Also returns "attention" [B, T, S]: the weights each target position gave the source.
  Seq2SeqOutput forward(const IndexArray& source, const IndexArray& source_lengths,
                        const IndexArray& target_input) override;
  std::unique_ptr<DecoderState> start_decoding(const IndexArray& source, const IndexArray& source_lengths) override;
  /// `state` must come from this model's start_decoding; "attention" is [B, S].
  StepOutput decode_step(DecoderState& state, const IndexArray& previous_tokens) override;
  std::string kind() const override { return "bahdanau"; }
  nlohmann::json config() const override { return config_; }
  const BahdanauConfig& bahdanau_config() const { return config_; }

 private:
  /// Encodes and prepares everything the decoder needs except the target.
  BahdanauState encode(const IndexArray& source, const IndexArray& source_lengths);
  /// The bottom cell's weight_ih cut along its input into the embedding's and the context's parts.
  struct InputWeights {
    Variable embedding;  // [3H, E]
    Variable context;    // [3H, D·H]
  };
  InputWeights split_input_weights() const;
  struct StepResult {
    Variable weights;  // [B, 1, S]
    Variable context;  // [B, D·H]
  };
  /// One decoder step, given the previous tokens' half of the bottom cell's input gates,
  /// W_e embedding(y) + b_ih, as rows [first_row, first_row + B) of `embedding_gates` [R, 3H_dec]
  /// (`forward` computes them for all steps at once, read in place): updates state.hidden and
  /// returns the attention weights and the context the step read.
  /// The weights every step applies, transposed once (ops.hpp's PreparedWeight): a teacher-forced
  /// forward prepares them for its T steps; decode_step, one step a call, reads them as stored.
  struct PreparedStepWeights {
    PreparedWeight context;               // W_c
    PreparedWeight hidden;                // the bottom cell's W_hh
    std::optional<PreparedWeight> query;  // the attention's W_q, none when int8
  };
  StepResult step(BahdanauState& state, const Variable& embedding_gates, std::size_t first_row,
                  const Variable& context_weight, const PreparedStepWeights* prepared);
  /// What the output layer reads, [..., H_dec] or [..., H_dec + D·H + E] ("deep").
  Variable readout(const Variable& top_state, const Variable& context, const Variable& embedded) const;
  /// Throws ShapeError naming the model unless source is [B, S] (B, S > 0) and lengths [B] lie in
  /// [0, S] (a zero-length source gets all-zero attention weights and a zero context).
  void check_source(const IndexArray& source, const IndexArray& source_lengths) const;
  /// Applies dropout when configured (identity otherwise).
  Variable drop(const Variable& x) const;

  BahdanauConfig config_;
  std::shared_ptr<Embedding> source_embedding_, target_embedding_;
  std::shared_ptr<GRU> encoder_;
  std::shared_ptr<Linear> bridge_;  // null when the encoder's final states are used directly
  std::shared_ptr<AdditiveAttention> attention_;
  std::vector<std::shared_ptr<GRUCell>> decoder_;
  std::shared_ptr<Linear> output_;
  std::shared_ptr<Dropout> dropout_;  // null when config.dropout == 0
};

}  // namespace qkv::models
