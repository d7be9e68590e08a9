// The Bahdanau seq2seq model: incremental decoding equals the teacher-forced pass, source
// padding is invisible, attention weights are distributions over the valid source, gradients
// of every parameter, beam-search row selection, config round trip, and that it learns.
#include "models/bahdanau/bahdanau.hpp"

#include <numeric>
#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>
#include <set>
#include <stdexcept>

#include "lib/text/batching.hpp"
#include "lib/text/tasks.hpp"
#include "optim/adam.hpp"
#include "support/helpers.hpp"
#include "support/overfit.hpp"

using namespace qkv;
using namespace qkv::test;
using qkv::models::BahdanauConfig;
using qkv::models::BahdanauModel;
using qkv::models::BahdanauState;

namespace {

BahdanauConfig small_config(bool bidirectional, std::size_t encoder_layers, std::size_t decoder_layers) {
  BahdanauConfig config;
  config.source_vocab_size = 9;
  config.target_vocab_size = 8;
  config.embedding_dim = 4;
  config.hidden_size = 5;
  config.encoder_layers = encoder_layers;
  config.bidirectional = bidirectional;
  config.decoder_layers = decoder_layers;
  config.attention_size = 6;
  config.dropout = 0.3;  // tests that compare values run in eval mode, where it must not act
  config.seed = 7;
  return config;
}

/// The same, with a decoder wider than the encoder and the deep readout over
/// [s_t; context_t; embedding(y_{t-1})] (what qkv-train --data uses).
BahdanauConfig deep_config(bool bidirectional, std::size_t encoder_layers, std::size_t decoder_layers) {
  BahdanauConfig config = small_config(bidirectional, encoder_layers, decoder_layers);
  config.decoder_hidden_size = 7;
  config.readout = models::BahdanauReadout::deep;
  return config;
}

/// The four ways the decoder's initial state is made: bridge from a bidirectional encoder,
/// the unidirectional encoder's states as they are, bridge for unequal layer counts, bridge
/// for a decoder wider than the encoder (with the deep readout).
std::vector<BahdanauConfig> all_variants() {
  return {small_config(true, 2, 2), small_config(false, 2, 2), small_config(false, 1, 2), deep_config(true, 1, 1),
          deep_config(false, 2, 2)};
}

/// An id array filled row-major. No REQUIRE: it also builds the file's constants, before any
/// test runs; a wrong count throws instead.
IndexArray ids(const Shape& shape, std::initializer_list<std::int64_t> values) {
  IndexArray a = IndexArray::from_shape(shape);
  if (values.size() != a.size()) throw std::logic_error("ids: wrong number of values");
  std::copy(values.begin(), values.end(), a.data());
  return a;
}

// Rows have 4, 2 and 5 source tokens (0 = <pad>); targets start with <bos> = 1.
const IndexArray source = ids({3, 5}, {4, 5, 6, 2, 0, /**/ 7, 2, 0, 0, 0, /**/ 3, 8, 5, 4, 2});
const IndexArray source_lengths = ids({3}, {4, 2, 5});
const IndexArray target_input = ids({3, 4}, {1, 4, 5, 6, /**/ 1, 7, 3, 0, /**/ 1, 3, 3, 2});

/// Column t of a [B, T] id array as [B].
IndexArray column(const IndexArray& a, std::size_t t) {
  IndexArray out = IndexArray::from_shape({a.shape()[0]});
  for (std::size_t b = 0; b < a.shape()[0]; ++b) out(b) = a(b, t);
  return out;
}

/// Largest |x[b, t, :] - row[b, :]| over b, for x [B, T, N] and row [B, N].
double max_diff_at_step(const Array& x, std::size_t t, const Array& row) {
  const std::size_t batch = x.shape()[0], steps = x.shape()[1], width = x.shape()[2];
  REQUIRE(row.shape()[0] == batch);
  REQUIRE(row.shape()[1] == width);
  double worst = 0;
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t i = 0; i < width; ++i)
      worst = std::max(worst, std::abs(double(x.data()[(b * steps + t) * width + i]) - double(row(b, i))));
  return worst;
}

const Array& attention_of(const std::vector<models::NamedAttention>& attention) {
  REQUIRE(attention.size() == 1);
  CHECK(attention[0].first == "attention");
  return attention[0].second;
}

}  // namespace

