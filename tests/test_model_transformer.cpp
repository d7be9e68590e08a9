// The tiny encoder-decoder transformer: incremental decoding against the teacher-forced pass
// for every position scheme, beam-search row selection, gradcheck of a tiny model, the
// config's JSON round trip and errors, and a short overfit of one batch of the reverse task.
#include <xtensor/xview.hpp>

#include "autograd/ops.hpp"
#include "lib/text/batching.hpp"
#include "lib/text/corpus.hpp"
#include "lib/text/tasks.hpp"
#include "models/transformer/transformer.hpp"
#include "optim/adam.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"
#include "support/overfit.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::test;

namespace {

constexpr PositionalKind kAllPositional[] = {PositionalKind::sinusoidal, PositionalKind::learned,
                                             PositionalKind::relative, PositionalKind::rope};

// Targets for kTinySource's batch of 2 (support/tiny_models.hpp); row 1 padded with 0.
const IndexArray kPaddedTargetInput = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 0, 0}};
// For gradcheck: no <pad>, whose embedding row (padding_idx 0) deliberately gets no gradient
// although the logits at padded positions depend on it.
const IndexArray kUnpaddedTarget = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 4, 3}};

/// Non-zero biases (and LayerNorm weights off one), so every parameter matters.
void randomise(Module& model) {
  std::uint64_t seed = 100;
  for (auto& [name, p] : model.named_parameters())
    if (name.ends_with("bias")) p.mutable_value() = random_array(p.shape(), seed++, 0.3);
}

}  // namespace

TEST_CASE("TransformerModel: decode_step over a prefix equals forward's rows, for every position scheme") {
  for (const PositionalKind positional : kAllPositional) {
    for (const bool norm_first : {false, true}) {
      CAPTURE(name_of(positional));
      CAPTURE(norm_first);
      TransformerConfig config = tiny_transformer_config(positional);
      config.norm_first = norm_first;
      config.dropout = real(0.1);  // eval() must switch it off on both paths
      TransformerModel model(config);
      randomise(model);
      model.eval();
      const Seq2SeqOutput full = model.forward(kTinySource, kTinySourceLengths, kPaddedTargetInput);
      REQUIRE(full.logits.shape() == Shape{2, 6, 7});
      REQUIRE(full.attention.size() == 4);
      CHECK(full.attention[0].first == "layer 1 head 1");
      CHECK(full.attention[3].first == "layer 2 head 2");

      NoGradGuard no_grad;
      auto state = model.start_decoding(kTinySource, kTinySourceLengths);
      for (std::size_t t = 0; t < 6; ++t) {
        CAPTURE(t);
        const IndexArray previous = xt::view(kPaddedTargetInput, xt::all(), t);
        const StepOutput step = model.decode_step(*state, previous);
        REQUIRE(step.logits.shape() == Shape{2, 7});
        const Array expected = xt::view(full.logits.value(), xt::all(), t, xt::all());
        CHECK(max_abs_diff(step.logits.value(), expected) < 1e-10);
        for (std::size_t m = 0; m < step.attention.size(); ++m) {
          const Array expected_map = xt::view(full.attention[m].second, xt::all(), t, xt::all());
          CHECK(max_abs_diff(step.attention[m].second, expected_map) < 1e-10);
        }
        // Padding in the source gets no attention.
        CHECK(step.attention[0].second(1, 3) == 0);
      }
    }
  }
}

