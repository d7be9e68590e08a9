// Int8 inference (lib/numerics/int8_gemm.hpp, layers/quantized.hpp): the quantization's round
// trip within half a scale, the int8 gemm against a naive integer reference (exactly, at 1 and 2
// threads), the int8 linear within the bound its rounding allows, each converted layer against
// its float self, whole models' decoding, and the errors. The int8 path has no backward (it is
// inference only), so instead of a gradient check it is tested against the float path.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <xtensor/xview.hpp>

#include "layers/attention.hpp"
#include "layers/linear.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/normalization.hpp"
#include "layers/quantized.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/int8_gemm.hpp"
#include "lib/numerics/parallel.hpp"
#include "models/decoding.hpp"
#include "support/helpers.hpp"
#include "support/tiny_models.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// Int8 values in [-128, 127] from a seed (the kernel must be exact for all of them, -128 too).
std::vector<std::int8_t> random_int8(std::size_t count, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int8_t> out(count);
  for (auto& v : out) v = static_cast<std::int8_t>(static_cast<int>(rng.next_u64() % 256) - 128);
  return out;
}

/// The bound of lib/numerics/int8_gemm.hpp for y = x Wᵀ [m, n]: (s_w[j]/2)·‖x_i‖₁ + (s_x[i]/2)·‖ŵ_j‖₁,
/// plus a float-rounding allowance.
Array int8_error_bound(const Array& x, const int8::QuantizedMatrix& w) {
  const std::size_t k = w.cols, m = x.size() / k;
  const Array dequantized = int8::dequantize(w);
  Array bound = Array::from_shape({m, w.rows});
  std::vector<std::int8_t> scratch(k);
  for (std::size_t i = 0; i < m; ++i) {
    const real* xi = x.data() + i * k;
    const double sx = int8::quantize_row(xi, k, scratch.data(), "bound");
    double x_l1 = 0;
    for (std::size_t p = 0; p < k; ++p) x_l1 += std::abs(double(xi[p]));
    for (std::size_t j = 0; j < w.rows; ++j) {
      double w_l1 = 0;
      for (std::size_t p = 0; p < k; ++p) w_l1 += std::abs(double(dequantized(j, p)));
      bound(i, j) = 0.5 * w.scales[j] * x_l1 + 0.5 * sx * w_l1 + 1e-5 * (x_l1 * w.scales[j] * 127 + 1e-6);
    }
  }
  return bound;
}

/// Every |a - b| within `bound` (all [m, n]).
void check_within(const Array& a, const Array& b, const Array& bound) {
  REQUIRE(a.size() == b.size());
  REQUIRE(a.size() == bound.size());
  std::size_t outside = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double error = std::abs(double(a.data()[i]) - double(b.data()[i]));
    worst_ratio = std::max(worst_ratio, error / double(bound.data()[i]));
    if (error > bound.data()[i]) ++outside;
  }
  INFO("worst error / bound = " << worst_ratio);
  CHECK(outside == 0);
}

}  // namespace

TEST_CASE("int8: quantize_rows round-trips within half a scale, uses ±127 and keeps zero rows zero") {
  Array w = random_array({7, 33}, 1, 0.4);
  xt::view(w, 3, xt::all()) = 0;  // an all-zero channel
  w(5, 2) = -3;                   // one large value: that row's scale follows it
  const int8::QuantizedMatrix q = int8::quantize_rows(w, "test");
  REQUIRE(q.rows == 7);
  REQUIRE(q.cols == 33);
  CHECK(q.bytes() == 7 * 33 + 7 * sizeof(float) + 7 * sizeof(std::int32_t));
  CHECK(q.scales[3] == 0);
  CHECK(q.scales[5] == doctest::Approx(3.0 / 127).epsilon(1e-6));
  const Array back = int8::dequantize(q);
  for (std::size_t r = 0; r < 7; ++r) {
    int largest = 0;
    for (std::size_t c = 0; c < 33; ++c) {
      const int v = q.values[r * 33 + c];
      CHECK(v >= -127);
      CHECK(v <= 127);
      largest = std::max(largest, std::abs(v));
      CHECK(std::abs(back(r, c) - w(r, c)) <= 0.5 * q.scales[r] * (1 + 1e-6) + 1e-12);
    }
    CHECK(largest == (r == 3 ? 0 : 127));
  }
  CHECK(q.values[5 * 33 + 2] == -127);
}

