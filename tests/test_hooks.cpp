// Hook points (layers/hooks.hpp): their names in both models, that they read what the models
// return, that replacing one head's weights changes that head's output and no other, patching
// one run's activation into another, the KV-cache decoding path, gradients through a replaced
// value (head masks, input x gradient), unknown names and bad replacements.
#include <xtensor/xview.hpp>

#include <algorithm>

#include "layers/hooks.hpp"
#include "layers/multihead_attention.hpp"
#include "models/bahdanau/bahdanau.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::test;

namespace {

// kTinySource's batch of 2 (support/tiny_models.hpp), other tokens with the same lengths.
const IndexArray kOtherSource = {{5, 5, 8, 4, 2}, {6, 7, 2, 0, 0}};
const IndexArray kTargetInput = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 4, 3}};

/// Head h of [B, H, ...] -> [B, ...].
Array head(const Array& per_head, std::size_t h) {
  return xt::view(per_head, xt::all(), h);
}

/// A hook that sets head h of a [B, H, Tq, Tk] value to zero.
Hook zero_head(std::size_t h) {
  return [h](Variable& value, const HookCall&) {
    Array zeroed = value.value();
    xt::view(zeroed, xt::all(), h) = 0;
    value = Variable(std::move(zeroed));
  };
}

std::string error_of(const std::function<void()>& run) {
  try {
    run();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("hooks: the hook points of both models, by dotted path") {
  TransformerModel transformer(tiny_transformer_config());
  const std::vector<std::string> names = transformer.hook_point_names();
  const auto has = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  for (const char* name : {"source_embedding.output", "target_embedding.output", "encoder.layers.0.self_attn.scores",
                           "encoder.layers.1.self_attn.weights", "encoder.layers.1.self_attn.heads",
                           "encoder.layers.1.self_attn.output", "decoder.layers.0.self_attn.weights",
                           "decoder.layers.1.multihead_attn.scores", "decoder.layers.1.multihead_attn.weights",
                           "decoder.layers.1.multihead_attn.heads", "decoder.layers.1.multihead_attn.output"}) {
    CAPTURE(name);
    CHECK(has(name));
  }
  // The inner DotProductAttention's points are the MultiheadAttention's: one name per value.
  CHECK_FALSE(has("encoder.layers.0.self_attn.attention.weights"));
  // 2 embeddings + (2 encoder + 2 x 2 decoder attentions) x 4 points.
  CHECK(names.size() == 2 + 6 * 4);

  BahdanauModel bahdanau(tiny_bahdanau_config());
  CHECK(bahdanau.hook_point_names() == std::vector<std::string>{"source_embedding.output", "attention.scores",
                                                                "attention.weights", "attention.output",
                                                                "target_embedding.output"});

  Rng rng(1);
  DotProductAttention dot;
  CHECK(dot.hook_point_names() == std::vector<std::string>{"scores", "weights", "output"});
  AdditiveAttention additive(3, 4, 5, rng);
  CHECK(additive.hook_point_names() == std::vector<std::string>{"scores", "weights", "output"});
}

TEST_CASE("hooks: run_with_cache reads the values the transformer returns") {
  TransformerModel model(tiny_transformer_config());
  model.eval();
  Seq2SeqOutput full;
  const ActivationCache cache = run_with_cache(model, [&] { full = model.forward(kTinySource, kTinySourceLengths, kTargetInput); });
  CHECK(cache.size() == model.hook_point_names().size());
  CHECK(model.hook_point_names().size() == 26);  // run_with_cache removed its hooks: still 26 points, no hooks
  // Cross-attention: the maps forward returns ("layer L head H") are the weights points' heads.
  for (std::size_t layer = 0; layer < 2; ++layer)
    for (std::size_t h = 0; h < 2; ++h) {
      const Array& weights = cache.at("decoder.layers." + std::to_string(layer) + ".multihead_attn.weights");
      REQUIRE(weights.shape() == std::vector<std::size_t>{2, 2, 6, 5});  // [B, H, T, S]
      CHECK(max_abs_diff(head(weights, h), full.attention[layer * 2 + h].second) == 0);
    }
  // The scores are what the softmax saw: softmax over the valid keys gives the weights.
  const Array& scores = cache.at("encoder.layers.1.self_attn.scores");  // [B, H, S, S]
  const Array& weights = cache.at("encoder.layers.1.self_attn.weights");
  BoolArray allowed = allowed_from_valid_lens(kTinySourceLengths, 5, 5);  // [B, S, S]
  allowed.reshape({2, 1, 5, 5});
  const Variable softmaxed = masked_softmax(Variable(scores), allowed);
  CHECK(max_abs_diff(softmaxed.value(), weights) < 1e-14);
  // The heads, merged and projected by out_proj, are the output.
  const Array& heads = cache.at("decoder.layers.0.self_attn.heads");  // [B, H, T, d]
  CHECK(heads.shape() == std::vector<std::size_t>{2, 2, 6, 4});
  CHECK(cache.at("decoder.layers.0.self_attn.output").shape() == std::vector<std::size_t>{2, 6, 8});
  CHECK(cache.at("source_embedding.output").shape() == std::vector<std::size_t>{2, 5, 8});

  // A selection caches only what it accepts.
  const ActivationCache some = run_with_cache(
      model, [&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); },
      [](const std::string& name) { return name.ends_with(".weights"); });
  CHECK(some.size() == 6);
  CHECK(some.contains("decoder.layers.1.multihead_attn.weights"));
  CHECK_FALSE(some.contains("decoder.layers.1.multihead_attn.scores"));
}

TEST_CASE("hooks: the Bahdanau model's attention fires once per target step, on both paths") {
  BahdanauModel model(tiny_bahdanau_config());
  model.eval();
  Seq2SeqOutput full;
  const ActivationCache cache = run_with_cache(model, [&] { full = model.forward(kTinySource, kTinySourceLengths, kTargetInput); });
  const Array& maps = full.attention.at(0).second;  // [B, T, S]
  const std::vector<Array>& steps = cache.calls("attention.weights");
  REQUIRE(steps.size() == 6);
  for (std::size_t t = 0; t < steps.size(); ++t) {
    CAPTURE(t);
    REQUIRE(steps[t].shape() == std::vector<std::size_t>{2, 1, 5});  // [B, 1, S]
    const Array expected = xt::view(maps, xt::all(), xt::range(t, t + 1), xt::all());
    CHECK(max_abs_diff(steps[t], expected) == 0);
  }
  CHECK(error_of([&] { cache.at("attention.weights"); }).find("fired 6 times") != std::string::npos);

  // Decoding: a hook that moves every step's attention onto source position 0 changes the
  // step's reported attention and its logits the same way in forward and decode_step.
  const Hook first_position = [](Variable& value, const HookCall&) {
    Array moved = zeros(value.shape());
    xt::view(moved, xt::all(), xt::all(), 0) = 1;
    value = Variable(std::move(moved));
  };
  const HookId id = model.add_hook("attention.weights", first_position);
  const Seq2SeqOutput patched = model.forward(kTinySource, kTinySourceLengths, kTargetInput);
  CHECK(max_abs_diff(patched.logits.value(), full.logits.value()) > 1e-3);
  NoGradGuard no_grad;
  auto state = model.start_decoding(kTinySource, kTinySourceLengths);
  for (std::size_t t = 0; t < 6; ++t) {
    const IndexArray previous = xt::view(kTargetInput, xt::all(), t);
    const StepOutput step = model.decode_step(*state, previous);
    const Array expected = xt::view(patched.logits.value(), xt::all(), t, xt::all());
    CHECK(max_abs_diff(step.logits.value(), expected) < 1e-12);
    CHECK(step.attention.at(0).second(1, 0) == 1);
  }
  model.remove_hook(id);
  CHECK(max_abs_diff(model.forward(kTinySource, kTinySourceLengths, kTargetInput).logits.value(), full.logits.value()) == 0);
}

TEST_CASE("hooks: zero weights for one head change exactly that head's output") {
  for (const PositionalKind positional : {PositionalKind::sinusoidal, PositionalKind::relative}) {
    CAPTURE(name_of(positional));
    TransformerModel model(tiny_transformer_config(positional));
    model.eval();
    const auto run = [&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); };
    const ActivationCache before = run_with_cache(model, run);
    for (const std::string attention : {"encoder.layers.1.self_attn", "decoder.layers.0.multihead_attn"}) {
      for (std::size_t h = 0; h < 2; ++h) {
        CAPTURE(attention);
        CAPTURE(h);
        ScopedHooks hooks(model);
        hooks.add(attention + ".weights", zero_head(h));
        const ActivationCache after = run_with_cache(model, run);
        const Array& heads_before = before.at(attention + ".heads");  // [B, H, Tq, d]
        const Array& heads_after = after.at(attention + ".heads");
        // The zeroed head attends to nothing (relative positions' value term reads the weights
        // too); the other head is untouched, bit for bit.
        CHECK(xt::amax(xt::abs(head(heads_after, h)))() == 0);
        CHECK(xt::amax(xt::abs(head(heads_before, h)))() > 1e-3);
        CHECK(max_abs_diff(head(heads_after, 1 - h), head(heads_before, 1 - h)) == 0);
        // The layer's output and everything after it change.
        CHECK(max_abs_diff(after.at(attention + ".output"), before.at(attention + ".output")) > 1e-3);
      }
    }
  }
}

