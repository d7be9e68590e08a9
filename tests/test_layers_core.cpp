// Core layers: Linear, Embedding, LayerNorm, Dropout, NadarayaWatson, and Module behaviour.
// Values against PyTorch fixtures (scripts/fixtures/layers_core.py), gradients by gradcheck.
#include <cmath>
#include <filesystem>

#include <unistd.h>

#include "layers/attention.hpp"
#include "layers/embedding.hpp"
#include "layers/linear.hpp"
#include "layers/nadaraya_watson.hpp"
#include "layers/normalization.hpp"
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "support/helpers.hpp"
#include "support/layer_fixture.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// The message of the Error that `body` throws ("" when it throws none).
template <class F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- Linear --------------------------------------------------------------------------------

TEST_CASE("Linear matches PyTorch: output and gradients") {
  const TensorFile fixture = load_fixture("layers_core");
  Rng rng(1);
  Linear layer(5, 4, rng);
  load_layer(layer, fixture, "linear");
  Variable x(fixture.reals.at("linear.input"), true);  // [3, 2, 5]
  Variable y = layer(x);                          // [3, 2, 4]
  check_close(y.value(), fixture, "linear.output");
  y.backward(fixture.reals.at("linear.projection"));
  check_parameter_grads(layer, fixture, "linear");
  check_close(x.grad(), fixture, "linear.grad.input");
}

TEST_CASE("Linear: names, shapes, PyTorch initialisation bounds, gradcheck") {
  Rng rng(2);
  Linear layer(16, 3, rng);
  const auto params = layer.named_parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].first == "weight");
  CHECK(params[0].second.shape() == Shape{3, 16});
  CHECK(params[1].first == "bias");
  CHECK(params[1].second.shape() == Shape{3});
  CHECK(layer.parameter_count() == 51);
  // U(-1/√16, 1/√16) = U(-0.25, 0.25) for both.
  for (const auto& [name, p] : params) {
    CHECK(xt::amax(xt::abs(p.value()))() <= 0.25);
    CHECK(xt::amax(xt::abs(p.value()))() > 0.1);
  }
  Linear small(4, 3, rng);
  QKV_CHECK_GRADIENTS([&](const auto& x) { return small(x[0]); }, {Variable(random_array({2, 3, 4}, 3))},
                      small.named_parameters());
  Linear no_bias(4, 3, rng, {.bias = false});
  CHECK(no_bias.named_parameters().size() == 1);
  CHECK_FALSE(no_bias.bias().defined());
  QKV_CHECK_GRADIENTS([&](const auto& x) { return no_bias(x[0]); }, {Variable(random_array({5, 4}, 4))},
                      no_bias.named_parameters());
}

TEST_CASE("Linear: bad configuration and bad input name the layer and the shapes") {
  Rng rng(3);
  CHECK_THROWS_WITH_AS(Linear(0, 3, rng), "Linear: in_features and out_features must be positive, got 0 and 3",
                       Error);
  Linear layer(5, 4, rng);
  CHECK_THROWS_WITH_AS(layer(Variable(zeros({2, 6}))), "Linear(5 -> 4): input [2, 6] must end in 5 features",
                       ShapeError);
  CHECK_THROWS_AS(layer(Variable(zeros({}))), ShapeError);
}

// ---- Embedding -----------------------------------------------------------------------------

TEST_CASE("Embedding with padding_idx matches PyTorch, the padding row gets no gradient") {
  const TensorFile fixture = load_fixture("layers_core");
  Rng rng(4);
  Embedding layer(7, 4, rng, {.padding_idx = 2});
  load_layer(layer, fixture, "embedding");
  const IndexArray& indices = fixture.integers.at("embedding.indices");  // [2, 5], contains 2 three times
  Variable y = layer(indices);                                       // [2, 5, 4]
  check_close(y.value(), fixture, "embedding.output");
  y.backward(fixture.reals.at("embedding.projection"));
  check_parameter_grads(layer, fixture, "embedding");
  CHECK(xt::amax(xt::abs(xt::view(layer.weight().grad(), 2, xt::all())))() == 0);
}

