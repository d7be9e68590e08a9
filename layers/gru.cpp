#include "layers/gru.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"

namespace qkv {

namespace {

/// One GRU step given the input half of the gates, `input_gates` = W_ih x + b_ih [B, 3H].
/// Only the hidden half is computed here, so a GRU can project all time steps' inputs at once.
Variable gru_step(const Variable& input_gates, const Variable& h, const Variable& weight_hh,
                  const Variable& bias_hh) {
  const Variable hidden_gates = linear(h, weight_hh, bias_hh);  // [B, 3H]
  // The gate equations (see gru.hpp) as one fused op: a GRU runs them once per time step.
  return gru_cell(input_gates, hidden_gates, h);  // [B, H]
}

/// gru_step with the input gates read in place: rows [first_row, first_row + B) of
/// `input_gates` [R, 3H] plus `extra_input_gates` [B, 3H] if defined. With `prepared`, W_hh
/// comes transposed once for every step that applies it.
Variable gru_step_rows(const Variable& input_gates, std::size_t first_row, const Variable& extra_input_gates,
                       const Variable& h, const Variable& weight_hh, const PreparedWeight* prepared,
                       const Variable& bias_hh) {
  const Variable hidden_gates = prepared ? linear(h, *prepared, bias_hh) : linear(h, weight_hh, bias_hh);  // [B, 3H]
  return gru_cell_rows(input_gates, first_row, extra_input_gates, hidden_gates, h);  // [B, H]
}

Array init_uniform(const Shape& shape, std::size_t hidden, Rng& rng) {
  const real bound = real(1) / std::sqrt(real(hidden));
  return uniform(shape, -bound, bound, rng);
}

}  // namespace

// ---- GRUCell ------------------------------------------------------------------------------

GRUCell::GRUCell(std::size_t input_size, std::size_t hidden_size, Rng& rng, const GRUCellOptions& options)
    : input_size_(input_size), hidden_size_(hidden_size) {
  check_arg(input_size > 0 && hidden_size > 0, "GRUCell",
            "input_size and hidden_size must be positive, got " + std::to_string(input_size) + " and " +
                std::to_string(hidden_size));
  const std::size_t gates = 3 * hidden_size;
  weight_ih_ = register_parameter("weight_ih", init_uniform({gates, input_size}, hidden_size, rng));
  weight_hh_ = register_parameter("weight_hh", init_uniform({gates, hidden_size}, hidden_size, rng));
  if (options.bias) {
    bias_ih_ = register_parameter("bias_ih", init_uniform({gates}, hidden_size, rng));
    bias_hh_ = register_parameter("bias_hh", init_uniform({gates}, hidden_size, rng));
  }
}

std::string GRUCell::describe() const {
  return "GRUCell(" + std::to_string(input_size_) + ", " + std::to_string(hidden_size_) + ")";
}

Variable GRUCell::forward(const Variable& x, const Variable& h) const {
  const Shape sx = x.shape();
  check_shape(sx.size() == 2 && sx[1] == input_size_, describe().c_str(),
              "input " + to_string(sx) + " must be [batch, " + std::to_string(input_size_) + "]");
  const Shape expected_h{sx[0], hidden_size_};
  if (h.defined())
    check_shape(h.shape() == expected_h, describe().c_str(),
                "hidden state " + to_string(h.shape()) + " must be " + to_string(expected_h) + " for input " +
                    to_string(sx));
  const Variable state = h.defined() ? h : Variable(zeros(expected_h));
  return gru_step(linear(x, weight_ih_, bias_ih_), state, weight_hh_, bias_hh_);
}

PreparedWeight GRUCell::prepare_hidden_weight() const { return prepare_weight(weight_hh_); }

Variable GRUCell::forward_gate_rows(const Variable& input_gates, std::size_t first_row,
                                    const Variable& extra_input_gates, const Variable& h,
                                    const PreparedWeight* hidden_weight) const {
  const Shape sg = input_gates.shape();
  const bool fits = sg.size() == 2 && sg[1] == 3 * hidden_size_ && h.defined() && h.rank() == 2 &&
                    h.dim(1) == hidden_size_ && first_row + h.dim(0) <= sg[0];
  if (!fits)
    check_shape(false, describe().c_str(), [&] {
      return "input gates " + to_string(sg) + " must be [rows, " + std::to_string(3 * hidden_size_) +
             "] holding rows [" + std::to_string(first_row) + ", " + std::to_string(first_row) +
             " + batch) and the hidden state [batch, " + std::to_string(hidden_size_) + "], got " +
             (h.defined() ? to_string(h.shape()) : std::string("none"));
    });
  check_arg(!hidden_weight || hidden_weight->weight.id() == weight_hh_.id(), describe().c_str(),
            "the prepared hidden weight is not this cell's weight_hh: prepare it with prepare_hidden_weight()");
  return gru_step_rows(input_gates, first_row, extra_input_gates, h, weight_hh_, hidden_weight, bias_hh_);
}

// ---- GRU ----------------------------------------------------------------------------------

GRU::GRU(std::size_t input_size, std::size_t hidden_size, Rng& rng, const GRUOptions& options)
    : input_size_(input_size), hidden_size_(hidden_size), options_(options) {
  check_arg(input_size > 0 && hidden_size > 0 && options.num_layers > 0, "GRU",
            "input_size, hidden_size and num_layers must be positive, got " + std::to_string(input_size) + ", " +
                std::to_string(hidden_size) + " and " + std::to_string(options.num_layers));
  check_range(describe(), "dropout", options.dropout, 0, 1);
  const std::size_t gates = 3 * hidden_size;
  for (std::size_t layer = 0; layer < options.num_layers; ++layer) {
    const std::size_t layer_input = layer == 0 ? input_size : hidden_size * num_directions();
    for (std::size_t direction = 0; direction < num_directions(); ++direction) {
      const std::string suffix = "_l" + std::to_string(layer) + (direction == 1 ? "_reverse" : "");
      Weights w;
      w.weight_ih = register_parameter("weight_ih" + suffix, init_uniform({gates, layer_input}, hidden_size, rng));
      w.weight_hh = register_parameter("weight_hh" + suffix, init_uniform({gates, hidden_size}, hidden_size, rng));
      if (options.bias) {
        w.bias_ih = register_parameter("bias_ih" + suffix, init_uniform({gates}, hidden_size, rng));
        w.bias_hh = register_parameter("bias_hh" + suffix, init_uniform({gates}, hidden_size, rng));
      }
      weights_.push_back(std::move(w));
    }
  }
  if (options.dropout > 0)
    dropout_ = register_module("dropout", std::make_shared<Dropout>(options.dropout, Rng(rng.next_u64())));
}

std::string GRU::describe() const {
  return "GRU(" + std::to_string(input_size_) + ", " + std::to_string(hidden_size_) +
         ", num_layers=" + std::to_string(options_.num_layers) + (options_.bidirectional ? ", bidirectional" : "") +
         ")";
}

GRU::Extents GRU::check_input(const Shape& shape) const {
  const std::string layout = options_.batch_first ? "[batch, time, " : "[time, batch, ";
  check_shape(shape.size() == 3 && shape[2] == input_size_ && shape[0] > 0 && shape[1] > 0, describe().c_str(),
              "input " + to_string(shape) + " must be " + layout + std::to_string(input_size_) +
                  "] with batch and time > 0");
  return options_.batch_first ? Extents{shape[0], shape[1]} : Extents{shape[1], shape[0]};
}

GRUOutput GRU::forward(const Variable& input, const Variable& h0) const { return run(input, nullptr, h0); }

GRUOutput GRU::forward(const Variable& input, const IndexArray& valid_lens, const Variable& h0) const {
  const Shape shape = input.shape();
  const auto [batch, steps] = check_input(shape);
  const Shape lens_shape = shape_of(valid_lens);
  check_shape(lens_shape == Shape{batch}, describe().c_str(),
              "valid_lens " + to_string(lens_shape) + " must be [" + std::to_string(batch) + "] for input " +
                  to_string(shape));
  std::vector<std::size_t> lengths(batch);
  for (std::size_t b = 0; b < batch; ++b) {
    const std::int64_t length = valid_lens(b);
    check_arg(length >= 0 && static_cast<std::size_t>(length) <= steps, describe().c_str(),
              "valid_lens[" + std::to_string(b) + "] = " + std::to_string(length) + " is outside [0, " +
                  std::to_string(steps) + "] for input " + to_string(shape));
    lengths[b] = static_cast<std::size_t>(length);
  }
  return run(input, &lengths, h0);
}

GRUOutput GRU::run(const Variable& input, const std::vector<std::size_t>* lengths, const Variable& h0) const {
  const Shape shape = input.shape();
  const auto [batch, steps] = check_input(shape);
  const std::size_t hidden = hidden_size_, directions = num_directions(), layers = options_.num_layers;
  const Shape hidden_shape{layers * directions, batch, hidden};
  if (h0.defined())
    check_shape(h0.shape() == hidden_shape, describe().c_str(),
                "h0 " + to_string(h0.shape()) + " must be " + to_string(hidden_shape) + " for input " + to_string(shape));

  // Step t keeps sequence b's new state where t < length[b] ([B, 1], broadcast over H); when
  // every sequence is valid at t the masking is skipped.
  std::vector<BoolArray> keep(steps), padded(steps);
  std::vector<bool> all_valid(steps, true);
  if (lengths)
    for (std::size_t t = 0; t < steps; ++t) {
      keep[t] = BoolArray::from_shape({batch, 1});
      padded[t] = BoolArray::from_shape({batch, 1});
      for (std::size_t b = 0; b < batch; ++b) {
        keep[t](b, 0) = t < (*lengths)[b];
        padded[t](b, 0) = !keep[t](b, 0);
        if (!keep[t](b, 0)) all_valid[t] = false;
      }
    }

  // Time-major inside, so each step's slice is one contiguous block.
  Variable layer_input = options_.batch_first ? transpose(input, 0, 1) : input;  // [T, B, I]
  std::vector<Variable> finals;                                                   // L·D x [B, H]
  for (std::size_t layer = 0; layer < layers; ++layer) {
    std::vector<Variable> direction_outputs;
    const Variable flat_input = reshape(layer_input, {static_cast<long>(steps * batch), -1});  // [T·B, I]
    for (std::size_t direction = 0; direction < directions; ++direction) {
      const std::size_t index = layer * directions + direction;
      const Weights& w = weights_[index];
      // All steps' input projections in one gemm, flat so that a step's [B, 3H] block is one
      // slice with no squeeze (and its copy) after it: [T·B, I] -> [T·B, 3H].
      const Variable input_gates = linear(flat_input, w.weight_ih, w.bias_ih);
      Variable h = h0.defined() ? squeeze(slice(h0, 0, index, index + 1), 0)
                                : Variable(zeros({batch, hidden}));  // [B, H]
      const PreparedWeight weight_hh = prepare_weight(w.weight_hh);  // transposed once for every step
      std::vector<Variable> outputs(steps);
      for (std::size_t s = 0; s < steps; ++s) {
        const std::size_t t = direction == 0 ? s : steps - 1 - s;
        // Step t's input gates are rows [t·B, (t + 1)·B) of input_gates, read in place.
        const Variable next = gru_step_rows(input_gates, t * batch, Variable(), h, w.weight_hh, &weight_hh, w.bias_hh);  // [B, H]
        if (all_valid[t]) {
          h = next;
          outputs[t] = h;
        } else {
          // Padded sequences keep their state, so the reverse direction starts from h0 at
          // each sequence's own last valid step. (qkv:: because argument lookup on
          // BoolArray would also find xt::where.)
          h = qkv::where(keep[t], next, h);
          outputs[t] = qkv::masked_fill(h, padded[t], 0);
        }
      }
      direction_outputs.push_back(stack(outputs, 0));  // [T, B, H]
      finals.push_back(h);
    }
    layer_input = directions == 1 ? direction_outputs[0] : concat(direction_outputs, 2);  // [T, B, D·H]
    if (dropout_ && layer + 1 < layers) layer_input = dropout_->forward(layer_input, /*batch_axis=*/1);  // [T, B, D·H]
  }
  GRUOutput result;
  result.output = options_.batch_first ? transpose(layer_input, 0, 1) : layer_input;  // [B, T, D·H]
  result.hidden = stack(finals, 0);                                                    // [L·D, B, H]
  return result;
}

}  // namespace qkv
