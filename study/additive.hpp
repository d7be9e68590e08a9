#pragma once
// Section "additive" of qkv-scaling-study: additive (Bahdanau) attention against dot-product
// attention without and with 1/√d_k as the attention width d_k grows — the comparison Vaswani
// et al. 2017 cite Britz et al. 2017 for ("additive attention outperforms dot product attention
// without scaling for larger values of d_k").
//
// The task, a single attention layer on its own (a type-matching lookup): there are n = `keys`
// types, each with a query code and a different key code (two fixed N(0, I_{d_in}) tables per
// seed). The n keys are the n types' key codes in a random order, plus N(0, 0.1²) noise; the
// query is the query code of one of them, the target; the values are the keys. The loss is
// ‖output − x_t‖² / d_in, so the gradient reaches the scores only through the softmax's
// Jacobian, as inside a model (a cross-entropy on the weights themselves would not vanish when
// they saturate). Accuracy: argmax_j w_j = t on a held-out batch. The three layers:
//   additive     AdditiveAttention(d_in, d_in, hidden d_k): vᵀ tanh(W_q y + W_k x_j)
//   dot          DotProductAttention with no scale on (W_q y)·(W_k x_j), W_q, W_k [d_k, d_in]
//   scaled dot   the same with 1/√d_k
// W_q, W_k start U(±1/√d_in) in every layer (nn.Linear's default), so at initialisation the
// unscaled dot product's scores grow as √d_k while the additive scores stay bounded (tanh).
// (A first version used a random linear map between query and key, y = A x_t: additive
// attention learned nothing of it in 300 steps at any d_k — a bilinear match is what dot
// products do and sums of tanh do badly — which says nothing about scaling.)
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "study/report_io.hpp"
#include "train/distributed.hpp"

namespace qkv::study {

enum class Mechanism { additive, dot, scaled_dot };
constexpr EnumNames<Mechanism, 3> enum_names(Mechanism) {
  return {"attention mechanism",
          {{{Mechanism::additive, "additive"}, {Mechanism::dot, "dot"}, {Mechanism::scaled_dot, "scaled_dot"}}}};
}
/// "additive", "dot (unscaled)", "dot / √d_k".
std::string mechanism_label(Mechanism mechanism);

struct AdditiveOptions {
  std::vector<std::size_t> key_sizes = {16, 64, 256, 1024};
  std::vector<Mechanism> mechanisms = {Mechanism::additive, Mechanism::dot, Mechanism::scaled_dot};
  std::size_t input_size = 32, keys = 16;
  std::size_t steps = 300, batch_size = 64, probe_every = 25, probe_size = 512;
  double lr = 1e-3;
  double target_accuracy = 0.9;
  std::size_t seeds = 3;
  std::size_t jobs = 1;
  void validate() const;
};

struct AdditiveProbe {
  std::size_t step = 0;
  double loss = 0, accuracy = 0;
  double entropy = 0;     // mean over probe rows, nats (ln n = uniform)
  double max_weight = 0;  // mean largest weight
};

struct AdditiveRun {
  Mechanism mechanism = Mechanism::additive;
  std::size_t key_size = 0;
  std::uint64_t seed = 0;
  std::vector<AdditiveProbe> curve;  // step 0 first
  double steps_to_target = 0;        // NaN: never reached
  double seconds = 0;
};

AdditiveRun train_additive_run(const AdditiveOptions& options, Mechanism mechanism, std::size_t key_size,
                               std::uint64_t seed);
/// Every (d_k, mechanism, seed), spread over the ranks of `communicator` and options.jobs at a
/// time within each (study/spread_runs.hpp; collective); every rank returns every run in that
/// order. `progress` gets a line per finished run of this rank.
std::vector<AdditiveRun> run_additive(const AdditiveOptions& options, train::Communicator& communicator,
                                      const std::function<void(std::string_view)>& progress = {});

/// The CSVs, plots and summary part ("## 4. Additive against dot product").
SectionOutput write_additive_section(const std::string& directory, const AdditiveOptions& options,
                                     const std::vector<AdditiveRun>& runs);

}  // namespace qkv::study
