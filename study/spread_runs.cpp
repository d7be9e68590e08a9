#include "study/spread_runs.hpp"

#include <bit>
#include <cstdint>
#include <exception>
#include <mutex>

#include "lib/numerics/error.hpp"
#include "study/report_io.hpp"

namespace qkv::study {

using nlohmann::json;

json exact_json(double value) { return std::bit_cast<std::uint64_t>(value); }

double exact_double(const json& value) { return std::bit_cast<double>(value.get<std::uint64_t>()); }

json exact_json(const std::vector<double>& values) {
  json array = json::array();
  for (const double v : values) array.push_back(exact_json(v));
  return array;
}

std::vector<double> exact_doubles(const json& values) {
  std::vector<double> doubles;
  for (const json& v : values) doubles.push_back(exact_double(v));
  return doubles;
}

std::vector<json> spread_runs(train::Communicator& communicator, std::size_t count, std::size_t jobs,
                              const std::function<RunOutcome(std::size_t)>& run, const std::string& what,
                              const std::function<void(std::string_view)>& progress) {
  check_arg(jobs > 0, "spread_runs", "jobs must be positive");
  const std::size_t rank = std::size_t(communicator.rank()), ranks = std::size_t(communicator.size());
  std::vector<std::size_t> mine;
  for (std::size_t i = rank; i < count; i += ranks) mine.push_back(i);
  json results = json::array();
  for (std::size_t k = 0; k < mine.size(); ++k) results.push_back(nullptr);
  // A failure is sent like a result, so that no rank waits for one that gave up.
  std::exception_ptr failure;
  std::string failure_message;
  try {
    std::mutex mutex;
    std::size_t finished = 0;
    run_jobs(mine.size(), jobs, [&](std::size_t k) {
      RunOutcome outcome = run(mine[k]);
      const std::lock_guard lock(mutex);
      results[k] = std::move(outcome.result);
      ++finished;
      if (progress)
        progress((what.empty() ? "" : what + " ") + std::to_string(finished) + "/" + std::to_string(mine.size()) +
                 ": " + outcome.summary);
    });
  } catch (const std::exception& e) {
    failure = std::current_exception();
    failure_message = "rank " + std::to_string(rank) + ": " + e.what();
  }
  if (ranks == 1) {
    if (failure) std::rethrow_exception(failure);
    std::vector<json> all;
    for (json& r : results) all.push_back(std::move(r));
    return all;
  }
  const json sent = failure ? json{{"error", failure_message}} : json{{"results", results}};
  const std::vector<std::string> gathered = communicator.gather_text(sent.dump());
  std::string merged;
  if (rank == 0) {
    json all = json::array();
    for (std::size_t i = 0; i < count; ++i) all.push_back(nullptr);
    std::string errors;
    for (std::size_t r = 0; r < gathered.size(); ++r) {
      const json part = json::parse(gathered[r]);
      if (part.contains("error")) {
        errors += (errors.empty() ? "" : "; ") + part.at("error").get<std::string>();
        continue;
      }
      // Rank r ran r, r + N, ...: its k-th result is run r + k·N.
      const json& theirs = part.at("results");
      const std::size_t expected = r < count ? (count - r + ranks - 1) / ranks : 0;
      if (theirs.size() != expected) {
        errors += (errors.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": sent " +
                                                  std::to_string(theirs.size()) + " results for " +
                                                  std::to_string(expected) + " runs");
        continue;
      }
      for (std::size_t k = 0; k < theirs.size(); ++k) all[r + k * ranks] = theirs[k];
    }
    merged = errors.empty() ? json{{"results", all}}.dump() : json{{"error", errors}}.dump();
  }
  communicator.broadcast_text(merged);
  json outcome = json::parse(merged);
  if (outcome.contains("error"))
    throw Error((what.empty() ? std::string("the runs") : what) + " over " + std::to_string(ranks) +
                " processes failed on " + outcome.at("error").get<std::string>());
  std::vector<json> all;
  for (json& r : outcome.at("results")) all.push_back(std::move(r));
  check_arg(all.size() == count, "spread_runs",
            "gathered " + std::to_string(all.size()) + " results for " + std::to_string(count) + " runs");
  return all;
}

}  // namespace qkv::study
