#include "study/attribution.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <numeric>

#include "lib/numerics/error.hpp"
#include "lib/text/vocab.hpp"
#include "study/frozen_parameters.hpp"

namespace qkv::study {

namespace {

constexpr const char* kSpearman = "spearman";
constexpr const char* kRollout = "attention_rollout";
constexpr const char* kFlow = "attention_flow";
constexpr const char* kAttribution = "attribution";
/// Where input x gradient replaces the source embedding (layers/embedding.hpp's hook point).
constexpr const char* kSourceEmbedding = "source_embedding.output";

std::string shape_text(const Matrix& m) { return "[" + std::to_string(m.shape()[0]) + ", " + std::to_string(m.shape()[1]) + "]"; }

/// a · b for [n, k] x [k, m].
Matrix multiply(const Matrix& a, const Matrix& b) {
  const std::size_t n = a.shape()[0], k = a.shape()[1], m = b.shape()[1];
  Matrix result = xt::zeros<double>({n, m});
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t p = 0; p < k; ++p) {
      const double scale = a(i, p);
      for (std::size_t j = 0; j < m; ++j) result(i, j) += scale * b(p, j);
    }
  return result;
}

void check_layers(const std::vector<Matrix>& layers, const char* op) {
  check_shape(!layers.empty(), op, "needs at least one layer's attention, got none");
  const std::size_t size = layers.front().shape()[0];
  for (std::size_t l = 0; l < layers.size(); ++l)
    check_shape(layers[l].shape()[0] == size && layers[l].shape()[1] == size, op, [&] {
      return "layer " + std::to_string(l + 1) + "'s attention must be [" + std::to_string(size) + ", " +
             std::to_string(size) + "] like layer 1's, got " + shape_text(layers[l]);
    });
}

/// Row `row` of a [T, S] matrix as a vector.
std::vector<double> row_of(const Matrix& m, std::size_t row) {
  std::vector<double> values(m.shape()[1]);
  for (std::size_t j = 0; j < values.size(); ++j) values[j] = m(row, j);
  return values;
}

/// Map [B, Tq, Tk] of batch row 0, cropped to [rows, cols], as double.
Matrix crop(const Array& map, std::size_t rows, std::size_t cols) {
  Matrix result = xt::zeros<double>({rows, cols});
  const std::size_t row_stride = map.shape()[2];
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) result(i, j) = static_cast<double>(map.data()[i * row_stride + j]);
  return result;
}

Matrix mean_of(const std::vector<const Matrix*>& maps) {
  Matrix sum = *maps.front();
  for (std::size_t i = 1; i < maps.size(); ++i) sum += *maps[i];
  return sum / static_cast<double>(maps.size());
}

void check_sentence(const Batch& sentence) {
  check_shape(sentence.source.dimension() == 2 && sentence.source.shape()[0] == 1 &&
                  sentence.target_input.dimension() == 2 && sentence.target_input.shape()[0] == 1 &&
                  sentence.target_output.shape() == sentence.target_input.shape(),
              kAttribution, [&] {
                return "needs a batch of one sentence pair, got source " + qkv::to_string(shape_of(sentence.source)) +
                       " and target_input " + qkv::to_string(shape_of(sentence.target_input));
              });
  check_arg(sentence.source_lengths(0) > 0 && sentence.target_lengths(0) > 0, kAttribution,
            "the sentence pair has an empty source or target");
}

std::size_t source_length(const Batch& sentence) { return static_cast<std::size_t>(sentence.source_lengths(0)); }
std::size_t target_length(const Batch& sentence) { return static_cast<std::size_t>(sentence.target_lengths(0)); }

/// `copies` copies of row 0 of `ids` [1, N], cropped to its first `length` columns.
IndexArray repeat_row(const IndexArray& ids, std::size_t copies, std::size_t length) {
  IndexArray result = IndexArray::from_shape({copies, length});
  for (std::size_t c = 0; c < copies; ++c)
    for (std::size_t j = 0; j < length; ++j) result(c, j) = ids(0, j);
  return result;
}

struct AttentionMaps {
  std::vector<NamedScores> cross;       // each [T, S]
  std::size_t heads = 1;                // cross-attention maps per layer
  std::vector<Matrix> encoder_layers;   // per layer, mean over heads, [S, S]
};

