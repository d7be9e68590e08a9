#include "study/head_analysis.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "autograd/ops.hpp"
#include "layers/hooks.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"
#include "lib/plot/svg.hpp"
#include "lib/text/batching.hpp"
#include "study/frozen_parameters.hpp"
#include "study/report_io.hpp"
#include "train/evaluation.hpp"

namespace qkv::study {

using models::TokenSide;

namespace {

constexpr const char* kOp = "head analysis";

/// "encoder.layers.3.self_attn" -> 3 when `path` is prefix + number + suffix.
std::optional<std::size_t> layer_number(const std::string& path, const std::string& prefix, const std::string& suffix) {
  if (!path.starts_with(prefix) || !path.ends_with(suffix) || path.size() <= prefix.size() + suffix.size())
    return std::nullopt;
  const std::string digits = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  return static_cast<std::size_t>(std::stoul(digits));
}

/// The pairs as batches in order, as train::evaluate makes them.
std::vector<Batch> batches_of(std::span<const SentencePair> pairs, const Vocabs& vocabs, std::size_t batch_size) {
  check_arg(!pairs.empty(), kOp, "no sentence pairs to analyse");
  check_arg(batch_size > 0, kOp, "the batch size must be positive");
  const Batcher batcher(pairs, vocabs.source, vocabs.target, {.batch_size = batch_size, .shuffle = false});
  return batcher.epoch(0);
}

}  // namespace

std::string AttentionModule::head_label(std::size_t head) const {
  return group + " L" + std::to_string(layer + 1) + " H" + std::to_string(head + 1);
}

std::vector<AttentionModule> find_attentions(models::Seq2SeqModel& model, std::span<const SentencePair> sample,
                                             const Vocabs& vocabs) {
  const std::string suffix = ".heads";
  std::vector<AttentionModule> attentions;
  for (const std::string& name : model.hook_point_names()) {
    if (!name.ends_with(suffix)) continue;
    AttentionModule attention;
    attention.path = name.substr(0, name.size() - suffix.size());
    if (const auto layer = layer_number(attention.path, "encoder.layers.", ".self_attn")) {
      attention.group = "encoder self-attention";
      attention.layer = *layer;
      attention.queries = attention.keys = TokenSide::source;
    } else if (const auto layer = layer_number(attention.path, "decoder.layers.", ".self_attn")) {
      attention.group = "decoder self-attention";
      attention.layer = *layer;
      attention.queries = attention.keys = TokenSide::target;
    } else if (const auto layer = layer_number(attention.path, "decoder.layers.", ".multihead_attn")) {
      attention.group = "cross-attention";
      attention.layer = *layer;
    } else {
      attention.group = attention.path;
    }
    attentions.push_back(attention);
  }
  check_arg(!attentions.empty(), kOp,
            "the " + model.kind() + " model has no multi-head attention (no hook point ending in \".heads\")");
  // Head counts from the per-head outputs [B, H, T, d] of one pass.
  const std::vector<Batch> batches = batches_of(sample.first(1), vocabs, 1);
  const NoGradGuard no_grad;
  model.eval();
  const ActivationCache cache = run_with_cache(
      model, [&] { model.forward(batches[0].source, batches[0].source_lengths, batches[0].target_input); },
      [&](const std::string& name) { return name.ends_with(suffix); });
  for (AttentionModule& attention : attentions) attention.heads = cache.at(attention.path + suffix).shape()[1];
  return attentions;
}

// ---- masks ----------------------------------------------------------------------------------

HeadMask::HeadMask(Module& model, const std::vector<AttentionModule>& attentions, bool requires_grad) : hooks_(model) {
  for (std::size_t a = 0; a < attentions.size(); ++a) {
    masks_.emplace_back(full({1, attentions[a].heads, 1, 1}, 1), requires_grad);  // [1, H, 1, 1]
    hooks_.add(attentions[a].path + ".heads", [this, a](Variable& value, const HookCall&) {
      value = value * masks_[a];  // [B, H, T, d]
    });
  }
}

void HeadMask::set(std::size_t attention, std::size_t head, real value) {
  check_arg(attention < masks_.size() && head < masks_[attention].dim(1), "HeadMask",
            "no head " + std::to_string(head) + " in attention " + std::to_string(attention));
  masks_[attention].mutable_value()(0, head, 0, 0) = value;
}

// ---- importance -----------------------------------------------------------------------------

std::vector<std::vector<double>> raw_head_importance(models::Seq2SeqModel& model,
                                                     const std::vector<AttentionModule>& attentions,
                                                     std::span<const SentencePair> pairs, const Vocabs& vocabs,
                                                     std::size_t batch_size) {
  model.eval();
  const FrozenParameters frozen(model);
  HeadMask mask(model, attentions, true);
  std::vector<std::vector<double>> importance;
  for (const AttentionModule& attention : attentions) importance.emplace_back(attention.heads, 0.0);
  const std::vector<Batch> batches = batches_of(pairs, vocabs, batch_size);
  for (const Batch& batch : batches) {
    const models::Seq2SeqOutput out = model.forward(batch.source, batch.source_lengths, batch.target_input);
    Variable loss = cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id});  // []
    loss.backward();
    for (std::size_t a = 0; a < attentions.size(); ++a) {
      Variable xi = mask.masks()[a];
      const Array& gradient = xi.grad();  // [1, H, 1, 1]
      for (std::size_t h = 0; h < attentions[a].heads; ++h) importance[a][h] += std::abs(double(gradient(0, h, 0, 0)));
      xi.zero_grad();
    }
  }
  for (auto& row : importance)
    for (double& value : row) value /= double(batches.size());
  return importance;
}