TEST_CASE("Embedding: initialisation, padding row zeroed, gradcheck") {
  Rng rng(5);
  Embedding padded(6, 3, rng, {.padding_idx = -1});  // counted from the end, as PyTorch
  CHECK(*padded.padding_idx() == 5);
  CHECK(xt::amax(xt::abs(xt::view(padded.weight().value(), 5, xt::all())))() == 0);
  CHECK(xt::amax(xt::abs(xt::view(padded.weight().value(), 0, xt::all())))() > 0);

  Embedding big(200, 50, rng);  // N(0, 1): 10,000 draws
  const Array& w = big.weight().value();
  CHECK(std::abs(double(xt::mean(w)())) < 0.05);
  CHECK(std::abs(double(xt::stddev(w)()) - 1) < 0.05);

  Embedding layer(6, 3, rng);
  const IndexArray indices = {{0, 5, 5}, {2, 0, 1}};
  QKV_CHECK_GRADIENTS([&](const auto&) { return layer(indices); }, {}, layer.named_parameters());
  // A padding layer on indices without the padding token is an ordinary table. (With the token,
  // the padding row's gradient is zero by design, not the derivative; the PyTorch test above
  // covers that case.)
  Embedding with_pad(6, 3, rng, {.padding_idx = 4});
  const IndexArray no_pad = {{0, 5, 5}, {2, 3, 1}};
  QKV_CHECK_GRADIENTS([&](const auto&) { return with_pad(no_pad); }, {}, with_pad.named_parameters());
}

TEST_CASE("Embedding: bad configuration and bad indices name the layer") {
  Rng rng(6);
  CHECK_THROWS_WITH_AS(Embedding(0, 4, rng), "Embedding: num_embeddings and embedding_dim must be positive, got 0 and 4",
                       Error);
  CHECK_THROWS_WITH_AS(Embedding(7, 4, rng, {.padding_idx = 7}), "Embedding(7, 4): padding_idx 7 is outside [-7, 7)",
                       Error);
  Embedding layer(7, 4, rng);
  CHECK_THROWS_WITH_AS(layer(IndexArray{{1, 7}}),
                       "Embedding(7, 4): index 7 is outside [0, 7) in indices of shape [1, 2]", Error);
  CHECK_THROWS_AS(layer(IndexArray{-1}), Error);
}

// ---- LayerNorm -----------------------------------------------------------------------------

TEST_CASE("LayerNorm matches PyTorch: output and gradients") {
  const TensorFile fixture = load_fixture("layers_core");
  LayerNorm layer(6);
  load_layer(layer, fixture, "layer_norm");
  Variable x(fixture.reals.at("layer_norm.input"), true);  // [2, 3, 6]
  Variable y = layer(x);
  check_close(y.value(), fixture, "layer_norm.output");
  y.backward(fixture.reals.at("layer_norm.projection"));
  check_parameter_grads(layer, fixture, "layer_norm");
  check_close(x.grad(), fixture, "layer_norm.grad.input");
}

TEST_CASE("LayerNorm: defaults, gradcheck, no-affine variant") {
  LayerNorm layer(5);
  CHECK(layer.eps() == real(1e-5));
  CHECK(max_abs_diff(layer.weight().value(), full({5}, 1)) == 0);
  CHECK(max_abs_diff(layer.bias().value(), zeros({5})) == 0);
  layer.load_state_dict({{"weight", random_array({5}, 7)}, {"bias", random_array({5}, 8)}});
  QKV_CHECK_GRADIENTS([&](const auto& x) { return layer(x[0]); }, {Variable(random_array({2, 3, 5}, 9))},
                      layer.named_parameters());
  LayerNorm plain(5, {.elementwise_affine = false});
  CHECK(plain.named_parameters().empty());
  const Array y = plain(Variable(random_array({4, 5}, 10, 3))).value();
  for (std::size_t r = 0; r < 4; ++r) {
    const Array row = xt::view(y, r, xt::all());
    CHECK(std::abs(double(xt::mean(row)())) < 1e-12);
    CHECK(std::abs(double(xt::mean(row * row)()) - 1) < 1e-4);  // 1 - eps/var
  }
  QKV_CHECK_GRADIENTS([&](const auto& x) { return plain(x[0]); }, {Variable(random_array({3, 5}, 11))});
}

TEST_CASE("LayerNorm: bad configuration and bad input name the layer and the shapes") {
  CHECK_THROWS_WITH_AS(LayerNorm(0), "LayerNorm: normalized_shape must be positive, got 0", Error);
  CHECK_THROWS_AS(LayerNorm(4, {.eps = 0}), Error);
  LayerNorm layer(6);
  CHECK_THROWS_WITH_AS(layer(Variable(zeros({2, 5}))), "LayerNorm(6): input [2, 5] must end in 6 features", ShapeError);
}

// ---- Dropout -------------------------------------------------------------------------------