AttentionMaps attention_maps(models::Seq2SeqModel& model, const Batch& sentence) {
  check_sentence(sentence);
  const NoGradGuard no_grad;
  model.eval();
  const std::size_t source = source_length(sentence), target = target_length(sentence);
  const IndexArray source_ids = repeat_row(sentence.source, 1, source);  // [1, S]
  const IndexArray lengths = {static_cast<std::int64_t>(source)};
  const IndexArray target_input = repeat_row(sentence.target_input, 1, target);  // [1, T]
  AttentionMaps result;
  for (const models::AttentionGroup& group : model.attention_groups(source_ids, lengths, target_input)) {
    if (group.title == "cross-attention") {
      result.heads = group.heads;
      for (const auto& [name, map] : group.maps) result.cross.push_back({name, crop(map, target, source)});
    } else if (group.title == "encoder self-attention") {
      for (std::size_t first = 0; first < group.maps.size(); first += group.heads) {
        Matrix layer = xt::zeros<double>({source, source});
        for (std::size_t h = 0; h < group.heads; ++h) layer += crop(group.maps[first + h].second, source, source);
        result.encoder_layers.push_back(layer / static_cast<double>(group.heads));
      }
    }
  }
  check_arg(!result.cross.empty(), kAttribution,
            "the " + model.kind() + " model's attention_groups() has no \"cross-attention\" group");
  return result;
}

/// The raw maps, then per-layer means (several heads) and the mean of all (several maps).
std::vector<NamedScores> with_means(const AttentionMaps& maps) {
  std::vector<NamedScores> result = maps.cross;
  const std::size_t heads = std::max<std::size_t>(maps.heads, 1);
  if (heads > 1)
    for (std::size_t first = 0, layer = 1; first < maps.cross.size(); first += heads, ++layer) {
      std::vector<const Matrix*> of_layer;
      for (std::size_t h = first; h < std::min(first + heads, maps.cross.size()); ++h)
        of_layer.push_back(&maps.cross[h].scores);
      result.push_back({"layer " + std::to_string(layer) + " mean", mean_of(of_layer)});
    }
  if (maps.cross.size() > 1) {
    std::vector<const Matrix*> all;
    for (const NamedScores& map : maps.cross) all.push_back(&map.scores);
    result.push_back({"mean", mean_of(all)});
  }
  return result;
}

}  // namespace

// ---- ranks ----------------------------------------------------------------------------------

std::vector<double> average_ranks(std::span<const double> values) {
  for (std::size_t i = 0; i < values.size(); ++i)
    check_arg(!std::isnan(values[i]), "average_ranks", [&] { return "value " + std::to_string(i) + " is NaN"; });
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (std::size_t start = 0; start < order.size();) {
    std::size_t end = start + 1;
    while (end < order.size() && values[order[end]] == values[order[start]]) ++end;
    // Positions start..end-1 (0-based) hold ranks start+1..end: their mean.
    const double rank = (static_cast<double>(start + 1) + static_cast<double>(end)) / 2;
    for (std::size_t i = start; i < end; ++i) ranks[order[i]] = rank;
    start = end;
  }
  return ranks;
}

std::optional<double> spearman(std::span<const double> a, std::span<const double> b) {
  check_shape(a.size() == b.size(), kSpearman, [&] {
    return "needs two equally long sequences, got " + std::to_string(a.size()) + " and " + std::to_string(b.size());
  });
  if (a.size() < 2) return std::nullopt;
  const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
  // Both rank vectors have mean (n + 1) / 2.
  const double mean = (static_cast<double>(a.size()) + 1) / 2;
  double cross = 0, square_a = 0, square_b = 0;
  for (std::size_t i = 0; i < ra.size(); ++i) {
    cross += (ra[i] - mean) * (rb[i] - mean);
    square_a += (ra[i] - mean) * (ra[i] - mean);
    square_b += (rb[i] - mean) * (rb[i] - mean);
  }
  // Ranks are multiples of 0.5, so a constant side gives exactly zero.
  if (square_a == 0 || square_b == 0) return std::nullopt;
  return cross / std::sqrt(square_a * square_b);
}

