// study/head_analysis: the attentions a transformer reports, head masks, Michel importance
// against central differences, the pattern statistics on attention forced into known shapes,
// the pruning count, the reports, and one whole analysis of a tiny model.
#include <xtensor/xview.hpp>

#include <cmath>

#include "lib/text/batching.hpp"
#include "models/bahdanau/bahdanau.hpp"
#include "models/transformer/transformer.hpp"
#include "study/head_analysis.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::study;
using namespace qkv::test;

namespace {

std::vector<SentencePair> tiny_pairs() {
  return {{{"a", "b", "c"}, {"x", "y"}},
          {{"b", "c"}, {"y", "z", "x"}},
          {{"c", "a", "b", "b"}, {"z"}},
          {{"a"}, {"x", "x", "y"}}};
}

TransformerConfig tiny_config(const Vocabs& vocabs) {
  TransformerConfig config;
  config.source_vocab_size = vocabs.source.size();
  config.target_vocab_size = vocabs.target.size();
  config.d_model = 8;
  config.nhead = 2;
  config.encoder_layers = 2;
  config.decoder_layers = 1;
  config.dim_feedforward = 12;
  config.dropout = 0;
  config.max_len = 16;
  config.seed = 5;
  return config;
}

/// The one batch of all pairs, as the analysis makes it.
Batch batch_of(const std::vector<SentencePair>& pairs, const Vocabs& vocabs) {
  const Batcher batcher(pairs, vocabs.source, vocabs.target, {.batch_size = pairs.size(), .shuffle = false});
  return batcher.epoch(0).at(0);
}

double batch_loss(TransformerModel& model, const Batch& batch) {
  const NoGradGuard no_grad;
  const Seq2SeqOutput out = model.forward(batch.source, batch.source_lengths, batch.target_input);
  return double(cross_entropy(out.logits, batch.target_output, {.ignore_index = Vocab::pad_id}).item());
}

}  // namespace

TEST_CASE("head analysis: the attentions of a transformer, and head masks") {
  const std::vector<SentencePair> pairs = tiny_pairs();
  const Vocabs vocabs = build_vocabs(pairs);
  TransformerModel model(tiny_config(vocabs));
  const std::vector<AttentionModule> attentions = find_attentions(model, pairs, vocabs);
  REQUIRE(attentions.size() == 4);
  CHECK(attentions[0].path == "encoder.layers.0.self_attn");
  CHECK(attentions[1].group == "encoder self-attention");
  CHECK(attentions[1].layer == 1);
  CHECK(attentions[2].group == "decoder self-attention");
  CHECK(attentions[2].keys == TokenSide::target);
  CHECK(attentions[3].group == "cross-attention");
  CHECK(attentions[3].queries == TokenSide::target);
  CHECK(attentions[3].keys == TokenSide::source);
  CHECK(attentions[3].heads == 2);
  CHECK(attentions[3].head_label(1) == "cross-attention L1 H2");

  const Batch batch = batch_of(pairs, vocabs);
  model.eval();
  const Array plain = model.forward(batch.source, batch.source_lengths, batch.target_input).logits.value();
  {
    HeadMask mask(model, attentions);
    CHECK(max_abs_diff(model.forward(batch.source, batch.source_lengths, batch.target_input).logits.value(), plain) == 0);
    mask.set(3, 1, 0);
    const ActivationCache cache = run_with_cache(model, [&] {
      model.forward(batch.source, batch.source_lengths, batch.target_input);
    });
    const Array heads = cache.at("decoder.layers.0.multihead_attn.heads");  // [B, H, T, d]
    CHECK(xt::amax(xt::abs(xt::view(heads, xt::all(), 1)))() == 0);
    CHECK(xt::amax(xt::abs(xt::view(heads, xt::all(), 0)))() > 1e-3);
    CHECK_THROWS_AS(mask.set(3, 2, 0), Error);
  }
  // The mask's hooks are gone with it.
  CHECK(max_abs_diff(model.forward(batch.source, batch.source_lengths, batch.target_input).logits.value(), plain) == 0);
}

