// The attention-stability layers of scaling-study part 2, in float64: σReparam (Zhai et al.
// 2023) on a weight, a Linear and MultiheadAttention's projections; QK-norm (Dehghani et al.
// 2023, Wortsman et al. 2023); the μP scale 8/d_k with zero-initialised queries. Gradcheck
// of each, and the property each exists for. QK-norm's building block is LayerNorm, whose
// PyTorch parity is tests/test_layers_core.cpp's fixture; no PyTorch σReparam exists, but with
// γ = 1 it is torch's spectral_norm parametrisation (fixture scripts/fixtures/sigma_reparam.py).
#include <cmath>

#include <xtensor/xview.hpp>

#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "layers/sigma_reparam.hpp"
#include "models/transformer/transformer.hpp"
#include "study/stability.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

/// The largest |score| the softmax saw over every observed attention call.
struct LargestScore {
  double largest = 0;
  AttentionObserver observer{[this](const Array& scores, const Array&, const std::optional<BoolArray>&) {
    for (const real s : scores) largest = std::max(largest, std::abs(double(s)));
  }};
};

}  // namespace

TEST_CASE("spectral_norm: known matrices") {
  Array diagonal = zeros({3, 4});
  diagonal(0, 0) = 0.5, diagonal(1, 1) = -3, diagonal(2, 2) = 1;
  CHECK(spectral_norm(diagonal) == doctest::Approx(3).epsilon(1e-10));
  // a bᵀ has the single singular value ‖a‖‖b‖.
  const Array a = random_array({5}, 1), b = random_array({3}, 2);
  Array outer = zeros({5, 3});
  double na = 0, nb = 0;
  for (std::size_t i = 0; i < 5; ++i) na += a(i) * a(i);
  for (std::size_t j = 0; j < 3; ++j) nb += b(j) * b(j);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 3; ++j) outer(i, j) = a(i) * b(j);
  CHECK(spectral_norm(outer) == doctest::Approx(std::sqrt(na * nb)).epsilon(1e-10));
  CHECK_THROWS_WITH_AS(spectral_norm(zeros({3})), doctest::Contains("spectral_norm"), ShapeError);
}

TEST_CASE("SigmaReparam: W_eff = W at initialisation, σ converges to ‖W‖₂ in training, ‖W_eff‖₂ = γ") {
  const Array weight = random_array({6, 4}, 3);
  SigmaReparam reparam(weight);
  const Variable w(weight);
  reparam.eval();
  CHECK(max_abs_diff(reparam.forward(w).value(), weight) < 1e-12);
  CHECK(reparam.gamma().value()() == doctest::Approx(reparam.sigma(weight)));
  // Eval mode leaves u and v alone: the same σ twice.
  const double before = reparam.sigma(weight);
  (void)reparam.forward(w);
  CHECK(reparam.sigma(weight) == before);

  // A weight moved by training: each training forward takes one power-iteration step.
  const Array moved = weight + random_array({6, 4}, 4, 0.7);
  reparam.train();
  for (int step = 0; step < 60; ++step) (void)reparam.forward(Variable(moved));
  const double exact = spectral_norm(moved);
  CHECK(reparam.sigma(moved) == doctest::Approx(exact).epsilon(1e-8));
  reparam.eval();
  CHECK(spectral_norm(reparam.forward(Variable(moved)).value()) ==
        doctest::Approx(reparam.gamma().value()()).epsilon(1e-8));
  CHECK_THROWS_WITH_AS(SigmaReparam(zeros({3, 3})), doctest::Contains("non-zero"), Error);
  CHECK_THROWS_WITH_AS(reparam.forward(Variable(zeros({4, 6}))), doctest::Contains("SigmaReparam"), ShapeError);
}

TEST_CASE("SigmaReparam: gradcheck through σ = uᵀWv and γ") {
  const Array weight = random_array({5, 3}, 5);
  SigmaReparam reparam(weight);
  reparam.eval();  // fixed u, v: a fixed function of W for the finite differences
  QKV_CHECK_GRADIENTS([&](const auto& in) { return reparam.forward(in[0]); }, {Variable(weight + 0.1)},
                      reparam.named_parameters());
  // Linear with σReparam: input, weight, bias and γ.
  Rng rng(6);
  Linear linear(3, 4, rng, {.sigma_reparam = true});
  linear.eval();
  CHECK(linear.named_parameters().size() == 3);  // weight, bias, sigma_reparam.gamma
  QKV_CHECK_GRADIENTS([&](const auto& in) { return linear.forward(in[0]); }, {Variable(random_array({2, 3}, 7))},
                      linear.named_parameters());
}

