// Transformer blocks: parity with PyTorch's nn.TransformerEncoderLayer / DecoderLayer /
// Encoder / Decoder (batch_first, post-LN and pre-LN, relu and gelu; outputs and every
// gradient), gradcheck under padding with fully masked rows, incremental decoding against the
// full causal pass, cache row selection, and bad configs and shapes.
#include <algorithm>
#include <memory>

#include "layers/positional.hpp"
#include "layers/transformer.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

constexpr std::size_t kD = 4, kH = 2, kF = 8;

/// The fixture's parameters of `name`, keyed as PyTorch names them.
std::map<std::string, Array> torch_state(const TensorFile& fixture, const std::string& name) {
  const std::string prefix = name + ".param.";
  std::map<std::string, Array> state;
  for (const auto& [key, value] : fixture.reals)
    if (key.rfind(prefix, 0) == 0) state[key.substr(prefix.size())] = value;
  return state;
}

TransformerLayerOptions small_options(bool norm_first, Activation activation, real dropout = 0) {
  TransformerLayerOptions options;
  options.d_model = kD;
  options.nhead = kH;
  options.dim_feedforward = kF;
  options.dropout = dropout;
  options.activation = activation;
  options.norm_first = norm_first;
  return options;
}

/// Random biases and LayerNorm weights, so that every parameter's gradient is exercised.
void randomise(Module& module, std::uint64_t seed) {
  for (auto& [name, p] : module.named_parameters()) {
    const bool norm_weight = name.find("norm") != std::string::npos && name.ends_with("weight");
    if (name.ends_with("bias")) p.mutable_value() = random_array(p.shape(), seed++, 0.5);
    if (norm_weight) p.mutable_value() = random_array(p.shape(), seed++, 0.3) + 1.0;
  }
}


}  // namespace

TEST_CASE("Transformer layers: PyTorch's parameter names, in PyTorch's order") {
  Rng rng(0);
  const TensorFile fixture = load_fixture("transformer");
  for (const std::string name : {"encoder_post_relu", "decoder_post_relu", "encoder_stack_pre_relu",
                                 "decoder_stack_post_gelu"}) {
    CAPTURE(name);
    std::unique_ptr<Module> module;
    const TransformerLayerOptions options = small_options(false, Activation::relu);
    if (name == "encoder_post_relu") module = std::make_unique<TransformerEncoderLayer>(options, rng);
    if (name == "decoder_post_relu") module = std::make_unique<TransformerDecoderLayer>(options, rng);
    if (name == "encoder_stack_pre_relu") module = std::make_unique<TransformerEncoder>(options, 2, true, rng);
    if (name == "decoder_stack_post_gelu") module = std::make_unique<TransformerDecoder>(options, 2, true, rng);
    std::vector<std::string> ours, theirs;
    for (const auto& [parameter, variable] : module->named_parameters()) ours.push_back(parameter);
    for (const auto& [parameter, value] : torch_state(fixture, name)) theirs.push_back(parameter);
    std::vector<std::string> ours_sorted = ours;
    std::sort(ours_sorted.begin(), ours_sorted.end());
    CHECK(ours_sorted == theirs);
  }
  TransformerEncoderLayer layer(small_options(false, Activation::relu), rng);
  const auto names = layer.named_parameters();
  REQUIRE(names.size() == 12);
  CHECK(names[0].first == "self_attn.in_proj_weight");
  CHECK(names[4].first == "linear1.weight");
  CHECK(names[8].first == "norm1.weight");
  TransformerLayerOptions unbiased = small_options(false, Activation::relu);
  unbiased.bias = false;
  // Without bias: the attention projections and linears lose theirs; LayerNorm keeps its shift.
  CHECK(TransformerDecoderLayer(unbiased, rng).named_parameters().size() == 2 + 2 + 2 + 6);
}

