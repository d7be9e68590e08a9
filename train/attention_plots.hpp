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

struct AttentionPlots {
  models::Hypothesis hypothesis;             // the translation the maps belong to
  std::vector<std::string> files;      // written, in the order above
  std::vector<MapEntropy> entropies;   // one per map, every group
};

/// Translates `source` (tokens, without <eos>) with `decode` and writes the plots above;
/// `data_spec` (train/data_spec.hpp) turns tokens into the titles' text. Sets eval mode.
/// Throws Error naming the file if one cannot be written.
AttentionPlots write_attention_plots(models::Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const nlohmann::json& data_spec, const models::DecodeOptions& decode,
                                     const std::string& stem);

}  // namespace qkv::train