TEST_CASE("head analysis: Michel importance is |dL/dxi| (central differences), normalised per layer") {
  const std::vector<SentencePair> pairs = tiny_pairs();
  const Vocabs vocabs = build_vocabs(pairs);
  TransformerModel model(tiny_config(vocabs));
  const std::vector<AttentionModule> attentions = find_attentions(model, pairs, vocabs);
  // One batch of everything: the estimate is then exactly |dL/dxi| of that batch's loss.
  const auto importance = raw_head_importance(model, attentions, pairs, vocabs, pairs.size());
  const Batch batch = batch_of(pairs, vocabs);
  const double eps = 1e-6;
  for (std::size_t a = 0; a < attentions.size(); ++a)
    for (std::size_t h = 0; h < attentions[a].heads; ++h) {
      CAPTURE(attentions[a].head_label(h));
      HeadMask mask(model, attentions);
      mask.set(a, h, real(1 + eps));
      const double up = batch_loss(model, batch);
      mask.set(a, h, real(1 - eps));
      const double down = batch_loss(model, batch);
      const double numeric = std::abs(up - down) / (2 * eps);
      CHECK(importance[a][h] == doctest::Approx(numeric).epsilon(1e-6));
      CHECK(importance[a][h] > 0);
    }
  // Parameters are trainable again and got no gradient from the estimate.
  for (const NamedVariable& parameter : model.named_parameters()) {  // no binding: CAPTURE is a lambda (clang 14)
    CAPTURE(parameter.first);
    CHECK(parameter.second.requires_grad());
  }
  const auto normalised = normalise_per_layer(importance);
  for (const auto& row : normalised) {
    double norm = 0;
    for (const double value : row) norm += value * value;
    CHECK(std::sqrt(norm) == doctest::Approx(1));
  }
  CHECK(normalise_per_layer({{0, 0}}) == std::vector<std::vector<double>>{{0, 0}});
}

TEST_CASE("head analysis: pattern statistics of attention forced into known shapes") {
  const std::vector<SentencePair> pairs = tiny_pairs();
  const Vocabs vocabs = build_vocabs(pairs);
  TransformerModel model(tiny_config(vocabs));
  const std::vector<AttentionModule> attentions = find_attentions(model, pairs, vocabs);
  const Batch batch = batch_of(pairs, vocabs);
  ScopedHooks hooks(model);
  // Encoder layer 0: every query on the key before it (query 0 on itself).
  hooks.add("encoder.layers.0.self_attn.weights", [](Variable& value, const HookCall&) {
    Array forced = zeros(value.shape());  // [B, H, S, S]
    for (std::size_t b = 0; b < forced.shape()[0]; ++b)
      for (std::size_t h = 0; h < forced.shape()[1]; ++h)
        for (std::size_t i = 0; i < forced.shape()[2]; ++i) forced(b, h, i, i == 0 ? 0 : i - 1) = 1;
    value = Variable(std::move(forced));
  });
  // Cross-attention: uniform over each sentence's real source keys.
  hooks.add("decoder.layers.0.multihead_attn.weights", [&](Variable& value, const HookCall& call) {
    Array forced = zeros(value.shape());  // [B, H, T, S]
    const std::size_t first_pair = call.call == 0 ? 0 : 3;  // the batches are pairs 0-2, then 3
    for (std::size_t b = 0; b < forced.shape()[0]; ++b) {
      const auto keys = static_cast<std::size_t>(batch.source_lengths(first_pair + b));
      xt::view(forced, b, xt::all(), xt::all(), xt::range(0, keys)) = real(1) / real(keys);
    }
    value = Variable(std::move(forced));
  });
  const auto patterns = head_patterns(model, attentions, pairs, vocabs, 3);  // two batches: 3 + 1 pairs

  // Source lengths with <eos>: 4, 3, 5, 2 (14 query rows); target inputs <bos> + target: 3, 4, 2, 4.
  const std::vector<double> source = {4, 3, 5, 2}, target = {3, 4, 2, 4};
  double rows = 0, entropy = 0, distance = 0, same = 0, next = 0;
  for (std::size_t b = 0; b < 4; ++b) {
    const double s = source[b], t = target[b];
    rows += t;
    entropy += t * std::log(s);
    for (double i = 0; i < t; ++i) {
      for (double j = 0; j < s; ++j) distance += std::abs(i - j) / s;
      if (i < s) same += 1 / s;
      if (i + 1 < s) next += 1 / s;
    }
  }
  for (std::size_t h = 0; h < 2; ++h) {
    const HeadPattern& previous = patterns[0][h];
    CHECK(previous.previous == doctest::Approx(10.0 / 14));  // every row but each sentence's first
    CHECK(previous.same == doctest::Approx(4.0 / 14));
    CHECK(previous.next == 0);
    CHECK(previous.first == doctest::Approx(8.0 / 14));  // rows 0 and 1 of each sentence
    CHECK(previous.mean_distance == doctest::Approx(10.0 / 14));
    CHECK(previous.entropy == doctest::Approx(0));
    REQUIRE(previous.eos.has_value());
    CHECK(*previous.eos == 0);  // the key before a query is never the last one

    const HeadPattern& uniform = patterns[3][h];
    CHECK(uniform.entropy == doctest::Approx(entropy / rows));
    CHECK(uniform.mean_distance == doctest::Approx(distance / rows));
    CHECK(uniform.same == doctest::Approx(same / rows));
    CHECK(uniform.next == doctest::Approx(next / rows));
    double eos = 0;
    for (std::size_t b = 0; b < 4; ++b) eos += target[b] / source[b];
    CHECK(*uniform.eos == doctest::Approx(eos / rows));  // one <eos> per source
    CHECK(uniform.first == doctest::Approx(eos / rows));
  }
  CHECK_FALSE(patterns[2][0].eos.has_value());  // decoder self-attention: target keys
}