TEST_CASE("Bahdanau: parameter names and which initial-state path each config takes") {
  BahdanauModel bidirectional(small_config(true, 1, 1));
  std::set<std::string> names;
  for (const auto& [name, value] : bidirectional.named_parameters()) names.insert(name);
  for (const char* expected :
       {"source_embedding.weight", "encoder.weight_ih_l0", "encoder.weight_hh_l0_reverse", "bridge.weight",
        "bridge.bias", "attention.W_q", "attention.W_k", "attention.v", "target_embedding.weight",
        "decoder.0.weight_ih", "decoder.0.bias_hh", "output.weight", "output.bias"})
    CHECK_MESSAGE(names.count(expected) == 1, expected);
  // Keys are the encoder's two directions: W_k [A, 2H]; the bottom cell reads [E + 2H].
  const auto state = bidirectional.state_dict();
  CHECK(shape_of(state.at("attention.W_k")) == Shape{6, 10});
  CHECK(shape_of(state.at("decoder.0.weight_ih")) ==
        Shape{15, 14});
  CHECK(bidirectional.kind() == "bahdanau");

  BahdanauModel direct(small_config(false, 2, 2));
  for (const auto& named : direct.named_parameters()) CHECK_MESSAGE(named.first.rfind("bridge", 0) != 0, named.first);
  BahdanauModel bridged(small_config(false, 1, 2));
  CHECK(bridged.state_dict().count("bridge.weight") == 1);

  // A decoder 7 wide over a unidirectional encoder 5 wide needs the bridge; the deep readout
  // reads [s 7; context 5; embedding 4] = 16; the attention's query is the decoder state.
  BahdanauModel deep(deep_config(false, 2, 2));
  const auto deep_state = deep.state_dict();
  CHECK(shape_of(deep_state.at("bridge.weight")) == Shape{14, 5});
  CHECK(shape_of(deep_state.at("output.weight")) == Shape{8, 16});
  CHECK(shape_of(deep_state.at("attention.W_q")) == Shape{6, 7});
  CHECK(shape_of(deep_state.at("decoder.0.weight_ih")) == Shape{21, 9});
  CHECK(shape_of(deep_state.at("decoder.1.weight_ih")) == Shape{21, 7});
}

TEST_CASE("Bahdanau: decode_step over a prefix equals forward's rows (unequal source lengths)") {
  for (const BahdanauConfig& config : all_variants()) {
    CAPTURE(config.bidirectional);
    CAPTURE(config.encoder_layers);
    CAPTURE(config.decoder_layers);
    BahdanauModel model(config);
    model.eval();
    const models::Seq2SeqOutput full = model.forward(source, source_lengths, target_input);
    REQUIRE(full.logits.shape() == Shape{3, 4, 8});
    const Array& full_attention = attention_of(full.attention);
    REQUIRE(shape_of(full_attention) == Shape{3, 4, 5});

    const auto state = model.start_decoding(source, source_lengths);
    for (std::size_t t = 0; t < 4; ++t) {
      CAPTURE(t);
      const models::StepOutput step = model.decode_step(*state, column(target_input, t));
      REQUIRE(step.logits.shape() == Shape{3, 8});
      CHECK(max_diff_at_step(full.logits.value(), t, step.logits.value()) < 1e-10);
      CHECK(max_diff_at_step(full_attention, t, attention_of(step.attention)) < 1e-10);
    }
  }
}

TEST_CASE("Bahdanau: attention weights sum to 1 over the valid source and are 0 on padding") {
  for (const BahdanauConfig& config : all_variants()) {
    BahdanauModel model(config);
    model.eval();
    const Array weights = attention_of(model.forward(source, source_lengths, target_input).attention);
    for (std::size_t b = 0; b < 3; ++b)
      for (std::size_t t = 0; t < 4; ++t) {
        double total = 0;
        for (std::size_t s = 0; s < 5; ++s) {
          if (static_cast<std::int64_t>(s) < source_lengths(b)) {
            CHECK(weights(b, t, s) > 0);
            total += weights(b, t, s);
          } else {
            CHECK(weights(b, t, s) == 0);
          }
        }
        CHECK(total == doctest::Approx(1).epsilon(1e-12));
      }
  }
}