std::vector<std::vector<double>> normalise_per_layer(const std::vector<std::vector<double>>& importance) {
  std::vector<std::vector<double>> normalised = importance;
  for (auto& row : normalised) {
    double norm = 0;
    for (const double value : row) norm += value * value;
    norm = std::sqrt(norm);
    if (norm > 0)
      for (double& value : row) value /= norm;
  }
  return normalised;
}

// ---- patterns -------------------------------------------------------------------------------

std::vector<std::vector<HeadPattern>> head_patterns(models::Seq2SeqModel& model,
                                                    const std::vector<AttentionModule>& attentions,
                                                    std::span<const SentencePair> pairs, const Vocabs& vocabs,
                                                    std::size_t batch_size) {
  struct Sums {
    double distance = 0, previous = 0, same = 0, next = 0, first = 0, eos = 0, entropy = 0;
    std::size_t rows = 0;
  };
  std::vector<std::vector<Sums>> sums;
  for (const AttentionModule& attention : attentions) sums.emplace_back(attention.heads);
  const NoGradGuard no_grad;
  model.eval();
  for (const Batch& batch : batches_of(pairs, vocabs, batch_size)) {
    const ActivationCache cache = run_with_cache(
        model, [&] { model.forward(batch.source, batch.source_lengths, batch.target_input); },
        [](const std::string& name) { return name.ends_with(".weights"); });
    for (std::size_t a = 0; a < attentions.size(); ++a) {
      const AttentionModule& attention = attentions[a];
      const Array& weights = cache.at(attention.path + ".weights");  // [B, H, Tq, Tk]
      const std::size_t rows = weights.shape()[0], heads = weights.shape()[1];
      const std::size_t queries = weights.shape()[2], keys = weights.shape()[3];
      const auto length = [&](TokenSide side, std::size_t b) {
        return static_cast<std::size_t>(side == TokenSide::source ? batch.source_lengths(b) : batch.target_lengths(b));
      };
      for (std::size_t b = 0; b < rows; ++b) {
        const std::size_t query_count = std::min(queries, length(attention.queries, b));
        const std::size_t key_count = std::min(keys, length(attention.keys, b));
        for (std::size_t h = 0; h < heads; ++h) {
          Sums& s = sums[a][h];
          for (std::size_t i = 0; i < query_count; ++i) {
            const real* row = weights.data() + ((b * heads + h) * queries + i) * keys;
            for (std::size_t j = 0; j < key_count; ++j) {
              const double w = row[j];
              s.distance += w * double(i > j ? i - j : j - i);
              if (w > 0) s.entropy -= w * std::log(w);
              if (attention.keys == TokenSide::source && batch.source(b, j) == Vocab::eos_id) s.eos += w;
            }
            if (i >= 1 && i - 1 < key_count) s.previous += row[i - 1];
            if (i < key_count) s.same += row[i];
            if (i + 1 < key_count) s.next += row[i + 1];
            if (key_count > 0) s.first += row[0];
            ++s.rows;
          }
        }
      }
    }
  }
  std::vector<std::vector<HeadPattern>> patterns;
  for (std::size_t a = 0; a < attentions.size(); ++a) {
    patterns.emplace_back();
    for (const Sums& s : sums[a]) {
      check_arg(s.rows > 0, kOp, "no real query rows for " + attentions[a].path);
      const double n = double(s.rows);
      HeadPattern pattern{s.distance / n, s.previous / n, s.same / n, s.next / n, s.first / n, std::nullopt,
                          s.entropy / n};
      if (attentions[a].keys == TokenSide::source) pattern.eos = s.eos / n;
      patterns.back().push_back(pattern);
    }
  }
  return patterns;
}

