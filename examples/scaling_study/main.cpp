// qkv-scaling-study: why attention divides q·k by √d_k, measured.
//
//   qkv-scaling-study --out study                                # every section
//   qkv-scaling-study --quick --out study                        # the same outputs, smaller
//   qkv-scaling-study --sections length,additive --out study     # some sections only
//
// Sections (kSections below, in the order they run): statistics draws random queries and keys
// and measures what each scale does to the softmax and to the gradients (no training);
// training trains the tiny transformer with each scale and several head sizes; length measures
// attention fading and length generalisation with 1/√d_k and s·ln n (study/length.hpp);
// additive compares additive and dot-product attention as d_k grows (study/additive.hpp).
// DIR/summary.md holds the sections that ran; docs/scaling_study.md explains every output.
//
// Under mpirun (`mpirun -np 4 qkv-scaling-study ...`, qkv built with QKV_MPI) every section that
// trains (training, mup, stability, length, additive) spreads its runs over the ranks
// (study/spread_runs.hpp), rank 0 measures the statistics section and attention fading (no
// training) and writes every file: the same rows as one process, bit for bit, but for the wall
// times. --jobs is then per rank (default 1).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "lib/numerics/parallel.hpp"
#include "lib/numerics/error.hpp"
#include "study/additive.hpp"
#include "study/length.hpp"
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

/// Splits "a,b,c".
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, ',')) parts.push_back(part);
  return parts;
}

}  // namespace