TEST_CASE("head analysis: a whole analysis of a tiny model, its reports and the pruning count") {
  const std::vector<SentencePair> pairs = tiny_pairs();
  const Vocabs vocabs = build_vocabs(pairs);
  TransformerModel model(tiny_config(vocabs));
  const Batch batch = batch_of(pairs, vocabs);
  model.eval();
  const Array before = model.forward(batch.source, batch.source_lengths, batch.target_input).logits.value();
  HeadAnalysisOptions options;
  options.decode.max_length = 5;
  std::vector<std::string> progress;
  const HeadAnalysis analysis =
      analyse_heads(model, pairs, vocabs, options, [&](const std::string& line) { progress.push_back(line); });
  REQUIRE(analysis.heads.size() == 8);
  REQUIRE(analysis.pruning.size() == 9);
  CHECK(analysis.pairs == 4);
  // No hook is left behind.
  CHECK(max_abs_diff(model.forward(batch.source, batch.source_lengths, batch.target_input).logits.value(), before) == 0);
  // Every head masked at the last step: the decoder then reads no source.
  std::vector<bool> masked(8, false);
  for (std::size_t i = 1; i < analysis.pruning.size(); ++i) masked.at(*analysis.pruning[i].head) = true;
  CHECK(std::all_of(masked.begin(), masked.end(), [](bool m) { return m; }));
  // Least important first.
  for (std::size_t i = 2; i < analysis.pruning.size(); ++i)
    CHECK(analysis.heads[*analysis.pruning[i - 1].head].importance <= analysis.heads[*analysis.pruning[i].head].importance);
  CHECK(analysis.pruning[0].quality.loss == analysis.baseline.loss);
  for (const HeadReport& head : analysis.heads) CHECK(head.ablated.has_value());
  CHECK(progress.size() == 3 + 8 + 8 + 8);
  // The second curve masks heads in increasing order of their ablation loss.
  REQUIRE(analysis.pruning_by_ablation.size() == 9);
  for (std::size_t i = 2; i < analysis.pruning_by_ablation.size(); ++i)
    CHECK(analysis.heads[*analysis.pruning_by_ablation[i - 1].head].ablated->loss <=
          analysis.heads[*analysis.pruning_by_ablation[i].head].ablated->loss);
  // Both end with every head masked: the same model, the same quality.
  CHECK(analysis.pruning_by_ablation.back().quality.loss == doctest::Approx(analysis.pruning.back().quality.loss));

  const std::string csv = heads_csv(analysis);
  CHECK(csv.starts_with("attention,group,layer,head,raw_importance,importance,"));
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 9);
  const std::string pruning = pruning_csv(analysis);
  CHECK(std::count(pruning.begin(), pruning.end(), '\n') == 1 + 9 + 9);
  CHECK(pruning_svg(analysis, "tiny").find("<svg") != std::string::npos);
  CHECK(heads_markdown(analysis).find("| cross-attention L1 H2 |") != std::string::npos);
  const nlohmann::json json = head_importance_json(analysis);
  CHECK(json.at("encoder self-attention").size() == 2);
  CHECK(json.at("cross-attention").at(0).size() == 2);
  CHECK(std::abs(json.at("decoder self-attention").at(0).at(1).get<double>() - analysis.heads[5].importance) <= 5e-5);

  // The count stops at the first step that loses more than the allowance, even if later
  // steps recover.
  HeadAnalysis curve;
  curve.baseline = {1.0, 0.90, 40};
  curve.pruning = {{0, std::nullopt, {1.0, 0.90, 40}},
                   {1, 0, {1.0, 0.895, 39.5}},
                   {2, 1, {1.1, 0.88, 39.2}},
                   {3, 2, {1.2, 0.899, 38.0}}};
  CHECK(prunable_heads(curve, QualityMetric::exact_match, 1) == 1);
  CHECK(prunable_heads(curve, QualityMetric::bleu, 1) == 2);
  CHECK(prunable_heads(curve, QualityMetric::bleu, 0) == 0);
  curve.pruning_by_ablation = {curve.pruning[0], curve.pruning[1], curve.pruning[3]};
  CHECK(prunable_heads(curve, QualityMetric::exact_match, 1, PruningOrder::ablation) == 3);
}

TEST_CASE("head analysis: a model without multi-head attention is refused by name") {
  const std::vector<SentencePair> pairs = tiny_pairs();
  const Vocabs vocabs = build_vocabs(pairs);
  BahdanauConfig config;
  config.source_vocab_size = vocabs.source.size();
  config.target_vocab_size = vocabs.target.size();
  config.embedding_dim = config.hidden_size = config.attention_size = 4;
  BahdanauModel model(config);
  try {
    find_attentions(model, pairs, vocabs);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) ==
          "head analysis: the bahdanau model has no multi-head attention (no hook point ending in \".heads\")");
  }
}