TEST_CASE("SigmaReparam with γ = 1 matches torch's parametrizations.spectral_norm: power step, W/σ, gradient") {
  const TensorFile fixture = load_fixture("sigma_reparam");
  const Array& weight = fixture.reals.at("weight");  // [5, 3]
  SigmaReparam reparam(weight);
  reparam.load_state_dict({{"gamma", full({}, 1)}, {"u", fixture.reals.at("u0")}, {"v", fixture.reals.at("v0")}});
  reparam.train();
  Variable w(weight, true);
  const Variable out = reparam.forward(w);
  CHECK(max_abs_diff(out.value(), fixture.reals.at("output")) < 1e-12);
  CHECK(max_abs_diff(reparam.state_dict().at("u"), fixture.reals.at("u1")) < 1e-12);
  CHECK(max_abs_diff(reparam.state_dict().at("v"), fixture.reals.at("v1")) < 1e-12);
  sum(out * Variable(fixture.reals.at("projection"))).backward();
  CHECK(max_abs_diff(w.grad(), fixture.reals.at("grad.weight")) < 1e-12);
}

TEST_CASE("MultiheadAttention with σReparam: same function at init as without, gradcheck, u updated in training") {
  const Array x = random_array({2, 4, 6}, 10), memory = random_array({2, 5, 6}, 11);
  Rng plain_rng(12), reparam_rng(12);
  MultiheadAttention plain(6, 2, plain_rng);
  MultiheadAttention reparam(6, 2, reparam_rng, {.sigma_reparam = true});
  plain.eval(), reparam.eval();
  CHECK(max_abs_diff(plain.forward(Variable(x)).output.value(), reparam.forward(Variable(x)).output.value()) < 1e-12);
  const auto names = reparam.state_dict();
  for (const char* name : {"in_proj_sigma_q.gamma", "in_proj_sigma_k.u", "in_proj_sigma_v.v", "out_proj.sigma_reparam.gamma"})
    CHECK_MESSAGE(names.count(name) == 1, name);

  for (auto& [name, p] : reparam.named_parameters())
    if (name.find("bias") != std::string::npos) p.mutable_value() = random_array(p.shape(), 13, 0.5);
  QKV_CHECK_GRADIENTS([&](const auto& in) { return reparam.forward(in[0]).output; }, {Variable(x)},
                      reparam.named_parameters());
  QKV_CHECK_GRADIENTS([&](const auto& in) { return reparam.forward(in[0], in[1], in[1]).output; },
                      {Variable(x), Variable(memory)}, reparam.named_parameters());

  // Training forwards move u towards W's top singular vector after W changed.
  Variable weight = reparam.named_parameters().front().second;  // in_proj_weight [3E, E]
  REQUIRE(reparam.named_parameters().front().first == "in_proj_weight");
  weight.mutable_value() += random_array({18, 6}, 14, 0.5);
  const Array u_before = reparam.state_dict().at("in_proj_sigma_k.u");
  reparam.train();
  (void)reparam.forward(Variable(x));
  CHECK(max_abs_diff(reparam.state_dict().at("in_proj_sigma_k.u"), u_before) > 1e-3);
}

TEST_CASE("MultiheadAttention with QK-norm: |scores| <= √d_head at init whatever the input, gradcheck, KV cache") {
  Rng rng(20);
  MultiheadAttention mha(8, 2, rng, {.qk_norm = true});
  const auto state = mha.state_dict();
  CHECK(state.count("q_norm.weight") == 1);
  CHECK(state.at("k_norm.bias").shape() == std::vector<std::size_t>{4});  // one LayerNorm(d_head) shared by the heads
  {
    // LayerNorm(d) output with weight 1, bias 0 has norm √d (up to eps): q̂·k̂ / √d <= √d.
    LargestScore observed;
    (void)mha.forward(Variable(random_array({2, 5, 8}, 21, 1000.0)));
    CHECK(observed.largest <= 2.0 + 1e-9);
    CHECK(observed.largest > 0.5);
    Rng plain_rng(20);
    MultiheadAttention plain(8, 2, plain_rng);
    LargestScore unnormalised;
    (void)plain.forward(Variable(random_array({2, 5, 8}, 21, 1000.0)));
    CHECK(unnormalised.largest > 1000);  // the same weights without QK-norm: logits grow with the input
  }
  for (auto& [name, p] : mha.named_parameters())
    if (name.find("bias") != std::string::npos || name.find("norm.weight") != std::string::npos)
      p.mutable_value() = random_array(p.shape(), 22, 0.5) + (name.find("weight") != std::string::npos ? 1.0 : 0.0);
  const Array x = random_array({2, 4, 8}, 23), memory = random_array({2, 3, 8}, 24);
  QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0]).output; }, {Variable(x)}, mha.named_parameters());
  QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0], in[1], in[1]).output; },
                      {Variable(x), Variable(memory)}, mha.named_parameters());

  // Keys enter the cache normalised: step by step equals one causal pass (with rotary positions).
  Rng rope_rng(25);
  MultiheadAttention rope(8, 2, rope_rng, {.positions = std::make_shared<RotaryPositionEncoding>(4), .qk_norm = true});
  AttentionMask causal;
  causal.causal = true;
  const Array full = rope.forward(Variable(x), causal).output.value();
  KVCache cache;
  for (std::size_t t = 0; t < 4; ++t) {
    const Variable step(Array(xt::view(x, xt::all(), xt::range(t, t + 1), xt::all())));  // [B, 1, E]
    const Array out = rope.forward(step, causal, &cache).output.value();
    CHECK(max_abs_diff(out, Array(xt::view(full, xt::all(), xt::range(t, t + 1), xt::all()))) < 1e-12);
  }
  // Cross-attention against memory projected once (normalised keys) equals projecting every call.
  const KVCache projected = mha.project_memory(Variable(memory));
  CHECK(max_abs_diff(mha.attend_to_memory(Variable(x), projected).output.value(),
                     mha.forward(Variable(x), Variable(memory), Variable(memory)).output.value()) < 1e-12);
}