int run(int argc, char** argv, const qkv::train::MpiSession& mpi) {
  using namespace qkv::study;
  const bool root = mpi.is_root();
  const int ranks = mpi.world()->size();
  CLI::App app{"qkv-scaling-study: what the attention scale does to saturation, entropy, gradients, training and length"};
  std::string out;
  std::string section_list = "all";
  bool quick = false, smoke = false;
  StatisticsOptions stats;
  SweepOptions sweep;
  FadingOptions fading;
  LengthOptions length;
  AdditiveOptions additive;
  std::vector<std::string> scaling_ids;
  sweep.jobs = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
  app.add_option("--out", out, "output directory (created)")->required();
  app.add_option("--sections", section_list,
                 "comma-separated: statistics, training, mup, stability, length, additive, or all (the default)");
  app.add_flag("--quick", quick, "fewer trials, seeds and steps in every section: the same outputs in minutes");
  app.add_flag("--smoke", smoke, "mup, stability, length and additive at toy sizes (seconds; for tests, the numbers mean nothing)");
  std::vector<std::size_t> mup_widths;
  std::vector<double> stability_lrs;
  std::size_t section_steps = 0;
  app.add_option("--mup-widths", mup_widths, "mup: d_model values of both the coordinate check and the transfer sweep");
  app.add_option("--stability-lrs", stability_lrs, "stability: the learning rates swept");
  app.add_option("--section-steps", section_steps, "mup, stability: training steps of every run (0: the defaults)");
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
  auto* jobs = app.add_option("--jobs", sweep.jobs,
                              "training, mup, stability, length, additive: runs at once (one thread each; per rank "
                              "under mpirun)")
                   ->check(CLI::PositiveNumber);
  auto* seeds = app.add_option("--seeds", sweep.seeds, "training: seeds per setting")->check(CLI::PositiveNumber);
  auto* steps = app.add_option("--steps", sweep.steps, "training: optimizer steps per run")->check(CLI::PositiveNumber);
  auto* probe_every =
      app.add_option("--probe-every", sweep.probe_every, "training: steps between probes")->check(CLI::PositiveNumber);
  app.add_option("--batch", sweep.batch_size, "training: batch size")->check(CLI::PositiveNumber);
  app.add_option("--lr", sweep.lr, "training: Adam learning rate")->check(CLI::PositiveNumber);
  app.add_option("--clip", sweep.clip_norm, "training: gradient clipping norm (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--layers", sweep.layers, "training: encoder and decoder layers each")->check(CLI::PositiveNumber);
  auto* length_steps =
      app.add_option("--length-steps", length.steps, "length: optimizer steps per run")->check(CLI::PositiveNumber);
  auto* length_seeds =
      app.add_option("--length-seeds", length.seeds, "length: seeds per setting")->check(CLI::PositiveNumber);
  auto* additive_steps =
      app.add_option("--additive-steps", additive.steps, "additive: optimizer steps per run")->check(CLI::PositiveNumber);
  auto* additive_seeds =
      app.add_option("--additive-seeds", additive.seeds, "additive: seeds per setting")->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return root ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  if (ranks > 1 && jobs->count() == 0) sweep.jobs = 1;  // the ranks are the parallelism
  if (!root) spdlog::set_level(spdlog::level::warn);     // rank 0 tells the story
  length.jobs = additive.jobs = sweep.jobs;

  if (quick) {
    if (trials->count() == 0) stats.trials = 8000;  // keeps the variance within ~1% at d_k = 4
    if (gradient_trials->count() == 0) stats.gradient_trials = 250;
    if (samples->count() == 0) stats.prediction_samples = 5000;
    if (seeds->count() == 0) sweep.seeds = 1;
    if (steps->count() == 0) sweep.steps = 100;
    if (probe_every->count() == 0) sweep.probe_every = 20;
    if (length_steps->count() == 0) length.steps = 100;
    length.test_size = 16;
    if (additive_steps->count() == 0) additive.steps = 150;
    if (additive_seeds->count() == 0) additive.seeds = 1;
  }
  if (smoke) {
    fading.key_counts = {2, 16, 128};
    fading.trials = 4;
    length.d_model = 16, length.dim_feedforward = 16, length.test_size = 4, length.batch_size = 4;
    length.test_lengths = {16};
    if (length_steps->count() == 0) length.steps = 2;
    additive.key_sizes = {16, 64}, additive.probe_size = 16, additive.batch_size = 8, additive.probe_every = 1;
    if (additive_steps->count() == 0) additive.steps = 2;
    if (additive_seeds->count() == 0) additive.seeds = 1;
  }
  if (length_seeds->count() == 0 && quick) length.seeds = 1;
  if (!scaling_ids.empty()) {
    sweep.scalings.clear();
    for (const std::string& id : scaling_ids) sweep.scalings.push_back(qkv::parse_name<Scaling>(id, "--scalings"));
  }
  std::ostringstream command;
  for (int i = 0; i < argc; ++i) command << (i ? " " : "") << (i ? argv[i] : "qkv-scaling-study");

  const auto progress = [](std::string_view line) { spdlog::info("{}", line); };
  // "2 at a time", and under mpirun where the rest of the runs go.
  const auto at_a_time = [ranks](std::size_t jobs) {
    return std::to_string(jobs) + " at a time" +
           (ranks > 1 ? " on each rank, runs over " + std::to_string(ranks) + " processes" : std::string());
  };
  qkv::train::Communicator& world = *mpi.world();
  // Every section: its name in --sections and what it runs. run() measures (collectively under
  // mpirun, where a section spreads its runs over the ranks) and returns, on rank 0, what it
  // wrote into `out`; the others return nothing. summary.md follows this order.
  struct Section {
    std::string name;
    std::function<SectionOutput()> run;
  };
  const std::vector<Section> sections = {
      {"statistics",
       [&] {
         stats.validate();
         spdlog::info("statistics over d_k = {} ... {}, {} trials each", stats.key_sizes.front(),
                      stats.key_sizes.back(), stats.trials);
         // Rank 0's alone; the others start on their training runs meanwhile.
         if (!root) return SectionOutput{};
         return write_statistics_section(out, stats, measure_statistics(stats, progress));
       }},
      {"training",
       [&] {
         sweep.validate();
         const std::size_t runs = sweep.key_sizes.size() * sweep.scalings.size() * sweep.seeds;
         spdlog::info("training {} runs of {} steps, {}", runs, sweep.steps, at_a_time(sweep.jobs));
         const std::vector<RunResult> results = run_sweep(sweep, world, progress);
         return root ? write_training_section(out, sweep, results) : SectionOutput{};
       }},
      {"mup",
       [&] {
         MupOptions mup = quick || smoke ? MupOptions::quick() : MupOptions{};
         if (smoke) mup.coordinate_widths = mup.transfer_widths = {16, 32}, mup.coordinate_steps = mup.transfer_steps = 4;
         if (!mup_widths.empty()) mup.coordinate_widths = mup.transfer_widths = mup_widths;
         if (section_steps > 0) mup.coordinate_steps = mup.transfer_steps = section_steps;
         mup.validate();
         spdlog::info("mup: coordinate check and learning-rate transfer, {}", at_a_time(sweep.jobs));
         return SectionOutput{.files = {}, .markdown = run_mup_section(mup, out, sweep.jobs, world, progress)};
       }},
      {"stability",
       [&] {
         StabilityOptions stability = quick || smoke ? StabilityOptions::quick() : StabilityOptions{};
         if (smoke) stability.learning_rates = {0.001, 0.1}, stability.steps = 4;
         if (!stability_lrs.empty()) stability.learning_rates = stability_lrs;
         if (section_steps > 0) stability.steps = section_steps;
         stability.validate();
         spdlog::info("stability: learning-rate sweep, entropy, logits, QK-norm and sigmaReparam: "
                      "{} runs of {} steps, {}",
                      stability.fixes.size() * stability.learning_rates.size() * stability.seeds, stability.steps,
                      at_a_time(sweep.jobs));
         return SectionOutput{.files = {},
                              .markdown = run_stability_section(stability, out, sweep.jobs, world, progress)};
       }},
      {"length",
       [&] {
         fading.validate();
         length.validate();
         const std::size_t runs =
             length.tasks.size() * length.scales.size() * length.positionals.size() * length.seeds;
         spdlog::info("length: attention fading, then {} runs of {} steps, {}", runs, length.steps,
                      at_a_time(length.jobs));
         // Fading trains nothing: rank 0's alone, before the runs (the others start on theirs).
         const std::vector<FadingPoint> faded = root ? measure_fading(fading) : std::vector<FadingPoint>{};
         const std::vector<LengthRun> trained = run_length_generalisation(length, world, progress);
         return root ? write_length_section(out, fading, faded, length, trained) : SectionOutput{};
       }},
      {"additive",
       [&] {
         additive.validate();
         spdlog::info("additive: {} runs of {} steps, {}",
                      additive.key_sizes.size() * additive.mechanisms.size() * additive.seeds, additive.steps,
                      at_a_time(additive.jobs));
         const std::vector<AdditiveRun> trained = run_additive(additive, world, progress);
         return root ? write_additive_section(out, additive, trained) : SectionOutput{};
       }},
  };

  try {
    std::vector<std::string> chosen = split_list(section_list);
    if (chosen == std::vector<std::string>{"all"}) {
      chosen.clear();
      for (const Section& s : sections) chosen.push_back(s.name);
    }
    for (const std::string& name : chosen) {
      const bool known = std::any_of(sections.begin(), sections.end(), [&](const Section& s) { return s.name == name; });
      std::string names;
      for (const Section& s : sections) names += (names.empty() ? "" : ", ") + s.name;
      if (!known) throw qkv::Error("--sections: unknown section \"" + name + "\" (known: " + names + ", all)");
    }
    if (root) std::filesystem::create_directories(out);
    // One qkv thread per run: the runs themselves are spread over --jobs threads.
    qkv::parallel::set_num_threads(1);
    std::vector<SectionSummary> ran;
    for (const Section& section : sections) {
      if (std::find(chosen.begin(), chosen.end(), section.name) == chosen.end()) continue;
      const auto start = std::chrono::steady_clock::now();
      SectionOutput output = section.run();
      const double seconds = seconds_since(start);
      spdlog::info("section {}: {:.1f} s", section.name, seconds);
      ran.push_back({section.name, seconds, std::move(output)});
    }
    if (!root) return 0;
    const std::vector<std::string> files = write_summary(out, command.str(), ran);
    std::string times;
    for (const SectionSummary& s : ran) times += (times.empty() ? "" : ", ") + s.name + " " + qkv::format_number(std::round(s.seconds * 10) / 10) + " s";
    spdlog::info("wrote {} files to {} ({}); see {}/summary.md", files.size(), out, times, out);
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
