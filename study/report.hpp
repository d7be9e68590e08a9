#pragma once
// What qkv-scaling-study writes: a CSV per table, SVG plots, and DIR/summary.md.
#include <string>
#include <vector>

#include "study/statistics.hpp"
#include "study/training_sweep.hpp"

namespace qkv::study {

/// Mean and sample standard deviation (n − 1; 0 for a single value) of finite values; count
/// says how many were finite.
struct Spread {
  double mean = 0, std = 0;
  std::size_t count = 0;
};
Spread spread_of(const std::vector<double>& values);

/// One (scaling, d_k) cell of the training sweep, aggregated over seeds.
struct TrainingCell {
  Scaling scaling;
  std::size_t key_size = 0, heads = 0, runs = 0, reached = 0;
  Spread steps_to_target, final_loss, final_accuracy, final_exact, final_entropy, final_abs_logit,
      grad_norm, qk_grad_norm, final_temperature;
};
/// Cells in the order runs first appear (d_k-major, as run_sweep orders them).
std::vector<TrainingCell> aggregate(const std::vector<RunResult>& runs);

struct ReportContext {
  std::string command_line;
  StatisticsOptions statistics;
  SweepOptions sweep;
  double statistics_seconds = 0, training_seconds = 0;
};

/// Writes every CSV, SVG and summary.md into `directory` (which must exist). Returns the
/// files written, relative to it.
std::vector<std::string> write_report(const std::string& directory, const ReportContext& context,
                                      const StatisticsResult& statistics, const std::vector<RunResult>& runs);

}  // namespace qkv::study
