#include "train/attention_plots.hpp"

#include <cmath>
#include <numeric>

#include "autograd/variable.hpp"
#include "lib/text/batching.hpp"
#include "lib/numerics/error.hpp"
#include "lib/plot/svg.hpp"
#include "train/data_spec.hpp"

namespace qkv::train {
using models::AttentionGroup;
using models::DecodeOptions;
using models::Hypothesis;
using models::Seq2SeqModel;
using models::TokenSide;

namespace {

/// Row b of a batch of maps [B, Tq, Tk] -> [Tq, Tk] (the plots show one sentence).
Array sentence_map(const Array& maps, std::size_t b) {
  const std::size_t rows = maps.shape()[1], columns = maps.shape()[2];
  Array map = Array::from_shape({rows, columns});
  std::copy_n(maps.data() + b * rows * columns, rows * columns, map.data());
  return map;
}

}  // namespace

std::vector<double> row_entropies(const Array& map) {  // map [Tq, Tk]
  const std::size_t rows = map.shape()[0], columns = map.shape()[1];
  std::vector<double> entropies(rows, 0.0);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < columns; ++j) {
      const double p = map(i, j);
      if (p > 0) entropies[i] -= p * std::log(p);
    }
  return entropies;
}

double mean_entropy(const std::vector<double>& row_entropies) {
  if (row_entropies.empty()) return 0;
  return std::accumulate(row_entropies.begin(), row_entropies.end(), 0.0) / double(row_entropies.size());
}

SentenceAttention sentence_attention(Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const DecodeOptions& decode) {
  check_arg(!source.empty(), "sentence_attention", "the source sentence is empty");
  model.eval();
  const NoGradGuard no_grad;
  const SentencePair pair{source, {}};
  const Batcher batcher(std::span<const SentencePair>(&pair, 1), vocabs.source, vocabs.target, {.shuffle = false});
  const Batch batch = batcher.make_batch(std::vector<std::size_t>{0});
  SentenceAttention sentence;
  sentence.source = source;
  sentence.hypothesis = models::decode(model, batch.source, batch.source_lengths, decode)[0];
  const Hypothesis& hypothesis = sentence.hypothesis;

  // Decoder inputs: <bos> and the translation; a translation cut at max_length has no <eos>,
  // so its last token is an output but never an input.
  std::vector<std::int64_t> inputs{Vocab::bos_id};
  inputs.insert(inputs.end(), hypothesis.tokens.begin(), hypothesis.tokens.end());
  // Every id as its token, specials too: an untrained model may well produce <pad> or <bos>,
  // and each still has a row in the maps.
  const auto labels = [&](std::span<const std::int64_t> ids) {
    Tokens tokens;
    for (const std::int64_t id : ids) tokens.push_back(vocabs.target.token(id));
    return tokens;
  };
  Tokens outputs = labels(hypothesis.tokens);
  if (hypothesis.finished)
    outputs.push_back("<eos>");
  else
    inputs.pop_back();
  if (inputs.empty()) return sentence;  // nothing was generated: nothing to draw
  IndexArray target_input = IndexArray::from_shape({1, inputs.size()});  // [1, T]
  std::copy(inputs.begin(), inputs.end(), target_input.data());

  Tokens source_labels = source;
  source_labels.push_back("<eos>");
  const Tokens target_inputs = labels(inputs);

  for (const AttentionGroup& group : model.attention_groups(batch.source, batch.source_lengths, target_input)) {
    if (group.maps.empty()) continue;
    SentenceAttention::Group& labelled = sentence.groups.emplace_back();
    labelled.title = group.title;
    labelled.query_side = group.queries;
    labelled.key_side = group.keys;
    labelled.heads = group.heads;
    labelled.queries = group.queries == TokenSide::source ? source_labels : labelled.cross() ? outputs : target_inputs;
    labelled.keys = group.keys == TokenSide::source ? source_labels : target_inputs;
    for (const auto& [name, weights] : group.maps) {
      labelled.names.push_back(name);
      labelled.maps.push_back(sentence_map(weights, 0));  // [Tq, Tk]
    }
  }
  return sentence;
}

AttentionPlots write_attention_plots(const SentenceAttention& sentence, const Vocabs& vocabs,
                                     const nlohmann::json& data_spec, const std::string& stem) {
  AttentionPlots plots;
  plots.hypothesis = sentence.hypothesis;
  for (const SentenceAttention::Group& group : sentence.groups) {
    const std::vector<Array>& maps = group.maps;
    const std::vector<std::string>& titles = group.names;
    for (std::size_t m = 0; m < maps.size(); ++m) {
      plots.entropies.push_back(
          {group.title, titles[m], mean_entropy(row_entropies(maps[m])), std::log(double(group.keys.size()))});
    }
    const bool cross = group.cross();
    const std::string suffix = cross ? "" : group.key_side == TokenSide::source ? "-encoder-self" : "-decoder-self";
    const std::string file = stem + suffix + ".svg";
    const std::string title = group.title + ": " + detokenize(data_spec, sentence.source) + " → " +
                              detokenize(data_spec, vocabs.target.decode(sentence.hypothesis.tokens));
    if (maps.size() == 1)
      write_svg(file, attention_heatmap_svg({.weights = maps[0], .queries = group.queries, .keys = group.keys,
                                             .title = title}));
    else
      write_svg(file, attention_grid_svg({.weights = maps, .titles = titles, .queries = group.queries,
                                          .keys = group.keys, .columns = group.heads, .title = title}));
    plots.files.push_back(file);
    if (!cross) continue;
    // The connection diagram: the last layer's heads averaged, so one line per token pair.
    const std::size_t heads = std::min(group.heads, maps.size());
    Array average = maps[maps.size() - heads];  // [Tq, Tk]
    for (std::size_t h = maps.size() - heads + 1; h < maps.size(); ++h)
      for (std::size_t i = 0; i < average.size(); ++i) average.data()[i] += maps[h].data()[i];
    for (std::size_t i = 0; i < average.size(); ++i) average.data()[i] /= real(heads);
    const std::string connections = stem + "-connections.svg";
    const std::string which = heads == 1 ? titles.back() : "last layer, mean of " + std::to_string(heads) + " heads";
    write_svg(connections, attention_connections_svg({.weights = average, .queries = group.queries,
                                                      .keys = group.keys, .title = group.title + " (" + which + ")"}));
    plots.files.push_back(connections);
  }
  return plots;
}

AttentionPlots write_attention_plots(Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const nlohmann::json& data_spec, const DecodeOptions& decode,
                                     const std::string& stem) {
  return write_attention_plots(sentence_attention(model, vocabs, source, decode), vocabs, data_spec, stem);
}

}  // namespace qkv::train
