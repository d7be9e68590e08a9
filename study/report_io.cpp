#include "study/report_io.hpp"

#include <atomic>
#include <cmath>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <thread>

#include "lib/numerics/atomic_file.hpp"

namespace qkv::study {

std::string cell(double value) {
  if (!std::isfinite(value)) return "";
  std::ostringstream out;
  out << std::setprecision(6) << value;
  return out.str();
}

std::string fixed(double value, int digits) {
  if (!std::isfinite(value)) return "—";
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

std::string general(double value) {
  if (!std::isfinite(value)) return "—";
  std::ostringstream out;
  out << std::setprecision(3) << value;
  return out.str();
}

void Csv::row(const std::vector<std::string>& cells) {
  for (std::size_t i = 0; i < cells.size(); ++i) text_ += (i ? "," : "") + cells[i];
  text_ += "\n";
}

void Csv::write(const std::string& directory, const std::string& name, std::vector<std::string>& written) const {
  write_file_atomically((std::filesystem::path(directory) / name).string(), text_);
  written.push_back(name);
}

void plot(const std::string& directory, const std::string& name, LineChart chart, std::vector<std::string>& written) {
  bool positive = true;
  for (const Series& s : chart.series)
    for (const double y : s.y)
      if (std::isfinite(y) && y <= 0) positive = false;
  if (chart.log_y && !positive) chart.log_y = false;
  write_svg((std::filesystem::path(directory) / name).string(), line_chart_svg(chart));
  written.push_back(name);
}

void run_jobs(std::size_t count, std::size_t jobs, const std::function<void(std::size_t)>& run) {
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::exception_ptr failure;
  const auto worker = [&] {
    for (std::size_t i; (i = next++) < count;) {
      try {
        run(i);
      } catch (...) {
        const std::lock_guard lock(mutex);
        if (!failure) failure = std::current_exception();
        next = count;  // the others finish their current run and stop
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (std::size_t t = 1; t < std::min(jobs, count); ++t) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace qkv::study
