#pragma once
// Learning-rate schedules. A schedule is a pure function of the step: `learning_rate(step)`
// where `step` is the number of optimizer updates already taken (0 before the first one, the
// convention of torch's LR schedulers). The optimizer checkpoints its own step counter, so a
// resumed run picks up the schedule where it left off with no scheduler state to save:
//
//   Adam optimizer(model.named_parameters(), {.lr = 1e-3});
//   const NoamSchedule schedule(1e-3, 4000);
//   for (...) {
//     apply_schedule(schedule, optimizer);  // lr for the update about to happen
//     ... backward ...
//     optimizer.step();
//   }
#include <cstdint>

namespace qkv {

class Optimizer;

class Schedule {
 public:
  virtual ~Schedule() = default;
  /// The learning rate for the update taken after `step` earlier updates. Throws Error for a
  /// negative step.
  double learning_rate(std::int64_t step) const;

 protected:
  virtual double rate_at(std::int64_t step) const = 0;
};

/// lr(step) = base_lr.
class ConstantSchedule : public Schedule {
 public:
  explicit ConstantSchedule(double base_lr);

 private:
  double rate_at(std::int64_t step) const override;
  double base_lr_;
};

/// lr(step) = base_lr · gamma^floor(step / step_size), as torch's StepLR.
class StepSchedule : public Schedule {
 public:
  /// Throws Error for step_size < 1 or gamma <= 0.
  StepSchedule(double base_lr, std::int64_t step_size, double gamma = 0.1);

 private:
  double rate_at(std::int64_t step) const override;
  double base_lr_;
  std::int64_t step_size_;
  double gamma_;
};

/// lr(step) = min_lr + (base_lr - min_lr) · (1 + cos(π · step / total_steps)) / 2 for
/// step <= total_steps, then min_lr: base_lr at step 0, min_lr from step total_steps on.
/// (torch's CosineAnnealingLR rises again after T_max; this one stays at the minimum.)
class CosineSchedule : public Schedule {
 public:
  /// Throws Error for total_steps < 1 or min_lr outside [0, base_lr].
  CosineSchedule(double base_lr, std::int64_t total_steps, double min_lr = 0);

 private:
  double rate_at(std::int64_t step) const override;
  double base_lr_;
  std::int64_t total_steps_;
  double min_lr_;
};

/// Linear warm-up, then decay as the inverse square root ("Noam", Vaswani et al. 2017),
/// normalised so that the peak equals base_lr. With s = step + 1 (the 1-based update number)
/// and w = warmup_steps:
///   lr(step) = base_lr · sqrt(w) · min(s^-0.5, s · w^-1.5)
///            = base_lr · s / w        for s <= w   (rises linearly to base_lr at s = w)
///            = base_lr · sqrt(w / s)  for s >= w
/// The paper's d_model^-0.5 factor is folded into base_lr: base_lr = d_model^-0.5 · w^-0.5
/// gives the paper's schedule exactly.
class NoamSchedule : public Schedule {
 public:
  /// Throws Error for warmup_steps < 1.
  NoamSchedule(double base_lr, std::int64_t warmup_steps);

 private:
  double rate_at(std::int64_t step) const override;
  double base_lr_;
  std::int64_t warmup_steps_;
};

/// Sets the optimizer's learning rate to schedule.learning_rate(optimizer.step_count()) —
/// the rate for its next update — and returns it. Call it before each `optimizer.step()`.
double apply_schedule(const Schedule& schedule, Optimizer& optimizer);

}  // namespace qkv
