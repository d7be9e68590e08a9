#pragma once
// Scaling-study part 2, section "mup": μP's attention scale (Yang et al. 2022, Tensor Programs
// V; microsoft/mup scores q·kᵀ·8/d with zero-initialised queries) against the standard 1/√d,
// over model widths with the head count fixed (so d_head grows with the width).
//
//  - Coordinate check: mean |attention logit| and mean |attention output| per attention layer
//    over the first steps of training, for each width and scale — under a scale that is right
//    for the width these stay the same size as the width grows.
//  - Learning-rate transfer: a learning-rate sweep per width and scale; the optimum per width.
//
// Three settings: the standard 1/√d; μP's attention only (every other weight keeps the
// standard initialisation and Adam one global learning rate); and full μP for Adam — the same
// attention plus the transformer's mup_base_d_model (models/transformer/transformer.hpp:
// hidden weights' Adam lr / m, readout logits / m, width-independent biases and embeddings,
// m = d_model / base_width). docs/scaling_study.md says what each means for the comparison.
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "lib/numerics/enum_names.hpp"
#include "train/distributed.hpp"

namespace qkv::study {

/// The parametrisations compared: 1/√d; 8/d with zero-initialised queries; that and the rest of μP.
enum class AttentionParametrisation { standard, mup, full_mup };
constexpr EnumNames<AttentionParametrisation, 3> enum_names(AttentionParametrisation) {
  return {"attention parametrisation",
          {{{AttentionParametrisation::standard, "sp"}, {AttentionParametrisation::mup, "mup"},
            {AttentionParametrisation::full_mup, "mup_full"}}}};
}

struct MupOptions {
  std::size_t heads = 4, layers = 1;
  std::size_t feedforward_ratio = 2;  // dim_feedforward = ratio · d_model
  // Coordinate check.
  std::vector<std::size_t> coordinate_widths = {64, 128, 256, 512};
  std::size_t coordinate_steps = 10, coordinate_batch = 16, coordinate_probe_size = 32;
  double coordinate_lr = 1e-2;
  // Learning-rate transfer.
  std::vector<std::size_t> transfer_widths = {64, 128, 256};
  std::vector<double> learning_rates = {3e-4, 1e-3, 3e-3, 1e-2, 3e-2};
  std::size_t transfer_steps = 120, transfer_batch = 16, transfer_probe_size = 64;
  std::size_t seeds = 1;
  /// Full μP's base width (m = d_model / base_width): where it equals the μP-attention setting.
  std::size_t base_width = 64;
  /// --quick: widths up to 256 (coordinate check, 5 steps) and 128 (transfer, 3 rates, 40 steps).
  static MupOptions quick();
  void validate() const;
};

/// Runs both parts (their runs spread over the ranks of `communicator`, `jobs` at a time on
/// each; collective) and, on rank 0, writes mup_coordinates.csv, mup_lr_transfer.csv, mup_*.svg
/// and mup_summary.md into `out_dir` (which must exist). Returns the markdown fragment on rank
/// 0, "" on the others.
std::string run_mup_section(const MupOptions& options, const std::string& out_dir, std::size_t jobs,
                            train::Communicator& communicator,
                            const std::function<void(std::string_view)>& progress = {});

}  // namespace qkv::study
