#pragma once
// What every section of qkv-scaling-study writes with: CSV tables, SVG line charts, number
// formats for the summary, a section's outputs, and the runs of a section trained `jobs` at a
// time (one thread each).
#include <cstddef>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "lib/plot/svg.hpp"

namespace qkv::study {

/// A value a run did not produce (a target never reached, a diverged run's loss): an empty CSV
/// cell, "—" in the summary.
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// A CSV cell: up to 6 significant digits, empty for NaN (a missing value, e.g. a target never reached).
std::string cell(double value);
/// `digits` decimals; "—" when the value is not finite.
std::string fixed(double value, int digits);
/// 3 significant digits; "—" when the value is not finite.
std::string general(double value);

/// Builds a CSV table and writes it.
class Csv {
 public:
  explicit Csv(const std::vector<std::string>& header) { row(header); }
  void row(const std::vector<std::string>& cells);
  /// Writes DIRECTORY/name atomically and appends name to `written`.
  void write(const std::string& directory, const std::string& name, std::vector<std::string>& written) const;

 private:
  std::string text_;
};

/// Writes DIRECTORY/name; a log y axis falls back to linear when a series has a value <= 0.
void plot(const std::string& directory, const std::string& name, LineChart chart, std::vector<std::string>& written);

/// What one section of the study wrote: its files (relative to the output directory) and its
/// part of summary.md (markdown, starting with a "## " heading).
struct SectionOutput {
  std::vector<std::string> files;
  std::string markdown;
};

/// run(i) for i in [0, count), `jobs` at a time on their own threads (the caller's included);
/// the first exception is rethrown after the running ones finish, and no new one starts.
void run_jobs(std::size_t count, std::size_t jobs, const std::function<void(std::size_t)>& run);

}  // namespace qkv::study