TEST_CASE("hooks: patching one run's activation into another") {
  TransformerModel model(tiny_transformer_config());
  model.eval();
  Seq2SeqOutput clean, other;
  const ActivationCache cache = run_with_cache(model, [&] { clean = model.forward(kTinySource, kTinySourceLengths, kTargetInput); });
  other = model.forward(kOtherSource, kTinySourceLengths, kTargetInput);
  REQUIRE(max_abs_diff(clean.logits.value(), other.logits.value()) > 1e-3);
  {
    // Everything the decoder reads of the source comes through the source embeddings: patching
    // them in from the clean run makes the other run's logits the clean ones.
    ScopedHooks hooks(model);
    const Array& embedded = cache.at("source_embedding.output");
    hooks.add("source_embedding.output", [&](Variable& value, const HookCall&) { value = Variable(embedded); });
    const Seq2SeqOutput patched = model.forward(kOtherSource, kTinySourceLengths, kTargetInput);
    CHECK(max_abs_diff(patched.logits.value(), clean.logits.value()) < 1e-13);
  }
  // The hooks are gone with their scope.
  CHECK(max_abs_diff(model.forward(kOtherSource, kTinySourceLengths, kTargetInput).logits.value(), other.logits.value()) == 0);
}

TEST_CASE("hooks: the KV-cache decoding path fires the same points, step by step") {
  for (const PositionalKind positional : {PositionalKind::sinusoidal, PositionalKind::rope}) {
    CAPTURE(name_of(positional));
    TransformerModel model(tiny_transformer_config(positional));
    model.eval();
    // Zero head 1 of the second decoder layer's cross-attention and head 0 of the first
    // layer's self-attention, on both paths: decode_step must still equal forward's rows.
    ScopedHooks hooks(model);
    std::vector<std::size_t> calls;
    hooks.add("decoder.layers.1.multihead_attn.weights", zero_head(1));
    hooks.add("decoder.layers.0.self_attn.weights", zero_head(0));
    hooks.add("decoder.layers.1.multihead_attn.weights",
              [&](Variable& value, const HookCall& call) {
                CHECK(call.name == "decoder.layers.1.multihead_attn.weights");
                calls.push_back(call.call);
                // Hooks run in the order they were added: head 1 is already zero here.
                CHECK(xt::amax(xt::abs(head(value.value(), 1)))() == 0);
              });
    const Seq2SeqOutput full = model.forward(kTinySource, kTinySourceLengths, kTargetInput);
    NoGradGuard no_grad;
    auto state = model.start_decoding(kTinySource, kTinySourceLengths);
    ActivationCache steps;
    for (std::size_t t = 0; t < 6; ++t) {
      CAPTURE(t);
      const IndexArray previous = xt::view(kTargetInput, xt::all(), t);
      StepOutput step;
      const ActivationCache one = run_with_cache(model, [&] { step = model.decode_step(*state, previous); });
      const Array expected = xt::view(full.logits.value(), xt::all(), t, xt::all());
      CHECK(max_abs_diff(step.logits.value(), expected) < 1e-12);
      CHECK(step.attention.at(3).second(0, 0) == 0);  // "layer 2 head 2" was zeroed
      // One new query attending to all t + 1 steps so far; the encoder did not run.
      CHECK(one.at("decoder.layers.0.self_attn.weights").shape() == std::vector<std::size_t>{2, 2, 1, t + 1});
      CHECK(one.at("decoder.layers.1.multihead_attn.scores").shape() == std::vector<std::size_t>{2, 2, 1, 5});
      CHECK_FALSE(one.contains("encoder.layers.0.self_attn.weights"));
    }
    CHECK(calls == std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6});  // forward, then six steps
  }
}