TEST_CASE("Transformer layers and stacks match PyTorch: outputs and all gradients") {
  const TensorFile fixture = load_fixture("transformer");
  const IndexArray valid_lens = fixture.integers.at("valid_lens");
  AttentionMask source_mask;
  source_mask.valid_lens = valid_lens;
  const AttentionMask causal{.causal = true};

  struct Case {
    std::string name;
    bool decoder, norm_first;
    Activation activation;
    std::size_t layers;  // 0: a single layer
  };
  const Case cases[] = {
      {"encoder_post_relu", false, false, Activation::relu, 0},
      {"encoder_pre_gelu", false, true, Activation::gelu, 0},
      {"decoder_post_relu", true, false, Activation::relu, 0},
      {"decoder_pre_gelu", true, true, Activation::gelu, 0},
      {"encoder_stack_pre_relu", false, true, Activation::relu, 2},
      {"decoder_stack_post_gelu", true, false, Activation::gelu, 2},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    double worst = 0;
    const auto diff = [&](const Array& a, const Array& b) { return worst = std::max(worst, max_abs_diff(a, b)); };
    const TransformerLayerOptions options = small_options(c.norm_first, c.activation);
    const Variable source(fixture.reals.at(c.name + ".source"), true);
    Variable target;
    if (c.decoder) target = Variable(fixture.reals.at(c.name + ".target"), true);

    Rng rng(0);  // every parameter is then loaded
    std::shared_ptr<Module> module;
    Variable output;
    if (!c.decoder && c.layers == 0) {
      auto layer = std::make_shared<TransformerEncoderLayer>(options, rng);
      layer->load_state_dict(torch_state(fixture, c.name));
      output = layer->forward(source, source_mask).output;
      module = layer;
    } else if (!c.decoder) {
      auto stack = std::make_shared<TransformerEncoder>(options, c.layers, true, rng);
      stack->load_state_dict(torch_state(fixture, c.name));
      output = stack->forward(source, source_mask).output;
      module = stack;
    } else if (c.layers == 0) {
      auto layer = std::make_shared<TransformerDecoderLayer>(options, rng);
      layer->load_state_dict(torch_state(fixture, c.name));
      output = layer->forward(target, source, causal, source_mask).output;
      module = layer;
    } else {
      auto stack = std::make_shared<TransformerDecoder>(options, c.layers, true, rng);
      stack->load_state_dict(torch_state(fixture, c.name));
      output = stack->forward(target, source, causal, source_mask).output;
      module = stack;
    }
    CHECK(diff(output.value(), fixture.reals.at(c.name + ".output")) < 1e-5);
    sum(output * Variable(fixture.reals.at(c.name + ".r"))).backward();
    CHECK(diff(source.grad(), fixture.reals.at(c.name + ".grad.source")) < 1e-5);
    if (c.decoder) CHECK(diff(target.grad(), fixture.reals.at(c.name + ".grad.target")) < 1e-5);
    for (const auto& named : module->named_parameters()) {
      const std::string& parameter = named.first;
      CAPTURE(parameter);
      CHECK(diff(named.second.grad(), fixture.reals.at(c.name + ".grad." + parameter)) < 1e-5);
    }
    MESSAGE(c.name << ": worst difference from PyTorch over the output and every gradient: " << worst);
  }
}

TEST_CASE("TransformerEncoderLayer: gradcheck, post-LN and pre-LN, relu and gelu, fully masked rows") {
  AttentionMask padded;  // batch 1 has no keys at all
  padded.valid_lens = IndexArray{3, 0};
  const Array x = random_array({2, 4, 6}, 10);
  for (const bool norm_first : {false, true}) {
    for (const Activation activation : {Activation::relu, Activation::gelu}) {
      CAPTURE(norm_first);
      CAPTURE(name_of(activation));
      TransformerLayerOptions options = small_options(norm_first, activation);
      options.d_model = 6;
      options.nhead = 3;
      Rng rng(5);
      TransformerEncoderLayer layer(options, rng);
      randomise(layer, 20);
      QKV_CHECK_GRADIENTS([&](const auto& in) { return layer.forward(in[0], padded).output; }, {Variable(x)},
                            layer.named_parameters());
    }
  }
  Rng stack_rng(0);
  TransformerEncoder stack(small_options(true, Activation::gelu), 2, true, stack_rng);
  randomise(stack, 30);
  AttentionMask lengths;
  lengths.valid_lens = IndexArray{2, 4};
  QKV_CHECK_GRADIENTS([&](const auto& in) { return stack.forward(in[0], lengths).output; },
                        {Variable(random_array({2, 4, kD}, 11))}, stack.named_parameters());
}

