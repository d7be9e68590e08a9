// qkv-scaling-study: why attention divides q·k by √d_k, measured.
//
//   qkv-scaling-study --out study            # the full run (about 10 minutes on 2 cores)
//   qkv-scaling-study --quick --out study    # the same outputs in under a minute
//
// Part 1 draws random queries and keys and measures what each scale does to the softmax and
// to the gradients (no training); part 2 trains the tiny transformer with each scale and
// several head sizes. DIR/summary.md says what was measured; docs/scaling_study.md explains
// every output.
//
// Under mpirun (`mpirun -np 4 qkv-scaling-study ...`, qkv built with QKV_MPI) the training runs
// are spread over the ranks (study::run_sweep with a communicator) and rank 0 measures part 1
// and writes every file: the same rows as one process, bit for bit, but for the wall times.
// --jobs is then per rank (default 1).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "lib/numerics/parallel.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/atomic_file.hpp"
#include "study/mup.hpp"
#include "study/report.hpp"
#include "study/stability.hpp"
#include "study/statistics.hpp"
#include "study/training_sweep.hpp"
#include "train/distributed.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int run(int argc, char** argv, const qkv::train::MpiSession& mpi) {
  using namespace qkv::study;
  const bool root = mpi.is_root();
  const int ranks = mpi.world()->size();
  CLI::App app{"qkv-scaling-study: what 1/sqrt(d_k) does to attention saturation, entropy, gradients and training"};
  std::string out;
  bool quick = false;
  StatisticsOptions stats;
  SweepOptions sweep;
  std::vector<std::string> scaling_ids;
  sweep.jobs = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
  app.add_option("--out", out, "output directory (created)")->required();
  std::vector<std::string> sections = {"statistics", "training", "mup", "stability"};
  app.add_option("--sections", sections, "sections to run: statistics, training, mup, stability")
      ->check(CLI::IsMember({"statistics", "training", "mup", "stability"}));
  std::vector<std::size_t> mup_widths;
  std::vector<double> stability_lrs;
  std::size_t section_steps = 0;
  app.add_option("--mup-widths", mup_widths, "mup: d_model values of both the coordinate check and the transfer sweep");
  app.add_option("--stability-lrs", stability_lrs, "stability: the learning rates swept");
  app.add_option("--section-steps", section_steps, "mup, stability: training steps of every run (0: the defaults)");
  app.add_flag("--quick", quick, "fewer trials, one seed, fewer steps: the same outputs in under a minute");
  // Explicit options override what --quick sets.
  auto* trials = app.add_option("--trials", stats.trials, "statistics: trials per d_k")->check(CLI::Range(2, 100000000));
  auto* gradient_trials =
      app.add_option("--gradient-trials", stats.gradient_trials, "statistics: trials for the autograd gradients")
          ->check(CLI::PositiveNumber);
  auto* samples = app.add_option("--prediction-samples", stats.prediction_samples,
                                 "statistics: Gaussian-logit draws for the predictions")
                      ->check(CLI::PositiveNumber);
  app.add_option("--keys", stats.keys, "statistics: keys per query (n)")->check(CLI::Range(2, 100000));
  app.add_option("--key-sizes", stats.key_sizes, "statistics: the d_k values");
  app.add_option("--seed", stats.seed, "statistics: random seed");
  app.add_option("--task", sweep.task, "training: toy task (reverse, copy, dates, numbers)");
  app.add_option("--d-model", sweep.d_model, "training: model width, fixed")->check(CLI::PositiveNumber);
  app.add_option("--train-key-sizes", sweep.key_sizes, "training: head sizes d_k (heads = d_model / d_k)");
  app.add_option("--scalings", scaling_ids, "training: none, inv_sqrt_dk, inv_dk, learned_tau");
  auto* jobs = app.add_option("--jobs", sweep.jobs, "training: runs at once (one thread each; per rank under mpirun)")
                   ->check(CLI::PositiveNumber);
  auto* seeds = app.add_option("--seeds", sweep.seeds, "training: seeds per setting")->check(CLI::PositiveNumber);
  auto* steps = app.add_option("--steps", sweep.steps, "training: optimizer steps per run")->check(CLI::PositiveNumber);
  auto* probe_every =
      app.add_option("--probe-every", sweep.probe_every, "training: steps between probes")->check(CLI::PositiveNumber);
  app.add_option("--batch", sweep.batch_size, "training: batch size")->check(CLI::PositiveNumber);
  app.add_option("--lr", sweep.lr, "training: Adam learning rate")->check(CLI::PositiveNumber);
  app.add_option("--clip", sweep.clip_norm, "training: gradient clipping norm (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--layers", sweep.layers, "training: encoder and decoder layers each")->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return root ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  if (ranks > 1 && jobs->count() == 0) sweep.jobs = 1;  // the ranks are the parallelism
  if (!root) spdlog::set_level(spdlog::level::warn);     // rank 0 tells the story

  if (quick) {
    if (trials->count() == 0) stats.trials = 8000;  // keeps the variance within ~1% at d_k = 4
    if (gradient_trials->count() == 0) stats.gradient_trials = 250;
    if (samples->count() == 0) stats.prediction_samples = 5000;
    if (seeds->count() == 0) sweep.seeds = 1;
    if (steps->count() == 0) sweep.steps = 100;
    if (probe_every->count() == 0) sweep.probe_every = 20;
  }
  if (!scaling_ids.empty()) {
    sweep.scalings.clear();
    for (const std::string& id : scaling_ids) sweep.scalings.push_back(qkv::parse_name<Scaling>(id, "--scalings"));
  }
  std::ostringstream command;
  for (int i = 0; i < argc; ++i) command << (i ? " " : "") << (i ? argv[i] : "qkv-scaling-study");

  try {
    stats.validate();
    sweep.validate();
    if (root) std::filesystem::create_directories(out);
    // One qkv thread per run: the runs themselves are spread over --jobs threads.
    qkv::parallel::set_num_threads(1);

    const auto progress = [](std::string_view line) { spdlog::info("{}", line); };
    const auto wanted = [&](const char* name) { return std::count(sections.begin(), sections.end(), name) > 0; };
    if (wanted("statistics") || wanted("training")) {
    spdlog::info("part 1: statistics over d_k = {} ... {}, {} trials each", stats.key_sizes.front(),
                 stats.key_sizes.back(), stats.trials);
    auto start = std::chrono::steady_clock::now();
    // Part 1 is rank 0's alone; the others start on their training runs meanwhile.
    const StatisticsResult statistics = root ? measure_statistics(stats, progress) : StatisticsResult{};
    const double statistics_seconds = seconds_since(start);

    const std::size_t runs = sweep.key_sizes.size() * sweep.scalings.size() * sweep.seeds;
    spdlog::info("part 2: training {} runs of {} steps, {} at a time{}", runs, sweep.steps, sweep.jobs,
                 ranks > 1 ? " on each rank, runs over " + std::to_string(ranks) + " processes" : std::string());
    start = std::chrono::steady_clock::now();
    const std::vector<RunResult> results =
        ranks > 1 ? run_sweep(sweep, *mpi.world(), progress) : run_sweep(sweep, progress);
    const double training_seconds = seconds_since(start);
    if (!root) return 0;

    const std::vector<std::string> files =
        write_report(out, {.command_line = command.str(), .statistics = stats, .sweep = sweep,
                           .statistics_seconds = statistics_seconds, .training_seconds = training_seconds},
                     statistics, results);
    spdlog::info("wrote {} files to {} (statistics {:.1f} s, training {:.1f} s); see {}/summary.md", files.size(), out,
                 statistics_seconds, training_seconds, out);
    }
    // Part 2 (docs/scaling_study.md): each section writes its own files and a summary fragment,
    // appended to summary.md. Single-process: under mpirun only rank 0 runs them.
    std::string fragments;
    if (wanted("mup") && root) {
      spdlog::info("section mup: coordinate check and learning-rate transfer");
      const auto section_start = std::chrono::steady_clock::now();
      MupOptions mup = quick ? MupOptions::quick() : MupOptions{};
      if (!mup_widths.empty()) mup.coordinate_widths = mup.transfer_widths = mup_widths;
      if (section_steps > 0) mup.coordinate_steps = mup.transfer_steps = section_steps;
      fragments += "\n" + run_mup_section(mup, out, sweep.jobs, progress);
      spdlog::info("section mup: {:.1f} s", seconds_since(section_start));
    }
    if (wanted("stability") && root) {
      spdlog::info("section stability: learning-rate sweep, entropy, logits, QK-norm and sigmaReparam");
      const auto section_start = std::chrono::steady_clock::now();
      StabilityOptions stability = quick ? StabilityOptions::quick() : StabilityOptions{};
      if (!stability_lrs.empty()) stability.learning_rates = stability_lrs;
      if (section_steps > 0) stability.steps = section_steps;
      fragments += "\n" + run_stability_section(stability, out, sweep.jobs, progress);
      spdlog::info("section stability: {:.1f} s", seconds_since(section_start));
    }
    if (!fragments.empty()) {
      const std::filesystem::path summary = std::filesystem::path(out) / "summary.md";
      std::string text;
      if (wanted("statistics") || wanted("training")) {
        std::ifstream in(summary);
        text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      } else {
        text = "# Scaling-factor study\n\nCommand: `" + command.str() + "`\n";
      }
      qkv::write_file_atomically(summary.string(), text + fragments);
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    // An error of rank 0's alone (writing the report) must not leave the others waiting.
    mpi.abort(1);
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    qkv::train::MpiSession mpi(argc, argv);
    return run(argc, argv, mpi);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