TEST_CASE("hooks: gradients flow through a replaced value") {
  // A head mask xi [1, H, 1, 1] multiplying every attention's heads (Michel et al. 2019), and
  // the source embeddings replaced by a leaf (input x gradient): gradcheck both in float64.
  TransformerConfig config = tiny_transformer_config(PositionalKind::relative);
  config.encoder_layers = config.decoder_layers = 1;
  TransformerModel model(config);
  model.eval();
  const std::vector<std::string> heads = {"encoder.layers.0.self_attn.heads", "decoder.layers.0.self_attn.heads",
                                          "decoder.layers.0.multihead_attn.heads"};
  std::vector<Variable> masks;
  for (std::size_t i = 0; i < heads.size(); ++i) masks.push_back(leaf(uniform_array({1, 2, 1, 1}, 10 + i, 0.5, 1.5)));
  QKV_CHECK_GRADIENTS(
      [&](const std::vector<Variable>& inputs) {
        ScopedHooks hooks(model);
        for (std::size_t i = 0; i < heads.size(); ++i)
          hooks.add(heads[i], [&inputs, i](Variable& value, const HookCall&) { value = value * inputs[i]; });
        return model.forward(kTinySource, kTinySourceLengths, kTargetInput).logits;
      },
      masks);

  const Array embedded = run_with_cache(model, [&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); })
                             .at("source_embedding.output");
  QKV_CHECK_GRADIENTS(
      [&](const std::vector<Variable>& inputs) {
        ScopedHooks hooks(model);
        hooks.add("source_embedding.output", [&inputs](Variable& value, const HookCall&) { value = inputs[0]; });
        return model.forward(kTinySource, kTinySourceLengths, kTargetInput).logits;
      },
      {leaf(embedded)});
}