// ---- rollout and flow -----------------------------------------------------------------------

Matrix with_residual(const Matrix& attention) {
  check_shape(attention.shape()[0] == attention.shape()[1], "with_residual",
              "needs a square attention matrix, got " + shape_text(attention));
  Matrix result = 0.5 * attention;
  for (std::size_t i = 0; i < result.shape()[0]; ++i) {
    result(i, i) += 0.5;
    double sum = 0;
    for (std::size_t j = 0; j < result.shape()[1]; ++j) sum += result(i, j);
    for (std::size_t j = 0; j < result.shape()[1]; ++j) result(i, j) /= sum;  // sum ≥ 0.5
  }
  return result;
}

Matrix attention_rollout(const std::vector<Matrix>& layers) {
  check_layers(layers, kRollout);
  Matrix rollout = with_residual(layers.front());
  for (std::size_t l = 1; l < layers.size(); ++l) rollout = multiply(with_residual(layers[l]), rollout);
  return rollout;
}

Matrix rollout_readout(const std::vector<Matrix>& layers, const Matrix& readout) {
  check_layers(layers, kRollout);
  check_shape(readout.shape()[1] == layers.front().shape()[0], kRollout, [&] {
    return "the readout " + shape_text(readout) + " must have one column per source position (" +
           std::to_string(layers.front().shape()[0]) + ")";
  });
  return multiply(readout, attention_rollout(layers));
}

FlowNetwork::FlowNetwork(std::size_t nodes) : capacity_(xt::zeros<double>({nodes, nodes})) {}

void FlowNetwork::add_edge(std::size_t from, std::size_t to, double capacity) {
  check_arg(from < size() && to < size(), "FlowNetwork", [&] {
    return "edge " + std::to_string(from) + " -> " + std::to_string(to) + " names a node outside 0.." +
           std::to_string(size() - 1);
  });
  check_arg(capacity >= 0 && std::isfinite(capacity), "FlowNetwork",
            [&] { return "capacity must be finite and non-negative, got " + format_number(capacity); });
  if (from != to) capacity_(from, to) += capacity;  // a loop carries no flow
}

double FlowNetwork::max_flow(std::size_t source, std::size_t sink) const {
  const std::size_t n = size();
  check_arg(source < n && sink < n && source != sink, "FlowNetwork::max_flow", [&] {
    return "needs distinct source and sink among 0.." + std::to_string(n - 1) + ", got " + std::to_string(source) +
           " and " + std::to_string(sink);
  });
  Matrix residual = capacity_;
  std::vector<std::size_t> parent(n);
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  double total = 0;
  // Edmonds–Karp needs at most V·E augmentations; the bound only guards against a loop that
  // rounding could in principle make endless.
  const std::size_t max_augmentations = n * n * n + 16;
  for (std::size_t augmentation = 0;; ++augmentation) {
    check_arg(augmentation < max_augmentations, "FlowNetwork::max_flow",
              "no convergence after " + std::to_string(max_augmentations) + " augmenting paths");
    std::fill(parent.begin(), parent.end(), none);
    parent[source] = source;
    std::deque<std::size_t> queue{source};
    while (!queue.empty() && parent[sink] == none) {
      const std::size_t u = queue.front();
      queue.pop_front();
      for (std::size_t v = 0; v < n; ++v)
        if (parent[v] == none && residual(u, v) > 0) {
          parent[v] = u;
          queue.push_back(v);
        }
    }
    if (parent[sink] == none) return total;
    double bottleneck = std::numeric_limits<double>::infinity();
    for (std::size_t v = sink; v != source; v = parent[v]) bottleneck = std::min(bottleneck, residual(parent[v], v));
    for (std::size_t v = sink; v != source; v = parent[v]) {
      // The bottleneck edge drops to exactly zero (x − x = 0), so each path saturates one edge.
      residual(parent[v], v) -= bottleneck;
      residual(v, parent[v]) += bottleneck;
    }
    total += bottleneck;
  }
}