TEST_CASE("int8: gemm_s8s8s32 equals a naive integer product exactly, at 1 and 2 threads") {
  for (const std::size_t m : {1, 3, 4, 5, 9})
    for (const std::size_t n : {1, 7, 33})
      for (const std::size_t k : {1, 15, 16, 17, 64, 130}) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        const std::vector<std::int8_t> a = random_int8(m * k, 10 + m + 100 * k);
        const std::vector<std::int8_t> b = random_int8(n * k, 20 + n + 100 * k);
        std::vector<std::int32_t> expected(m * n);
        for (std::size_t i = 0; i < m; ++i)
          for (std::size_t j = 0; j < n; ++j) {
            std::int64_t sum = 0;
            for (std::size_t p = 0; p < k; ++p) sum += std::int64_t(a[i * k + p]) * std::int64_t(b[j * k + p]);
            expected[i * n + j] = static_cast<std::int32_t>(sum);
          }
        std::vector<int8::Int8Kernel> kernels{int8::Int8Kernel::automatic, int8::Int8Kernel::portable};
        if (int8::vnni_available()) kernels.push_back(int8::Int8Kernel::vnni);
        for (const int8::Int8Kernel kernel : kernels)
          for (const int threads : {1, 2}) {
            CAPTURE(int(kernel));
            CAPTURE(threads);
            parallel::set_num_threads(threads);
            std::vector<std::int32_t> c(m * n, -1);
            int8::gemm_s8s8s32(a.data(), b.data(), nullptr, c.data(), m, n, k, kernel);
            CHECK(c == expected);
          }
        parallel::set_num_threads(1);
      }
  // Extremes: every product (-128)·(-128), summed over a long row, still exact in int32.
  const std::size_t k = 4096;
  const std::vector<std::int8_t> low(k, std::int8_t{-128});
  for (const int8::Int8Kernel kernel : {int8::Int8Kernel::automatic, int8::Int8Kernel::portable}) {
    std::int32_t c = 0;
    int8::gemm_s8s8s32(low.data(), low.data(), nullptr, &c, 1, 1, k, kernel);
    CHECK(c == 4096 * 16384);
  }
  if (!int8::vnni_available()) {
    std::int32_t c = 0;
    CHECK_THROWS_AS(int8::gemm_s8s8s32(low.data(), low.data(), nullptr, &c, 1, 1, k, int8::Int8Kernel::vnni), Error);
  } else {
    MESSAGE("this CPU runs the AVX-512 VNNI int8 kernel; it was compared with the portable one above");
  }
}

TEST_CASE("int8: the int8 linear stays within the bound its rounding allows, with a bias and a row block") {
  const Array x = random_array({2, 5, 48}, 3);       // [B, T, in]
  const Array w = random_array({20, 48}, 4, 0.2);   // [out, in]
  const Array bias = random_array({20}, 5);
  const int8::QuantizedMatrix q = int8::quantize_rows(w, "test");
  const Array y = int8::linear(x, q, 0, 20, bias.data(), "test");  // [2, 5, 20]
  REQUIRE(shape_of(y) == Shape{2, 5, 20});
  Array exact = Array::from_shape({10, 20});
  for (std::size_t i = 0; i < 10; ++i)
    for (std::size_t j = 0; j < 20; ++j) {
      double sum = bias(j);
      for (std::size_t p = 0; p < 48; ++p) sum += x.data()[i * 48 + p] * w(j, p);
      exact(i, j) = sum;
    }
  check_within(y, exact, int8_error_bound(x, q));
  // The error is a rounding error, not a different function: well below the outputs' size.
  CHECK(max_abs_diff(Array(xt::reshape_view(y, {10, 20})), exact) < 0.05 * xt::amax(xt::abs(exact))());

  // Rows 8..14 of the same matrix: what MultiheadAttention's q / k / v blocks use.
  const Array block = int8::linear(x, q, 8, 14, bias.data(), "test");  // [2, 5, 6]
  REQUIRE(shape_of(block) == Shape{2, 5, 6});
  CHECK(max_abs_diff(block, Array(xt::view(y, xt::all(), xt::all(), xt::range(8, 14)))) == 0);
}