TEST_CASE("Dropout: drops about p, scales the rest by 1/(1-p), identity in eval mode") {
  Rng rng(12);
  Dropout layer(0.25, Rng(rng.next_u64()));
  CHECK(layer.is_training());
  const Variable x(full({100, 100}, 2));
  const Array y = layer(x).value();
  std::size_t dropped = 0;
  for (const real v : y) {
    if (v == 0) ++dropped;
    else CHECK(std::abs(v - real(2 / 0.75)) < 1e-12);
  }
  CHECK(std::abs(double(dropped) / 10000 - 0.25) < 0.02);
  // A new mask on each call.
  CHECK(max_abs_diff(layer(x).value(), y) > 0);
  layer.eval();
  CHECK(max_abs_diff(layer(x).value(), x.value()) == 0);
  // The same seed gives the same masks.
  Rng a(13), b(13);
  Dropout first(0.5, Rng(a.next_u64())), second(0.5, Rng(b.next_u64()));
  CHECK(max_abs_diff(first(x).value(), second(x).value()) == 0);
}

TEST_CASE("Dropout gradcheck with a fixed mask") {
  // A layer rebuilt from the same seed on every evaluation draws the same mask.
  QKV_CHECK_GRADIENTS(
      [](const auto& x) {
        Rng rng(14);
        Dropout layer(0.4, Rng(rng.next_u64()));
        return layer(x[0]);
      },
      {Variable(random_array({4, 6}, 15))});
}

TEST_CASE("Dropout: p outside 0 <= p < 1 is refused") {
  Rng rng(16);
  CHECK_THROWS_WITH_AS(Dropout(1, Rng(rng.next_u64())), "Dropout: p must be in [0, 1), got 1", Error);
  CHECK_THROWS_AS(Dropout(-0.1, Rng(rng.next_u64())), Error);
  CHECK_THROWS_AS(Dropout(std::nan(""), Rng(rng.next_u64())), Error);
}

// ---- NadarayaWatson ------------------------------------------------------------------------

TEST_CASE("NadarayaWatson: values by hand, rows of the attention sum to 1") {
  Rng rng(17);
  NadarayaWatson model(rng);
  CHECK(model.named_parameters()[0].first == "w");
  const real w0 = model.w().value()(0);
  CHECK((w0 >= 0 && w0 < 1));
  model.load_state_dict({{"w", array_of({1}, {1.5})}});
  const Array queries = array_of({3}, {0.1, 1.2, 2.5});
  const Array keys = array_of({4}, {0, 1, 2, 3});
  const Array values = array_of({4}, {1, -1, 0.5, 2});
  const auto [predictions, attention] = model(Variable(queries), Variable(keys), Variable(values));
  REQUIRE(attention.shape() == Shape{3, 4});
  REQUIRE(predictions.shape() == Shape{3});
  for (std::size_t q = 0; q < 3; ++q) {
    double weights[4], total = 0, prediction = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const double d = (queries(q) - keys(k)) * 1.5;
      weights[k] = std::exp(-d * d / 2);
      total += weights[k];
    }
    for (std::size_t k = 0; k < 4; ++k) {
      CHECK(std::abs(attention.value()(q, k) - weights[k] / total) < 1e-12);
      prediction += weights[k] / total * values(k);
    }
    CHECK(std::abs(predictions.value()(q) - prediction) < 1e-12);
  }
}

TEST_CASE("NadarayaWatson gradcheck: shared keys and per-query keys") {
  Rng rng(18);
  NadarayaWatson model(rng);
  QKV_CHECK_GRADIENTS(
      [&](const auto& x) {
        const auto out = model(x[0], x[1], x[2]);
        return out.predictions + sum(out.attention, {1});
      },
      {Variable(random_array({3}, 19)), Variable(random_array({5}, 20)), Variable(random_array({5}, 21))},
      model.named_parameters());
  QKV_CHECK_GRADIENTS([&](const auto& x) { return model(x[0], x[1], x[2]).predictions; },
                      {Variable(random_array({3}, 22)), Variable(random_array({3, 4}, 23)),
                       Variable(random_array({3, 4}, 24))},
                      model.named_parameters());
}

TEST_CASE("NadarayaWatson: mismatched shapes name the layer and the shapes") {
  Rng rng(25);
  NadarayaWatson model(rng);
  CHECK_THROWS_WITH_AS(model(Variable(zeros({3})), Variable(zeros({4})), Variable(zeros({5}))),
                       "NadarayaWatson: queries [3], keys [4] and values [5] must be [n_queries] with keys and "
                       "values both [n_keys] or both [n_queries, n_keys], n_keys > 0",
                       ShapeError);
  CHECK_THROWS_AS(model(Variable(zeros({3})), Variable(zeros({2, 4})), Variable(zeros({2, 4}))), ShapeError);
  CHECK_THROWS_AS(model(Variable(zeros({3, 1})), Variable(zeros({4})), Variable(zeros({4}))), ShapeError);
}

