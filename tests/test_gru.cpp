// GRUCell and GRU: PyTorch parity (packed variable lengths, 2 layers, bidirectional, given
// h0), gradcheck, and the packing semantics checked on their own terms.
#include "layers/gru.hpp"
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "support/helpers.hpp"
#include "support/layer_fixture.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// output and hidden flattened into one vector, so gradcheck covers both.
Variable flatten_both(const GRUOutput& out) {
  return concat({reshape(out.output, {-1}), reshape(out.hidden, {-1})}, 0);
}

/// Sequence b of a [B, T, ·] array, its first `steps` steps, as [1, steps, ·].
Array take(const Array& batch, std::size_t b, std::size_t steps) {
  Array one = xt::view(batch, xt::range(b, b + 1), xt::range(0, steps), xt::all());
  return one;
}

}  // namespace

TEST_CASE("GRUCell matches PyTorch: output and gradients") {
  const TensorFile fixture = load_fixture("layers_core");
  Rng rng(1);
  GRUCell cell(3, 4, rng);
  load_layer(cell, fixture, "gru_cell");
  Variable x(fixture.reals.at("gru_cell.input"), true);   // [2, 3]
  Variable h(fixture.reals.at("gru_cell.hidden"), true);  // [2, 4]
  Variable y = cell(x, h);
  check_close(y.value(), fixture, "gru_cell.output");
  y.backward(fixture.reals.at("gru_cell.projection"));
  check_parameter_grads(cell, fixture, "gru_cell");
  check_close(x.grad(), fixture, "gru_cell.grad.input");
  check_close(h.grad(), fixture, "gru_cell.grad.hidden");
}

TEST_CASE("GRUCell: forward_gate_rows over a prepared W_hh gives its values and gradients, another's is refused") {
  Rng rng(7);
  GRUCell cell(3, 4, rng), other(3, 4, rng);
  const Variable gates(random_array({6, 12}, 8)), extra(random_array({2, 12}, 9)), h(random_array({2, 4}, 10));
  const PreparedWeight prepared = cell.prepare_hidden_weight();
  CHECK(max_abs_diff(cell.forward_gate_rows(gates, 2, extra, h, &prepared).value(),
                     cell.forward_gate_rows(gates, 2, extra, h).value()) < 1e-14);
  QKV_CHECK_GRADIENTS(
      [&](const auto& x) {
        const PreparedWeight fresh = cell.prepare_hidden_weight();  // of the perturbed W_hh
        return cell.forward_gate_rows(x[0], 2, x[1], x[2], &fresh);
      },
      {Variable(random_array({6, 12}, 11)), Variable(random_array({2, 12}, 12)), Variable(random_array({2, 4}, 13))},
      cell.named_parameters());
  const PreparedWeight not_its_own = other.prepare_hidden_weight();
  CHECK_THROWS_WITH_AS(cell.forward_gate_rows(gates, 2, extra, h, &not_its_own),
                       "GRUCell(3, 4): the prepared hidden weight is not this cell's weight_hh: prepare it with "
                       "prepare_hidden_weight()",
                       Error);
}

TEST_CASE("GRUCell: names, initialisation, gradcheck, zero initial state") {
  Rng rng(2);
  GRUCell cell(3, 4, rng);
  std::vector<std::string> names;
  for (const auto& [name, p] : cell.named_parameters()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"weight_ih", "weight_hh", "bias_ih", "bias_hh"});
  CHECK(cell.parameter_count() == 12 * 3 + 12 * 4 + 12 + 12);
  for (const auto& [name, p] : cell.named_parameters()) CHECK(xt::amax(xt::abs(p.value()))() <= 0.5);  // 1/√4
  QKV_CHECK_GRADIENTS([&](const auto& x) { return cell(x[0], x[1]); },
                      {Variable(random_array({2, 3}, 3)), Variable(random_array({2, 4}, 4))}, cell.named_parameters());
  const Variable x(random_array({2, 3}, 5));
  CHECK(max_abs_diff(cell(x).value(), cell(x, Variable(zeros({2, 4}))).value()) == 0);
  GRUCell no_bias(3, 2, rng, {.bias = false});
  CHECK(no_bias.named_parameters().size() == 2);
  QKV_CHECK_GRADIENTS([&](const auto& v) { return no_bias(v[0]); }, {Variable(random_array({2, 3}, 6))},
                      no_bias.named_parameters());
}