TEST_CASE("μP: 8/d_k equals 1/√d_k at d_k = 64, zero-initialised queries give uniform attention and still learn") {
  CHECK(DotProductAttention(ScoreScale::inverse_dim(8)).scale_factor(64) == doctest::Approx(0.125));
  CHECK(DotProductAttention(ScoreScale::inverse_dim(8)).scale_factor(256) == doctest::Approx(8.0 / 256));
  CHECK(DotProductAttention(ScoreScale::inverse_dim()).scale_factor(16) == doctest::Approx(1.0 / 16));

  Rng rng(30);
  MultiheadAttention mha(6, 3, rng, {.scale = ScoreScale::inverse_dim(8), .zero_query_init = true});
  const Array x = random_array({2, 4, 6}, 31);
  const Array weights = mha.forward(Variable(x)).weights.value();  // [B, H, T, T]
  for (const real w : weights) CHECK(w == doctest::Approx(0.25).epsilon(1e-12));
  const Array& w = mha.named_parameters().front().second.value();  // in_proj_weight [18, 6]
  for (std::size_t i = 0; i < 6 * 6; ++i) REQUIRE(w.data()[i] == 0);
  QKV_CHECK_GRADIENTS([&](const auto& in) { return mha.forward(in[0]).output; }, {Variable(x)}, mha.named_parameters());
  // The query block gets a gradient at zero (the keys are not zero), so it leaves zero.
  Variable out = mha.forward(Variable(x)).output;
  mha.zero_grad();
  sum(out * Variable(random_array({2, 4, 6}, 32))).backward();
  double query_grad = 0;
  const Array& g = mha.named_parameters().front().second.grad();
  for (std::size_t i = 0; i < 6 * 6; ++i) query_grad += std::abs(double(g.data()[i]));
  CHECK(query_grad > 1e-6);
  Rng bad_rng(33);
  CHECK_THROWS_WITH_AS(MultiheadAttention(6, 3, bad_rng, {.sigma_reparam = true, .zero_query_init = true}),
                       doctest::Contains("zero query"), Error);
}

TEST_CASE("TransformerConfig: qk_norm, sigma_reparam, zero_query_init round-trip, 0/1 accepted, 2 refused") {
  models::TransformerConfig config;
  config.source_vocab_size = config.target_vocab_size = 7;
  config.d_model = 8, config.nhead = 2, config.encoder_layers = config.decoder_layers = 1;
  config.dim_feedforward = 16, config.qk_norm = true, config.sigma_reparam = true;
  config.scale = ScoreScale::inverse_dim(8);
  const nlohmann::json json = config;
  const auto back = json.get<models::TransformerConfig>();
  CHECK(back.qk_norm);
  CHECK(back.sigma_reparam);
  CHECK_FALSE(back.zero_query_init);
  CHECK(back.scale.value == 8);
  nlohmann::json numeric = json;
  numeric["zero_query_init"] = 1, numeric["sigma_reparam"] = 0;
  const auto from_numbers = numeric.get<models::TransformerConfig>();
  CHECK(from_numbers.zero_query_init);
  CHECK_FALSE(from_numbers.sigma_reparam);
  numeric["qk_norm"] = 2;
  CHECK_THROWS_WITH_AS(numeric.get<models::TransformerConfig>(), doctest::Contains("qk_norm"), Error);
  // The model builds with every option and runs a batch; its parameters carry the new names.
  models::TransformerModel model(back);
  bool has_gamma = false, has_q_norm = false;
  for (const auto& [name, p] : model.named_parameters()) {
    has_gamma = has_gamma || name == "encoder.layers.0.linear1.sigma_reparam.gamma";
    has_q_norm = has_q_norm || name == "decoder.layers.0.multihead_attn.q_norm.weight";
  }
  CHECK(has_gamma);
  CHECK(has_q_norm);
  const models::Seq2SeqOutput out = model.forward(IndexArray{{3, 4, 5}}, IndexArray{3}, IndexArray{{1, 2}});
  for (const real v : out.logits.value()) REQUIRE(std::isfinite(double(v)));
}