// ---- Module behaviour ----------------------------------------------------------------------

namespace {

struct Block : Module {
  std::shared_ptr<Linear> fc;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Dropout> drop;
  Block(Rng& rng) {
    fc = register_module("fc", std::make_shared<Linear>(3, 3, rng));
    norm = register_module("norm", std::make_shared<LayerNorm>(3));
    drop = register_module("drop", std::make_shared<Dropout>(0.5, Rng(rng.next_u64())));
  }
  Variable forward(const Variable& x) const { return drop->forward(norm->forward(fc->forward(x))); }
};

struct Net : Module {
  std::shared_ptr<Embedding> embed;
  std::vector<std::shared_ptr<Block>> layers;
  Variable scale;
  explicit Net(std::uint64_t seed) {
    Rng rng(seed);
    embed = register_module("embed", std::make_shared<Embedding>(5, 3, rng));
    for (int i = 0; i < 2; ++i)
      layers.push_back(register_module("layers." + std::to_string(i), std::make_shared<Block>(rng)));
    scale = register_buffer("scale", full({1}, 2));
  }
  Variable forward(const IndexArray& tokens) const {
    Variable h = embed->forward(tokens);
    for (const auto& layer : layers) h = layer->forward(h);
    return h;
  }
};

}  // namespace

TEST_CASE("Module: dotted names of nested modules, parameter_count, buffers") {
  const Net net(1);
  std::vector<std::string> names;
  for (const auto& [name, p] : net.named_parameters()) names.push_back(name);
  const std::vector<std::string> expected{
      "embed.weight",         "layers.0.fc.weight", "layers.0.fc.bias",     "layers.0.norm.weight",
      "layers.0.norm.bias",   "layers.1.fc.weight", "layers.1.fc.bias",     "layers.1.norm.weight",
      "layers.1.norm.bias"};
  CHECK(names == expected);
  CHECK(net.parameter_count() == 15 + 2 * (9 + 3 + 3 + 3));
  REQUIRE(net.named_buffers().size() == 1);
  CHECK(net.named_buffers()[0].first == "scale");
  CHECK(net.state_dict().size() == 10);
}

TEST_CASE("Module: train/eval reaches every submodule") {
  Net net(2);
  const IndexArray tokens = {{0, 1, 2, 3, 4, 1, 2, 3}};
  CHECK(net.layers[1]->drop->is_training());
  net.eval();
  CHECK_FALSE(net.is_training());
  CHECK_FALSE(net.layers[0]->is_training());
  CHECK_FALSE(net.layers[1]->drop->is_training());
  // In eval mode dropout is the identity: two passes agree.
  CHECK(max_abs_diff(net.forward(tokens).value(), net.forward(tokens).value()) == 0);
  net.train();
  CHECK(net.layers[1]->drop->is_training());
  CHECK(max_abs_diff(net.forward(tokens).value(), net.forward(tokens).value()) > 0);
}

TEST_CASE("Module: save then load into a differently initialised module gives the same state") {
  const auto path = std::filesystem::temp_directory_path() /
                    ("qkv_module_round_trip_" + std::to_string(::getpid()) + ".safetensors");
  Net saved(3), loaded(4);
  saved.scale.mutable_value() = full({1}, 7);
  CHECK(max_abs_diff(saved.embed->weight().value(), loaded.embed->weight().value()) > 0);
  saved.save(path.string(), {{"note", "round trip"}});
  CHECK(read_safetensors(path.string()).metadata.at("note") == "round trip");
  loaded.load(path.string());
  std::filesystem::remove(path);
  const auto a = saved.state_dict(), b = loaded.state_dict();
  REQUIRE(a.size() == b.size());
  for (const auto& entry : a) {
    const auto& name = entry.first;
    const auto& value = entry.second;
    INFO(name);
    CHECK(max_abs_diff(value, b.at(name)) == 0);
  }
  saved.eval();
  loaded.eval();
  const IndexArray tokens = {{4, 3, 2}};
  CHECK(max_abs_diff(saved.forward(tokens).value(), loaded.forward(tokens).value()) == 0);
}

