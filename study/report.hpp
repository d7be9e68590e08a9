#pragma once
// What qkv-scaling-study writes: a CSV per table, SVG plots, and DIR/summary.md.
#include <string>
#include <vector>

#include "study/report_io.hpp"
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

/// Part 1's CSVs and plots, and its part of summary.md ("## 1. Statistics").
SectionOutput write_statistics_section(const std::string& directory, const StatisticsOptions& options,
                                       const StatisticsResult& statistics);
/// Part 2's CSVs and plots, and its part of summary.md ("## 2. Training").
SectionOutput write_training_section(const std::string& directory, const SweepOptions& options,
                                     const std::vector<RunResult>& runs);

/// One section that ran, for summary.md.
struct SectionSummary {
  std::string name;  // as --sections names it
  double seconds = 0;
  SectionOutput output;
};
/// Writes DIRECTORY/summary.md: the command, each section's time, their markdown in order and
/// every file. Returns every file the sections wrote, summary.md last.
std::vector<std::string> write_summary(const std::string& directory, const std::string& command_line,
                                       const std::vector<SectionSummary>& sections);

}  // namespace qkv::study
