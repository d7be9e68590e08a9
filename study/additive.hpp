#pragma once
// Section "additive" of qkv-scaling-study: additive (Bahdanau) attention against dot-product
// attention without and with 1/√d_k as the attention width d_k grows — the comparison Vaswani
// et al. 2017 cite Britz et al. 2017 for ("additive attention outperforms dot product attention
// without scaling for larger values of d_k").
//
// The task, a single attention layer on its own: n keys x_j ~ N(0, I_{d_in}) and a query
// y = A x_t for a target t drawn uniformly, A a fixed random d_in × d_in matrix with N(0, 1/d_in)
// entries (one per seed), so the layer must learn which key the query points at — a bilinear
// match no layer has at initialisation. The loss is −ln(w_t + 1e-7) on the attention weight of
// the target key (the ε keeps a saturated wrong row finite); accuracy is argmax_j w_j = t on a
// held-out batch. The three layers:
//   additive     AdditiveAttention(d_in, d_in, hidden d_k): vᵀ tanh(W_q y + W_k x_j)
//   dot          DotProductAttention with no scale on (W_q y)·(W_k x_j), W_q, W_k [d_k, d_in]
//   scaled dot   the same with 1/√d_k
// W_q, W_k start U(±1/√d_in) in every layer (nn.Linear's default), so at initialisation the
// unscaled dot product's scores grow as √d_k while the additive scores stay bounded (tanh).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "study/report_io.hpp"

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
/// Every (d_k, mechanism, seed), options.jobs at a time.
std::vector<AdditiveRun> run_additive(const AdditiveOptions& options,
                                      const std::function<void(std::string_view)>& progress = {});

/// The CSVs, plots and summary part ("## 4. Additive against dot product").
SectionOutput write_additive_section(const std::string& directory, const AdditiveOptions& options,
                                     const std::vector<AdditiveRun>& runs);

}  // namespace qkv::study
