#include "train/callbacks.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/parse_number.hpp"
#include "lib/plot/svg.hpp"

namespace qkv::train {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- Checkpointer ----------------------------------------------------------------------------

Checkpointer::Checkpointer(const std::string& directory, json data_spec)
    : Checkpointer(RunDirectoryLock(directory), std::move(data_spec)) {}

Checkpointer::Checkpointer(RunDirectoryLock lock, json data_spec)
    : lock_(std::move(lock)), data_spec_(std::move(data_spec)) {}

void Checkpointer::save(const Trainer& trainer, const std::string& directory) const {
  save_checkpoint(directory, {.model = trainer.model(), .optimizer = trainer.optimizer(), .vocabs = trainer.vocabs(),
                              .options = trainer.options(), .data = data_spec_, .progress = trainer.progress(),
                              .history = trainer.history()});
}

void Checkpointer::on_evaluation(Trainer& trainer, const EvaluationRecord& record) {
  save(trainer, directory());
  std::string lines;
  for (const json& line : trainer.history()) lines += line.dump() + "\n";
  write_file_atomically((fs::path(directory()) / "metrics.jsonl").string(), lines);
  if (record.improved) save(trainer, (fs::path(directory()) / "best").string());
}

void Checkpointer::on_train_end(Trainer& trainer, const TrainResult& result) {
  // The other reasons stopped right after an evaluation, which saved; a diverged run keeps the
  // last good checkpoint.
  if (result.reason == StopReason::interrupted) save(trainer, directory());
}

// ---- ConsoleReporter -------------------------------------------------------------------------

ConsoleReporter::ConsoleReporter(bool terminal, std::int64_t log_every)
    : terminal_(terminal), log_every_(std::max<std::int64_t>(log_every, 1)) {}

void ConsoleReporter::on_train_start(Trainer& /*trainer*/) { tokens_ = 0; }

void ConsoleReporter::on_step_end(Trainer& trainer, const StepInfo& info) {
  tokens_ += double(info.tokens);
  const double rate = tokens_ / std::max(info.seconds, 1e-9);
  // The ETA of the run: the time budget's rest, or the remaining steps at this pace.
  const TrainOptions& options = trainer.options();
  const std::size_t epochs = options.epochs;
  const double steps_left =
      epochs > info.epoch ? double((epochs - info.epoch) * info.batches_in_epoch - info.batch - 1) : 0;
  const double pace = info.seconds / double(std::max<std::int64_t>(info.step, 1));
  double eta = steps_left * pace;
  if (options.time_budget_seconds > 0)
    eta = eta > 0 ? std::min(eta, options.time_budget_seconds - info.seconds) : options.time_budget_seconds - info.seconds;
  eta = std::max(eta, 0.0);
  if (terminal_) {
    const double done = double(info.batch + 1) / double(info.batches_in_epoch);
    std::fprintf(stderr, "\repoch %zu [%-30s] step %lld  loss %.4f  %.0f tok/s  ETA %.0f s   ", info.epoch + 1,
                 std::string(std::size_t(done * 30), '=').c_str(), static_cast<long long>(info.step), info.loss, rate,
                 eta);
    bar_drawn_ = true;
  } else if (info.step % log_every_ == 0) {
    spdlog::info("epoch {} step {} loss {:.4f} lr {:.2e} {:.0f} tok/s ETA {:.0f} s", info.epoch + 1, info.step,
                 info.loss, info.learning_rate, rate, eta);
  }
}

void ConsoleReporter::on_evaluation(Trainer& trainer, const EvaluationRecord& record) {
  if (bar_drawn_) std::fprintf(stderr, "\n");
  bar_drawn_ = false;
  const json& entry = record.entry;
  const std::string train_loss = entry.at("train_loss").is_null() ? "-" : format_number(entry.at("train_loss").get<double>());
  if (record.evaluation == nullptr) {
    spdlog::info("epoch {:.2f}  step {}  train_loss {}", entry.at("epoch").get<double>(), trainer.progress().step,
                 train_loss);
    return;
  }
  const Evaluation& evaluation = *record.evaluation;
  spdlog::info("epoch {:.2f}  step {}  train_loss {}  val_loss {:.4f}  token_acc {:.4f}  exact {:.4f}  bleu {:.2f}",
               entry.at("epoch").get<double>(), trainer.progress().step, train_loss, evaluation.loss,
               evaluation.token_accuracy, evaluation.exact_match, evaluation.bleu);
}

void ConsoleReporter::on_train_end(Trainer& /*trainer*/, const TrainResult& /*result*/) {
  if (bar_drawn_) std::fprintf(stderr, "\n");
  bar_drawn_ = false;
}

// ---- CurvesPlot ------------------------------------------------------------------------------

CurvesPlot::CurvesPlot(std::string path, std::size_t max_step_points)
    : path_(std::move(path)), max_step_points_(std::max<std::size_t>(max_step_points, 1)) {}

void CurvesPlot::on_step_end(Trainer& /*trainer*/, const StepInfo& info) {
  step_epochs_.push_back(double(info.epoch) + double(info.batch + 1) / double(info.batches_in_epoch));
  step_losses_.push_back(info.loss);
}

void CurvesPlot::on_evaluation(Trainer& trainer, const EvaluationRecord& /*record*/) { write(trainer.history()); }

void CurvesPlot::write(const json& history) const {
  Series steps{"training loss (per step, this process)", {}, {}}, train{"training loss (epoch mean)", {}, {}},
      val{"validation loss", {}, {}}, acc{"token accuracy", {}, {}, true}, exact{"exact match", {}, {}, true};
  // Consecutive steps averaged in equal runs: thousands of steps stay a readable line.
  const std::size_t per_point = (step_losses_.size() + max_step_points_ - 1) / max_step_points_;
  for (std::size_t first = 0; per_point > 0 && first < step_losses_.size(); first += per_point) {
    const std::size_t last = std::min(first + per_point, step_losses_.size());
    double sum = 0;
    for (std::size_t i = first; i < last; ++i) sum += step_losses_[i];
    steps.x.push_back(step_epochs_[last - 1]);
    steps.y.push_back(sum / double(last - first));
  }
  for (const json& entry : history) {
    const double epoch = entry.at("epoch").get<double>();
    const auto value = [&](const char* key) {
      return !entry.contains(key) || entry.at(key).is_null() ? NAN : entry.at(key).get<double>();
    };
    for (Series* series : {&train, &val, &acc, &exact}) series->x.push_back(epoch);
    train.y.push_back(value("train_loss"));
    val.y.push_back(value("val_loss"));
    acc.y.push_back(value("token_acc"));
    exact.y.push_back(value("exact"));
  }
  std::vector<Series> series;
  for (Series* s : {&steps, &train, &val, &acc, &exact})
    if (std::any_of(s->y.begin(), s->y.end(), [](double y) { return std::isfinite(y); })) series.push_back(*s);
  if (series.empty()) return;
  write_svg(path_, line_chart_svg({.title = "training", .x_label = "epoch", .y_label = "loss / accuracy",
                                   .series = series, .x_ticks = {}}));
}

// ---- StopAtTarget ----------------------------------------------------------------------------

namespace {
constexpr const char* target_metrics[] = {"exact", "bleu", "token_acc", "val_loss"};
}  // namespace

StopAtTarget::StopAtTarget(std::string metric, double value) : metric_(std::move(metric)), value_(value) {
  check_arg(std::find(std::begin(target_metrics), std::end(target_metrics), metric_) != std::end(target_metrics),
            "StopAtTarget", [&] { return "unknown metric '" + metric_ + "'; known: exact, bleu, token_acc, val_loss"; });
  check_arg(std::isfinite(value_), "StopAtTarget", "the target must be a finite number");
}

StopAtTarget StopAtTarget::parse(const std::string& text) {
  const auto equals = text.find('=');
  check_arg(equals != std::string::npos && equals > 0 && equals + 1 < text.size(), "--until",
            [&] { return "expected METRIC=VALUE (e.g. exact=0.995), got '" + text + "'"; });
  const std::string number = text.substr(equals + 1);
  const std::optional<double> value = parse_finite_number(number);
  check_arg(value.has_value(), "--until", [&] { return "'" + number + "' is not a number (in '" + text + "')"; });
  return StopAtTarget(text.substr(0, equals), *value);
}

void StopAtTarget::on_evaluation(Trainer& trainer, const EvaluationRecord& record) {
  if (record.evaluation == nullptr || !record.entry.contains(metric_)) return;
  const double reached = record.entry.at(metric_).get<double>();
  const bool met = metric_ == "val_loss" ? reached <= value_ : reached >= value_;
  if (met)
    trainer.request_stop(metric_ + " " + format_number(reached) + " reached the target " + format_number(value_) +
                         " at step " + std::to_string(trainer.progress().step));
}

// ---- after_each_step -------------------------------------------------------------------------

std::shared_ptr<TrainerCallback> after_each_step(std::function<void(const StepInfo&)> on_step) {
  check_arg(on_step != nullptr, "after_each_step", "no function");
  class StepFunction : public TrainerCallback {
   public:
    explicit StepFunction(std::function<void(const StepInfo&)> function) : function_(std::move(function)) {}
    void on_step_end(Trainer& /*trainer*/, const StepInfo& step) override { function_(step); }

   private:
    std::function<void(const StepInfo&)> function_;
  };
  return std::make_shared<StepFunction>(std::move(on_step));
}

}  // namespace qkv::train
