#include "optim/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "lib/numerics/error.hpp"
#include "optim/optimizer.hpp"

namespace qkv {

namespace {
constexpr double unbounded = std::numeric_limits<double>::infinity();

void check_base_lr(const char* schedule, double base_lr) { check_range(schedule, "base_lr", base_lr, 0, unbounded); }

void check_period(const char* schedule, const char* what, std::int64_t steps) {
  check_arg(steps >= 1, schedule, std::string(what) + " must be >= 1, got " + std::to_string(steps));
}
}  // namespace

double Schedule::learning_rate(std::int64_t step) const {
  check_arg(step >= 0, "Schedule", "step must be >= 0, got " + std::to_string(step));
  return rate_at(step);
}

ConstantSchedule::ConstantSchedule(double base_lr) : base_lr_(base_lr) { check_base_lr("ConstantSchedule", base_lr); }

double ConstantSchedule::rate_at(std::int64_t) const { return base_lr_; }

StepSchedule::StepSchedule(double base_lr, std::int64_t step_size, double gamma)
    : base_lr_(base_lr), step_size_(step_size), gamma_(gamma) {
  check_base_lr("StepSchedule", base_lr);
  check_period("StepSchedule", "step_size", step_size);
  check_arg(gamma > 0 && std::isfinite(gamma), "StepSchedule", "gamma must be > 0 and finite, got " + format_number(gamma));
}

double StepSchedule::rate_at(std::int64_t step) const {
  return base_lr_ * std::pow(gamma_, static_cast<double>(step / step_size_));
}

CosineSchedule::CosineSchedule(double base_lr, std::int64_t total_steps, double min_lr)
    : base_lr_(base_lr), total_steps_(total_steps), min_lr_(min_lr) {
  check_base_lr("CosineSchedule", base_lr);
  check_period("CosineSchedule", "total_steps", total_steps);
  check_range("CosineSchedule", "min_lr", min_lr, 0, base_lr, true);
}

double CosineSchedule::rate_at(std::int64_t step) const {
  if (step >= total_steps_) return min_lr_;
  const double progress = static_cast<double>(step) / static_cast<double>(total_steps_);  // in [0, 1)
  return min_lr_ + (base_lr_ - min_lr_) * (1 + std::cos(std::numbers::pi * progress)) / 2;
}

NoamSchedule::NoamSchedule(double base_lr, std::int64_t warmup_steps) : base_lr_(base_lr), warmup_steps_(warmup_steps) {
  check_base_lr("NoamSchedule", base_lr);
  check_period("NoamSchedule", "warmup_steps", warmup_steps);
}

double NoamSchedule::rate_at(std::int64_t step) const {
  const double s = static_cast<double>(step + 1);
  const double w = static_cast<double>(warmup_steps_);
  // The two branches of base_lr · sqrt(w) · min(s^-0.5, s · w^-1.5), simplified so that the
  // peak (s = w) is exactly base_lr.
  return s <= w ? base_lr_ * s / w : base_lr_ * std::sqrt(w / s);
}

double apply_schedule(const Schedule& schedule, Optimizer& optimizer) {
  const double learning_rate = schedule.learning_rate(optimizer.step_count());
  optimizer.set_learning_rate(learning_rate);
  return learning_rate;
}

}  // namespace qkv