TEST_CASE("Module: load_state_dict reports missing, unexpected and mis-shaped names at once") {
  Net net(5);
  auto state = Net(6).state_dict();
  state.erase("layers.1.fc.bias");
  state.erase("scale");
  state["layers.2.fc.weight"] = zeros({3, 3});
  state["layers.0.norm.weight"] = zeros({4});
  const Array before = net.embed->weight().value();
  const std::string message = error_of([&] { net.load_state_dict(state); });
  INFO(message);
  CHECK(contains(message, "load_state_dict"));
  CHECK(contains(message, "missing (2): layers.1.fc.bias; scale;"));
  CHECK(contains(message, "unexpected (1): layers.2.fc.weight;"));
  CHECK(contains(message, "mis-shaped (1): layers.0.norm.weight (expected [3], got [4]);"));
  // Nothing changed, not even the names that did fit.
  CHECK(max_abs_diff(net.embed->weight().value(), before) == 0);
  // A file's errors name the file.
  const auto path = std::filesystem::temp_directory_path() /
                    ("qkv_module_mismatch_" + std::to_string(::getpid()) + ".safetensors");
  Rng rng(7);
  Linear(3, 4, rng).save(path.string());
  const std::string file_message = error_of([&] { net.load(path.string()); });
  std::filesystem::remove(path);
  CHECK(contains(file_message, path.string() + ": load_state_dict"));
}

TEST_CASE("Module: a repeated name is refused") {
  struct Twice : Module {
    explicit Twice(int what) {
      register_parameter("weight", zeros({2}));
      if (what == 0) register_parameter("weight", zeros({3}));
      if (what == 1) register_buffer("weight", zeros({3}));
      if (what == 2) register_module("weight", std::make_shared<LayerNorm>(2));
      if (what == 3) register_parameter("bad.name", zeros({3}));
    }
  };
  CHECK_THROWS_WITH_AS(Twice(0), "Module: the name 'weight' is already registered in this module", Error);
  CHECK_THROWS_AS(Twice(1), Error);
  CHECK_THROWS_AS(Twice(2), Error);
  CHECK_THROWS_AS(Twice(3), Error);
}

TEST_CASE("Module random streams: saved and restored, a restored dropout draws the same masks") {
  Rng rng(3);
  auto make = [&] {
    auto outer = std::make_shared<Dropout>(real(0.5), Rng(rng.next_u64()));
    return outer;
  };
  auto first = make();
  const Variable x(full({4, 8}, 1));
  first->forward(x);  // advance the stream
  const auto saved = first->random_state();
  REQUIRE(saved.size() == 1);
  CHECK(saved.begin()->first == "dropout_rng");
  const Array expected = first->forward(x).value();
  auto second = make();  // a different stream until restored
  CHECK(max_abs_diff(second->forward(x).value(), expected) > 0);
  second->load_random_state(saved);
  CHECK(max_abs_diff(second->forward(x).value(), expected) == 0);
  CHECK_THROWS_WITH_AS(second->load_random_state({}), doctest::Contains("missing (1): dropout_rng;"), Error);
  CHECK_THROWS_WITH_AS(second->load_random_state({{"dropout_rng", "garbage"}}), doctest::Contains("not a saved generator state"), Error);
}

TEST_CASE("Module random streams: a stream that moved into a Dropout submodule loads under its old name") {
  // Before the Dropout module, DotProductAttention kept its stream as "dropout_rng"; it is now
  // "dropout.dropout_rng", and checkpoints written before must still resume the same masks.
  DotProductAttention original(ScoreScale{}, real(0.5), Rng(21));
  const auto saved = original.random_state();
  REQUIRE(saved.size() == 1);
  CHECK(saved.begin()->first == "dropout.dropout_rng");
  const Variable q(random_array({1, 3, 4}, 22)), k(random_array({1, 5, 4}, 23)), v(random_array({1, 5, 2}, 24));
  const Array expected = original.forward(q, k, v).output.value();

  DotProductAttention restored(ScoreScale{}, real(0.5), Rng(99));
  restored.load_random_state({{"dropout_rng", saved.begin()->second}});
  CHECK(max_abs_diff(restored.forward(q, k, v).output.value(), expected) == 0);
  // Given both, the current name wins and the legacy one is unexpected.
  CHECK_THROWS_WITH_AS(restored.load_random_state({{"dropout_rng", saved.begin()->second},
                                                   {"dropout.dropout_rng", saved.begin()->second}}),
                       doctest::Contains("unexpected (1): dropout_rng;"), Error);
}
