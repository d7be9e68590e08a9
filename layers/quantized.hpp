#pragma once
// Int8 inference for a trained model: its Linear-like weights replaced by per-channel
// symmetric int8 copies (lib/numerics/int8_gemm.hpp), activations quantized per row at run time,
// int8 x int8 -> int32 sums, dequantized with the product of the two scales, float bias added.
//
//   quantize_for_inference(model);          // once, after loading a checkpoint
//   { NoGradGuard no_grad; decode(model, ...); }
//
// What it converts (every instance found by walking the model's submodules): Linear (a
// transformer's out_proj, linear1 / linear2, the output projection; Bahdanau's bridge and
// output), MultiheadAttention's stacked in_proj_weight [3E, E], and AdditiveAttention's W_q and
// W_k. Embeddings, layer norms, GRU gates and biases stay float. A converted layer is inference
// only: with gradient recording on it throws Error (there is no backward through rounding); the
// float path and the int8 path are tested against each other in tests/test_int8.cpp.
#include <cstddef>
#include <memory>
#include <string>

#include "autograd/variable.hpp"
#include "lib/numerics/int8_gemm.hpp"

namespace qkv {

class Module;

struct Int8Options {
  /// Keep the float weights beside the int8 copies (the model still saves a full checkpoint,
  /// but the memory is not saved). False: each converted float weight is replaced by an empty
  /// [0, in] array — the model then decodes in int8 only and must not be saved.
  bool keep_float_weights = false;
};

/// What quantize_for_inference (or one layer's quantize_int8) converted.
struct Int8Report {
  std::size_t weights = 0;      // matrices converted
  std::size_t float_bytes = 0;  // bytes those matrices took in float (sizeof(real) each)
  std::size_t int8_bytes = 0;   // bytes their int8 values and scales take
  std::size_t other_bytes = 0;  // bytes of every parameter and buffer left in float (whole models only)
  Int8Report& operator+=(const Int8Report& other);
};

/// One layer weight [out, in] in int8, or none (the layer runs in float).
class Int8Weight {
 public:
  bool active() const { return matrix_ != nullptr; }
  /// Quantizes `weight` [out, in] row by row; with keep_float false its value is then released.
  /// Throws Error naming `what` for a weight that is not 2-D or not finite, or already converted.
  Int8Report quantize(Variable& weight, const std::string& what, const Int8Options& options);
  /// x [..., in] -> [..., row_end - row_begin] with rows [row_begin, row_end) of the weight and
  /// of `bias` (when defined). Throws Error naming `what` when gradient recording is on.
  Variable linear(const Variable& x, const Variable& bias, std::size_t row_begin, std::size_t row_end,
                  const char* what) const;
  /// All rows.
  Variable linear(const Variable& x, const Variable& bias, const char* what) const;
  const int8::QuantizedMatrix& matrix() const { return *matrix_; }

 private:
  std::shared_ptr<const int8::QuantizedMatrix> matrix_;
};

/// Converts every Linear, MultiheadAttention and AdditiveAttention inside `model` (itself
/// included) to int8 inference. Throws Error when the model holds none of them or was already
/// converted.
Int8Report quantize_for_inference(Module& model, const Int8Options& options = {});

}  // namespace qkv