TEST_CASE("GRU matches PyTorch: 2 layers, bidirectional, packed unequal lengths, given h0") {
  const TensorFile fixture = load_fixture("layers_core");
  Rng rng(7);
  GRU gru(3, 4, rng, {.num_layers = 2, .bidirectional = true});
  load_layer(gru, fixture, "gru");
  Variable x(fixture.reals.at("gru.input"), true);  // [3, 5, 3]
  Variable h0(fixture.reals.at("gru.h0"), true);    // [4, 3, 4]
  const IndexArray& lengths = fixture.integers.at("gru.valid_lens");  // {3, 5, 1}
  const GRUOutput out = gru(x, lengths, h0);
  REQUIRE(out.output.shape() == Shape{3, 5, 8});
  REQUIRE(out.hidden.shape() == Shape{4, 3, 4});
  check_close(out.output.value(), fixture, "gru.output");
  check_close(out.hidden.value(), fixture, "gru.hidden");
  Variable loss = sum(out.output * Variable(fixture.reals.at("gru.projection_output"))) +
                        sum(out.hidden * Variable(fixture.reals.at("gru.projection_hidden")));
  loss.backward();
  check_parameter_grads(gru, fixture, "gru");
  check_close(x.grad(), fixture, "gru.grad.input");
  check_close(h0.grad(), fixture, "gru.grad.h0");
}

TEST_CASE("GRU: PyTorch parameter names and order") {
  Rng rng(8);
  GRU gru(3, 4, rng, {.num_layers = 2, .bidirectional = true});
  std::vector<std::string> names;
  for (const auto& [name, p] : gru.named_parameters()) names.push_back(name);
  const std::vector<std::string> expected{
      "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
      "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1",
      "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse"};
  CHECK(names == expected);
  CHECK(gru.named_parameters()[8].second.shape() == Shape{12, 8});  // layer 1 reads both directions
  // Two directions of layer 0 (input 3) and of layer 1 (input 2·4), as torch.nn.GRU counts.
  CHECK(gru.parameter_count() == 2 * (12 * 3 + 12 * 4 + 24) + 2 * (12 * 8 + 12 * 4 + 24));
}

TEST_CASE("GRU gradcheck: bidirectional, 2 layers, unequal valid lengths, input/h0/parameters") {
  Rng rng(9);
  GRU gru(2, 3, rng, {.num_layers = 2, .bidirectional = true});
  const IndexArray lengths = {4, 2, 3};
  QKV_CHECK_GRADIENTS([&](const auto& v) { return flatten_both(gru(v[0], lengths, v[1])); },
                      {Variable(random_array({3, 4, 2}, 10)), Variable(random_array({4, 3, 3}, 11))},
                      gru.named_parameters());
  // Zero initial state, all steps valid, one direction.
  GRU simple(2, 3, rng);
  QKV_CHECK_GRADIENTS([&](const auto& v) { return flatten_both(simple(v[0])); },
                      {Variable(random_array({2, 3, 2}, 12))}, simple.named_parameters());
}

TEST_CASE("GRU packing: each sequence gives what it gives alone, whatever its padding holds") {
  Rng rng(13);
  GRU gru(3, 4, rng, {.num_layers = 2, .bidirectional = true});
  const std::size_t T = 6;
  const IndexArray lengths = {6, 2, 4, 1};
  Array x = random_array({4, T, 3}, 14);
  const GRUOutput batched = gru(Variable(x), lengths);
  // Garbage in the padding changes nothing.
  Array noisy = x;
  for (std::size_t b = 0; b < 4; ++b)
    for (std::size_t t = std::size_t(lengths(b)); t < T; ++t)
      for (std::size_t i = 0; i < 3; ++i) noisy(b, t, i) = 100 + real(t);
  const GRUOutput with_noise = gru(Variable(noisy), lengths);
  CHECK(max_abs_diff(batched.output.value(), with_noise.output.value()) == 0);
  CHECK(max_abs_diff(batched.hidden.value(), with_noise.hidden.value()) == 0);
  for (std::size_t b = 0; b < 4; ++b) {
    const std::size_t length = std::size_t(lengths(b));
    INFO("sequence " << b << " of length " << length);
    const GRUOutput alone = gru(Variable(take(x, b, length)));  // [1, len, 8], [4, 1, 4]
    const Array valid = take(batched.output.value(), b, length);
    CHECK(max_abs_diff(valid, alone.output.value()) < 1e-12);
    const Array hidden = xt::view(batched.hidden.value(), xt::all(), xt::range(b, b + 1), xt::all());
    CHECK(max_abs_diff(hidden, alone.hidden.value()) < 1e-12);
    // Padded steps are zeros.
    for (std::size_t t = length; t < T; ++t)
      CHECK(xt::amax(xt::abs(xt::view(batched.output.value(), b, t, xt::all())))() == 0);
  }
  // All lengths equal to T is the same as no lengths.
  const GRUOutput full_lengths = gru(Variable(x), IndexArray{6, 6, 6, 6});
  const GRUOutput no_lengths = gru(Variable(x));
  CHECK(max_abs_diff(full_lengths.output.value(), no_lengths.output.value()) == 0);
  CHECK(max_abs_diff(full_lengths.hidden.value(), no_lengths.hidden.value()) == 0);
}

