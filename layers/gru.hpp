#pragma once
// GRUCell and GRU with PyTorch's parameter names, layouts, gate order (r, z, n) and equations:
//   r  = σ(W_ir x + b_ir + W_hr h + b_hr)
//   z  = σ(W_iz x + b_iz + W_hz h + b_hz)
//   n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//   h' = (1 - z) ⊙ n + z ⊙ h
// so weights trained in either framework load into the other by name.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "layers/module.hpp"
#include "layers/normalization.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

struct GRUCellOptions {
  bool bias = true;
};

/// One step: x [B, I], h [B, H] -> h' [B, H]. Parameters weight_ih [3H, I], weight_hh [3H, H],
/// bias_ih [3H], bias_hh [3H], all drawn from U(-1/√H, 1/√H) as PyTorch does.
class GRUCell : public Module {
 public:
  GRUCell(std::size_t input_size, std::size_t hidden_size, Rng& rng, const GRUCellOptions& options = {});

  /// `h` undefined means zeros, as in PyTorch.
  Variable forward(const Variable& x, const Variable& h = {}) const;
  /// The step from the input half of the gates, W_ih x + b_ih, computed by the caller: a decoder
  /// whose input is partly known for every step up front (the target embeddings) projects that
  /// part for all steps in one gemm. This step's gates are rows [first_row, first_row + B) of
  /// `input_gates` [R, 3H], plus `extra_input_gates` [B, 3H] when defined (the part that is not
  /// known up front), read in place (gru_cell_rows). `h` [B, H] is required. `hidden_weight`,
  /// when given, is this cell's W_hh from prepare_hidden_weight(), made once for all the steps
  /// of a forward; without it each step's product reads W_hh transposed (cheaper for one step).
  Variable forward_gate_rows(const Variable& input_gates, std::size_t first_row, const Variable& extra_input_gates,
                             const Variable& h, const PreparedWeight* hidden_weight = nullptr) const;
  /// W_hh transposed once (ops.hpp): valid until the weight next changes.
  PreparedWeight prepare_hidden_weight() const;
  const Variable& weight_ih() const { return weight_ih_; }  // [3H, I]
  const Variable& bias_ih() const { return bias_ih_; }      // [3H], undefined without bias
  Variable operator()(const Variable& x, const Variable& h = {}) const { return forward(x, h); }

  std::size_t input_size() const { return input_size_; }
  std::size_t hidden_size() const { return hidden_size_; }
  /// "GRUCell(3, 4)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  std::size_t input_size_, hidden_size_;
  Variable weight_ih_, weight_hh_, bias_ih_, bias_hh_;
};

struct GRUOptions {
  std::size_t num_layers = 1;
  bool bias = true;
  /// Input and output [B, T, ·]. Note: PyTorch's default is false; qkv's batches are
  /// batch-first, so this default is true. With false they are [T, B, ·].
  bool batch_first = true;
  /// Dropout on the outputs of every layer but the last, in training mode.
  real dropout = 0;
  bool bidirectional = false;
};

struct GRUOutput {
  Variable output;  // [B, T, D·H] (batch_first) — zeros at padded steps
  Variable hidden;  // [L·D, B, H] — for each layer and direction, the state after the last valid step
};

/// A multi-layer, optionally bidirectional GRU. Parameters per layer l and direction, in
/// PyTorch's order and names: weight_ih_l{l}, weight_hh_l{l}, bias_ih_l{l}, bias_hh_l{l}, then
/// the same with the suffix `_reverse`.
class GRU : public Module {
 public:
  /// `rng` draws the initial weights and seeds the between-layer dropout.
  GRU(std::size_t input_size, std::size_t hidden_size, Rng& rng, const GRUOptions& options = {});

  /// Every sequence uses all T steps. `h0` [L·D, B, H] undefined means zeros.
  GRUOutput forward(const Variable& input, const Variable& h0 = {}) const;
  /// Sequence b is valid for its first valid_lens[b] steps (0 ≤ len ≤ T): padded steps neither
  /// change the state nor produce output (zeros), and the reverse direction starts at each
  /// sequence's last valid step — what PyTorch gives for a pack_padded_sequence input.
  GRUOutput forward(const Variable& input, const IndexArray& valid_lens, const Variable& h0 = {}) const;
  GRUOutput operator()(const Variable& input, const Variable& h0 = {}) const { return forward(input, h0); }
  GRUOutput operator()(const Variable& input, const IndexArray& valid_lens, const Variable& h0 = {}) const {
    return forward(input, valid_lens, h0);
  }

  std::size_t input_size() const { return input_size_; }
  std::size_t hidden_size() const { return hidden_size_; }
  const GRUOptions& options() const { return options_; }
  std::size_t num_directions() const { return options_.bidirectional ? 2 : 1; }
  /// "GRU(3, 4, num_layers=2, bidirectional)", the prefix of this layer's error messages.
  std::string describe() const;

 private:
  struct Weights {
    Variable weight_ih, weight_hh, bias_ih, bias_hh;
  };
  struct Extents {
    std::size_t batch, steps;
  };
  /// Throws unless `shape` is a valid input; returns its batch size and number of steps.
  Extents check_input(const Shape& shape) const;
  /// `lengths` (validated) null means every sequence uses all steps.
  GRUOutput run(const Variable& input, const std::vector<std::size_t>* lengths, const Variable& h0) const;

  std::size_t input_size_, hidden_size_;
  GRUOptions options_;
  std::vector<Weights> weights_;  // [layer * num_directions + direction]
  std::shared_ptr<Dropout> dropout_;  // null when options.dropout == 0
};

}  // namespace qkv