TEST_CASE("Bahdanau: tokens past a source's length change nothing (padding invariance)") {
  // The same sentences, with real tokens instead of <pad> past each length and two more
  // columns of them.
  const IndexArray noisy = ids({3, 7}, {4, 5, 6, 2, 8, 3, 1, /**/ 7, 2, 5, 5, 6, 4, 8, /**/ 3, 8, 5, 4, 2, 7, 7});
  for (const BahdanauConfig& config : all_variants()) {
    BahdanauModel model(config);
    model.eval();
    const models::Seq2SeqOutput clean = model.forward(source, source_lengths, target_input);
    const models::Seq2SeqOutput dirty = model.forward(noisy, source_lengths, target_input);
    CHECK(max_abs_diff(clean.logits.value(), dirty.logits.value()) < 1e-12);
    const Array& clean_weights = attention_of(clean.attention);
    const Array& dirty_weights = attention_of(dirty.attention);
    for (std::size_t b = 0; b < 3; ++b)
      for (std::size_t t = 0; t < 4; ++t)
        for (std::size_t s = 0; s < 7; ++s) {
          const double expected = static_cast<std::int64_t>(s) < source_lengths(b) ? clean_weights(b, t, s) : 0.0;
          CHECK(std::abs(dirty_weights(b, t, s) - expected) < 1e-12);
        }
  }
}

TEST_CASE("Bahdanau gradcheck: every parameter, unequal source lengths, stacked decoder cells") {
  // No <pad> in target_input: the target embedding's pad row gets no gradient by design
  // (padding_idx), while a padded teacher-forced input would still move the logits.
  const IndexArray full_targets = ids({3, 3}, {1, 4, 5, /**/ 1, 7, 3, /**/ 1, 3, 2});
  BahdanauConfig tiny = small_config(true, 1, 1);
  tiny.embedding_dim = 3;
  tiny.hidden_size = 3;
  tiny.attention_size = 4;
  tiny.dropout = 0;
  BahdanauConfig stacked = small_config(true, 2, 2);
  stacked.dropout = 0;
  // The deep readout and a decoder wider than the encoder (bridge 2·3 -> 4, readout 4 + 6 + 3).
  BahdanauConfig deep = tiny;
  deep.decoder_hidden_size = 4;
  deep.readout = models::BahdanauReadout::deep;
  double worst = 0;
  for (const BahdanauConfig& config : {tiny, stacked, deep}) {
    CAPTURE(config.encoder_layers);
    BahdanauModel model(config);
    const GradcheckFunction logits = [&](const std::vector<Variable>&) {
      return model.forward(source, source_lengths, full_targets).logits;  // [B, T, V]
    };
    // Every element of every parameter (the largest, decoder.0.weight_ih, has 210), no sampling, no fast mode.
    const GradcheckResult result = gradcheck(logits, {}, model.named_parameters());
    INFO(result.report());
    CHECK(result.passed);
    CHECK(result.checked > 300u);
    worst = std::max(worst, result.worst.rel_error);
  }
  MESSAGE("worst gradcheck relative error: " << worst);
}

TEST_CASE("Bahdanau: select_rows reorders and duplicates every part of the state") {
  BahdanauModel model(small_config(true, 2, 2));
  model.eval();
  const std::vector<std::size_t> rows{2, 0, 0, 1};
  const IndexArray reordered_source = ids({4, 5}, {3, 8, 5, 4, 2, /**/ 4, 5, 6, 2, 0, /**/ 4, 5, 6, 2, 0, /**/ 7, 2, 0, 0, 0});
  const IndexArray reordered_lengths = ids({4}, {5, 4, 4, 2});

  // Two steps on the original batch, then select; versus the reordered batch from the start.
  const auto state = model.start_decoding(source, source_lengths);
  model.decode_step(*state, ids({3}, {1, 1, 1}));
  model.decode_step(*state, ids({3}, {4, 5, 6}));
  state->select_rows(rows);
  const auto expected_state = model.start_decoding(reordered_source, reordered_lengths);
  model.decode_step(*expected_state, ids({4}, {1, 1, 1, 1}));
  model.decode_step(*expected_state, ids({4}, {6, 4, 4, 5}));

  const auto& selected = dynamic_cast<const BahdanauState&>(*state);
  const auto& expected = dynamic_cast<const BahdanauState&>(*expected_state);
  CHECK(selected.batch_size() == 4);
  CHECK(selected.allowed == expected.allowed);
  // The encoder outputs stay one row per sentence; each new row reads its sentence's.
  CHECK(selected.encoder_outputs.shape()[0] == 3);
  REQUIRE(shape_of(selected.sentence_of_row) == Shape{4});
  for (std::size_t k = 0; k < 4; ++k) {
    CHECK(selected.sentence_of_row(k) == static_cast<std::int64_t>(rows[k]));
    CHECK(expected.sentence_of_row(k) == static_cast<std::int64_t>(k));
    const auto row_of = [](const Variable& x, std::size_t row) { return Array(xt::view(x.value(), row)); };
    CHECK(max_abs_diff(row_of(selected.encoder_outputs, rows[k]), row_of(expected.encoder_outputs, k)) < 1e-12);
    CHECK(max_abs_diff(row_of(selected.projected_keys, rows[k]), row_of(expected.projected_keys, k)) < 1e-12);
  }
  for (std::size_t layer = 0; layer < 2; ++layer)
    CHECK(max_abs_diff(selected.hidden[layer].value(), expected.hidden[layer].value()) < 1e-12);

  // And decoding goes on identically.
  const models::StepOutput a = model.decode_step(*state, ids({4}, {3, 2, 7, 5}));
  const models::StepOutput b = model.decode_step(*expected_state, ids({4}, {3, 2, 7, 5}));
  CHECK(max_abs_diff(a.logits.value(), b.logits.value()) < 1e-12);
  CHECK(max_abs_diff(attention_of(a.attention), attention_of(b.attention)) < 1e-12);

  CHECK_THROWS_WITH_AS(state->select_rows({0, 4}),
                       "BahdanauState::select_rows: row 4 (position 1) is outside a batch of 4", Error);
}