// ---- quality --------------------------------------------------------------------------------

Quality measure_quality(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                        const HeadAnalysisOptions& options) {
  const train::Evaluation evaluation = train::evaluate(model, pairs, vocabs, options.decode, options.batch_size);
  return {evaluation.loss, evaluation.exact_match, evaluation.bleu};
}

HeadAnalysis analyse_heads(models::Seq2SeqModel& model, std::span<const SentencePair> pairs, const Vocabs& vocabs,
                           const HeadAnalysisOptions& options, const AnalysisProgress& progress) {
  const auto say = [&](const std::string& line) {
    if (progress) progress(line);
  };
  HeadAnalysis analysis;
  analysis.pairs = pairs.size();
  analysis.attentions = find_attentions(model, pairs, vocabs);
  const std::vector<AttentionModule>& attentions = analysis.attentions;

  say("importance over " + std::to_string(pairs.size()) + " pairs");
  const auto raw = raw_head_importance(model, attentions, pairs, vocabs, options.importance_batch_size);
  const auto normalised = normalise_per_layer(raw);
  say("patterns");
  const auto patterns = head_patterns(model, attentions, pairs, vocabs, options.batch_size);
  for (std::size_t a = 0; a < attentions.size(); ++a)
    for (std::size_t h = 0; h < attentions[a].heads; ++h)
      analysis.heads.push_back({a, h, raw[a][h], normalised[a][h], std::nullopt, patterns[a][h]});

  say("baseline");
  analysis.baseline = measure_quality(model, pairs, vocabs, options);
  if (options.ablate)
    for (std::size_t i = 0; i < analysis.heads.size(); ++i) {
      HeadReport& head = analysis.heads[i];
      HeadMask mask(model, attentions);
      mask.set(head.attention, head.head, 0);
      head.ablated = measure_quality(model, pairs, vocabs, options);
      say("ablation " + std::to_string(i + 1) + "/" + std::to_string(analysis.heads.size()) + " " +
          attentions[head.attention].head_label(head.head) + ": exact " + fixed(100 * head.ablated->exact_match, 1) +
          " bleu " + fixed(head.ablated->bleu, 2));
    }
  if (options.prune) {
    // Masks heads cumulatively in `order` (indices into analysis.heads).
    const auto prune = [&](std::vector<std::size_t> order, const std::function<double(std::size_t)>& key,
                           const std::string& name) {
      std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return key(x) < key(y); });
      std::vector<PruningStep> curve{{0, std::nullopt, analysis.baseline}};
      HeadMask mask(model, attentions);
      for (std::size_t step = 0; step < order.size(); ++step) {
        const HeadReport& head = analysis.heads[order[step]];
        mask.set(head.attention, head.head, 0);
        curve.push_back({step + 1, order[step], measure_quality(model, pairs, vocabs, options)});
        const Quality& q = curve.back().quality;
        say("pruned by " + name + " " + std::to_string(step + 1) + "/" + std::to_string(order.size()) + " (" +
            attentions[head.attention].head_label(head.head) + "): exact " + fixed(100 * q.exact_match, 1) +
            " bleu " + fixed(q.bleu, 2));
      }
      return curve;
    };
    std::vector<std::size_t> all(analysis.heads.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    analysis.pruning = prune(all, [&](std::size_t i) { return analysis.heads[i].importance; }, "importance");
    if (options.ablate)
      analysis.pruning_by_ablation =
          prune(all, [&](std::size_t i) { return analysis.heads[i].ablated->loss; }, "ablation");
  } else {
    analysis.pruning.push_back({0, std::nullopt, analysis.baseline});
  }
  return analysis;
}