TEST_CASE("TransformerDecoderLayer: gradcheck, post-LN and pre-LN, relu and gelu, fully masked memory rows") {
  AttentionMask memory_mask;  // batch 1 sees no memory at all
  memory_mask.valid_lens = IndexArray{4, 0};
  const AttentionMask causal{.causal = true};
  const Array target = random_array({2, 3, kD}, 40), memory = random_array({2, 5, kD}, 41);
  for (const bool norm_first : {false, true}) {
    for (const Activation activation : {Activation::relu, Activation::gelu}) {
      CAPTURE(norm_first);
      CAPTURE(name_of(activation));
      TransformerLayerOptions options = small_options(norm_first, activation);
      Rng rng(6);
      TransformerDecoderLayer layer(options, rng);
      randomise(layer, 50);
      QKV_CHECK_GRADIENTS([&](const auto& in) { return layer.forward(in[0], in[1], causal, memory_mask).output; },
                            {Variable(target), Variable(memory)}, layer.named_parameters());
      // The cross-attention weights, as plotted, are differentiable too.
      QKV_CHECK_GRADIENTS(
          [&](const auto& in) { return layer.forward(in[0], in[1], causal, memory_mask).cross_attention; },
          {Variable(target), Variable(memory)}, layer.named_parameters());
    }
  }
  Rng stack_rng(0);
  TransformerDecoder stack(small_options(false, Activation::gelu), 2, true, stack_rng);
  randomise(stack, 60);
  QKV_CHECK_GRADIENTS([&](const auto& in) { return stack.forward(in[0], in[1], causal, memory_mask).output; },
                        {Variable(target), Variable(memory)}, stack.named_parameters());
}

TEST_CASE("TransformerDecoder: stepping one token at a time equals the full causal pass") {
  const Array target = random_array({2, 5, 8}, 70), memory = random_array({2, 6, 8}, 71);
  AttentionMask memory_mask;
  memory_mask.valid_lens = IndexArray{6, 3};
  const AttentionMask causal{.causal = true};
  for (const std::string positions : {"none", "rope", "relative"}) {
    for (const bool norm_first : {false, true}) {
      CAPTURE(positions);
      CAPTURE(norm_first);
      TransformerLayerOptions options = small_options(norm_first, Activation::gelu);
      options.d_model = 8;
      Rng rng(7);
      if (positions == "rope")
        options.self_attention_positions = [] { return std::make_shared<RotaryPositionEncoding>(4); };
      if (positions == "relative")
        options.self_attention_positions = [] {
          Rng tables(3);
          return std::make_shared<RelativePositionEncoding>(4, 2, tables);
        };
      TransformerDecoder decoder(options, 2, norm_first, rng);
      decoder.eval();
      const TransformerDecoder::Output full = decoder.forward(Variable(target), Variable(memory), causal, memory_mask);

      NoGradGuard no_grad;
      TransformerDecoderCache cache = decoder.start(Variable(memory));
      for (std::size_t t = 0; t < 5; ++t) {
        CAPTURE(t);
        const Variable step_input = slice(Variable(target), 1, t, t + 1);  // [B, 1, D]
        const TransformerDecoder::Output step = decoder.step(step_input, cache, memory_mask);
        CHECK(cache.length() == t + 1);
        CHECK(max_abs_diff(step.output.value(), slice(full.output, 1, t, t + 1).value()) < 1e-12);
        for (std::size_t l = 0; l < 2; ++l)
          CHECK(max_abs_diff(step.cross_attention[l].value(), slice(full.cross_attention[l], 2, t, t + 1).value()) <
                1e-12);
      }
    }
  }
}