TEST_CASE("Bahdanau: select_rows keeps the graph, so gradients reach duplicated rows") {
  BahdanauConfig config = small_config(true, 1, 1);
  config.dropout = 0;
  BahdanauModel model(config);
  const auto state = model.start_decoding(source, source_lengths);
  state->select_rows({1, 1});
  Variable loss = sum(model.decode_step(*state, ids({2}, {1, 1})).logits);
  loss.backward();
  // Row 1's source tokens (7, 2) got gradient; row 0's token 6 only appears in dropped rows.
  const Array& grad = model.named_parameters().front().second.grad();
  REQUIRE(model.named_parameters().front().first == "source_embedding.weight");
  CHECK(xt::amax(xt::abs(xt::view(grad, 7)))() > 0);
  CHECK(xt::amax(xt::abs(xt::view(grad, 6)))() == 0);
}

TEST_CASE("Bahdanau: config JSON round trip rebuilds an identical model") {
  BahdanauConfig config = small_config(true, 2, 1);
  config.seed = 1234567890123ULL;
  const BahdanauModel model(config);
  const nlohmann::json json = model.config();
  CHECK(json.at("bidirectional") == true);
  CHECK(json.at("attention_size") == 6);
  CHECK(json.get<BahdanauConfig>() == config);
  const auto rebuilt = BahdanauModel::from_config(nlohmann::json::parse(json.dump()));
  CHECK(rebuilt->bahdanau_config() == config);
  const auto a = model.state_dict(), b = rebuilt->state_dict();
  REQUIRE(a.size() == b.size());
  for (const auto& entry : a) CHECK_MESSAGE(max_abs_diff(entry.second, b.at(entry.first)) == 0, entry.first);

  // Another seed, other weights.
  config.seed += 1;
  CHECK(max_abs_diff(BahdanauModel(config).state_dict().at("output.weight"), a.at("output.weight")) > 0);

  // Defaults fill the gaps; vocabulary sizes do not.
  const auto defaults = nlohmann::json{{"source_vocab_size", 10}, {"target_vocab_size", 11}}.get<BahdanauConfig>();
  CHECK(defaults.embedding_dim == 64);
  CHECK(defaults.hidden_size == 128);
  CHECK(defaults.bidirectional);
  // Configs written before these fields meant a decoder as wide as the encoder, read by its state.
  CHECK(defaults.decoder_hidden_size == 0);
  CHECK(defaults.decoder_width() == 128);
  CHECK(defaults.readout == models::BahdanauReadout::state);
  const BahdanauConfig deep = deep_config(true, 1, 1);
  CHECK(nlohmann::json(deep).at("readout") == "deep");
  CHECK(nlohmann::json(deep).at("decoder_hidden_size") == 7);
  CHECK(nlohmann::json::parse(nlohmann::json(deep).dump()).get<BahdanauConfig>() == deep);
  nlohmann::json bad_readout = json;
  bad_readout["readout"] = "maxout";
  CHECK_THROWS_WITH_AS(bad_readout.get<BahdanauConfig>(), doctest::Contains("maxout"), Error);
  CHECK_THROWS_WITH_AS(nlohmann::json({{"source_vocab_size", 10}}).get<BahdanauConfig>(),
                       "BahdanauConfig: field \"target_vocab_size\" is missing", Error);
  nlohmann::json typo = json;
  typo["hiden_size"] = 3;
  CHECK_THROWS_WITH_AS(typo.get<BahdanauConfig>(),
                       doctest::Contains("BahdanauConfig: unknown key(s) \"hiden_size\""), Error);
  nlohmann::json negative = json;
  negative["hidden_size"] = -3;
  CHECK_THROWS_WITH_AS(negative.get<BahdanauConfig>(),
                       "BahdanauConfig: field \"hidden_size\" must be a non-negative integer, got -3", Error);
  nlohmann::json bad_dropout = json;
  bad_dropout["dropout"] = 1.5;
  CHECK_THROWS_WITH_AS(bad_dropout.get<BahdanauConfig>(), "BahdanauConfig: dropout must be in [0, 1), got 1.5",
                       Error);
  nlohmann::json zero = json;
  zero["decoder_layers"] = 0;
  CHECK_THROWS_WITH_AS(zero.get<BahdanauConfig>(), "BahdanauConfig: decoder_layers must be positive, got 0", Error);
}