TEST_CASE("hooks: an unknown name lists the closest valid ones") {
  TransformerModel model(tiny_transformer_config());
  const std::string message =
      error_of([&] { model.add_hook("decoder.layers.1.multihead_attn.weight", [](Variable&, const HookCall&) {}); });
  CHECK(message.starts_with("add_hook: no hook point 'decoder.layers.1.multihead_attn.weight'; the closest of the 26 "
                            "valid names are:\n  decoder.layers.1.multihead_attn.weights\n"));
  // The spelling of cross-attention: the decoder's attentions of that layer come first.
  const std::string cross = error_of([&] { model.add_hook("decoder.layers.1.cross_attn.weights", {}); });
  CHECK(cross.find("empty") != std::string::npos);
  const std::string misspelt =
      error_of([&] { model.add_hook("decoder.layers.1.cross_attn.weights", [](Variable&, const HookCall&) {}); });
  INFO(misspelt);
  CHECK(misspelt.find("\n  decoder.layers.1.self_attn.weights") != std::string::npos);
  CHECK(misspelt.find("\n  decoder.layers.1.multihead_attn.weights") != std::string::npos);

  const ActivationCache cache = run_with_cache(model, [&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); });
  CHECK(error_of([&] { cache.at("encoder.layers.0.self_attn.weight"); })
            .find("the closest names that did are:\n  encoder.layers.0.self_attn.weights") != std::string::npos);
  CHECK(error_of([&] { model.remove_hook(123456789); }).find("no hook with id 123456789") != std::string::npos);

  CHECK(edit_distance("kitten", "sitting") == 3);
  CHECK(edit_distance("", "abc") == 3);
  CHECK(edit_distance("same", "same") == 0);
  CHECK(closest_names("wieghts", {"scores", "weights", "output"}, 2) == std::vector<std::string>{"weights", "scores"});  // a tie: candidates' order
}

TEST_CASE("hooks: a replacement of another shape is an error naming the point") {
  TransformerModel model(tiny_transformer_config());
  model.add_hook("encoder.layers.0.self_attn.weights",
                 [](Variable& value, const HookCall&) { value = Variable(zeros({2, 2})); });
  CHECK(error_of([&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); }) ==
        "hook: the hook on 'encoder.layers.0.self_attn.weights' replaced a value of shape [2, 2, 5, 5] by one of shape "
        "[2, 2]; a replacement must keep the shape");
  model.clear_hooks();
  // A hook may not add hooks to its own point (that would move the list it runs from).
  model.add_hook("source_embedding.output", [&](Variable&, const HookCall&) {
    model.add_hook("source_embedding.output", [](Variable&, const HookCall&) {});
  });
  CHECK(error_of([&] { model.forward(kTinySource, kTinySourceLengths, kTargetInput); })
            .find("cannot add hooks to the point it runs on") != std::string::npos);
  model.clear_hooks();
  CHECK_NOTHROW(model.forward(kTinySource, kTinySourceLengths, kTargetInput));
}