TEST_CASE("TransformerDecoderCache::select_rows reorders and repeats batch rows of every layer") {
  Rng rng(0);
  TransformerDecoder decoder(small_options(true, Activation::relu), 2, true, rng);
  decoder.eval();
  NoGradGuard no_grad;
  const Array target = random_array({2, 3, kD}, 80), memory = random_array({2, 4, kD}, 81);
  const std::vector<std::size_t> rows = {1, 0, 1};
  const auto pick = [&](const Array& a) {  // rows of a [2, ...] array
    Array out = xt::zeros<real>(std::vector<std::size_t>{3, a.shape()[1], a.shape()[2]});
    const std::size_t n = a.size() / 2;
    for (std::size_t i = 0; i < 3; ++i) std::copy_n(a.data() + rows[i] * n, n, out.data() + i * n);
    return out;
  };

  TransformerDecoderCache cache = decoder.start(Variable(memory));
  decoder.step(slice(Variable(target), 1, 0, 2), cache);  // two steps at once, then reorder
  cache.select_rows(rows);
  const Variable last = decoder.step(Variable(pick(slice(Variable(target), 1, 2, 3).value())), cache).output;

  TransformerDecoderCache reference = decoder.start(Variable(pick(memory)));
  const Variable expected = decoder.step(Variable(pick(target)), reference).output;  // [3, 3, D]
  CHECK(last.shape() == Shape{3, 1, kD});
  CHECK(max_abs_diff(last.value(), slice(expected, 1, 2, 3).value()) < 1e-12);
  CHECK_THROWS_WITH_AS(cache.select_rows({3}),
                       "TransformerDecoderCache::select_rows: row 3 is out of range for a batch of 3", Error);
}

TEST_CASE("Transformer layers: bad configs and shapes name the layer") {
  Rng rng(0);
  TransformerLayerOptions options = small_options(false, Activation::relu);
  options.nhead = 3;
  CHECK_THROWS_WITH_AS(TransformerEncoderLayer(options, rng),
                       "TransformerEncoderLayer(d_model=4, nhead=3): d_model 4 is not divisible by nhead 3", Error);
  options = small_options(false, Activation::relu, 1);
  CHECK_THROWS_WITH_AS(TransformerDecoderLayer(options, rng),
                       "TransformerDecoderLayer(d_model=4, nhead=2): dropout must be in [0, 1), got 1", Error);
  options = small_options(false, Activation::relu);
  options.dim_feedforward = 0;
  CHECK_THROWS_AS(TransformerEncoderLayer(options, rng), Error);
  CHECK_THROWS_WITH_AS(TransformerEncoder(small_options(false, Activation::relu), 0, false, rng),
                       "TransformerEncoder: num_layers must be positive, got 0", Error);
  CHECK_THROWS_WITH_AS(parse_name<Activation>("tanh", "TransformerConfig"),
                       "TransformerConfig: unknown activation 'tanh'; known: relu, gelu", Error);

  TransformerEncoderLayer encoder(small_options(false, Activation::relu), rng);
  CHECK_THROWS_WITH_AS(encoder.forward(Variable(random_array({2, 3, 5}, 1))),
                       "TransformerEncoderLayer(d_model=4, nhead=2): the input must be [B, T, d_model] with "
                       "d_model 4, got [2, 3, 5]",
                       ShapeError);
  TransformerDecoderLayer decoder(small_options(false, Activation::relu), rng);
  CHECK_THROWS_WITH_AS(decoder.forward(Variable(random_array({2, 3, 4}, 2)), Variable(random_array({3, 5, 4}, 3))),
                       "TransformerDecoderLayer(d_model=4, nhead=2): target [2, 3, 4] and memory [3, 5, 4] have "
                       "different batch sizes",
                       ShapeError);
  TransformerDecoderLayerCache empty;
  CHECK_THROWS_WITH_AS(decoder.step(Variable(random_array({2, 1, 4}, 4)), empty),
                       "TransformerDecoderLayer(d_model=4, nhead=2): step needs a cache from start(memory), got an "
                       "empty one",
                       Error);
}