std::size_t prunable_heads(const HeadAnalysis& analysis, QualityMetric metric, double points, PruningOrder order) {
  const auto value = [&](const Quality& q) { return metric == QualityMetric::exact_match ? 100 * q.exact_match : q.bleu; };
  const double baseline = value(analysis.baseline);
  std::size_t prunable = 0;
  for (const PruningStep& step : analysis.curve(order)) {
    if (baseline - value(step.quality) > points) break;
    prunable = step.removed;
  }
  return prunable;
}

// ---- reports --------------------------------------------------------------------------------

std::string heads_csv(const HeadAnalysis& analysis) {
  std::ostringstream csv;
  csv << "attention,group,layer,head,raw_importance,importance,ablated_loss,ablated_exact_match,ablated_bleu,"
         "delta_loss,delta_exact_match,delta_bleu,mean_distance,previous,same,next,first,eos,entropy\n";
  const Quality& base = analysis.baseline;
  for (const HeadReport& head : analysis.heads) {
    const AttentionModule& attention = analysis.attentions[head.attention];
    const HeadPattern& p = head.pattern;
    csv << attention.path << ",\"" << attention.group << "\"," << attention.layer + 1 << "," << head.head + 1 << ","
        << format_number(head.raw_importance) << "," << format_number(head.importance) << ",";
    if (head.ablated)
      csv << format_number(head.ablated->loss) << "," << format_number(head.ablated->exact_match) << ","
          << format_number(head.ablated->bleu) << "," << format_number(head.ablated->loss - base.loss) << ","
          << format_number(head.ablated->exact_match - base.exact_match) << ","
          << format_number(head.ablated->bleu - base.bleu) << ",";
    else
      csv << ",,,,,,";
    csv << format_number(p.mean_distance) << "," << format_number(p.previous) << "," << format_number(p.same) << ","
        << format_number(p.next) << "," << format_number(p.first) << "," << (p.eos ? format_number(*p.eos) : "") << ","
        << format_number(p.entropy) << "\n";
  }
  return csv.str();
}

std::string pruning_csv(const HeadAnalysis& analysis) {
  std::ostringstream csv;
  csv << "order,removed,head,loss,exact_match,bleu\n";
  for (const PruningOrder order : {PruningOrder::importance, PruningOrder::ablation})
    for (const PruningStep& step : analysis.curve(order)) {
      csv << (order == PruningOrder::importance ? "importance" : "ablation") << "," << step.removed << ",";
      if (step.head) {
        const HeadReport& head = analysis.heads[*step.head];
        csv << "\"" << analysis.attentions[head.attention].head_label(head.head) << "\"";
      }
      csv << "," << format_number(step.quality.loss) << "," << format_number(step.quality.exact_match) << ","
          << format_number(step.quality.bleu) << "\n";
    }
  return csv.str();
}

