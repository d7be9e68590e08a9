#include "train/attention_plots.hpp"

#include <cmath>

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

double mean_row_entropy(const Array& map) {  // map [Tq, Tk]
  const std::size_t rows = map.shape()[0], columns = map.shape()[1];
  double total = 0;
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < columns; ++j) {
      const double p = map(i, j);
      if (p > 0) total -= p * std::log(p);
    }
  return rows == 0 ? 0 : total / double(rows);
}

}  // namespace

AttentionPlots write_attention_plots(Seq2SeqModel& model, const Vocabs& vocabs, const Tokens& source,
                                     const nlohmann::json& data_spec, const DecodeOptions& decode,
                                     const std::string& stem) {
  check_arg(!source.empty(), "write_attention_plots", "the source sentence is empty");
  model.eval();
  const NoGradGuard no_grad;
  const SentencePair pair{source, {}};
  const Batcher batcher(std::span<const SentencePair>(&pair, 1), vocabs.source, vocabs.target, {.shuffle = false});
  const Batch batch = batcher.make_batch(std::vector<std::size_t>{0});
  AttentionPlots plots;
  plots.hypothesis = models::decode(model, batch.source, batch.source_lengths, decode)[0];
  const Hypothesis& hypothesis = plots.hypothesis;

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
  if (inputs.empty()) return plots;  // nothing was generated: nothing to draw
  IndexArray target_input = IndexArray::from_shape({1, inputs.size()});  // [1, T]
  std::copy(inputs.begin(), inputs.end(), target_input.data());

  Tokens source_labels = source;
  source_labels.push_back("<eos>");
  const Tokens target_inputs = labels(inputs);

  const std::vector<AttentionGroup> groups = model.attention_groups(batch.source, batch.source_lengths, target_input);
  for (const AttentionGroup& group : groups) {
    if (group.maps.empty()) continue;
    const bool cross = group.queries == TokenSide::target && group.keys == TokenSide::source;
    const Tokens& queries = group.queries == TokenSide::source ? source_labels : cross ? outputs : target_inputs;
    const Tokens& keys = group.keys == TokenSide::source ? source_labels : target_inputs;
    std::vector<Array> maps;
    std::vector<std::string> titles;
    for (const auto& [name, weights] : group.maps) {
      maps.push_back(sentence_map(weights, 0));  // [Tq, Tk]
      titles.push_back(name);
      plots.entropies.push_back({group.title, name, mean_row_entropy(maps.back()), std::log(double(keys.size()))});
    }
    const std::string suffix = cross ? "" : group.keys == TokenSide::source ? "-encoder-self" : "-decoder-self";
    const std::string file = stem + suffix + ".svg";
    const std::string title = group.title + ": " + detokenize(data_spec, source) + " → " +
                              detokenize(data_spec, vocabs.target.decode(hypothesis.tokens));
    if (maps.size() == 1)
      write_svg(file, attention_heatmap_svg({.weights = maps[0], .queries = queries, .keys = keys, .title = title}));
    else
      write_svg(file, attention_grid_svg({.weights = maps, .titles = titles, .queries = queries, .keys = keys,
                                          .columns = group.heads, .title = title}));
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
    write_svg(connections, attention_connections_svg(
                               {.weights = average, .queries = queries, .keys = keys, .title = group.title + " (" + which + ")"}));
    plots.files.push_back(connections);
  }
  return plots;
}

}  // namespace qkv::train
