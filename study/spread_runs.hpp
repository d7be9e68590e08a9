#pragma once
// The independent runs of a section of qkv-scaling-study (the cells of its grid: sizes ×
// scales × learning rates × seeds ...) spread over the ranks of an MPI job and over `jobs`
// threads within each rank, every result then on every rank, bit for bit what one process
// computes. Every section that trains uses it (training, mup, stability, length, additive).
//
// Each run must depend on its index alone (its own seed, one thread), so that where it runs
// does not change it. Results travel between the ranks as JSON whose doubles are their bit
// patterns (exact_json below): NaN and infinities included, nothing rounded.
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/distributed.hpp"

namespace qkv::study {

/// A double as JSON that reads back bit for bit (exact_double): its IEEE-754 bit pattern.
nlohmann::json exact_json(double value);
double exact_double(const nlohmann::json& value);
nlohmann::json exact_json(const std::vector<double>& values);
std::vector<double> exact_doubles(const nlohmann::json& values);

/// What one run hands back: its result, and the summary its progress line ends with.
struct RunOutcome {
  nlohmann::json result;
  std::string summary;
};

/// Runs 0 .. count-1: rank r of N runs r, r + N, r + 2N, ... (strided, so that every rank gets
/// a share of each part of a grid whose cost grows along it), `jobs` at a time on threads of
/// its own. Collective: every rank calls it with the same count. Returns every run's result in
/// index order on every rank. `progress` (if set) gets "WHAT k/M: summary" as each of this
/// rank's M runs finishes (k counting them), from any thread, one at a time. A run that throws
/// stops the rank's remaining runs; alone, its exception is rethrown; over several ranks every
/// rank throws Error naming the ranks that failed and their messages (none is left waiting).
std::vector<nlohmann::json> spread_runs(train::Communicator& communicator, std::size_t count, std::size_t jobs,
                                        const std::function<RunOutcome(std::size_t)>& run, const std::string& what,
                                        const std::function<void(std::string_view)>& progress);

/// The same for results of type Result: run(i) -> Result, encode(Result) -> JSON,
/// decode(i, JSON) -> Result (the run's own options at hand by index), describe(Result) -> the
/// progress summary. decode(i, encode(r)) must equal r field for field.
template <class Result, class Run, class Encode, class Decode, class Describe>
std::vector<Result> spread_runs(train::Communicator& communicator, std::size_t count, std::size_t jobs,
                                const std::string& what, const std::function<void(std::string_view)>& progress,
                                const Run& run, const Encode& encode, const Decode& decode, const Describe& describe) {
  const std::vector<nlohmann::json> encoded = spread_runs(
      communicator, count, jobs,
      [&](std::size_t i) {
        const Result result = run(i);
        return RunOutcome{encode(result), progress ? std::string(describe(result)) : std::string()};
      },
      what, progress);
  std::vector<Result> results;
  results.reserve(count);
  for (std::size_t i = 0; i < count; ++i) results.push_back(decode(i, encoded[i]));
  return results;
}

}  // namespace qkv::study