Matrix attention_flow(const std::vector<Matrix>& layers, const Matrix& readout) {
  check_layers(layers, kFlow);
  const std::size_t source = layers.front().shape()[0], targets = readout.shape()[0], depth = layers.size();
  check_shape(readout.shape()[1] == source, kFlow, [&] {
    return "the readout " + shape_text(readout) + " must have one column per source position (" +
           std::to_string(source) + ")";
  });
  // Node (l, i) is l·S + i for l = 0..L; the target node comes last.
  const std::size_t sink = (depth + 1) * source;
  FlowNetwork encoder(sink + 1);
  for (std::size_t l = 0; l < depth; ++l) {
    const Matrix residual = with_residual(layers[l]);  // [S, S]: row i, the output, reads column j
    for (std::size_t i = 0; i < source; ++i)
      for (std::size_t j = 0; j < source; ++j)
        encoder.add_edge(l * source + j, (l + 1) * source + i, residual(i, j));
  }
  Matrix flow = xt::zeros<double>({targets, source});
  for (std::size_t t = 0; t < targets; ++t) {
    FlowNetwork network = encoder;
    for (std::size_t i = 0; i < source; ++i) {
      check_arg(readout(t, i) >= 0, kFlow, "readout weights must be non-negative");
      network.add_edge(depth * source + i, sink, readout(t, i));
    }
    for (std::size_t j = 0; j < source; ++j) flow(t, j) = network.max_flow(j, sink);
  }
  return flow;
}

// ---- the methods on a model -----------------------------------------------------------------

std::vector<NamedScores> cross_attention_scores(models::Seq2SeqModel& model, const Batch& sentence) {
  return with_means(attention_maps(model, sentence));
}

std::vector<Matrix> encoder_self_attention(models::Seq2SeqModel& model, const Batch& sentence) {
  return attention_maps(model, sentence).encoder_layers;
}

Matrix label_log_probs(models::Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                       const IndexArray& target_input, const IndexArray& target_output) {
  const NoGradGuard no_grad;
  model.eval();
  const Array logits = model.forward(source, source_lengths, target_input).logits.value();  // [B, T, V]
  check_shape(logits.dimension() == 3 && logits.shape()[0] == target_output.shape()[0] &&
                  logits.shape()[1] == target_output.shape()[1],
              "label_log_probs", [&] {
                return "logits " + qkv::to_string(shape_of(logits)) + " do not match the labels " +
                       qkv::to_string(shape_of(target_output));
              });
  const std::size_t batch = logits.shape()[0], steps = logits.shape()[1], vocab = logits.shape()[2];
  Matrix result = xt::zeros<double>({batch, steps});
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t t = 0; t < steps; ++t) {
      const real* row = logits.data() + (b * steps + t) * vocab;  // [V]
      double largest = -std::numeric_limits<double>::infinity();
      for (std::size_t v = 0; v < vocab; ++v) largest = std::max(largest, static_cast<double>(row[v]));
      double sum = 0;
      for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - largest);
      const auto label = static_cast<std::size_t>(target_output(b, t));
      check_arg(label < vocab, "label_log_probs", "label id " + std::to_string(label) + " outside the vocabulary");
      result(b, t) = static_cast<double>(row[label]) - largest - std::log(sum);
    }
  return result;
}

Matrix occlusion_scores(models::Seq2SeqModel& model, const Batch& sentence) {
  check_sentence(sentence);
  const std::size_t source = source_length(sentence), target = target_length(sentence);
  // Copies 0..S-1 occlude one position each; copy S is the sentence itself, in the same batch
  // so that both sides of the difference go through the same kernels.
  IndexArray sources = repeat_row(sentence.source, source + 1, source);  // [S+1, S]
  for (std::size_t j = 0; j < source; ++j) sources(j, j) = Vocab::unk_id;
  const IndexArray lengths = xt::full_like(IndexArray::from_shape({source + 1}), static_cast<std::int64_t>(source));
  const Matrix log_probs = label_log_probs(model, sources, lengths, repeat_row(sentence.target_input, source + 1, target),
                                           repeat_row(sentence.target_output, source + 1, target));  // [S+1, T]
  Matrix scores = xt::zeros<double>({target, source});
  for (std::size_t t = 0; t < target; ++t)
    for (std::size_t j = 0; j < source; ++j) scores(t, j) = log_probs(source, t) - log_probs(j, t);
  return scores;
}

