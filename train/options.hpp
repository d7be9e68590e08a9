#pragma once
// What a training run is told: TrainOptions, saved in config.json "training" and read back on
// resume. Choices are enums with one name table each (lib/numerics/enum_names.hpp), spelled
// the same on the command line, in config.json and in messages.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/numerics/enum_names.hpp"
#include "models/decoding.hpp"

namespace qkv::train {

enum class OptimizerKind { adam, adamw };
constexpr EnumNames<OptimizerKind, 2> enum_names(OptimizerKind) {
  return {"optimizer", {{{OptimizerKind::adam, "adam"}, {OptimizerKind::adamw, "adamw"}}}};
}

/// constant: the learning rate throughout; noam: linear warm-up over warmup_steps, then 1/√step.
enum class ScheduleKind { constant, noam };
constexpr EnumNames<ScheduleKind, 2> enum_names(ScheduleKind) {
  return {"schedule", {{{ScheduleKind::constant, "constant"}, {ScheduleKind::noam, "noam"}}}};
}

/// Which evaluation is "best" (kept in DIR/best/): the highest BLEU or the lowest validation loss.
enum class BestMetric { bleu, val_loss };
constexpr EnumNames<BestMetric, 2> enum_names(BestMetric) {
  return {"best metric", {{{BestMetric::bleu, "bleu"}, {BestMetric::val_loss, "val_loss"}}}};
}

struct TrainOptions {
  /// Batch order (and nothing else: the model's initialisation seed is in its own config).
  std::uint64_t seed = 0;
  /// Train until this many epochs are complete in total (a resumed run continues to it).
  std::size_t epochs = 10;
  /// > 0: also stop between steps once this many seconds of this process's training passed.
  double time_budget_seconds = 0;
  std::size_t batch_size = 64;
  std::size_t bucket_batches = 0;
  OptimizerKind optimizer = OptimizerKind::adam;
  double lr = 1e-3;
  double weight_decay = 0;
  ScheduleKind schedule = ScheduleKind::constant;
  std::int64_t warmup_steps = 4000;  // noam only
  double clip_norm = 1.0;            // global gradient norm; 0: no clipping
  double label_smoothing = 0;
  /// Decoding for BLEU and exact match; max_length 0: the longest training target + 10.
  models::DecodeOptions decode = {.beam = 1, .max_length = 0};
  BestMetric best_metric = BestMetric::bleu;
  std::size_t eval_batch_size = 128;

  nlohmann::json to_json() const;
  /// Throws Error naming the field for a missing or invalid one.
  static TrainOptions from_json(const nlohmann::json& json);
  /// Throws Error naming the option for an out-of-range number.
  void validate() const;
};

/// The option names (config.json "training" keys; "decode" for the decoding group) that a
/// resumed run may change: they steer the rest of the run without invalidating what the
/// checkpoint holds. Everything else (the seed, batch layout, optimizer kind, schedule shape,
/// best metric) decides what the saved progress, optimizer state and best/ mean, and is fixed.
const std::vector<std::string>& options_changeable_on_resume();

/// `saved` with the changeable options taken from `given`. Throws Error naming every fixed
/// option whose value differs. `changes` receives one "name: old -> new" line per change.
TrainOptions merge_on_resume(const TrainOptions& saved, const TrainOptions& given, std::vector<std::string>& changes);

}  // namespace qkv::train
