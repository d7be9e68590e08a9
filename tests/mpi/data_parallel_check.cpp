// qkv-data-parallel-check: trains a small model through the Trainer API (train/trainer.hpp) for
// a fixed number of steps and prints every step's loss, so that a run under `mpirun -np N` can
// be set beside the one-process run with the same global batch (tests/mpi/run.sh compares
// them). Run alone it is the reference; under mpirun rank 0 prints.
//
//   qkv-data-parallel-check --model transformer --steps 200 --dropout 0.1 [--threads 1]
//   mpirun -np 2 qkv-data-parallel-check --model bahdanau --steps 200 --dropout 0.1
//
// Throughput (bench/mpi_throughput.sh): --data FILE.tsv trains on a corpus instead of the
// reverse task, --d-model/--heads/--layers/--ff size the transformer, and the last line gives
// the global batch's target tokens per second of wall time over the steps after --warmup.
//
// --all-reduce-floats N instead times the Communicator's sum of N floats alone: after a
// one-double sum that lines the ranks up, so waiting for a slower rank is left out (median of
// 21 repetitions, rank 0).
//
// --perturb-rank R adds 1e-3 to one weight on rank R after the first step: the parameter hash
// check at the next evaluation must stop every rank naming that tensor (tested).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>

#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "models/registry.hpp"
#include "train/data_spec.hpp"
#include "train/distributed.hpp"
#include "train/trainer.hpp"

namespace {

using namespace qkv;
using namespace qkv::train;

/// Records every step's loss and stops the run after `steps`; may perturb a weight once.
class StepLosses : public TrainerCallback {
 public:
  StepLosses(std::size_t steps, int perturb_rank) : steps_(steps), perturb_rank_(perturb_rank) {}
  void on_step_end(Trainer& trainer, const StepInfo& info) override {
    losses.push_back(info.loss);
    tokens.push_back(info.tokens);
    seconds.push_back(info.seconds);
    if (info.step == 1 && trainer.communicator().rank() == perturb_rank_) {
      auto named = trainer.model().named_parameters();
      Variable weight = named.at(named.size() / 2).second;
      weight.mutable_value().data()[0] += real(1e-3);
      perturbed = named.at(named.size() / 2).first;
    }
    if (losses.size() >= steps_) trainer.request_stop("the steps asked for are done");
  }
  std::vector<double> losses, seconds;
  std::vector<std::size_t> tokens;
  std::string perturbed;