Matrix input_x_gradient(models::Seq2SeqModel& model, const Batch& sentence) {
  check_sentence(sentence);
  model.eval();
  const std::size_t source = source_length(sentence), target = target_length(sentence);
  // T copies of the sentence: copy t's embedding receives the gradient of log p(y_t) alone,
  // since the copies do not interact, so one backward pass serves every target position.
  const IndexArray sources = repeat_row(sentence.source, target, source);  // [T, S]
  const IndexArray lengths = xt::full_like(IndexArray::from_shape({target}), static_cast<std::int64_t>(source));
  const IndexArray labels = repeat_row(sentence.target_output, target, target);  // [T, T]
  const FrozenParameters frozen(model);
  Variable embedded;  // the source embedding's output [T, S, D], as a leaf
  std::size_t fired = 0;
  Variable logits;
  {
    ScopedHooks hooks(model);
    hooks.add(std::string(kSourceEmbedding), [&embedded, &fired](Variable& value, const HookCall&) {
      embedded = Variable(value.value(), /*requires_grad=*/true);
      value = embedded;
      ++fired;
    });
    logits = model.forward(sources, lengths, repeat_row(sentence.target_input, target, target)).logits;  // [T, T, V]
  }
  check_arg(fired == 1, kAttribution, [&] {
    return "input x gradient: the hook point " + std::string(kSourceEmbedding) + " fired " + std::to_string(fired) +
           " times in one forward pass of the " + model.kind() + " model, expected once";
  });
  const Array& values = logits.value();
  const std::size_t vocab = values.shape()[2];
  // d log softmax(z)_y / dz = onehot(y) − softmax(z), at (copy t, position t) only.
  Array seed = xt::zeros<real>(values.shape());  // [T, T, V]
  for (std::size_t t = 0; t < target; ++t) {
    const real* row = values.data() + (t * target + t) * vocab;  // [V]
    real* out = seed.data() + (t * target + t) * vocab;
    const real largest = *std::max_element(row, row + vocab);
    double sum = 0;
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - largest));
    for (std::size_t v = 0; v < vocab; ++v) out[v] = static_cast<real>(-std::exp(static_cast<double>(row[v] - largest)) / sum);
    out[static_cast<std::size_t>(labels(t, t))] += real(1);
  }
  logits.backward(seed);
  check_arg(embedded.has_grad(), kAttribution, "input x gradient: no gradient reached the source embedding");
  const Array& embedding = embedded.value();  // [T, S, D]
  const Array& gradient = embedded.grad();    // [T, S, D]
  const std::size_t width = embedding.shape()[2];
  Matrix scores = xt::zeros<double>({target, source});
  for (std::size_t t = 0; t < target; ++t)
    for (std::size_t j = 0; j < source; ++j) {
      const std::size_t offset = (t * source + j) * width;
      double dot = 0;
      for (std::size_t d = 0; d < width; ++d)
        dot += static_cast<double>(embedding.data()[offset + d]) * static_cast<double>(gradient.data()[offset + d]);
      scores(t, j) = dot;
    }
  return scores;
}

SentenceAttribution attribute_sentence(models::Seq2SeqModel& model, const Batch& sentence,
                                       const AttributionOptions& options) {
  const AttentionMaps maps = attention_maps(model, sentence);
  SentenceAttribution result;
  result.attention = with_means(maps);
  if (options.rollout && !maps.encoder_layers.empty()) {
    // Readouts: each layer's mean over heads and the mean of all, or the one map there is.
    std::vector<const NamedScores*> readouts;
    for (const NamedScores& map : result.attention)
      if (map.name == "mean" || map.name.ends_with(" mean")) readouts.push_back(&map);
    if (readouts.empty()) readouts.push_back(&result.attention.front());
    std::vector<NamedScores> composed;
    for (const NamedScores* readout : readouts) {
      composed.push_back({"rollout · " + readout->name, rollout_readout(maps.encoder_layers, readout->scores)});
      if (options.flow)
        composed.push_back({"flow · " + readout->name, attention_flow(maps.encoder_layers, readout->scores)});
    }
    for (NamedScores& scores : composed) result.attention.push_back(std::move(scores));
  }
  if (options.gradient) result.attribution.push_back({"input x gradient", input_x_gradient(model, sentence)});
  if (options.occlusion) result.attribution.push_back({"occlusion", occlusion_scores(model, sentence)});
  return result;
}

