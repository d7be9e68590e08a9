#pragma once
// Seeing what a trained model's attention does on one sentence: translate it, run the model
// teacher-forced on its own translation, and draw every attention map it has.
//
//   <stem>.svg               cross-attention: one heatmap (Bahdanau) or a grid of every
//                            layer x head (transformer), each query row's entropy beside it
//   <stem>-connections.svg   source tokens above, target tokens below, lines as thick as the
//                            weight (the transformer's last layer, averaged over its heads)
//   <stem>-encoder-self.svg  the transformer only: every layer x head, source x source
//   <stem>-decoder-self.svg  the transformer only: every layer x head, target x target
//
// Labels: source keys are the source tokens and <eos>; cross-attention queries are the tokens
// each decoder position produced (the translation and its <eos>); self-attention queries and
// keys on the target side are the decoder's inputs (<bos> and the translation).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/text/corpus.hpp"
#include "models/decoding.hpp"
#include "models/seq2seq.hpp"

namespace qkv::train {

/// The mean over query rows of the entropy of each row, in nats, beside its maximum ln(T_keys).
struct MapEntropy {
  std::string group;  // "cross-attention", ...
  std::string name;   // "layer 1 head 2", "attention"
  double mean_entropy = 0;
  double max_entropy = 0;
};

/// One sentence's attention, labelled: what the plots below and the explorer
/// (train/attention_explorer.hpp) both draw.
struct SentenceAttention {
  Tokens source;                  // the source tokens, without <eos>
  models::Hypothesis hypothesis;  // its translation, which the maps belong to
  struct Group {
    std::string title;  // models::AttentionGroup::title: "cross-attention", ...
    models::TokenSide query_side = models::TokenSide::target;
    models::TokenSide key_side = models::TokenSide::source;
    bool cross() const { return query_side == models::TokenSide::target && key_side == models::TokenSide::source; }
    std::size_t heads = 1;        // maps per layer
    Tokens queries;               // Tq labels
    Tokens keys;                  // Tk labels
    std::vector<std::string> names;  // one per map: "layer 1 head 2", "attention"
    std::vector<Array> maps;         // each [Tq, Tk], layer 1's heads first
  };
  std::vector<Group> groups;  // those of model.attention_groups() that have maps, in its order
};

/// Translates `source` (tokens, without <eos>) with `decode`, runs the model teacher-forced on
/// the translation, and labels every map (the labels as above). No groups when nothing was
/// generated. Sets eval mode; throws Error if `source` is empty.
SentenceAttention sentence_attention(models::Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const models::DecodeOptions& decode);

/// The entropy of each row of `map` [Tq, Tk], in nats.
std::vector<double> row_entropies(const Array& map);
/// The mean of row_entropies' values; 0 for a map without rows.
double mean_entropy(const std::vector<double>& row_entropies);

struct AttentionPlots {
  models::Hypothesis hypothesis;             // the translation the maps belong to
  std::vector<std::string> files;      // written, in the order above
  std::vector<MapEntropy> entropies;   // one per map, every group
};

/// Writes the plots above of `sentence`; `data_spec` (train/data_spec.hpp) turns tokens into
/// the titles' text. Throws Error naming the file if one cannot be written.
AttentionPlots write_attention_plots(const SentenceAttention& sentence, const Vocabs& vocabs,
                                     const nlohmann::json& data_spec, const std::string& stem);

/// sentence_attention() and the plots of it, in one call.
AttentionPlots write_attention_plots(models::Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const nlohmann::json& data_spec, const models::DecodeOptions& decode,
                                     const std::string& stem);

}  // namespace qkv::train