std::string pruning_svg(const HeadAnalysis& analysis, const std::string& title) {
  LineChart chart;
  chart.title = title;
  chart.x_label = "heads masked";
  chart.y_label = "exact match (%) / BLEU";
  for (const PruningOrder order : {PruningOrder::importance, PruningOrder::ablation}) {
    const std::vector<PruningStep>& curve = analysis.curve(order);
    if (curve.empty()) continue;
    const std::string by = order == PruningOrder::importance ? ", by importance" : ", by ablation loss";
    Series exact{"exact match (%)" + by, {}, {}, order == PruningOrder::ablation};
    Series bleu{"BLEU" + by, {}, {}, order == PruningOrder::ablation};
    for (const PruningStep& step : curve) {
      exact.x.push_back(double(step.removed));
      exact.y.push_back(100 * step.quality.exact_match);
      bleu.x.push_back(double(step.removed));
      bleu.y.push_back(step.quality.bleu);
    }
    chart.series.push_back(exact);
    chart.series.push_back(bleu);
  }
  return line_chart_svg(chart);
}

std::string heads_markdown(const HeadAnalysis& analysis) {
  std::ostringstream md;
  const Quality& base = analysis.baseline;
  md << "Baseline on " << analysis.pairs << " pairs: loss " << fixed(base.loss, 4) << ", exact match "
     << fixed(100 * base.exact_match, 2) << " %, BLEU " << fixed(base.bleu, 2) << ".\n\n";
  md << "| head | importance | Δ loss | Δ exact (pts) | Δ BLEU | distance | prev | same | next | first | eos | entropy |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const HeadReport& head : analysis.heads) {
    const HeadPattern& p = head.pattern;
    md << "| " << analysis.attentions[head.attention].head_label(head.head) << " | " << fixed(head.importance, 3)
       << " | ";
    if (head.ablated)
      md << fixed(head.ablated->loss - base.loss, 4) << " | "
         << fixed(100 * (head.ablated->exact_match - base.exact_match), 1) << " | "
         << fixed(head.ablated->bleu - base.bleu, 2) << " | ";
    else
      md << "– | – | – | ";
    md << fixed(p.mean_distance, 2) << " | " << fixed(p.previous, 2) << " | " << fixed(p.same, 2) << " | "
       << fixed(p.next, 2) << " | " << fixed(p.first, 2) << " | " << (p.eos ? fixed(*p.eos, 2) : "–") << " | "
       << fixed(p.entropy, 2) << " |\n";
  }
  for (const PruningOrder order : {PruningOrder::importance, PruningOrder::ablation}) {
    const std::vector<PruningStep>& curve = analysis.curve(order);
    if (curve.size() <= 1) continue;
    md << "\nPruning " << (order == PruningOrder::importance ? "by importance" : "by ablation loss")
       << " (least first):\n\n| heads masked | last masked | loss | exact (%) | BLEU |\n|---:|---|---:|---:|---:|\n";
    for (const PruningStep& step : curve) {
      md << "| " << step.removed << " | ";
      if (step.head) {
        const HeadReport& head = analysis.heads[*step.head];
        md << analysis.attentions[head.attention].head_label(head.head);
      } else {
        md << "(none)";
      }
      md << " | " << fixed(step.quality.loss, 4) << " | " << fixed(100 * step.quality.exact_match, 2) << " | "
         << fixed(step.quality.bleu, 2) << " |\n";
    }
  }
  return md.str();
}

nlohmann::json head_importance_json(const HeadAnalysis& analysis) {
  nlohmann::json json = nlohmann::json::object();
  for (const HeadReport& head : analysis.heads) {
    const AttentionModule& attention = analysis.attentions[head.attention];
    nlohmann::json& layers = json[attention.group];
    while (layers.size() <= attention.layer) layers.push_back(nlohmann::json::array());
    // Four decimals: the explorer prints the numbers as given.
    layers[attention.layer].push_back(std::round(head.importance * 1e4) / 1e4);
  }
  return json;
}

}  // namespace qkv::study