TEST_CASE("GRU: one layer, one direction is GRUCell unrolled, time-major layout agrees") {
  Rng rng(15);
  GRU gru(3, 4, rng);
  GRUCell cell(3, 4, rng);
  std::map<std::string, Array> state;
  for (const auto& [name, p] : gru.named_parameters()) state[name.substr(0, name.size() - 3)] = p.value();
  cell.load_state_dict(state);  // weight_ih_l0 -> weight_ih, ...
  const Array x = random_array({2, 5, 3}, 16);
  const Variable h0(random_array({1, 2, 4}, 17));
  const GRUOutput out = gru(Variable(x), h0);
  Variable h(xt::eval(xt::view(h0.value(), 0, xt::all(), xt::all())));
  for (std::size_t t = 0; t < 5; ++t) {
    h = cell(Variable(xt::eval(xt::view(x, xt::all(), t, xt::all()))), h);
    CHECK(max_abs_diff(xt::eval(xt::view(out.output.value(), xt::all(), t, xt::all())), h.value()) < 1e-12);
  }
  CHECK(max_abs_diff(xt::eval(xt::view(out.hidden.value(), 0, xt::all(), xt::all())), h.value()) < 1e-12);

  GRU time_major(3, 4, rng, {.batch_first = false});
  time_major.load_state_dict(gru.state_dict());
  const Array x_tm = xt::transpose(x, std::vector<std::size_t>{1, 0, 2});  // [T, B, I]
  const GRUOutput out_tm = time_major(Variable(x_tm), IndexArray{5, 3}, h0);
  const GRUOutput out_bf = gru(Variable(x), IndexArray{5, 3}, h0);
  const Array output_tm = xt::transpose(out_tm.output.value(), std::vector<std::size_t>{1, 0, 2});  // [B, T, H]
  CHECK(max_abs_diff(output_tm, out_bf.output.value()) == 0);
  CHECK(max_abs_diff(out_tm.hidden.value(), out_bf.hidden.value()) == 0);
}

TEST_CASE("GRU: dropout between layers only in training mode") {
  Rng rng(18);
  GRU with_dropout(3, 4, rng, {.num_layers = 2, .dropout = 0.5});
  GRU without(3, 4, rng, {.num_layers = 2});
  without.load_state_dict(with_dropout.state_dict());
  const Variable x(random_array({2, 5, 3}, 19));
  CHECK(max_abs_diff(with_dropout(x).output.value(), without(x).output.value()) > 1e-3);
  with_dropout.eval();
  CHECK(max_abs_diff(with_dropout(x).output.value(), without(x).output.value()) == 0);
}

TEST_CASE("GRU and GRUCell: bad configuration and bad shapes name the layer and the shapes") {
  Rng rng(20);
  CHECK_THROWS_WITH_AS(GRU(3, 4, rng, {.num_layers = 0}),
                       "GRU: input_size, hidden_size and num_layers must be positive, got 3, 4 and 0", Error);
  CHECK_THROWS_WITH_AS(GRU(3, 4, rng, {.dropout = 1.5}), "GRU(3, 4, num_layers=1): dropout must be in [0, 1), got 1.5",
                       Error);
  CHECK_THROWS_AS(GRUCell(0, 4, rng), Error);
  GRU gru(3, 4, rng, {.num_layers = 2, .bidirectional = true});
  CHECK_THROWS_WITH_AS(gru(Variable(zeros({2, 5, 2}))),
                       "GRU(3, 4, num_layers=2, bidirectional): input [2, 5, 2] must be [batch, time, 3] with batch "
                       "and time > 0",
                       ShapeError);
  CHECK_THROWS_AS(gru(Variable(zeros({5, 3}))), ShapeError);
  CHECK_THROWS_AS(gru(Variable(zeros({2, 0, 3}))), ShapeError);
  CHECK_THROWS_WITH_AS(gru(Variable(zeros({2, 5, 3})), IndexArray{5, 3, 1}),
                       "GRU(3, 4, num_layers=2, bidirectional): valid_lens [3] must be [2] for input [2, 5, 3]",
                       ShapeError);
  CHECK_THROWS_WITH_AS(gru(Variable(zeros({2, 5, 3})), IndexArray{5, 6}),
                       "GRU(3, 4, num_layers=2, bidirectional): valid_lens[1] = 6 is outside [0, 5] for input [2, 5, 3]",
                       Error);
  CHECK_THROWS_WITH_AS(gru(Variable(zeros({2, 5, 3})), Variable(zeros({2, 2, 4}))),
                       "GRU(3, 4, num_layers=2, bidirectional): h0 [2, 2, 4] must be [4, 2, 4] for input [2, 5, 3]",
                       ShapeError);
  GRUCell cell(3, 4, rng);
  CHECK_THROWS_WITH_AS(cell(Variable(zeros({2, 4}))), "GRUCell(3, 4): input [2, 4] must be [batch, 3]", ShapeError);
  CHECK_THROWS_WITH_AS(cell(Variable(zeros({2, 3})), Variable(zeros({3, 4}))),
                       "GRUCell(3, 4): hidden state [3, 4] must be [2, 4] for input [2, 3]", ShapeError);
}