TEST_CASE("TransformerModel: select_rows reorders every cache and the source lengths") {
  TransformerModel model(tiny_transformer_config(PositionalKind::relative));
  randomise(model);
  model.eval();
  NoGradGuard no_grad;
  auto reordered = model.start_decoding(kTinySource, kTinySourceLengths);
  auto reference = model.start_decoding(kTinySource, kTinySourceLengths);
  for (std::size_t t = 0; t < 3; ++t) {
    const IndexArray previous = xt::view(kPaddedTargetInput, xt::all(), t);
    model.decode_step(*reordered, previous);
    model.decode_step(*reference, previous);
  }
  const std::vector<std::size_t> rows = {1, 0, 1};
  reordered->select_rows(rows);
  const IndexArray next = {5, 4};
  const StepOutput got = model.decode_step(*reordered, IndexArray{next(1), next(0), next(1)});
  const StepOutput expected = model.decode_step(*reference, next);
  REQUIRE(got.logits.shape() == Shape{3, 7});
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CAPTURE(i);
    const Array got_row = xt::view(got.logits.value(), i, xt::all());
    const Array expected_row = xt::view(expected.logits.value(), rows[i], xt::all());
    CHECK(max_abs_diff(got_row, expected_row) < 1e-12);
    const Array got_map = xt::view(got.attention[1].second, i, xt::all());
    const Array expected_map = xt::view(expected.attention[1].second, rows[i], xt::all());
    CHECK(max_abs_diff(got_map, expected_map) < 1e-12);
  }
  CHECK_THROWS_AS(reordered->select_rows({3}), Error);
}

TEST_CASE("TransformerModel: gradcheck of every parameter of a tiny model") {
  double worst = 0;
  for (const PositionalKind positional : kAllPositional) {
    for (const bool norm_first : {false, true}) {
      CAPTURE(name_of(positional));
      CAPTURE(norm_first);
      TransformerConfig config = tiny_transformer_config(positional);
      config.norm_first = norm_first;
      config.activation = norm_first ? Activation::gelu : Activation::relu;
      config.encoder_layers = config.decoder_layers = 1;
      TransformerModel model(config);
      randomise(model);
      GradcheckOptions options;
      options.fast_mode = true;  // one random direction per tensor: the model has ~1000 parameters
      const GradcheckResult result = gradcheck(
          [&](const auto&) { return model.forward(kTinySource, kTinySourceLengths, kUnpaddedTarget).logits; }, {},
          model.named_parameters(), options);
      INFO(result.report());
      CHECK(result.passed);
      worst = std::max(worst, result.worst.rel_error);
    }
  }
  // Element-wise on the smallest model for one scheme, every element of every parameter.
  TransformerConfig config = tiny_transformer_config(PositionalKind::relative);
  config.encoder_layers = config.decoder_layers = 1;
  config.d_model = 4;
  config.dim_feedforward = 6;
  TransformerModel model(config);
  randomise(model);
  const GradcheckResult result = gradcheck(
      [&](const auto&) { return model.forward(kTinySource, kTinySourceLengths, kUnpaddedTarget).logits; }, {},
      model.named_parameters());
  INFO(result.report());
  CHECK(result.passed);
  MESSAGE("model gradcheck: worst rel error " << std::max(worst, result.worst.rel_error) << " (full mode: "
                                              << result.worst.abs_error << " abs)");
}