TEST_CASE("entropy_lower_bound: log T at β = 0, one raised logit at large β, half raised at small β, below any row spanning <= β") {
  CHECK(study::entropy_lower_bound(7, 0) == doctest::Approx(std::log(7.0)));
  CHECK(study::entropy_lower_bound(1, 3) == doctest::Approx(0.0));
  for (const double beta : {4.0, 9.0}) {
    // softmax([β, 0, ..., 0]) over 5 keys
    const double z = std::exp(beta) + 4;
    const double p = std::exp(beta) / z, q = 1 / z;
    CHECK(study::entropy_lower_bound(5, beta) == doctest::Approx(-p * std::log(p) - 4 * q * std::log(q)).epsilon(1e-12));
  }
  // At small β raising several logits lowers the entropy more than raising one (the variance
  // is larger): the bound is below the one-peak form, and attained by k = 4 of 10 keys raised.
  const auto raised = [](double k, double beta) {
    const double rest = (10 - k) * std::exp(-beta);
    return std::log(k + rest) + beta * rest / (k + rest);
  };
  CHECK(study::entropy_lower_bound(10, 0.5) < raised(1, 0.5) - 1e-3);
  CHECK(study::entropy_lower_bound(10, 0.5) == doctest::Approx(raised(4, 0.5)).epsilon(1e-12));
  // Random rows whose logits span at most β never go below it.
  Rng rng(40);
  for (int trial = 0; trial < 2000; ++trial) {
    const std::size_t keys = 2 + trial % 9;
    const double beta = 10 * rng.uniform();
    std::vector<double> z(keys);
    for (double& v : z) v = beta * rng.uniform();
    z[0] = 0, z[1] = beta;  // the full span
    double largest = beta, total = 0, entropy = 0;
    for (const double v : z) total += std::exp(v - largest);
    for (const double v : z) {
      const double pr = std::exp(v - largest) / total;
      entropy -= pr * std::log(pr);
    }
    REQUIRE(entropy >= study::entropy_lower_bound(keys, beta) - 1e-12);
  }
  CHECK(study::entropy_lower_bound(5, 40) < 5 * 40 * std::exp(-40.0));
  CHECK_THROWS_WITH_AS(study::entropy_lower_bound(3, -1), doctest::Contains("entropy_lower_bound"), Error);
}

TEST_CASE("train_tracked: probes every layer and head, μP's zero queries start uniform, the bound holds") {
  study::TrackedRunOptions options;
  options.model.d_model = 16, options.model.nhead = 2, options.model.encoder_layers = options.model.decoder_layers = 1;
  options.model.dim_feedforward = 16, options.model.dropout = 0, options.model.norm_first = true;
  options.steps = 4, options.batch_size = 8, options.probe_every = 2, options.probe_size = 8, options.lr = 0.05;
  options.entropy_bound = true;
  const study::TrackedRun run = study::train_tracked(options);
  REQUIRE(run.probes.size() == 3);  // steps 0, 2, 4
  for (const study::TrackedProbe& p : run.probes) {
    REQUIRE(p.layers.size() == 3);
    CHECK(p.layers[2].name == "decoder.layers.0.multihead_attn");
    for (const study::LayerProbe& l : p.layers) {
      CHECK(l.head_entropy.size() == 2);
      CHECK(l.bound_violations == 0);
      CHECK(l.max_abs_logit >= l.mean_abs_logit);
      CHECK(l.mean_abs_output > 0);
      for (const double h : l.head_entropy) CHECK((h > 0 && h <= 1 + 1e-12));
    }
    CHECK(p.layers[0].head_sigma.size() == 2);  // self-attention: bounded
    CHECK(p.layers[2].head_sigma.empty());      // cross-attention: not
    for (std::size_t h = 0; h < 2; ++h) CHECK(p.layers[0].head_bound_nats[h] <= p.layers[0].head_entropy_nats[h]);
  }
  // Zero-initialised queries: every score is 0 at step 0, every row uniform (entropy exactly 1).
  options.model.scale = ScoreScale::inverse_dim(8), options.model.zero_query_init = true;
  const study::TrackedRun mup = study::train_tracked(options);
  for (const study::LayerProbe& l : mup.probes.front().layers) {
    CHECK(l.max_abs_logit == 0);
    CHECK(l.entropy == doctest::Approx(1).epsilon(1e-12));
  }
  CHECK(mup.probes.back().max_abs_logit() > 0);  // the queries learned
}