TEST_CASE("int8: a converted Linear matches its float self, refuses gradients and releases its weight") {
  Rng rng(6);
  Linear layer(24, 10, rng);
  const Array x = random_array({3, 24}, 7);
  Variable float_out;
  {
    NoGradGuard no_grad;
    float_out = layer(Variable(x));
  }
  const int8::QuantizedMatrix expected_q = int8::quantize_rows(layer.weight().value(), "test");
  const Int8Report report = layer.quantize_int8();
  CHECK(report.weights == 1);
  CHECK(report.float_bytes == 240 * sizeof(real));
  CHECK(report.int8_bytes == 240 + 10 * sizeof(float) + 10 * sizeof(std::int32_t));
  CHECK(layer.is_int8());
  CHECK(layer.weight().shape() == Shape{0, 24});  // released
  NoGradGuard no_grad;
  const Variable int8_out = layer(Variable(x));
  const Array zero_bias = xt::zeros<real>({3, 10});
  check_within(int8_out.value(), Array(float_out.value() - zero_bias), int8_error_bound(x, expected_q));
  CHECK(max_abs_diff(int8_out.value(), float_out.value()) > 0);  // it really ran in int8
}

TEST_CASE("int8: gradient recording on a converted layer is an Error naming the layer") {
  Rng rng(8);
  Linear layer(4, 3, rng);
  layer.quantize_int8({.keep_float_weights = true});
  CHECK(layer.weight().shape() == Shape{3, 4});  // kept
  try {
    layer(Variable(random_array({2, 4}, 9), true));
    FAIL("expected Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("Linear (int8)") != std::string::npos);
    CHECK(std::string(e.what()).find("no gradients") != std::string::npos);
  }
  CHECK_THROWS_AS(layer.quantize_int8(), Error);  // twice
}

TEST_CASE("int8: bad inputs are clear errors") {
  Array w = random_array({3, 4}, 10);
  w(1, 2) = std::numeric_limits<real>::quiet_NaN();
  CHECK_THROWS_WITH_AS(int8::quantize_rows(w, "Linear(4 -> 3)"), doctest::Contains("Linear(4 -> 3)"), Error);
  w(1, 2) = std::numeric_limits<real>::infinity();
  CHECK_THROWS_AS(int8::quantize_rows(w, "test"), Error);
  CHECK_THROWS_AS(int8::quantize_rows(random_array({2, 3, 4}, 11), "test"), ShapeError);
  const int8::QuantizedMatrix q = int8::quantize_rows(random_array({3, 4}, 12), "test");
  CHECK_THROWS_WITH_AS(int8::linear(random_array({2, 5}, 13), q, 0, 3, nullptr, "Linear(4 -> 3)"),
                       doctest::Contains("must end in 4"), ShapeError);
  CHECK_THROWS_AS(int8::linear(random_array({2, 4}, 13), q, 2, 4, nullptr, "test"), ShapeError);
  // A NaN activation reaches the int8 path as an Error, not as garbage integers.
  Array x = random_array({2, 4}, 14);
  x(0, 0) = std::numeric_limits<real>::quiet_NaN();
  CHECK_THROWS_AS(int8::linear(x, q, 0, 3, nullptr, "test"), Error);
  // A model without anything to convert.
  LayerNorm norm(4);
  CHECK_THROWS_WITH_AS(quantize_for_inference(norm), doctest::Contains("no Linear"), Error);
}

TEST_CASE("int8: MultiheadAttention in int8 follows the float layer on self-, cross- and cached attention") {
  Rng rng(15);
  MultiheadAttention float_attention(16, 4, rng);
  Rng same(15);
  MultiheadAttention int8_attention(16, 4, same);
  for (auto& [name, p] : int8_attention.named_parameters())
    if (name.ends_with("bias")) p.mutable_value() = random_array(p.shape(), 16, 0.3);
  for (auto& [name, p] : float_attention.named_parameters())
    if (name.ends_with("bias")) p.mutable_value() = random_array(p.shape(), 16, 0.3);
  const Int8Report report = quantize_for_inference(int8_attention);
  CHECK(report.weights == 2);  // in_proj_weight and out_proj.weight
  CHECK(report.float_bytes == (3 * 256 + 256) * sizeof(real));
  CHECK(report.other_bytes == (3 * 16 + 16) * sizeof(real));  // the two biases
  NoGradGuard no_grad;
  const Variable x(random_array({2, 5, 16}, 17)), memory(random_array({2, 3, 16}, 18));
  const double scale = xt::amax(xt::abs(float_attention.forward(x, {.causal = true}).output.value()))();
  CHECK(max_abs_diff(int8_attention.forward(x, {.causal = true}).output.value(),
                     float_attention.forward(x, {.causal = true}).output.value()) < 0.03 * scale);
  CHECK(max_abs_diff(int8_attention.attend_to_memory(x, int8_attention.project_memory(memory)).output.value(),
                     float_attention.attend_to_memory(x, float_attention.project_memory(memory)).output.value()) <
        0.03 * scale);
  // Step by step through a KV cache, int8 equals its own full causal pass (same rows, same ints).
  KVCache cache;
  const Array full = int8_attention.forward(x, {.causal = true}).output.value();
  for (std::size_t t = 0; t < 5; ++t) {
    const Variable step(Array(xt::view(x.value(), xt::all(), xt::range(t, t + 1), xt::all())));
    const Array out = int8_attention.forward(step, {.causal = true}, &cache).output.value();
    CHECK(max_abs_diff(out, Array(xt::view(full, xt::all(), xt::range(t, t + 1), xt::all()))) < 1e-12);
  }
}

TEST_CASE("int8: named_modules lists the model and every submodule, parents first") {
  Rng rng(19);
  MultiheadAttention attention(8, 2, rng);
  const auto modules = attention.named_modules();
  std::vector<std::string> names;
  for (const auto& entry : modules) names.push_back(entry.first);
  CHECK(names == std::vector<std::string>{"", "out_proj", "attention", "attention.dropout"});
  CHECK(modules[0].second == &attention);
}

namespace {

/// Greedy decoding and the teacher-forced logits of `model` against a float copy of it.
template <class Model, class Config>
void check_model_against_float(const Config& config, std::size_t expected_weights) {
  Model float_model(config), int8_model(config);
  // Non-zero biases, as a trained model has.
  std::uint64_t seed = 200;
  for (auto* model : {&float_model, &int8_model}) {
    seed = 200;
    for (auto& [name, p] : model->named_parameters())
      if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), seed++, 0.3);
  }
  float_model.eval();
  int8_model.eval();
  const Int8Report report = quantize_for_inference(int8_model);
  CHECK(report.weights == expected_weights);
  CHECK(report.int8_bytes < report.float_bytes / 2);
  const IndexArray source = {{4, 5, 6, 7, 2}, {8, 4, 2, 0, 0}};
  const IndexArray lengths = {5, 3};
  const IndexArray target = {{1, 3, 4, 5, 6, 2}, {1, 6, 5, 2, 0, 0}};
  NoGradGuard no_grad;
  const Array float_logits = float_model.forward(source, lengths, target).logits.value();  // [2, 6, 7]
  const Array int8_logits = int8_model.forward(source, lengths, target).logits.value();
  const double spread = xt::amax(float_logits)() - xt::amin(float_logits)();
  INFO("largest logit difference " << max_abs_diff(int8_logits, float_logits) << " of a spread " << spread);
  CHECK(max_abs_diff(int8_logits, float_logits) < 0.05 * spread);
  CHECK(max_abs_diff(int8_logits, float_logits) > 0);
  const models::DecodeOptions greedy{.beam = 1, .max_length = 8};
  const auto float_tokens = models::decode(float_model, source, lengths, greedy);
  const auto int8_tokens = models::decode(int8_model, source, lengths, greedy);
  REQUIRE(float_tokens.size() == int8_tokens.size());
  for (std::size_t b = 0; b < float_tokens.size(); ++b) CHECK(float_tokens[b].tokens == int8_tokens[b].tokens);
}

}  // namespace

TEST_CASE("int8: a whole transformer decodes as its float self, every Linear and in_proj converted") {
  models::TransformerConfig config = tiny_transformer_config();
  config.d_model = 32;
  config.dim_feedforward = 64;
  // 2 encoder layers x (in_proj, out_proj, linear1, linear2) + 2 decoder layers x 6 + output.
  check_model_against_float<models::TransformerModel>(config, 2 * 4 + 2 * 6 + 1);
}

TEST_CASE("int8: a whole Bahdanau model decodes as its float self (bridge, W_q, W_k, output)") {
  models::BahdanauConfig config = tiny_bahdanau_config();
  config.embedding_dim = 16;
  config.hidden_size = 32;
  config.attention_size = 32;
  check_model_against_float<models::BahdanauModel>(config, 4);
}