TEST_CASE("Bahdanau: bad inputs name the model and the shapes") {
  BahdanauModel model(small_config(true, 1, 1));
  CHECK_THROWS_WITH_AS(model.forward(ids({3}, {1, 2, 3}), source_lengths, target_input),
                       "BahdanauModel: source must be [B, S] with B, S > 0, got [3]", ShapeError);
  CHECK_THROWS_WITH_AS(model.forward(source, ids({2}, {1, 2}), target_input),
                       "BahdanauModel: source_lengths [2] must be [3] for source [3, 5]", ShapeError);
  CHECK_THROWS_WITH_AS(model.forward(source, ids({3}, {1, 6, 2}), target_input),
                       "BahdanauModel: source_lengths[1] = 6 is outside [0, 5] for source [3, 5]", Error);
  CHECK_THROWS_WITH_AS(model.forward(source, source_lengths, ids({2, 1}, {1, 1})),
                       "BahdanauModel: target_input must be [B, T] with T > 0 and the source's B, got [2, 1] "
                       "for source [3, 5]",
                       ShapeError);
  const auto state = model.start_decoding(source, source_lengths);
  CHECK_THROWS_WITH_AS(model.decode_step(*state, ids({2}, {1, 1})),
                       "BahdanauModel: previous_tokens [2] must be [3], one per row of the decoder state",
                       ShapeError);
  CHECK_THROWS_WITH_AS(BahdanauModel(BahdanauConfig{}), "BahdanauConfig: source_vocab_size must be positive, got 0",
                       Error);
}

TEST_CASE("Bahdanau: dropout acts in training mode only") {
  BahdanauModel model(small_config(true, 2, 2));
  const Array train_a = model.forward(source, source_lengths, target_input).logits.value();
  const Array train_b = model.forward(source, source_lengths, target_input).logits.value();
  CHECK(max_abs_diff(train_a, train_b) > 1e-6);  // fresh masks each call
  model.eval();
  const Array eval_a = model.forward(source, source_lengths, target_input).logits.value();
  const Array eval_b = model.forward(source, source_lengths, target_input).logits.value();
  CHECK(max_abs_diff(eval_a, eval_b) == 0);
}

TEST_CASE("Bahdanau learns: 150 Adam steps overfit one batch of the reverse task") {
  TaskOptions task;
  task.train_size = 8;
  task.validation_size = 1;
  task.test_size = 1;
  task.min_length = 3;
  task.max_length = 6;
  task.seed = 3;
  const Dataset data = reverse_task(task);
  const Vocabs vocabs = build_vocabs(data.train);
  const Batcher batcher(data.train, vocabs.source, vocabs.target, {.batch_size = 8, .shuffle = false});
  std::vector<std::size_t> all(data.train.size());
  std::iota(all.begin(), all.end(), 0);
  const Batch batch = batcher.make_batch(all);

  BahdanauConfig config;
  config.source_vocab_size = vocabs.source.size();
  config.target_vocab_size = vocabs.target.size();
  config.embedding_dim = 16;
  config.hidden_size = 32;
  config.attention_size = 32;
  config.dropout = 0;
  config.seed = 11;
  BahdanauModel model(config);
  const auto [first, last] = overfit_one_batch(model, batch, 1e-2, 150);
  MESSAGE("reverse overfit: loss " << first << " -> " << last);
  CHECK(first > 2.0);   // about log(V) at the start: nothing is known yet
  CHECK(last < 0.05 * first);
}
