#include "train/options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"

namespace qkv::train {
using nlohmann::json;

namespace {
constexpr double unbounded = std::numeric_limits<double>::infinity();
}  // namespace

json TrainOptions::to_json() const {
  return {{"seed", seed}, {"epochs", epochs}, {"time_budget_seconds", time_budget_seconds},
          {"batch_size", batch_size}, {"bucket_batches", bucket_batches}, {"optimizer", name_of(optimizer)},
          {"lr", lr}, {"weight_decay", weight_decay}, {"schedule", name_of(schedule)}, {"warmup_steps", warmup_steps},
          {"clip_norm", clip_norm}, {"label_smoothing", label_smoothing},
          {"decode", {{"beam", decode.beam}, {"max_length", decode.max_length},
                      {"length_penalty", name_of(decode.length_penalty)}, {"alpha", decode.alpha}}},
          {"best_metric", name_of(best_metric)}, {"eval_batch_size", eval_batch_size}};
}

TrainOptions TrainOptions::from_json(const json& j) {
  const std::string where = "config.json training";
  TrainOptions o;
  o.seed = json_field<std::uint64_t>(j, where, "seed");
  o.epochs = json_field<std::size_t>(j, where, "epochs");
  o.time_budget_seconds = json_field<double>(j, where, "time_budget_seconds");
  o.batch_size = json_field<std::size_t>(j, where, "batch_size");
  o.bucket_batches = json_field<std::size_t>(j, where, "bucket_batches");
  o.optimizer = parse_name<OptimizerKind>(json_field<std::string>(j, where, "optimizer"), where);
  o.lr = json_field<double>(j, where, "lr");
  o.weight_decay = json_field<double>(j, where, "weight_decay");
  o.schedule = parse_name<ScheduleKind>(json_field<std::string>(j, where, "schedule"), where);
  o.warmup_steps = json_field<std::int64_t>(j, where, "warmup_steps");
  o.clip_norm = json_field<double>(j, where, "clip_norm");
  o.label_smoothing = json_field<double>(j, where, "label_smoothing");
  const json decode = json_field<json>(j, where, "decode");
  const std::string decode_where = where + " decode";
  o.decode.beam = json_field<std::size_t>(decode, decode_where, "beam");
  o.decode.max_length = json_field<std::size_t>(decode, decode_where, "max_length");
  o.decode.length_penalty =
      parse_name<models::LengthPenalty>(json_field<std::string>(decode, decode_where, "length_penalty"), decode_where);
  o.decode.alpha = json_field<double>(decode, decode_where, "alpha");
  o.best_metric = parse_name<BestMetric>(json_field<std::string>(j, where, "best_metric"), where);
  o.eval_batch_size = json_field<std::size_t>(j, where, "eval_batch_size");
  o.validate();
  return o;
}

void TrainOptions::validate() const {
  const char* owner = "TrainOptions";
  check_arg(batch_size >= 1 && eval_batch_size >= 1, owner, "batch sizes must be at least 1");
  check_arg(epochs >= 1 || time_budget_seconds > 0, owner, "needs epochs >= 1 or a positive time budget");
  check_arg(std::isfinite(lr) && lr > 0, owner, [&] { return "lr must be positive, got " + format_number(lr); });
  // Open upper bounds: infinity is refused like NaN.
  check_range(owner, "weight_decay", weight_decay, 0, unbounded);
  check_arg(warmup_steps >= 1, owner, "warmup_steps must be at least 1");
  check_range(owner, "clip_norm (0: off)", clip_norm, 0, unbounded);
  check_range(owner, "label_smoothing", label_smoothing, 0, 1);
  check_arg(decode.beam >= 1, owner, "beam must be at least 1");
  check_range(owner, "time budget (seconds)", time_budget_seconds, 0, unbounded);
}

const std::vector<std::string>& options_changeable_on_resume() {
  static const std::vector<std::string> names = {"epochs",    "time_budget_seconds", "lr",
                                                 "clip_norm", "decode",              "eval_batch_size"};
  return names;
}

TrainOptions merge_on_resume(const TrainOptions& saved, const TrainOptions& given, std::vector<std::string>& changes) {
  const json before = saved.to_json(), requested = given.to_json();
  json merged = before;
  const auto& changeable = options_changeable_on_resume();
  std::string refused;
  for (const auto& [name, value] : requested.items()) {
    json wanted = value;
    // max_length 0 means "derive it from the data": what the saved run derived stands.
    if (name == "decode" && wanted.at("max_length") == 0) wanted["max_length"] = before.at("decode").at("max_length");
    if (wanted == before.at(name)) continue;
    if (std::find(changeable.begin(), changeable.end(), name) == changeable.end()) {
      refused += (refused.empty() ? "" : "; ") + name + " (saved " + before.at(name).dump() + ", given " +
                 wanted.dump() + ")";
      continue;
    }
    changes.push_back(name + ": " + before.at(name).dump() + " -> " + wanted.dump());
    merged[name] = wanted;
  }
  if (!refused.empty())
    throw Error("resume: these options cannot change on resume, since the checkpoint's progress, optimizer state and "
                "best model depend on them: " + refused + ". Changeable: epochs, time budget, lr, clip norm, "
                "decoding, evaluation batch size");
  return TrainOptions::from_json(merged);
}

}  // namespace qkv::train