// ---- agreement ------------------------------------------------------------------------------

RowAgreement row_agreement(const Matrix& a, const Matrix& b) {
  check_shape(a.shape() == b.shape(), "row_agreement",
              [&] { return "needs two equally shaped score matrices, got " + shape_text(a) + " and " + shape_text(b); });
  RowAgreement result;
  double sum = 0, same_first = 0;
  for (std::size_t t = 0; t < a.shape()[0]; ++t) {
    const std::vector<double> row_a = row_of(a, t), row_b = row_of(b, t);
    if (const std::optional<double> rho = spearman(row_a, row_b)) {
      sum += *rho;
      ++result.rows;
      // The first of several equal largest values, on both sides alike.
      if (std::max_element(row_a.begin(), row_a.end()) - row_a.begin() ==
          std::max_element(row_b.begin(), row_b.end()) - row_b.begin())
        ++same_first;
    } else {
      ++result.skipped_rows;
    }
  }
  const double rows = static_cast<double>(result.rows);
  result.mean = result.rows ? sum / rows : std::numeric_limits<double>::quiet_NaN();
  result.top1 = result.rows ? same_first / rows : std::numeric_limits<double>::quiet_NaN();
  return result;
}

std::vector<MethodPair> method_pairs(const SentenceAttribution& sentence) {
  std::vector<MethodPair> pairs;
  for (const NamedScores& attention : sentence.attention)
    for (const NamedScores& attribution : sentence.attribution) pairs.push_back({attention.name, attribution.name});
  for (std::size_t i = 0; i < sentence.attribution.size(); ++i)
    for (std::size_t k = i + 1; k < sentence.attribution.size(); ++k)
      pairs.push_back({sentence.attribution[i].name, sentence.attribution[k].name});
  return pairs;
}

std::vector<RowAgreement> sentence_agreement(const SentenceAttribution& sentence, bool signed_scores) {
  std::vector<Matrix> ranked;  // the attributions as ranked: by magnitude unless signed
  for (const NamedScores& attribution : sentence.attribution)
    ranked.push_back(signed_scores ? attribution.scores : Matrix(xt::abs(attribution.scores)));
  std::vector<RowAgreement> result;
  for (const NamedScores& attention : sentence.attention)
    for (const Matrix& attribution : ranked) result.push_back(row_agreement(attention.scores, attribution));
  for (std::size_t i = 0; i < ranked.size(); ++i)
    for (std::size_t k = i + 1; k < ranked.size(); ++k) result.push_back(row_agreement(ranked[i], ranked[k]));
  return result;
}

void AgreementTable::add(const std::vector<MethodPair>& pairs, const std::vector<RowAgreement>& agreement) {
  check_shape(pairs.size() == agreement.size(), "AgreementTable", "one agreement per method pair, got " +
                                                                       std::to_string(agreement.size()) + " for " +
                                                                       std::to_string(pairs.size()) + " pairs");
  if (sentences_ == 0) {
    pairs_ = pairs;
    per_sentence_.assign(pairs.size(), {});
    top1_.assign(pairs.size(), {});
    rows_.assign(pairs.size(), 0);
    skipped_.assign(pairs.size(), 0);
  }
  check_arg(pairs.size() == pairs_.size(), "AgreementTable",
            "every sentence must compare the same methods (" + std::to_string(pairs_.size()) + " pairs), got " +
                std::to_string(pairs.size()));
  for (std::size_t p = 0; p < pairs.size(); ++p) {
    check_arg(pairs[p].first == pairs_[p].first && pairs[p].second == pairs_[p].second, "AgreementTable",
              "method pair " + std::to_string(p) + " is " + pairs[p].first + " / " + pairs[p].second +
                  ", the first sentence's was " + pairs_[p].first + " / " + pairs_[p].second);
    const double none = std::numeric_limits<double>::quiet_NaN();
    per_sentence_[p].push_back(agreement[p].rows > 0 ? agreement[p].mean : none);
    top1_[p].push_back(agreement[p].rows > 0 ? agreement[p].top1 : none);
    rows_[p] += agreement[p].rows;
    skipped_[p] += agreement[p].skipped_rows;
  }
  ++sentences_;
}