 private:
  std::size_t steps_;
  int perturb_rank_;
};

int run(int argc, char** argv, MpiSession& mpi) {
  CLI::App app{"qkv-data-parallel-check: one loss per step, alone or under mpirun"};
  std::string model_kind = "transformer";
  std::size_t steps = 200, batch = 32;
  double dropout = 0.1;
  int threads = 1, perturb_rank = -1;
  std::string data_file;
  std::size_t d_model = 32, heads = 4, layers = 2, ff = 64, warmup = 5, all_reduce_floats = 0;
  app.add_option("--model", model_kind, "transformer or bahdanau");
  app.add_option("--steps", steps, "optimizer steps")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "global batch size")->check(CLI::PositiveNumber);
  app.add_option("--dropout", dropout, "dropout of every layer");
  app.add_option("--threads", threads, "qkv threads per process")->check(CLI::PositiveNumber);
  app.add_option("--data", data_file, "a TSV corpus (default: the reverse task)");
  app.add_option("--d-model", d_model, "transformer width")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "transformer heads")->check(CLI::PositiveNumber);
  app.add_option("--layers", layers, "transformer encoder and decoder layers")->check(CLI::PositiveNumber);
  app.add_option("--ff", ff, "transformer feed-forward width")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "steps left out of the tokens/s")->check(CLI::NonNegativeNumber);
  app.add_option("--all-reduce-floats", all_reduce_floats, "time the sum of this many floats over the ranks instead");
  app.add_option("--perturb-rank", perturb_rank, "rank whose weight is nudged after step 1 (-1: none)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  parallel::set_num_threads(threads);
  if (all_reduce_floats > 0) {
    Communicator& world = *mpi.world();
    std::vector<float> values(all_reduce_floats, 1.0f);
    std::vector<double> milliseconds;
    for (int repetition = 0; repetition < 21; ++repetition) {
      double line_up = 0;
      world.sum(std::span<double>(&line_up, 1));
      const auto start = std::chrono::steady_clock::now();
      world.sum(std::span<float>(values));
      milliseconds.push_back(1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(milliseconds.begin(), milliseconds.end());
    if (mpi.is_root())
      std::printf("all-reduce of %zu floats (%zu bytes) over %d ranks: median %.2f ms (min %.2f, max %.2f)\n",
                  all_reduce_floats, all_reduce_floats * sizeof(float), world.size(), milliseconds[10],
                  milliseconds.front(), milliseconds.back());
    return 0;
  }
  const nlohmann::json data_spec =
      data_file.empty() ? task_data_spec("reverse", 3, 512, 16) : corpus_data_spec(data_file, false, "default");
  const Dataset data = load_data(data_spec);
  const Vocabs vocabs = build_vocabs(data.train, {.min_freq = data_file.empty() ? std::size_t(1) : std::size_t(2)});
  nlohmann::json config;
  if (model_kind == "transformer")
    config = {{"d_model", d_model}, {"num_heads", heads}, {"encoder_layers", layers}, {"decoder_layers", layers},
              {"dim_feedforward", ff}, {"dropout", dropout}, {"seed", 5}};
  else
    // Two layers each way: the GRU's dropout between layers runs on time-major [T, B, H].
    config = {{"embed_size", 16}, {"hidden_size", 32}, {"encoder_layers", 2}, {"decoder_layers", 2},
              {"dropout", dropout}, {"seed", 5}};
  auto model = models::make_model(model_kind, config, vocabs.source.size(), vocabs.target.size());
  TrainOptions options;
  options.batch_size = batch;
  options.epochs = 1000;
  options.seed = 11;
  Trainer trainer(model, vocabs, data.train, options);
  trainer.set_communicator(mpi.world());
  auto losses = std::make_shared<StepLosses>(steps, perturb_rank);
  trainer.add_callback(losses);
  const TrainResult result = trainer.train();
  if (mpi.is_root()) {
    std::printf("ranks %d, bytes all-reduced per step %zu, stop: %s\n", mpi.world()->size(),
                trainer.all_reduce_bytes_per_step(), result.message.c_str());
    for (std::size_t i = 0; i < losses->losses.size(); ++i) std::printf("step %zu loss %.17g\n", i + 1, losses->losses[i]);
    const std::vector<double>& seconds = losses->seconds;
    if (seconds.size() > warmup + 1) {
      double tokens = 0;
      for (std::size_t i = warmup + 1; i < seconds.size(); ++i) tokens += double(losses->tokens[i]);
      const double elapsed = seconds.back() - seconds[warmup];
      std::printf("throughput: %.0f target tokens/s over steps %zu-%zu (%.3f s per step, %zu parameters)\n",
                  tokens / elapsed, warmup + 2, seconds.size(), elapsed / double(seconds.size() - warmup - 1),
                  trainer.model().parameter_count());
      if (const GradientAllReduce* all_reduce = trainer.gradient_all_reduce())
        std::printf("gradient all-reduce: %.2f ms per step (mean over %zu steps, rank 0, waiting for the other ranks included)\n",
                    1e3 * all_reduce->seconds() / double(all_reduce->calls()), all_reduce->calls());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<MpiSession> mpi;
  try {
    mpi.emplace(argc, argv);
    return run(argc, argv, *mpi);
  } catch (const std::exception& e) {
    // Collective errors (the handshake, the hash check) reach every rank alike: they all
    // print and exit with status 3, so no rank is left waiting.
    std::fprintf(stderr, "qkv-data-parallel-check (rank %d): %s\n", mpi ? mpi->world()->rank() : 0, e.what());
    return 3;
  }
}