TEST_CASE("TransformerConfig: JSON round trip, defaults and errors") {
  TransformerConfig config = tiny_transformer_config(PositionalKind::rope);
  config.activation = Activation::gelu;
  config.norm_first = true;
  config.scale = ScoreScale::learned_temperature(real(2.5));
  config.seed = 42;
  const nlohmann::json json = config;
  const TransformerConfig back = json.get<TransformerConfig>();
  CHECK(nlohmann::json(back) == json);
  CHECK(back.positional == PositionalKind::rope);
  CHECK(back.scale.kind == ScoreScale::Kind::learned_temperature);
  CHECK(back.scale.value == real(2.5));
  CHECK(json.at("activation") == "gelu");

  TransformerModel model(config);
  CHECK(model.kind() == "transformer");
  CHECK(model.config() == json);
  const auto rebuilt = TransformerModel::from_config(model.config());
  CHECK(rebuilt->parameter_count() == model.parameter_count());
  // Same seed, same config: the same weights.
  CHECK(max_abs_diff(rebuilt->named_parameters()[0].second.value(), model.named_parameters()[0].second.value()) == 0);

  const auto defaults =
      nlohmann::json{{"source_vocab_size", 10}, {"target_vocab_size", 11}}.get<TransformerConfig>();
  CHECK(defaults.d_model == 64);
  CHECK(defaults.nhead == 4);
  CHECK(defaults.encoder_layers == 2);
  CHECK(defaults.dim_feedforward == 256);
  CHECK(defaults.dropout == real(0.1));

  nlohmann::json bad = json;
  bad["dmodel"] = 3;
  CHECK_THROWS_WITH_AS(bad.get<TransformerConfig>(), "TransformerConfig: unknown field \"dmodel\"", Error);
  bad = json;
  bad["positional"] = "xpos";
  CHECK_THROWS_WITH_AS(bad.get<TransformerConfig>(),
                       "TransformerConfig: unknown positional encoding 'xpos'; known: sinusoidal, learned, relative, rope, "
                       "alibi",
                       Error);
  bad = json;
  bad["num_heads"] = 3;
  CHECK_THROWS_WITH_AS(bad.get<TransformerConfig>(), "TransformerConfig: d_model 8 is not divisible by num_heads 3",
                       Error);
  bad = json;
  bad["d_model"] = "big";
  CHECK_THROWS_WITH_AS(bad.get<TransformerConfig>(), doctest::Contains("field \"d_model\" must be a non-negative integer, got \"big\""),
                       Error);
  bad = json;
  bad["d_model"] = 6;  // head size 3: rope rotates pairs
  CHECK_THROWS_WITH_AS(bad.get<TransformerConfig>(),
                       "TransformerConfig: rope needs an even head size, got d_model / num_heads = 3", Error);
}

TEST_CASE("TransformerModel: bad inputs name the model and the shapes") {
  TransformerModel model(tiny_transformer_config(PositionalKind::sinusoidal));
  CHECK_THROWS_WITH_AS(model.forward(kTinySource, IndexArray{5, 3, 1}, kPaddedTargetInput),
                       "TransformerModel: source must be [B, S] and source_lengths [B], got source [2, 5] and "
                       "source_lengths [3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(model.forward(kTinySource, kTinySourceLengths, IndexArray{{1, 2}}),
                       "TransformerModel: target_input must be [B, T] with the source's batch 2, got [1, 2]",
                       ShapeError);
  auto state = model.start_decoding(kTinySource, kTinySourceLengths);
  CHECK_THROWS_WITH_AS(model.decode_step(*state, IndexArray{1, 1, 1}),
                       "TransformerModel: previous_tokens must be [B] with B = 2, got [3]", ShapeError);
}

TEST_CASE("TransformerModel: 100 Adam steps overfit one batch of the reverse task") {
  TaskOptions task;
  task.train_size = 8;
  task.validation_size = 1;
  task.test_size = 1;
  task.min_length = 4;
  task.max_length = 6;
  task.seed = 1;
  const Dataset data = reverse_task(task);
  const Vocabs vocabs = build_vocabs(data.train);
  BatchOptions batching;
  batching.batch_size = 8;
  batching.shuffle = false;
  const Batcher batcher(data.train, vocabs.source, vocabs.target, batching);
  const Batch batch = batcher.epoch(0).at(0);

  TransformerConfig config;
  config.source_vocab_size = vocabs.source.size();
  config.target_vocab_size = vocabs.target.size();
  config.d_model = 32;
  config.nhead = 2;
  config.encoder_layers = 1;
  config.decoder_layers = 1;
  config.dim_feedforward = 64;
  config.dropout = 0;
  config.max_len = 32;
  config.seed = 5;
  TransformerModel model(config);
  const auto [first, last] = overfit_one_batch(model, batch, 3e-3, 100);
  MESSAGE("reverse overfit: loss " << first << " -> " << last);
  CHECK(first > 2.0);
  CHECK(last < 0.1 * first);
}