std::vector<PairAgreement> AgreementTable::summary() const {
  std::vector<PairAgreement> result;
  for (std::size_t p = 0; p < pairs_.size(); ++p)
    result.push_back({pairs_[p], spread_of(per_sentence_[p]), spread_of(top1_[p]), rows_[p], skipped_[p]});
  return result;
}

std::size_t AgreementTable::index_of(const MethodPair& pair) const {
  for (std::size_t p = 0; p < pairs_.size(); ++p)
    if (pairs_[p].first == pair.first && pairs_[p].second == pair.second) return p;
  throw Error("AgreementTable: no method pair " + pair.first + " / " + pair.second);
}

AgreementTable::Difference AgreementTable::difference(const MethodPair& a, const MethodPair& b) const {
  const std::size_t first = index_of(a), second = index_of(b);
  std::vector<double> rho, top1;
  for (std::size_t s = 0; s < sentences_; ++s)
    if (std::isfinite(per_sentence_[first][s]) && std::isfinite(per_sentence_[second][s])) {
      rho.push_back(per_sentence_[first][s] - per_sentence_[second][s]);
      top1.push_back(top1_[first][s] - top1_[second][s]);
    }
  return {spread_of(rho), spread_of(top1)};
}

std::string composed_against_readout_markdown(const AgreementTable& table) {
  std::string markdown = "| attribution | method − its readout | Δρ ± s.e. | Δtop-1 ± s.e. | sentences |\n|---|---|---|---|---|\n";
  char cell[160];
  const auto with_error = [](const Spread& spread) {
    char text[64];
    std::snprintf(text, sizeof text, "%+.3f ± %.3f", spread.mean,
                  spread.count > 0 ? spread.std / std::sqrt(static_cast<double>(spread.count)) : 0.0);
    return std::string(text);
  };
  const std::vector<PairAgreement> summary = table.summary();
  bool any = false;
  for (const PairAgreement& entry : summary)
    for (const char* prefix : {"rollout · ", "flow · "}) {
      if (!entry.pair.first.starts_with(prefix)) continue;
      const MethodPair readout{entry.pair.first.substr(std::string(prefix).size()), entry.pair.second};
      const AgreementTable::Difference difference = table.difference(entry.pair, readout);
      std::snprintf(cell, sizeof cell, "| %s | %s − %s | %s | %s | %zu |\n", entry.pair.second.c_str(),
                    entry.pair.first.c_str(), readout.first.c_str(), with_error(difference.rho).c_str(),
                    with_error(difference.top1).c_str(), difference.rho.count);
      markdown += cell;
      any = true;
    }
  return any ? markdown : std::string();
}

std::string agreement_markdown(const std::vector<PairAgreement>& summary, AgreementStatistic statistic) {
  std::vector<std::string> rows, columns;
  const auto add_unique = [](std::vector<std::string>& names, const std::string& name) {
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  };
  for (const PairAgreement& entry : summary) {
    add_unique(rows, entry.pair.first);
    add_unique(columns, entry.pair.second);
  }
  std::string table = "| method |";
  const char* label = statistic == AgreementStatistic::spearman ? " ρ with " : " top-1 with ";
  for (const std::string& column : columns) table += label + column + " |";
  table += "\n|---|";
  for (std::size_t c = 0; c < columns.size(); ++c) table += "---|";
  table += "\n";
  char cell[96];
  for (const std::string& row : rows) {
    table += "| " + row + " |";
    for (const std::string& column : columns) {
      const auto found = std::find_if(summary.begin(), summary.end(), [&](const PairAgreement& entry) {
        return entry.pair.first == row && entry.pair.second == column;
      });
      if (found == summary.end() || found->sentences.count == 0) {
        table += " — |";
        continue;
      }
      const Spread& value = statistic == AgreementStatistic::spearman ? found->sentences : found->top1;
      std::snprintf(cell, sizeof cell, " %.3f ± %.3f (%zu) |", value.mean, value.std, value.count);
      table += cell;
    }
    table += "\n";
  }
  return table;
}

}  // namespace qkv::study
